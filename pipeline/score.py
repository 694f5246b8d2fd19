"""embed + score: every ok image of a shard through the configured scorer.

Each image is decoded once, reduced to the side the scorer's model needs (``Scorer.input_side``:
a JPEG at 1/2..1/8 scale when CLIP sees 224 px; whole for the technical scorer, whose pixel-level
terms need the stored pixels). Decoding and ``prepare`` (resize, crop, normalize — or the technical
scorer's measurements) run in
``score.loader_threads`` threads and stay at most two batches ahead of the model, so the model
never waits on JPEG decoding and memory stays bounded. The scorer is built once per worker
process (``scorers.registry.get_scorer``). Outputs: ``stages/score/NNNNN.parquet`` (key, status,
error, aesthetic) and, for scorers that embed, ``embeddings/NNNNN.parquet`` (key + float16
vector), written before the stage file so a finished stage always has its embeddings.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from zxl.catalog.embeddings import EMBEDDING_KEY, embeddings_path, read_embeddings
from zxl.files import write_table_atomic
from zxl.images import ImageDecodeError, decode_reduced
from zxl.pipeline.stages import ShardJob
from zxl.scorers.config import ScoreConfig
from zxl.scorers.registry import get_scorer

SCORE_SCHEMA = pa.schema(
    [("key", pa.string()), ("status", pa.string()), ("error", pa.string()), ("aesthetic", pa.float32())]
)


def _decode_and_prepare(scorer, data: bytes):
    try:
        im, _ = decode_reduced(data, scorer.input_side)
        with im:
            return scorer.prepare(im), None
    except ImageDecodeError as e:
        return None, f"scorer {scorer.name} cannot read the image: {e}"


def score_stream(scorer, blobs: list[bytes], batch_size: int, threads: int):
    """Yield (indices, scores, embeddings or None, errors) per batch, prepare overlapping the model."""
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="zxl-prepare") as pool:
        pending: deque = deque()
        i = 0

        def refill():
            nonlocal i
            while i < len(blobs) and len(pending) < 2 * batch_size:
                pending.append((i, pool.submit(_decode_and_prepare, scorer, blobs[i])))
                i += 1

        refill()
        while pending:
            idx, items, errors = [], [], {}
            while pending and len(idx) < batch_size:
                j, fut = pending.popleft()
                item, err = fut.result()
                if err is None:
                    idx.append(j)
                    items.append(item)
                else:
                    errors[j] = err
            refill()  # the next batch decodes while this one runs
            if not items:
                yield [], np.zeros(0, np.float32), None, errors
                continue
            scores, emb = scorer.score_and_embed(scorer.collate(items))
            yield idx, scores, emb, errors


def score_blobs(scorer, blobs: list[bytes], cfg: ScoreConfig) -> tuple[list[float | None], dict[int, str], dict]:
    """Raw scores of image bytes, in order (None where an image does not decode, its reason in the
    errors), and the embeddings by position for a scorer that makes them: the stage's loop, which
    ``zxl score FOLDER`` runs too."""
    scores: list[float | None] = [None] * len(blobs)
    errors, embeddings = {}, {}
    for idx, values, emb, errs in score_stream(scorer, blobs, cfg.batch_size, cfg.loader_threads):
        errors.update(errs)
        for n, j in enumerate(idx):
            scores[j] = float(values[n])
            if emb is not None:
                embeddings[j] = emb[n]
    return scores, errors, embeddings


def score_shard(job: ShardJob, cfg: ScoreConfig) -> tuple[pa.Table, dict]:
    inspect = job.read("inspect", columns=["key", "status", "error"])
    keys, status, error = (inspect[c].to_pylist() for c in ("key", "status", "error"))
    aesthetic: list[float | None] = [None] * len(keys)
    ok = [i for i, s in enumerate(status) if s == "ok"]
    emb_keys, emb_rows = [], []
    if ok:
        scorer = get_scorer(cfg)
        shard_keys = job.read("fetch", columns=["shard_key"])["shard_key"].to_pylist()
        blobs = [b or b"" for b in job.images([shard_keys[i] for i in ok])]
        scores, errors, embeddings = score_blobs(scorer, blobs, cfg)
        for j, err in errors.items():
            status[ok[j]], error[ok[j]] = "failed_decode", err
        for j, value in enumerate(scores):
            aesthetic[ok[j]] = value
        emb_keys = [keys[ok[j]] for j in sorted(embeddings)]
        emb_rows = [embeddings[j] for j in sorted(embeddings)]
    meta = {"zxl.scorer": cfg.scorer}
    if emb_rows:  # written before the stage file, so a finished stage always has its embeddings
        vectors = np.stack(emb_rows).astype(np.float16)
        dim = vectors.shape[1]
        flat = pa.array(vectors.ravel(), pa.float16())
        emb_table = pa.table({"key": emb_keys, "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)})
        kind = {EMBEDDING_KEY.decode(): scorer.embedding_kind}
        write_table_atomic(
            emb_table, embeddings_path(job.run_dir, job.shard), {"zxl.stage_hash": job.stage_hash, **meta, **kind}
        )
    else:
        embeddings_path(job.run_dir, job.shard).unlink(missing_ok=True)
    table = pa.table({"key": keys, "status": status, "error": error, "aesthetic": aesthetic}, schema=SCORE_SCHEMA)
    return table, meta


__all__ = ["embeddings_path", "read_embeddings", "score_blobs", "score_shard", "score_stream"]
