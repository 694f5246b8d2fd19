"""``technical``: an aesthetic-free, weight-free quality score from what a curator can see.

It needs no model, so it is the demo's scorer and the offline fallback. All terms are measured on
the grey image (ITU-R BT.601 luma, 0..255) of the *stored* image: the pixel-level terms (noise,
sharpness, blocking) on a centre crop of at most 768×768 px aligned to the 8-px JPEG grid, the
global ones (exposure, contrast, colour) on a copy reduced to about 256 px.

    noise     σ_n = median(|I ∗ N|) / (0.6745 · 6),  N = [[1,−2,1],[−2,4,−2],[1,−2,1]]
              (Immerkær 1996, "Fast noise variance estimation", with the median in place of the
              mean so edges do not count as noise; N has gain 6 on white noise)
    sharpness S = var(∇²I) − 20 σ_n²   (variance of the Laplacian, less what noise of σ_n puts
              there: the 5-point Laplacian has gain √20 on white noise), floored at 0
    blocking  B = mean |ΔI| across the 8-px grid − mean |ΔI| inside it (grey levels)
    JPEG q    the quality libjpeg would have used for the stored luma quantization table
              (100 for PNG/WebP or a table that is not libjpeg's)
    resolution  r = min(1, 1/s), s = max(bw/w, bh/h) for the nearest recipe bucket bw×bh: 1 when the
              image covers its bucket, 1/4 when it needs 4× upscaling
    exposure  μ = mean luma / 255; contrast σ = std luma / 255
    colour    Hasler & Süsstrunk (2003) colourfulness M = √(σ_rg² + σ_yb²) + 0.3 √(μ_rg² + μ_yb²)

    raw = 5 + 1.5 log10(1 + S) − 0.25 ln(1 + σ_n) − clip((90 − q) / 80, 0, 1) − 0.3 clip(B / 3, 0, 1)
            + 1.2 log2 r − 2 (μ − 0.5)² + 0.3 min(σ / 0.2, 1) + 0.2 min(M / 100, 1)

The weights are set so the terms a curator cares about most dominate: an image without edges
(blur) scores lowest, then one that must be upscaled, then heavy JPEG compression (read from the
quantization table when the stored bytes are the original JPEG; the grid blocking term catches
some of it after a re-encode), then noise; exposure, contrast and colour only nudge. On the demo
corpus it ranks every picture's quality ladder clean > noisy > jpeg_crushed > downscaled >
blurred (tests/test_scorers.py measures the Spearman correlation). The raw number is on no fixed
scale; calibration maps it to 1..9.

It also stores the weight-free embedding of scorers/pixels.py (``pixels-v1``) for every image it
scores, so runs without CLIP weights can fit a taste head (``zxl taste``) and cluster for
diversity-aware repeats. The score does not depend on it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from zxl.buckets import nearest_bucket
from zxl.scorers.base import Scorer
from zxl.scorers.pixels import DIM, pixel_embedding

FEATURES = ("sharpness", "noise", "blocking", "jpeg_quality", "resolution", "exposure", "contrast", "colourfulness")
CROP = 768
# The IJG standard luminance table (JPEG Annex K), row-major.
STD_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    np.float64,
)  # fmt: skip
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def jpeg_quality(image: Image.Image) -> float:
    """Estimate the libjpeg quality of a JPEG's luma table; 100 for anything else."""
    tables = getattr(image, "quantization", None)
    if not tables or 0 not in tables:
        return 100.0
    q = np.clip(np.asarray(tables[0], np.float64), 1, 255)
    candidates = np.arange(1, 101)
    scale = np.where(candidates < 50, 5000.0 / candidates, 200.0 - 2.0 * candidates)
    expected = np.clip(np.floor((STD_LUMA[None, :] * scale[:, None] + 50) / 100), 1, 255)
    err = np.abs(np.log(expected) - np.log(q)[None, :]).mean(axis=1)
    return float(candidates[int(np.argmin(err))])


