"""weigh: how often each row is drawn per epoch — by score (docs/recipe.md "Repeats"), and by variety.

**By score** (``weigh.diversity`` 0, the recipe): table 9 → 3, 8 → 2, anything else → 1; rows that
will not be trained on (failed, filtered, duplicate) → 0. These are the ``repeats`` w_i.

**Diversity-aware** (``weigh.diversity`` d in (0, 1]): the trainable rows' embeddings are clustered
(k-means, ``weigh.clusters`` clusters or a number chosen from the data), and row i of cluster c is
drawn with weight

    f_i = s · w_i · M_c^(−d),    M_c = Σ_{j∈c} w_j,    s such that Σ f = Σ w (the epoch keeps its length)

d = 0 is the score-only table exactly; d = 1 draws every cluster equally often (each gets mass s),
and within a cluster rows are still drawn by score. In between it is the temperature sampling of
multilingual training (cluster mass ∝ M_c^(1−d)). This is the card's own criticism answered:
score-only repeats over-draw whatever the top of the score range looks like; balancing the clusters
keeps the quality ordering inside each and restores what the rest of the data looks like.

Two forms come out: ``weight`` f_i (float, what zxl's trainer draws with, stochastic rounding per
epoch) and ``repeats`` max(1, round(f_i)) for trainable rows (the integers a kohya folder needs).

Clusters come from scikit-learn's ``MiniBatchKMeans``, not faiss: it streams the float16 vectors in
chunks (``partial_fit``), so 950k × 768 stays well under the 4 GB a float32 copy plus faiss's working
set would need; it is deterministic for a seed; and it is a plain wheel on every platform
(bench/taste.py measures its time and memory). With ``weigh.clusters: 0`` k is the candidate of
``K_GRID`` (up to √n, and at most 625) whose balanced draws are the most varied: the probability-
weighted Vendi score of the draws, on a sample (``choose_k``). The silhouette, the usual criterion,
was tried first: on 768-d embeddings it prefers k = 2, and balancing two clusters of 184 and 22
demo pictures repeats the 22 six times each — fewer distinct pictures, lower variety, the opposite
of the aim.

What is reported (the manifest's ``diversity``; ``zxl catalog stats``), for the chosen d and for d = 0:
the effective number of clusters drawn (exp of the entropy of the draws' shares per cluster), the
Vendi score of a sample of draws (zxl/diversity.py) and the mean score of the draws.
"""

from __future__ import annotations

import numpy as np

from zxl.config import ConfigError
from zxl.diversity import effective_clusters, vendi
from zxl.pipeline.config import WeighConfig

K_GRID = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 640)
SAMPLE = 5000  # rows k-means is fitted on to choose k: k up to min(√n, SAMPLE / 8); set weigh.clusters for more
VENDI_SAMPLE = 1500  # rows whose weighted draws are scored for each k
CHUNK = 16384  # rows per partial_fit / predict call (float32 copies of this size only)
DRAW_SAMPLE = 1000  # draws whose Vendi score is reported


def validate(cfg: WeighConfig) -> None:
    bad = {s: r for s, r in cfg.repeats.items() if not 1 <= s <= 9 or r < 0}
    if bad or cfg.default < 0:
        raise ConfigError(f"weigh.repeats maps scores 1..9 to repeats >= 0 (and weigh.default >= 0); got {bad}")
    if not 0 <= cfg.diversity <= 1:
        raise ConfigError(f"weigh.diversity must be between 0 (repeats by score only) and 1, got {cfg.diversity}")


def repeats(status: np.ndarray, score: np.ndarray, cfg: WeighConfig) -> np.ndarray:
    """int16 repeats per row by score alone; ``score`` 0 means no score."""
    table = np.full(10, cfg.default, np.int16)
    for s, r in cfg.repeats.items():
        table[s] = r
    out = table[np.clip(np.asarray(score, np.int64), 0, 9)]
    return np.where(np.asarray(status, object) == "ok", out, 0).astype(np.int16)


