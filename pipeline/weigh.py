"""weigh: times per epoch from the score (RECIPE.md "Repeats").

Default table 9 → 3, 8 → 2, anything else → 1; rows that will not be trained on (failed,
filtered, duplicate) → 0.
"""

from __future__ import annotations

import numpy as np

from zxl.config import ConfigError
from zxl.pipeline.config import WeighConfig


def validate(cfg: WeighConfig) -> None:
    bad = {s: r for s, r in cfg.repeats.items() if not 1 <= s <= 9 or r < 0}
    if bad or cfg.default < 0:
        raise ConfigError(f"weigh.repeats maps scores 1..9 to repeats >= 0 (and weigh.default >= 0); got {bad}")


def repeats(status: np.ndarray, score: np.ndarray, cfg: WeighConfig) -> np.ndarray:
    """int16 repeats per row; ``score`` 0 means no score."""
    table = np.full(10, cfg.default, np.int16)
    for s, r in cfg.repeats.items():
        table[s] = r
    out = table[np.clip(np.asarray(score, np.int64), 0, 9)]
    return np.where(np.asarray(status, object) == "ok", out, 0).astype(np.int16)
