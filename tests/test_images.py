"""zxl.images: the one image decoder, its errors and its pixel limit."""

import io

import numpy as np
import pytest
from PIL import Image

from zxl.images import ImageDecodeError, decode, try_decode


def _png(w=20, h=10) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def test_decode_loads_and_names_failures():
    im = decode(_png())
    assert im.size == (20, 10) and im.getpixel((0, 0)) == (200, 10, 10)
    with pytest.raises(ImageDecodeError, match="empty image"):
        decode(b"")
    with pytest.raises(ImageDecodeError, match="UnidentifiedImageError"):
        decode(b"<html>not an image</html>")
    with pytest.raises(ImageDecodeError, match="truncated|broken|OSError"):
        decode(_jpeg()[:400])
    with pytest.raises(ImageDecodeError, match=r"20x10 is over inspect.max_image_pixels=100"):
        decode(_png(), 100, "inspect.max_image_pixels")


def test_try_decode_is_none_for_what_does_not_decode():
    assert try_decode(None) is None and try_decode(b"junk") is None
    assert try_decode(_png()).size == (20, 10)


def _big_jpeg(w=1024, h=1536, quality=90) -> bytes:
    from PIL import ImageFilter

    buf = io.BytesIO()
    Image.effect_noise((w // 8, h // 8), 80).resize((w, h)).convert("RGB").filter(ImageFilter.GaussianBlur(2)).save(
        buf, "JPEG", quality=quality
    )
    return buf.getvalue()


def test_decode_reduced_scales_a_jpeg_by_its_dct_and_keeps_the_stored_size():
    from zxl.images import decode_reduced

    data = _big_jpeg()
    for side, want in (
        (None, (1024, 1536)),
        (448, (512, 768)),
        (224, (256, 384)),
        (128, (128, 192)),
        (64, (64, 96)),
        (2000, (1024, 1536)),
    ):  # fmt: skip  (under 448: the 448 view, 1/2 by DCT, then a box of 2, 4 or 8)
        im, stored = decode_reduced(data, side)
        assert stored == (1024, 1536) and im.size == want, side
        assert side is None or min(im.size) >= min(side, 1024)
    grey, _ = decode_reduced(data, 128, mode="L")
    assert grey.mode == "L" and grey.size == (128, 192)
    # the reduced copy is the full decode averaged down (DCT scaling ~ a box filter), not another picture
    full = np.asarray(decode_reduced(data, None)[0].reduce(4), np.float32)
    assert np.abs(np.asarray(decode_reduced(data, 256)[0], np.float32) - full).mean() < 2.0
    # the whole stream is still read: a truncated file fails as in a full decode
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_reduced(data[: len(data) // 2], 128)
    with pytest.raises(ImageDecodeError, match=r"1024x1536 is over inspect.max_image_pixels=1000"):
        decode_reduced(data, 128, 1000, "inspect.max_image_pixels")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "1", "I;16"])
def test_decode_reduced_box_averages_other_formats(mode):
    from zxl.images import decode_reduced

    img = Image.effect_noise((600, 900), 60).convert(mode if mode != "I;16" else "I").convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    im, stored = decode_reduced(buf.getvalue(), 200)
    assert stored == (600, 900) and im.size == (200, 300)  # 600 // 200 = 3: reduce(3)
    assert try_decode(buf.getvalue(), 200).size == (200, 300)
    assert decode_reduced(buf.getvalue(), 400)[0].size == (600, 900)  # 600 // 400 = 1: kept whole


def test_decode_reduced_to_a_long_side_for_models_that_pad_to_a_square():
    from zxl.images import decode_reduced

    jpeg = _big_jpeg()  # 1024×1536: 1/4 would leave the long side 384
    assert decode_reduced(jpeg, 448, long=True)[0].size == (512, 768)
    assert decode_reduced(jpeg, 300, long=True)[0].size == (256, 384)  # the short side may go under 300
    buf = io.BytesIO()
    Image.effect_noise((1536, 1024), 60).convert("RGB").save(buf, "PNG")
    assert decode_reduced(buf.getvalue(), 448)[0].size == (768, 512)  # both sides: 1024 // 448 = 2
    assert decode_reduced(buf.getvalue(), 448, long=True)[0].size == (768, 512)  # that view serves the long side
    buf = io.BytesIO()
    Image.effect_noise((3072, 1024), 60).convert("RGB").save(buf, "PNG")  # a panorama: the long side reduces further
    assert decode_reduced(buf.getvalue(), 448, long=True)[0].size == (512, 171)  # (1536, 512) // 3, rounded up
