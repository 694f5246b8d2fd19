"""Scorer names → classes, in one place, and one loaded scorer per worker process."""

from __future__ import annotations

from scorers.base import Scorer
from zxl.config import ScoreConfig, config_hash
from zxl.registry import load_class

# Imported on first use, so naming a scorer never loads torch or open_clip for the others.
SCORERS = {"technical": "scorers.technical:TechnicalScorer", "clip-mlp": "scorers.clip_mlp:ClipMlpScorer"}
_LOADED: dict[str, Scorer] = {}


def scorer_class(name: str) -> type[Scorer]:
    return load_class(SCORERS, name, "score.scorer")


def build_scorer(cfg: ScoreConfig) -> Scorer:
    return scorer_class(cfg.scorer)(cfg)


def get_scorer(cfg: ScoreConfig) -> Scorer:
    """The scorer for ``cfg``, built once per process (so once per Dask worker) and reused."""
    key = config_hash(cfg)
    if key not in _LOADED:
        _LOADED.clear()  # one model resident at a time
        _LOADED[key] = build_scorer(cfg)
    return _LOADED[key]
