"""calibrate: raw aesthetic scores → ``score`` 1..9 through eight raw-score edges.

Pony Diffusion's score tags were percentile buckets of an aesthetic score (score_9 ≈ the top
tenth); here the edges are global quantiles of the raw scores of the rows that will be trained
on (equal ninths by default, or any eight cumulative fractions), fixed raw values, or the edges
of an earlier catalog, so that two runs mean the same by ``score_7``. A raw score r gets
``1 + #{edges ≤ r}``: below the first edge is 1, at or above the last is 9.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from zxl.config import ConfigError
from zxl.pipeline.config import CalibrateConfig

N_EDGES = 8


def _check_edges(edges: list[float], key: str) -> list[float]:
    if len(edges) != N_EDGES:
        raise ConfigError(f"{key} must hold {N_EDGES} values (the edges between scores 1..9), got {len(edges)}")
    if any(b < a for a, b in zip(edges, edges[1:], strict=False)):
        raise ConfigError(f"{key} must be non-decreasing, got {edges}")
    return [float(e) for e in edges]


def fractions(cfg: CalibrateConfig) -> list[float]:
    if not cfg.fractions:
        return [i / 9 for i in range(1, 9)]
    fr = _check_edges(cfg.fractions, "calibrate.fractions")
    if fr[0] <= 0 or fr[-1] >= 1:
        raise ConfigError(f"calibrate.fractions must lie strictly between 0 and 1, got {fr}")
    return fr


def quantile_edges(raw: np.ndarray, fr: list[float]) -> list[float]:
    raw = np.asarray(raw, np.float64)
    raw = raw[np.isfinite(raw)]
    if raw.size == 0:
        return []
    return [float(v) for v in np.quantile(raw, fr)]


def validate(cfg: CalibrateConfig) -> None:
    if cfg.method not in ("quantile", "fixed"):
        raise ConfigError(f"calibrate.method must be quantile or fixed, got '{cfg.method}'")
    if cfg.method == "fixed" and not cfg.edges_from:
        _check_edges(cfg.edges, "calibrate.edges")
    if cfg.method == "quantile":
        fractions(cfg)


def edges_from_catalog(catalog: str) -> list[float]:
    from zxl.catalog.schema import read_manifest

    try:
        manifest = read_manifest(catalog)
    except FileNotFoundError as e:
        raise ConfigError(f"calibrate.edges_from: {e}") from None
    edges = (manifest.get("score_edges") or {}).get("edges")
    if not edges:
        raise ConfigError(f"calibrate.edges_from: the catalog {catalog} has no score edges in its manifest")
    return _check_edges(edges, "calibrate.edges_from")


def choose_edges(cfg: CalibrateConfig, raw: np.ndarray) -> dict:
    """The edges to use and where they came from (what the manifest records)."""
    if cfg.edges_from:
        return {"method": "from_catalog", "source": cfg.edges_from, "edges": edges_from_catalog(cfg.edges_from)}
    if cfg.method == "fixed":
        return {"method": "fixed", "edges": _check_edges(cfg.edges, "calibrate.edges")}
    fr = fractions(cfg)
    return {"method": "quantile", "fractions": fr, "edges": quantile_edges(raw, fr), "n": int(np.isfinite(raw).sum())}


def apply_edges(raw: ArrayLike, edges: list[float]) -> np.ndarray:
    """int8 scores 1..9 (0 where raw is NaN, which the caller turns into null)."""
    raw = np.asarray(raw, np.float64)
    if not edges:
        return np.zeros(raw.shape, np.int8)
    scores = 1 + np.searchsorted(np.asarray(edges), raw, side="right")
    return np.where(np.isfinite(raw), scores, 0).astype(np.int8)
