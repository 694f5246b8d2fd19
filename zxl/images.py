"""The one image decoder: bytes → a loaded PIL image, or an error that says why.

Every stage that opens stored images (inspect, score, tag, caption), ``zxl score``/``zxl tag`` on a
folder and the browser's thumbnails decode through here, so a decompression bomb, a truncated file
or an unknown format reads the same everywhere. (fetch only sniffs headers before decoding; that is
``zxl.pipeline.fetch.look``.)

A stage whose work is far smaller than the stored image (a perceptual hash of 32×32, a model that
sees 224 or 448 px) asks for a **reduced decode** (``decode_reduced``): JPEGs are decoded with
libjpeg's DCT scaling (``Image.draft``: 1/2, 1/4 or 1/8 of each side, computed from the coefficients,
which costs a fraction of a full decode), other formats decode whole and are box-averaged by an
integer factor (``Image.reduce``); either way both sides stay at least ``min_side``, and the whole
file is still read, so a truncated image fails exactly as it does in a full decode.

A view at or under ``BASE_SIDE`` (448 px: inspect's hash; on the long side, a WD tagger's input) is
box-reduced from the 448 view, never decoded or reduced from the whole image on its own: CLIP's
224 px and WD's 448 on the long side then come from the decode inspect made. For a JPEG the smaller
DCT scales would save little: the entropy decoding, which no scale skips, is most of the work (a
1.5 Mpx JPEG at quality 90 here: whole 4.6 ms, 1/2 3.7, 1/4 3.0, 1/8 2.7), so a second decode at 1/4
cost more than a box of 2 from the 1/2 one (0.45 ms). For any other format a box from the 448 view
reads a quarter of the pixels one from the whole image reads (or none: a 2:3 image's 448 view is
already WD's).
"""

from __future__ import annotations

import io
import warnings

from PIL import Image


class ImageDecodeError(ValueError):
    pass


# Pillow warns (DecompressionBombWarning) past Image.MAX_IMAGE_PIXELS and raises past twice that; here
# both are an ImageDecodeError, checked explicitly (a warnings filter set per call is process-wide,
# not thread-safe, and stages decode in loader threads), so the warning itself is not shown.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning, module="PIL")


def _check_bomb(w: int, h: int) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and w * h > limit:
        raise ImageDecodeError(
            f"DecompressionBombWarning: Image size ({w * h} pixels) exceeds limit of {limit} pixels, "
            "could be decompression bomb DOS attack."
        )


def decode(data: bytes, max_pixels: int | None = None, option: str = "max_image_pixels") -> Image.Image:
    """The image in ``data``, fully loaded; ``ImageDecodeError`` with the decoder's message when it
    does not decode, or when it has more than ``max_pixels`` pixels (``option`` names that limit)."""
    return load(open_reduced(data, None, max_pixels, option)[0])


_NO_REDUCE = {"P": "RGB", "1": "L", "I;16": "I", "I;16B": "I", "I;16L": "I", "I;16N": "I"}


# Views at or under this side are box-reduced from the view at this side (module docstring).
BASE_SIDE = 448


def from_base(side: int, long: bool = False) -> bool:
    """Whether the view of ``side`` (``long``: on the long side) is cut from the ``BASE_SIDE`` view
    rather than decoded: every view at or under it but that view itself."""
    return side <= BASE_SIDE and (side, long) != (BASE_SIDE, False)


def decode_reduced(
    data: bytes,
    min_side: int | None,
    max_pixels: int | None = None,
    option: str = "max_image_pixels",
    mode: str | None = None,
    long: bool = False,
) -> tuple[Image.Image, tuple[int, int]]:
    """The image in ``data`` reduced to the smallest size whose sides are both at least ``min_side``
    that a cheap reduction reaches (module docstring), and its stored size (width, height); with
    ``long``, only the long side is kept at least ``min_side`` (for a model that pads to a square).
    ``min_side`` None decodes at full size; at or under ``BASE_SIDE`` the image is the ``BASE_SIDE``
    one, box-reduced. ``mode`` "L" lets a colour JPEG decode its luma alone. Errors as ``decode``."""
    if min_side is not None and from_base(min_side, long):
        im, size = decode_reduced(data, BASE_SIDE, max_pixels, option, mode)
        return reduce_to(im, min_side, long), size
    im, size = open_reduced(data, min_side, max_pixels, option, mode, long)
    load(im)
    return (reduce_to(im, min_side, long) if min_side is not None else im), size


def open_reduced(
    data: bytes,
    min_side: int | None,
    max_pixels: int | None = None,
    option: str = "max_image_pixels",
    mode: str | None = None,
    long: bool = False,
) -> tuple[Image.Image, tuple[int, int]]:
    """``decode_reduced``'s first half: the image opened (header read, pixel limit checked, a JPEG's
    DCT scale set: ``im.size`` is then the size it will decode to) but not yet decoded; ``load`` it."""
    if not data:
        raise ImageDecodeError("empty image (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
        size = im.size
        _check_bomb(*size)
        if max_pixels is not None and size[0] * size[1] > max_pixels:
            raise ImageDecodeError(f"{size[0]}x{size[1]} is over {option}={max_pixels}")
        if min_side is not None and im.format == "JPEG":
            # draft keeps both sides at least the size asked; a side of 1 leaves that side free
            box = (min_side, min_side) if not long else (min_side, 1) if size[0] >= size[1] else (1, min_side)
            im.draft(mode if mode == "L" and im.mode in ("RGB", "L") else im.mode, box)
    except ImageDecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure becomes one error type with its message
        raise ImageDecodeError(f"{type(e).__name__}: {e}") from e
    return im, size


def load(im: Image.Image) -> Image.Image:
    """Decode an opened image; any decoder failure is an ImageDecodeError with its message."""
    try:
        im.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure becomes one error type with its message
        raise ImageDecodeError(f"{type(e).__name__}: {e}") from e
    return im


def reduce_to(im: Image.Image, min_side: int, long: bool = False) -> Image.Image:
    """``im`` box-reduced by the largest integer factor that keeps both sides (with ``long``: the long
    side) at least ``min_side`` (itself when that factor is 1)."""
    factor = (max(im.size) if long else min(im.size)) // max(1, min_side)
    if factor < 2:
        return im
    if im.mode in _NO_REDUCE:  # palette, bilevel and 16-bit images: to the mode that keeps them
        im = im.convert("RGBA" if im.mode == "P" and "transparency" in im.info else _NO_REDUCE[im.mode])
    return im.reduce(factor)


def try_decode(data: bytes | None, min_side: int | None = None) -> Image.Image | None:
    """The image (reduced as ``decode_reduced`` does when ``min_side`` is given), or None when there
    are no bytes or they do not decode (for stages that run after inspect has vetted every ok row)."""
    if not data:
        return None
    try:
        return decode_reduced(data, min_side)[0] if min_side is not None else decode(data)
    except ImageDecodeError:
        return None
