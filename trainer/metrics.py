"""The measures ``zxl eval`` reports, on arrays, with no model in sight.

- **steering**: the mean score per score tag and Spearman's ρ between the tag (1..9) and that mean;
- **variety**: the Vendi score and the mean pairwise cosine distance (zxl/diversity.py);
- **tone**: luminance (mean BT.601 luma), contrast (its standard deviation) and saturation (mean
  HSV S), each in [0, 1], of samples against the training images, and the flags a wrong terminal
  sigma, timestep spacing or prediction type gives: ``grey`` (contrast and saturation both under
  half the training images'), ``washed_out`` (luminance 0.2 above and contrast under 0.6×), ``dark``
  (luminance 0.2 below);
- **bands**: the validation loss per timestep band.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from zxl.diversity import mean_pairwise_distance, vendi

TONE_KEYS = ("luminance", "contrast", "saturation")


# The eval figures checkpoints can be ranked by (`zxl merge --best K --by FIGURE`), and which of them
# are better low.
RANKED = (
    "val_loss",
    "spearman",
    "steering_gap",
    "score_9",
    "vendi_with_tags",
    "vendi_without_tags",
    "clip",
    "coverage",
    "coverage_none",
    "coverage_score_9",
    "cluster_kl",
    "conditional_vendi",
)
LOWER_IS_BETTER = {"val_loss", "cluster_kl"}


def tone(image: Image.Image) -> dict[str, float]:
    im = image.convert("RGB")
    if max(im.size) > 256:
        k = 256 / max(im.size)
        im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))), Image.Resampling.BOX)
    a = np.asarray(im, dtype=np.float64) / 255.0
    y = 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
    s = np.asarray(im.convert("HSV"), dtype=np.float64)[..., 1] / 255.0
    return {"luminance": float(y.mean()), "contrast": float(y.std()), "saturation": float(s.mean())}


def tone_summary(images: list[Image.Image]) -> dict[str, float]:
    """The mean of each tone measure over the images."""
    rows = [tone(im) for im in images]
    return {k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in TONE_KEYS}


def tone_flags(samples: dict[str, float], reference: dict[str, float]) -> list[str]:
    """What is wrong with the samples' tone against the training images' (empty when nothing)."""
    flags = []
    low = lambda k, f: samples[k] < f * reference[k]  # noqa: E731
    if low("contrast", 0.5) and low("saturation", 0.5):
        flags.append("grey")
    if samples["luminance"] > reference["luminance"] + 0.2 and low("contrast", 0.6):
        flags.append("washed_out")
    if samples["luminance"] < reference["luminance"] - 0.2:
        flags.append("dark")
    return flags


def steering(per_tag: dict[int, list[float]]) -> dict:
    """Mean score per tag (1..9), and Spearman's ρ between tag and mean score."""
    from scipy.stats import spearmanr

    tags = sorted(per_tag)
    means = [float(np.mean(per_tag[t])) for t in tags]
    rho = 0.0
    if len(tags) > 1 and len(set(means)) > 1:
        rho = float(spearmanr(tags, means).statistic)  # pyright: ignore[reportAttributeAccessIssue] - scipy types it `_`
    return {"mean": {f"score_{t}": m for t, m in zip(tags, means, strict=True)}, "spearman": rho}


def band_means(timesteps: np.ndarray, losses: np.ndarray, edges: list[int]) -> dict[str, float]:
    """The mean loss per band [lo, hi) of ``edges``."""
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (timesteps >= lo) & (timesteps < hi)
        out[f"{lo}-{hi - 1}"] = float(losses[m].mean()) if m.any() else float("nan")
    return out


__all__ = ["band_means", "mean_pairwise_distance", "steering", "tone", "tone_flags", "tone_summary", "vendi"]
