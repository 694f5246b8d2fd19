"""The global step between the per-shard stages and the catalog: (taste) → dedup → calibrate → weigh.

It reads only the few columns it needs from every shard (key, status, aesthetic, sha256, phash,
size, year and rating, and the embeddings when the scorer made them), decides for all rows at
once, and writes ``stages/reduce/NNNNN.parquet`` per shard (key, status, aesthetic, score,
duplicate_of, repeats, weight, cluster) and ``stages/reduce/_report.json`` (what the manifest
records: score edges, dedup, diversity, the score-year correlation, the taste head), all stamped
with the step's hash. Like every stage it is skipped when its outputs carry the hash of its inputs
and settings: an unchanged rerun reads the report alone.

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
from pathlib import Path

import numpy as np
import pyarrow as pa

from zxl.catalog.embeddings import PIXELS, embedding_kind, read_embeddings
from zxl.config import ConfigError
from zxl.files import write_json_atomic, write_table_atomic
from zxl.pipeline import calibrate, dedup, weigh
from zxl.pipeline.config import CalibrateConfig, CurateConfig, DedupConfig, TasteConfig, WeighConfig
from zxl.pipeline.stages import HASH_KEY, StageInputs, report_path, stage_path, stored_report
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


def reduce_all(
    inputs: StageInputs,
    n_shards: int,
    stage_hash: str,
    taste_cfg: TasteConfig,
    calibrate_cfg: CalibrateConfig,
    dedup_cfg: DedupConfig,
    weigh_cfg: WeighConfig,
) -> dict:
    """Decide dedup, scores and draws for every row (module docstring); returns the report the
    manifest records. Skipped, returning the stored report, when it was done with this hash."""
    run_dir = inputs.run_dir
    if (done := stored_report(run_dir, "reduce", n_shards, stage_hash)) is not None:
        return {**done, "skipped": True, "seconds": {"dedup": 0.0, "calibrate_weigh": 0.0, "write": 0.0}}
    t0 = time.time()
    rows, sizes = _load(inputs, n_shards)
    emb, has_emb, kind = _embeddings(run_dir, n_shards, rows)
    report: dict = {}
    if taste_cfg.head:
        report["taste"] = _taste_scores(rows, taste_cfg.head, emb, has_emb, kind)
    dedup_report = _dedup(rows, dedup_cfg, emb, has_emb, kind)
    t1 = time.time()
    kept = (rows["status"] == "ok") & np.isfinite(rows["aesthetic"])
    labels = calibrate.stratum_labels(calibrate_cfg.within, {"year": rows["year"], "rating": rows["rating"]},
                                      calibrate_cfg.year_span)  # fmt: skip
    rows["score"], edges = calibrate.calibrate_rows(calibrate_cfg, rows["aesthetic"], kept, labels)
    global_scores = calibrate.apply_edges(rows["aesthetic"], edges["edges"])
    rows["repeats"], rows["weight"], rows["cluster"], diversity = weigh.weigh(
        rows["status"], rows["score"], weigh_cfg, emb, has_emb
    )
    t2 = time.time()
    _write(run_dir, rows, sizes, stage_hash)
    report.update({"embedding": kind, "score_edges": edges, "dedup": dedup_report, "diversity": diversity,
                   "score_year": calibrate.score_year(rows["score"], global_scores, rows["year"], kept)})  # fmt: skip
    write_json_atomic({"stage_hash": stage_hash, **report}, report_path(run_dir, "reduce"))
    seconds = {"dedup": round(t1 - t0, 3), "calibrate_weigh": round(t2 - t1, 3), "write": round(time.time() - t2, 3)}
    return {**report, "seconds": seconds}


def _load(inputs: StageInputs, n_shards: int) -> tuple[dict[str, np.ndarray], list[int]]:
    """The columns the step decides on, for every row of every shard, and each shard's row count."""
    parts, sizes = [], []
    for s in range(n_shards):
        score = inputs.read("score", s, columns=["key", "status", "error", "aesthetic"])
        inspect = inputs.read("inspect", s, columns=["sha256", "phash", "width", "height"])
        tag = inputs.read("tag", s, columns=["year", "rating"])  # for calibrate.within and the score-year report
        both = score.columns + inspect.columns + tag.columns
        parts.append(pa.Table.from_arrays(both, score.column_names + inspect.column_names + tag.column_names))
        sizes.append(score.num_rows)
    table = pa.concat_tables(parts)
    rows = {
        "key": np.asarray(table["key"].to_pylist(), object),
        "status": np.asarray(table["status"].to_pylist(), object),
        "error": np.asarray(table["error"].to_pylist(), object),
        "aesthetic": table["aesthetic"].to_numpy(zero_copy_only=False).astype(np.float64),
        "sha256": np.asarray(table["sha256"].to_pylist(), object),
        "phash": table["phash"].fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64),
        "year": np.asarray(table["year"].to_pylist(), object),
        "rating": np.asarray(table["rating"].to_pylist(), object),
        "pixels": (table["width"].fill_null(0).to_numpy() * table["height"].fill_null(0).to_numpy()).astype(np.int64),
    }
    return rows, sizes


