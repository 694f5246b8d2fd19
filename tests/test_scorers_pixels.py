"""The weight-free embedding: unit length, deterministic, and a picture is nearer its own noisy copy
than another picture."""

import numpy as np
from PIL import Image

from zxl.demo_corpus import draw_picture
from zxl.scorers.pixels import DIM, pixel_embedding, pixel_embeddings


def test_shape_norm_and_determinism():
    im = draw_picture(0, 0, 320, 200)
    e = pixel_embedding(im)
    assert e.shape == (DIM,) and e.dtype == np.float32
    assert abs(np.linalg.norm(e) - 1) < 1e-5
    assert np.array_equal(e, pixel_embedding(im.copy()))
    assert pixel_embeddings([]).shape == (0, DIM)
    assert np.isfinite(pixel_embedding(Image.new("L", (9, 9), 0))).all()


def test_near_copies_are_nearer_than_other_pictures():
    a, b = draw_picture(1, 0, 256, 256), draw_picture(2, 0, 256, 256)
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(
        np.clip(np.asarray(a, np.int16) + rng.normal(0, 12, (256, 256, 3)), 0, 255).astype(np.uint8)
    )
    ea, eb, en = pixel_embeddings([a, b, noisy])
    assert ea @ en > ea @ eb + 0.1
    assert ea @ pixel_embedding(a.resize((128, 128))) > 0.95


def test_any_size_embeds():
    from PIL import Image

    from zxl.scorers.pixels import DIM, pixel_embedding

    for size in ((1, 1), (1, 300), (3, 2), (7, 7), (2000, 3)):
        v = pixel_embedding(Image.new("RGB", size, (200, 30, 30)))
        assert v.shape == (DIM,) and np.isfinite(v).all()
