"""calibrate: raw aesthetic scores → ``score`` 1..9 through eight raw-score edges.

Pony Diffusion's score tags were percentile buckets of an aesthetic score (score_9 ≈ the top
tenth); here the edges are global quantiles of the raw scores of the rows that will be trained
on (equal ninths by default, or any eight cumulative fractions), fixed raw values, or the edges
of an earlier catalog, so that two runs mean the same by ``score_7``. A raw score r gets
``1 + #{edges ≤ r}``: below the first edge is 1, at or above the last is 9.

``calibrate.within`` cuts the quantiles within each stratum (a year, a rating, or both) instead:
a scorer that prefers recent styles would otherwise make ``score_9`` mean "2024" as much as
"good" (NoobAI-XL normalises its quality measure per source and rating for the same reason).
Every stratum then holds equal ninths, so the whole set does too; a stratum with fewer than
``calibrate.min_stratum`` kept rows (or a row without a year) takes the global edges, and is counted.
The report says how strongly score and year go together (Spearman's ρ over the kept rows), with
the global edges and with the ones chosen, so a user sees whether their score tags carry the era.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from zxl.config import ConfigError
from zxl.pipeline.config import CalibrateConfig

N_EDGES = 8
WITHIN = ("year", "rating")  # what calibrate.within may name


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
    for name in cfg.within:
        if name not in WITHIN:
            raise ConfigError(f"calibrate.within names {', '.join(WITHIN)} (or both), got '{name}'")
    if len(set(cfg.within)) != len(cfg.within):
        raise ConfigError(f"calibrate.within names each of year and rating at most once, got {cfg.within}")
    if cfg.within and (cfg.method != "quantile" or cfg.edges_from):
        raise ConfigError(
            "calibrate.within cuts quantiles within each stratum: it needs calibrate.method quantile and no "
            "calibrate.edges_from"
        )


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


def stratum_labels(within: list[str], columns: dict[str, np.ndarray], year_span: int = 1) -> np.ndarray:
    """Each row's stratum, e.g. "2019", "2015-2019" (``year_span`` 5) or "2019/general" (None where one
    of its values is missing)."""
    n = len(next(iter(columns.values())))
    labels = np.full(n, None, object)
    if not within:
        return labels

    def year(y) -> str:
        lo = int(y) // year_span * year_span
        return str(lo) if year_span == 1 else f"{lo}-{lo + year_span - 1}"

    parts = [(columns[name], year if name == "year" else str) for name in within]
    for i in range(n):
        values = [(p[i], show) for p, show in parts]
        if all(v is not None for v, _ in values):
            labels[i] = "/".join(show(v) for v, show in values)
    return labels


def calibrate_rows(cfg: CalibrateConfig, raw: np.ndarray, kept: np.ndarray, labels: np.ndarray) -> tuple:
    """(int8 scores for every row, the edges report): global edges, or with ``cfg.within`` the edges
    of each row's stratum where the stratum is big enough. Rows that are not kept (duplicates) are
    scored with the same edges as the kept rows of their stratum, for the record."""
    edges = choose_edges(cfg, raw[kept])
    scores = apply_edges(raw, edges["edges"])
    if not cfg.within:
        return scores, edges
    fr = fractions(cfg)
    strata, small, fallback_rows = {}, [], 0
    for label in sorted({v for v in labels[kept] if v is not None}):
        rows = labels == label
        n = int((rows & kept).sum())
        if n < cfg.min_stratum:
            small.append(label)
            fallback_rows += n
            continue
        cut = quantile_edges(raw[rows & kept], fr)
        scores[rows] = apply_edges(raw[rows], cut)
        strata[label] = {"n": n, "edges": cut}
    unlabelled = int((kept & np.array([v is None for v in labels], bool)).sum())
    edges.update(
        within=list(cfg.within),
        min_stratum=cfg.min_stratum,
        strata=strata,
        fallback={"rows": fallback_rows + unlabelled, "small_strata": small, "rows_without_stratum": unlabelled},
    )
    return scores, edges


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (ties averaged), or None with under 3 pairs or a constant side."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return round(float(np.corrcoef(rankdata(a), rankdata(b))[0, 1]), 4)  # Pearson of the ranks


def score_year(scores: np.ndarray, global_scores: np.ndarray, years: np.ndarray, kept: np.ndarray) -> dict:
    """How much the score tags carry the era: ρ(score, year) over the kept rows with a year and a score,
    with the scores given and with the global edges' scores (equal when calibrate.within is off)."""
    has = kept & (scores > 0) & np.array([y is not None for y in years], bool)
    year = np.array([y for y in years[has]], np.float64)
    return {"rows": int(has.sum()), "rho": spearman(scores[has], year),
            "rho_global_edges": spearman(global_scores[has], year)}  # fmt: skip