def _kmeans(k: int, seed: int):
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(k, random_state=seed, batch_size=min(CHUNK, 4096), n_init=1, max_no_improvement=None,  # pyright: ignore[reportArgumentType] - sklearn is untyped: pyright takes the defaults' types
                           init_size=min(CHUNK, max(3 * k, 1024)), reassignment_ratio=0.01)  # fmt: skip


def _fit(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means centres of ``x`` (any float dtype, [n, d]), streamed in float32 chunks: two passes,
    one past 200k rows (that is already 12+ mini-batches of 16k per centre update pass)."""
    passes = 2 if len(x) < 200_000 else 1
    km = _kmeans(k, seed)
    order = np.random.default_rng(seed).permutation(len(x))
    for _ in range(passes):
        for a in range(0, len(x), CHUNK):
            idx = np.sort(order[a : a + CHUNK])
            if len(idx) >= k:
                km.partial_fit(np.asarray(x[idx], np.float32))
    return km.cluster_centers_.astype(np.float32)  # pyright: ignore[reportAttributeAccessIssue] - sklearn's fitted attributes are untyped (an ndarray here)


def assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The nearest centre (squared Euclidean) of every row, in chunks; int32."""
    c2 = (centres.astype(np.float64) ** 2).sum(1)
    out = np.empty(len(x), np.int32)
    for a in range(0, len(x), CHUNK):
        block = np.asarray(x[a : a + CHUNK], np.float32)
        out[a : a + len(block)] = np.argmin(c2[None, :] - 2.0 * (block @ centres.T), axis=1)
    return out


def choose_k(x: np.ndarray, base: np.ndarray, diversity: float, seed: int = 0) -> tuple[int, dict[int, float]]:
    """The k of ``K_GRID`` (at most √n) whose clusters, balanced at ``diversity`` (1 when it is 0),
    give the most varied draws: the probability-weighted Vendi score of the draws of a sample of
    ``VENDI_SAMPLE`` rows, under clusters fitted on ``SAMPLE`` rows. More clusters balance finer until
    they get so small that balancing only repeats a few pictures; the score finds the point between
    (the largest k within 1% of the best: when the data is already balanced the scores are flat)."""
    n = len(x)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, SAMPLE), replace=False))
    xs, ws = np.asarray(x[sample], np.float32), np.asarray(base, np.float64)[sample]
    judge = np.sort(rng.choice(len(xs), min(len(xs), VENDI_SAMPLE), replace=False))
    grid = [k for k in K_GRID if k <= max(2, min(int(np.sqrt(n)), SAMPLE // 8)) and k < len(xs)]
    d = diversity or 1.0
    scores = {}
    for k in grid:
        labels = assign(xs, _fit(xs, k, seed))
        f = diverse_weights(ws, labels, d)
        scores[k] = vendi(xs[judge], f[judge])
    if not scores:
        return 1, {}
    best = max(scores.values())  # the finest balance within 1% of the most varied: ties go to more clusters
    return max(k for k, v in scores.items() if v >= 0.99 * best), scores


def cluster(x: np.ndarray, n_clusters: int = 0, seed: int = 0, base: np.ndarray | None = None,
            diversity: float = 1.0) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Cluster labels (int32) of the rows of ``x`` and how k was set (``base`` and ``diversity``: what
    the draws will be, for choosing k)."""
    n = len(x)
    if n == 0:
        return np.zeros(0, np.int32), {"k": 0, "chosen": "no rows"}
    if n_clusters:
        k, how = min(n_clusters, n), {"chosen": "weigh.clusters"}
    else:
        k, scores = choose_k(x, np.ones(n) if base is None else base, diversity, seed)
        how = {"chosen": "vendi of the draws", "vendi": {str(k_): round(v, 3) for k_, v in scores.items()}}
    if k <= 1:
        return np.zeros(n, np.int32), {"k": 1, **how}
    labels = assign(x, _fit(x, k, seed))
    return labels, {"k": int(k), **how}


def diverse_weights(base: np.ndarray, labels: np.ndarray, diversity: float) -> np.ndarray:
    """f_i = s · w_i · M_c^(−d) (the module docstring); ``base`` w ≥ 0, labels ≥ 0 per row."""
    w = np.asarray(base, np.float64)
    if diversity == 0:
        return w.copy()
    mass = np.bincount(labels, weights=w)
    f = w * np.where(mass[labels] > 0, mass[labels], 1.0) ** (-diversity)
    total = f.sum()
    return f * (w.sum() / total) if total > 0 else f


def integer_repeats(weights: np.ndarray, base: np.ndarray) -> np.ndarray:
    """What a kohya folder takes: max(1, round(f_i)) for rows trained on (w_i > 0), else 0."""
    return np.where(np.asarray(base) > 0, np.maximum(1, np.rint(weights)), 0).astype(np.int16)


def draw_report(
    weights: np.ndarray, labels: np.ndarray, score: np.ndarray, emb: np.ndarray | _Rows, seed: int = 0
) -> dict:
    """Effective clusters, Vendi score of ``DRAW_SAMPLE`` draws, mean score, and draws per epoch.
    ``emb`` is indexed only at the draws (an array, or a lazy view of one: nothing else is gathered)."""
    w = np.asarray(weights, np.float64)
    total = w.sum()
    if total <= 0:
        return {"effective_clusters": 0.0, "vendi": float("nan"), "mean_score": float("nan"), "draws_per_epoch": 0}
    draws = np.random.default_rng(seed).choice(len(w), DRAW_SAMPLE, p=w / total)
    return {
        "effective_clusters": round(effective_clusters(labels, w), 3),
        "vendi": round(vendi(np.asarray(emb[draws], np.float32)), 3),
        "mean_score": round(float((w * score).sum() / total), 3),
        "draws_per_epoch": round(float(total), 1),
    }


class _Rows:
    """``emb[rows[i]]`` on demand: indexing it gathers only the rows asked for."""

    def __init__(self, emb: np.ndarray, rows: np.ndarray):
        self.emb, self.rows = emb, rows

    def __getitem__(self, idx):
        return self.emb[self.rows[idx]]


def weigh(status: np.ndarray, score: np.ndarray, cfg: WeighConfig, emb: np.ndarray | None, has_emb: np.ndarray):
    """Repeats (int16), weights (float32), cluster labels (int32, −1 = none) for every row, and the report.

    ``emb`` holds the vectors of the rows where ``has_emb`` is true (in row order), or is None. Rows
    trained on without an embedding keep their score-only weight and count as a cluster of their own.
    """
    base = repeats(status, score, cfg)
    n = len(base)
    labels = np.full(n, -1, np.int32)
    trained = base > 0
    if emb is None or not (trained & has_emb).any():
        if cfg.diversity > 0:
            raise ConfigError("weigh.diversity needs embeddings: the scorer stored none for this run")
        return base, base.astype(np.float32), labels, {"setting": cfg.diversity, "clusters": None}
    emb_row = np.full(n, -1, np.int64)
    emb_row[has_emb] = np.arange(int(has_emb.sum()))
    rows = np.flatnonzero(trained & has_emb)
    found, how = cluster(emb[emb_row[rows]], cfg.clusters, cfg.seed, base[rows], cfg.diversity)
    labels[rows] = found
    missing = trained & ~has_emb
    labels[missing] = found.max(initial=-1) + 1  # rows with no vector: one cluster of their own
    t = np.flatnonzero(trained)
    f = np.zeros(n)
    f[t] = diverse_weights(base[t], labels[t], cfg.diversity)
    reps = integer_repeats(f, base) if cfg.diversity > 0 else base
    vec_t = t[has_emb[t]]
    vectors = _Rows(emb, emb_row[vec_t])  # the draws' vectors, gathered per report (1,000 rows, not all)

    def report(weights):
        return draw_report(weights[vec_t], labels[vec_t], score[vec_t].astype(np.float64), vectors, cfg.seed)

    zero = report(base.astype(np.float64))
    chosen = {"weights": zero, "repeats": zero} if cfg.diversity == 0 else \
        {"weights": report(f), "repeats": report(reps.astype(np.float64))}  # fmt: skip
    out = {
        "setting": cfg.diversity,
        "clusters": how,
        "chosen": chosen,
        "zero": zero,
        "cluster_sizes": np.bincount(labels[t]).tolist(),
    }
    return reps, f.astype(np.float32), labels, out
