"""The global step between the per-shard stages and the catalog: (taste) → dedup → calibrate → weigh.

It reads only the few columns it needs from every shard (key, status, aesthetic, sha256, phash,
size, and the embeddings when the scorer made them), decides for all rows at once, and writes
``stages/reduce/NNNNN.parquet`` per shard (key, status, aesthetic, score, duplicate_of, repeats,
weight, cluster).

With ``taste.head`` set (``zxl taste apply``), the raw aesthetic of every row is that head's output
on the row's stored embedding instead of the scorer's, so everything after — the copy dedup keeps,
the score edges, the repeats, who gets a caption — follows the user's own taste, without a refetch
or a new embedding pass.

Dedup runs before calibration on purpose: the kept copy of a group is chosen by raw score, and
the score edges are then quantiles of the rows that will actually be trained on, so score_9 is
the top ninth of the training set rather than of a corpus full of reposts. Duplicates still get
a score from the same edges, for the record; their repeats are 0.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from zxl.catalog.embeddings import PIXELS, embedding_kind, read_embeddings
from zxl.config import ConfigError
from zxl.files import write_table_atomic
from zxl.pipeline import calibrate, dedup, weigh
from zxl.pipeline.config import CalibrateConfig, CurateConfig, DedupConfig, TasteConfig, WeighConfig
from zxl.pipeline.stages import StageInputs, stage_path
from zxl.scorers import taste

REDUCE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("aesthetic", pa.float32()),
        ("score", pa.int8()),
        ("duplicate_of", pa.string()),
        ("repeats", pa.int16()),
        ("weight", pa.float32()),
        ("cluster", pa.int32()),
    ]
)
PIXEL_DEDUP = (
    "skipped: pixels-v1 embeddings say two images share colours and tones, not that they are one "
    "picture (phash finds the near copies)"
)


def _load(inputs: StageInputs, n_shards: int) -> tuple[pa.Table, list[int]]:
    parts, sizes = [], []
    for s in range(n_shards):
        score = inputs.read("score", s, columns=["key", "status", "error", "aesthetic"])
        inspect = inputs.read("inspect", s, columns=["sha256", "phash", "width", "height"])
        parts.append(pa.Table.from_arrays(score.columns + inspect.columns, score.column_names + inspect.column_names))
        sizes.append(score.num_rows)
    return pa.concat_tables(parts), sizes


def reduce_all(
    inputs: StageInputs,
    n_shards: int,
    stage_hash: str,
    taste_cfg: TasteConfig,
    calibrate_cfg: CalibrateConfig,
    dedup_cfg: DedupConfig,
    weigh_cfg: WeighConfig,
) -> dict:
    """Decide dedup, scores and repeats for every row; returns what the manifest records."""
    t0 = time.time()
    run_dir = inputs.run_dir
    table, sizes = _load(inputs, n_shards)
    keys = np.asarray(table["key"].to_pylist(), object)
    status = np.asarray(table["status"].to_pylist(), object)
    aesthetic = table["aesthetic"].to_numpy(zero_copy_only=False).astype(np.float64)
    ok = status == "ok"
    pixels = (table["width"].fill_null(0).to_numpy() * table["height"].fill_null(0).to_numpy()).astype(np.int64)
    rows = np.flatnonzero(ok)

    # Each ok row's stored embedding (float16: 950k × 768 is 1.5 GB), and which rows have one.
    emb_keys, emb = read_embeddings(run_dir, n_shards, np.float16)
    kind = embedding_kind(run_dir, n_shards)
    has_emb = np.zeros(len(keys), bool)
    if emb is not None:
        where = {k: i for i, k in enumerate(keys)}
        at = np.array([where.get(k, -1) for k in emb_keys], np.int64)
        keep = (at >= 0) & ok[np.maximum(at, 0)]
        at, emb = at[keep], emb[keep]
        order = np.argsort(at, kind="stable")  # row order, so row r's vector is emb[cumsum(has_emb)[r] - 1]
        at, emb = at[order], emb[order]
        has_emb[at] = True
        if not len(at):
            emb = None
    manifest: dict = {}
    if taste_cfg.head:
        if emb is None:
            raise ConfigError("taste.head needs the run's stored embeddings, and the scorer stored none")
        aesthetic = np.full(len(keys), np.nan)
        head = taste.read_head(taste_cfg.head)  # read once: the scores and the manifest describe the same bytes
        aesthetic[has_emb] = taste.head_scores(head, emb, kind)
        manifest["taste"] = taste.head_info(head)
    dedup_emb = None
    if emb is not None and kind != PIXELS:
        local = np.cumsum(ok) - 1  # row → index among the ok rows
        dedup_emb = (local[has_emb], emb.astype(np.float32))
    dup_local, evidence = dedup.find_duplicates(
        keys[rows],
        aesthetic[rows],
        pixels[rows],
        np.asarray(table["sha256"].to_pylist(), object)[rows],
        table["phash"].to_numpy(zero_copy_only=False)[rows].astype(np.int64),
        dedup_cfg,
        dedup_emb,
    )
    duplicate_of = np.full(len(keys), None, object)
    duplicate_of[rows] = dup_local
    is_dup = np.array([d is not None for d in duplicate_of])
    status = np.where(is_dup, "duplicate", status)
    error = np.asarray(table["error"].to_pylist(), object)
    error[is_dup] = [f"duplicate of {d}" for d in duplicate_of[is_dup]]
    t1 = time.time()

    kept = (status == "ok") & np.isfinite(aesthetic)
    edges = calibrate.choose_edges(calibrate_cfg, aesthetic[kept])
    score = calibrate.apply_edges(aesthetic, edges["edges"])
    reps, weights, clusters, diversity = weigh.weigh(status, score, weigh_cfg, emb, has_emb)
    t2 = time.time()

    start = 0
    for s, n in enumerate(sizes):
        sl = slice(start, start + n)
        start += n
        part = pa.table(
            {
                "key": keys[sl].tolist(),
                "status": status[sl].tolist(),
                "error": error[sl].tolist(),
                "aesthetic": pa.array(aesthetic[sl], pa.float32(), mask=~np.isfinite(aesthetic[sl])),
                "score": pa.array(score[sl], pa.int8(), mask=score[sl] == 0),
                "duplicate_of": duplicate_of[sl].tolist(),
                "repeats": reps[sl],
                "weight": weights[sl],
                "cluster": pa.array(clusters[sl], pa.int32(), mask=clusters[sl] < 0),
            },
            schema=REDUCE_SCHEMA,
        )
        write_table_atomic(part, stage_path(run_dir, "reduce", s), {"zxl.stage_hash": stage_hash})
    dedup_report = {"duplicates": int(is_dup.sum()), "pairs_by_evidence": evidence}
    if emb is not None and kind == PIXELS and dedup_cfg.embedding_cosine > 0:
        dedup_report["embedding"] = PIXEL_DEDUP
    return {
        **manifest,
        "embedding": kind,
        "score_edges": edges,
        "dedup": dedup_report,
        "diversity": diversity,
        "seconds": {
            "dedup": round(t1 - t0, 3),
            "calibrate_weigh": round(t2 - t1, 3),
            "write": round(time.time() - t2, 3),
        },
    }


def validate(cfg: CurateConfig) -> None:
    calibrate.validate(cfg.calibrate)
    dedup.validate(cfg.dedup)
    weigh.validate(cfg.weigh)
    if cfg.taste.head:
        taste.check_head(cfg.taste.head)
