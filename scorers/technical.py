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

import cv2
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


def rgb_or_grey(image: Image.Image) -> Image.Image:
    """The image as RGB (alpha flattened the way PIL drops it) or grey, the two modes it is measured in."""
    if image.mode in ("RGB", "L"):
        return image
    return image.convert("RGBA").convert("RGB") if "A" in image.getbands() else image.convert("RGB")


def small_copy(image: Image.Image) -> Image.Image:
    """The copy the global terms and the pixel embedding are measured on: box-reduced by the integer
    factor that brings the long side to 256..511 px (the image itself when it is smaller)."""
    factor = max(1, max(image.size) // 256)
    return image.reduce(factor) if factor > 1 else image


def _median_abs(values: np.ndarray) -> float:
    """``np.median(np.abs(values))`` of an int16 array, exactly, by counting: a 256-bin histogram of
    |values| saturated at 255 answers whenever the median is under 255 (it is, but for noise of
    σ > 60 grey levels); otherwise every value is counted."""
    n = values.size
    if n == 0:
        return 0.0
    lo_pos, hi_pos = (n - 1) // 2, n // 2  # the two middle ranks (the same one when n is odd)
    counts = cv2.calcHist([cv2.convertScaleAbs(values)], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    cum = np.cumsum(counts)
    if cum[254] <= hi_pos:  # a middle rank is among the saturated values: count them all
        cum = np.cumsum(np.bincount(np.abs(values).ravel()))
    lo, hi = int(np.searchsorted(cum, lo_pos, side="right")), int(np.searchsorted(cum, hi_pos, side="right"))
    return (lo + hi) / 2


_SECOND_DIFF = np.array([1, -2, 1], np.float32)


def features(image: Image.Image, small: Image.Image | None = None) -> np.ndarray:
    """The measured terms, in ``FEATURES`` order; ``small`` is ``small_copy(image)`` when the caller
    has it. The pixel-level terms are exact integer arithmetic on the crop's grey levels (OpenCV's
    filters, int16, on the valid region only)."""
    quality = jpeg_quality(image)
    image = rgb_or_grey(image)
    w, h = image.size
    # Pixel-level terms on a grid-aligned centre crop at full resolution ...
    x0, y0 = max(0, (w - CROP) // 2) // 8 * 8, max(0, (h - CROP) // 2) // 8 * 8
    crop = np.ascontiguousarray(np.asarray(image.crop((x0, y0, min(w, x0 + CROP), min(h, y0 + CROP))).convert("L")))
    # ... global ones (exposure, contrast, colour) on a copy of at most ~512 px.
    small_rgb = np.asarray((small if small is not None else small_copy(image)).convert("RGB"), np.float32)

    noise = sharpness = blocking = 0.0
    if min(crop.shape) >= 3:
        # N = [1,-2,1]ᵀ[1,-2,1]: second differences along x and y (|values| ≤ 2040), valid region.
        d2 = cv2.sepFilter2D(crop, cv2.CV_16S, _SECOND_DIFF, _SECOND_DIFF)[1:-1, 1:-1]
        noise = _median_abs(d2) / (0.6745 * 6)
        lap = cv2.Laplacian(crop, cv2.CV_16S, ksize=1)[1:-1, 1:-1]  # the 5-point Laplacian
        _, std = cv2.meanStdDev(lap)
        sharpness = max(0.0, float(std[0, 0]) ** 2 - 20 * noise**2)
    if crop.shape[0] >= 9 and crop.shape[1] >= 9:
        dx, dy = cv2.absdiff(crop[:, 1:], crop[:, :-1]), cv2.absdiff(crop[1:], crop[:-1])
        # Differences across the 8-px grid (between columns 7|8, 15|16 …) against those inside it.
        on_x, on_y = dx[:, 7::8], dy[7::8]
        sum_x, sum_y = cv2.sumElems(dx)[0], cv2.sumElems(dy)[0]
        grid_x, grid_y = float(on_x.sum(dtype=np.int64)), float(on_y.sum(dtype=np.int64))
        inside_x, inside_y = (sum_x - grid_x) / (dx.size - on_x.size), (sum_y - grid_y) / (dy.size - on_y.size)
        blocking = (grid_x / on_x.size + grid_y / on_y.size - inside_x - inside_y) / 2
    bw, bh = nearest_bucket(w, h)
    resolution = min(1.0, 1.0 / max(bw / w, bh / h))
    grey = small_rgb @ _LUMA
    rg = small_rgb[..., 0] - small_rgb[..., 1]
    yb = 0.5 * (small_rgb[..., 0] + small_rgb[..., 1]) - small_rgb[..., 2]
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
    version = "2"  # 2: the pixel embedding from the small copy of the one decode (was: from the whole image)
    embedding_version = "pixels-v1"  # in the score stage's hash: a new embedding redoes the stage

    def __init__(self, cfg=None):
        self.cfg = cfg

    @property
    def embedding_kind(self) -> str:
        return self.embedding_version

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The measured terms (``FEATURES``), then the pixel embedding (``DIM`` values), both of the one
        decode: the embedding is taken from the small copy the global terms use."""
        small = small_copy(rgb_or_grey(image))
        return np.concatenate([features(image, small), pixel_embedding(small)])

    def score(self, batch: np.ndarray) -> np.ndarray:
        return combine(np.atleast_2d(batch)[:, : len(FEATURES)])

    def score_and_embed(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = np.atleast_2d(batch)
        assert batch.shape[1] == len(FEATURES) + DIM
        return self.score(batch), batch[:, len(FEATURES) :].astype(np.float32)

    @classmethod
    def references(cls, cfg) -> dict[str, str]:
        return {"score.scorer": "technical (no weights)"}
