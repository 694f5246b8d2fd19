"""zxl.images: the one image decoder, its errors and its pixel limit."""

import io

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
