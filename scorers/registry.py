"""Scorer names → classes, in one place, and one loaded scorer per worker process."""

from __future__ import annotations

from zxl.registry import load_class, per_process
from zxl.scorers.base import Scorer
from zxl.scorers.config import ScoreConfig

# Imported on first use, so naming a scorer never loads torch or open_clip for the others.
SCORERS = {"technical": "zxl.scorers.technical:TechnicalScorer", "clip-mlp": "zxl.scorers.clip_mlp:ClipMlpScorer"}


def scorer_class(name: str) -> type[Scorer]:
    return load_class(SCORERS, name, "score.scorer")


def build_scorer(cfg: ScoreConfig) -> Scorer:
    return scorer_class(cfg.scorer)(cfg)


def get_scorer(cfg: ScoreConfig) -> Scorer:
    """The scorer for ``cfg``, built once per process (so once per Dask worker) and reused."""
    return per_process("scorer", cfg, lambda: build_scorer(cfg))