def _embeddings(run_dir: Path, n_shards: int, rows: dict) -> tuple[np.ndarray | None, np.ndarray, str | None]:
    """Each ok row's stored embedding in row order (float16: 950k × 768 is 1.5 GB), which rows have
    one (row r's vector is emb[cumsum(has_emb)[r] - 1]), and the embedding's kind."""
    ok = rows["status"] == "ok"
    emb_keys, emb = read_embeddings(run_dir, n_shards, np.float16)
    kind = embedding_kind(run_dir, n_shards)
    has_emb = np.zeros(len(ok), bool)
    if emb is not None:
        where = {k: i for i, k in enumerate(rows["key"])}
        at = np.array([where.get(k, -1) for k in emb_keys], np.int64)
        keep = (at >= 0) & ok[np.maximum(at, 0)]
        at, emb = at[keep], emb[keep]
        order = np.argsort(at, kind="stable")
        at, emb = at[order], emb[order]
        has_emb[at] = True
        if not len(at):
            emb = None
    return emb, has_emb, kind


def _taste_scores(rows: dict, head_path: str, emb, has_emb: np.ndarray, kind: str | None) -> dict:
    """The taste head's score in place of the scorer's, for every row with an embedding; the head's record."""
    if emb is None:
        raise ConfigError("taste.head needs the run's stored embeddings, and the scorer stored none")
    head = taste.read_head(head_path)  # read once: the scores and the manifest describe the same bytes
    rows["aesthetic"] = np.full(len(has_emb), np.nan)
    rows["aesthetic"][has_emb] = taste.head_scores(head, emb, kind)
    return taste.head_info(head)


def _dedup(rows: dict, cfg: DedupConfig, emb, has_emb: np.ndarray, kind: str | None) -> dict:
    """Mark the copies (status duplicate, duplicate_of the kept row, an error naming it); the report."""
    ok = rows["status"] == "ok"
    at = np.flatnonzero(ok)
    dedup_emb = None
    if emb is not None and kind != PIXELS:
        local = np.cumsum(ok) - 1  # row → index among the ok rows
        dedup_emb = (local[has_emb], emb.astype(np.float32))
    dup_local, evidence = dedup.find_duplicates(
        rows["key"][at], rows["aesthetic"][at], rows["pixels"][at], rows["sha256"][at], rows["phash"][at], cfg,
        dedup_emb,
    )  # fmt: skip
    duplicate_of = np.full(len(ok), None, object)
    duplicate_of[at] = dup_local
    is_dup = np.array([d is not None for d in duplicate_of], bool)
    rows["duplicate_of"] = duplicate_of
    rows["status"] = np.where(is_dup, "duplicate", rows["status"])
    rows["error"][is_dup] = [f"duplicate of {d}" for d in duplicate_of[is_dup]]
    out = {"duplicates": int(is_dup.sum()), "pairs_by_evidence": evidence}
    if emb is not None and kind == PIXELS and cfg.embedding_cosine > 0:
        out["embedding"] = PIXEL_DEDUP
    return out


def _write(run_dir: Path, rows: dict, sizes: list[int], stage_hash: str) -> None:
    """``stages/reduce/NNNNN.parquet`` per shard, stamped with the step's hash."""
    start = 0
    for s, n in enumerate(sizes):
        sl = slice(start, start + n)
        start += n
        a, score, cluster = rows["aesthetic"][sl], rows["score"][sl], rows["cluster"][sl]
        part = pa.table(
            {
                "key": rows["key"][sl].tolist(),
                "status": rows["status"][sl].tolist(),
                "error": rows["error"][sl].tolist(),
                "aesthetic": pa.array(a, pa.float32(), mask=~np.isfinite(a)),
                "score": pa.array(score, pa.int8(), mask=score == 0),
                "duplicate_of": rows["duplicate_of"][sl].tolist(),
                "repeats": rows["repeats"][sl],
                "weight": rows["weight"][sl],
                "cluster": pa.array(cluster, pa.int32(), mask=cluster < 0),
            },
            schema=REDUCE_SCHEMA,
        )
        write_table_atomic(part, stage_path(run_dir, "reduce", s), {HASH_KEY.decode(): stage_hash})


def validate(cfg: CurateConfig) -> None:
    calibrate.validate(cfg.calibrate)
    dedup.validate(cfg.dedup)
    weigh.validate(cfg.weigh)
    if cfg.taste.head:
        taste.check_head(cfg.taste.head)
