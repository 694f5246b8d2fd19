"""A weight-free image embedding: what an image looks like, from its pixels alone.

For runs without CLIP weights (the demo, offline machines) something still has to say which images
look alike: the eval's variety measure, and anything that clusters or compares images. Each part is
standardised to a comparable scale and the whole vector is L2-normalised, so cosine similarity is
the comparison, as with CLIP embeddings:

    thumbnail   an 8×8 area-averaged copy in one luma and two opponent-colour channels
                (Y = BT.601 luma, rg = R − G, yb = (R + G)/2 − B; each in [−1, 1], luma centred) — 192
    tone        mean and standard deviation of luma, mean HSV saturation, Hasler–Süsstrunk
                colourfulness (scaled by 1/100), each less a typical value — 4
    texture     the energy of the gradient in 8 orientations, at full size and at half size
                (sharp detail and coarse edges), each normalised to sum 1 — 16
    hue         a 12-bin histogram of hue weighted by saturation, summing to 1 — 12

224 dimensions, float32. Images are first reduced to at most 128 px on the long side (texture is
measured at that scale, so sizes compare); a side under 8 px is repeated up to 8.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

DIM = 192 + 4 + 16 + 12
WEIGHTS = {"thumbnail": 4.0, "tone": 2.0, "texture": 3.0, "hue": 4.0}  # parts of similar norm on typical images


def _orientation_energy(y: np.ndarray, bins: int = 8) -> np.ndarray:
    gy, gx = np.gradient(y)
    mag = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    idx = np.minimum((angle / np.pi * bins).astype(int), bins - 1)
    hist = np.bincount(idx.ravel(), weights=mag.ravel(), minlength=bins)
    total = hist.sum()
    return hist / total if total > 0 else np.full(bins, 1.0 / bins)


def pixel_embedding(image: Image.Image) -> np.ndarray:
    """The L2-normalised float32 embedding of one image (``DIM`` values)."""
    im = image.convert("RGB")
    if max(im.size) > 128:
        k = 128 / max(im.size)
        im = im.resize((max(8, round(im.width * k)), max(8, round(im.height * k))), Image.Resampling.BOX)
    elif min(im.size) < 8:  # a 1×1 or 3×500 picture: enough pixels for the gradients (pixels repeated)
        im = im.resize((max(8, im.width), max(8, im.height)), Image.Resampling.NEAREST)
    a = np.asarray(im, dtype=np.float32) / 255.0
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    thumb = np.asarray(im.resize((8, 8), Image.Resampling.BOX), dtype=np.float32) / 255.0
    ty = 0.299 * thumb[..., 0] + 0.587 * thumb[..., 1] + 0.114 * thumb[..., 2]
    thumbnail = np.concatenate(
        [
            (ty - 0.5).ravel() * 2,
            (thumb[..., 0] - thumb[..., 1]).ravel(),
            ((thumb[..., 0] + thumb[..., 1]) / 2 - thumb[..., 2]).ravel(),
        ]
    )
    hsv = np.asarray(im.convert("HSV"), dtype=np.float32) / 255.0
    sat = hsv[..., 1]
    rg, yb = (r - g) * 255, ((r + g) / 2 - b) * 255
    colourful = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    tone = np.array([y.mean() - 0.5, y.std() - 0.2, sat.mean() - 0.4, colourful / 100 - 0.4], np.float32)
    half = y[::2, ::2] if min(y.shape) >= 16 else y
    texture = np.concatenate([_orientation_energy(y), _orientation_energy(half)]) - 1.0 / 8
    hue_idx = np.minimum((hsv[..., 0] * 12).astype(int), 11)
    hue = np.bincount(hue_idx.ravel(), weights=sat.ravel(), minlength=12)
    hue = hue / hue.sum() if hue.sum() > 0 else np.zeros(12)
    parts = [
        thumbnail / np.sqrt(thumbnail.size) * WEIGHTS["thumbnail"],
        tone * WEIGHTS["tone"],
        texture * WEIGHTS["texture"],
        (hue - 1.0 / 12) * WEIGHTS["hue"],
    ]
    v = np.concatenate(parts).astype(np.float32)
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def pixel_embeddings(images: list[Image.Image]) -> np.ndarray:
    """[N, DIM] float32, one row per image."""
    if not images:
        return np.zeros((0, DIM), np.float32)
    return np.stack([pixel_embedding(im) for im in images])
