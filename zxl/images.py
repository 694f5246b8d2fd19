"""The one image decoder: bytes → a loaded PIL image, or an error that says why.

Every stage that opens stored images (inspect, score, tag, caption), ``zxl score``/``zxl tag`` on a
folder and the browser's thumbnails decode through here, so a decompression bomb, a truncated file
or an unknown format reads the same everywhere. (fetch only sniffs headers before decoding; that is
``zxl.pipeline.fetch.look``.)
"""

from __future__ import annotations

import io
import warnings

from PIL import Image


class ImageDecodeError(ValueError):
    pass


def decode(data: bytes, max_pixels: int | None = None, option: str = "max_image_pixels") -> Image.Image:
    """The image in ``data``, fully loaded; ``ImageDecodeError`` with the decoder's message when it
    does not decode, or when it has more than ``max_pixels`` pixels (``option`` names that limit)."""
    if not data:
        raise ImageDecodeError("empty image (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageDecodeError(f"{w}x{h} is over {option}={max_pixels}")
            im.load()
            return im
    except ImageDecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure becomes one error type with its message
        raise ImageDecodeError(f"{type(e).__name__}: {e}") from e


def try_decode(data: bytes | None) -> Image.Image | None:
    """The image, or None when there are no bytes or they do not decode (for stages that run after
    inspect has already vetted every ok row)."""
    if not data:
        return None
    try:
        return decode(data)
    except ImageDecodeError:
        return None
