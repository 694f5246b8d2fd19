import io

import imagehash
import numpy as np
import pytest
from PIL import Image

from zxl.pipeline.config import InspectConfig
from zxl.pipeline.inspection import inspect_image, phash


def _image(seed, size=(96, 64), mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").convert(mode)


def _signed(h: imagehash.ImageHash) -> int:
    v = int(str(h), 16)
    return v - (1 << 64) if v >= 1 << 63 else v


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_phash_is_bit_for_bit_imagehash(mode):
    for seed in range(5):
        img = _image(seed, mode=mode)
        assert phash(img) == _signed(imagehash.phash(img))


def test_phash_survives_resizing_but_not_a_new_picture():
    a = _image(1, (400, 300)).filter(__import__("PIL.ImageFilter").ImageFilter.GaussianBlur(4))
    b = a.resize((200, 150))
    c = _image(2, (400, 300)).filter(__import__("PIL.ImageFilter").ImageFilter.GaussianBlur(4))
    dist = lambda x, y: bin((phash(x) ^ phash(y)) & (2**64 - 1)).count("1")  # noqa: E731
    assert dist(a, b) <= 6 < dist(a, c)


def _jpeg(img):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_inspect_a_good_image():
    data = _jpeg(_image(0, (1216, 832)))
    row = inspect_image(data, InspectConfig())
    assert row["status"] == "ok" and row["error"] is None
    assert (row["width"], row["height"], row["bucket"]) == (1216, 832, "1216x832")
    assert len(row["sha256"]) == 64 and isinstance(row["phash"], int)


def test_truncated_and_oversized_images_fail_with_a_reason():
    data = _jpeg(_image(0, (300, 200)))
    row = inspect_image(data[: len(data) // 2], InspectConfig())
    assert row["status"] == "failed_decode" and "truncated" in row["error"]
    row = inspect_image(data, InspectConfig(max_image_pixels=1000))
    assert row["status"] == "failed_decode" and "max_image_pixels" in row["error"]


def test_inspect_hashes_a_reduced_decode_and_finds_the_same_near_copies():
    """inspect hashes a view of ≥ 224 px (a JPEG at 1/2..1/8 scale): each hash stays within a few bits of
    imagehash's on the whole image, and phash dedup (distance ≤ 5) pairs the same copies."""
    from zxl.demo_corpus import draw_picture
    from zxl.images import decode

    blobs, picture = [], []
    for p in range(5):
        img = draw_picture(p, 0, 832, 1216)
        for copy in (img, img.resize((416, 608)), img.resize((624, 912))):
            for quality in (92, 40):
                blobs.append(_jpeg(copy) if quality == 92 else _jpeg_q(copy, quality))
                picture.append(p)
    cfg = InspectConfig()
    reduced = [inspect_image(b, cfg)["phash"] for b in blobs]
    whole = [_signed(imagehash.phash(decode(b))) for b in blobs]
    bits = lambda x, y: bin((x ^ y) & (2**64 - 1)).count("1")  # noqa: E731
    assert max(bits(r, w) for r, w in zip(reduced, whole, strict=True)) <= 4
    pairs = lambda h: {(i, j) for i in range(len(h)) for j in range(i) if bits(h[i], h[j]) <= 5}  # noqa: E731
    assert pairs(reduced) == pairs(whole)
    assert {(picture[i], picture[j]) for i, j in pairs(reduced)} == {(p, p) for p in range(5)}  # copies only


def _jpeg_q(img, quality):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