def features(image: Image.Image) -> np.ndarray:
    """The measured terms, in ``FEATURES`` order."""
    quality = jpeg_quality(image)
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGBA").convert("RGB") if "A" in image.getbands() else image.convert("RGB")
    w, h = image.size
    # Pixel-level terms on a grid-aligned centre crop at full resolution ...
    x0, y0 = max(0, (w - CROP) // 2) // 8 * 8, max(0, (h - CROP) // 2) // 8 * 8
    crop = np.asarray(image.crop((x0, y0, min(w, x0 + CROP), min(h, y0 + CROP))).convert("L"), np.float32)
    # ... global ones (exposure, contrast, colour) on a copy of at most ~256 px.
    factor = max(1, max(w, h) // 256)
    small = np.asarray((image.reduce(factor) if factor > 1 else image).convert("RGB"), np.float32)

    # N = [1,-2,1]ᵀ[1,-2,1] is separable: second differences along x, then along y.
    d2 = crop[:, :-2] - 2 * crop[:, 1:-1] + crop[:, 2:]
    d2 = d2[:-2] - 2 * d2[1:-1] + d2[2:]
    noise = float(np.median(np.abs(d2))) / (0.6745 * 6) if d2.size else 0.0
    lap = crop[1:-1, :-2] + crop[1:-1, 2:] + crop[:-2, 1:-1] + crop[2:, 1:-1] - 4 * crop[1:-1, 1:-1]
    sharpness = max(0.0, float(lap.var()) - 20 * noise**2) if lap.size else 0.0
    dx, dy = np.abs(np.diff(crop, axis=1)), np.abs(np.diff(crop, axis=0))
    on_x, on_y = (np.arange(dx.shape[1]) % 8) == 7, (np.arange(dy.shape[0]) % 8) == 7
    if on_x.any() and on_y.any() and (~on_x).any() and (~on_y).any():
        blocking = float((dx[:, on_x].mean() + dy[on_y].mean() - dx[:, ~on_x].mean() - dy[~on_y].mean()) / 2)
    else:
        blocking = 0.0
    bw, bh = nearest_bucket(w, h)
    resolution = min(1.0, 1.0 / max(bw / w, bh / h))
    grey = small @ _LUMA
    rg = small[..., 0] - small[..., 1]
    yb = 0.5 * (small[..., 0] + small[..., 1]) - small[..., 2]
    colour = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    return np.array(
        [sharpness, noise, blocking, quality, resolution, grey.mean() / 255, grey.std() / 255, colour], np.float64
    )


def combine(f: np.ndarray) -> np.ndarray:
    """Features [N, 8] → raw scores [N] (the formula of the module docstring)."""
    sharp, noise, block, quality, res, mu, sigma, colour = (f[:, i] for i in range(len(FEATURES)))
    raw = (
        5
        + 1.5 * np.log10(1 + sharp)
        - 0.25 * np.log1p(noise)
        - np.clip((90 - quality) / 80, 0, 1)
        - 0.3 * np.clip(block / 3, 0, 1)
        + 1.2 * np.log2(np.maximum(res, 1e-3))
        - 2 * (mu - 0.5) ** 2
        + 0.3 * np.minimum(sigma / 0.2, 1)
        + 0.2 * np.minimum(colour / 100, 1)
    )
    return raw.astype(np.float32)


class TechnicalScorer(Scorer):
    name = "technical"
    embeds = True
    embedding_version = "pixels-v1"  # in the score stage's hash: a new embedding redoes the stage

    def __init__(self, cfg=None):
        self.cfg = cfg

    @property
    def embedding_kind(self) -> str:
        return self.embedding_version

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The measured terms (``FEATURES``), then the pixel embedding (``DIM`` values)."""
        return np.concatenate([features(image), pixel_embedding(image)])

    def score(self, batch: np.ndarray) -> np.ndarray:
        return combine(np.atleast_2d(batch)[:, : len(FEATURES)])

    def score_and_embed(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = np.atleast_2d(batch)
        assert batch.shape[1] == len(FEATURES) + DIM
        return self.score(batch), batch[:, len(FEATURES) :].astype(np.float32)

    @classmethod
    def references(cls, cfg) -> dict[str, str]:
        return {"score.scorer": "technical (no weights)"}
