"""embed + score: every ok image of a shard through the configured scorer.

Each image is decoded once, reduced to the side the scorer's model needs (``Scorer.input_side``: for
CLIP's 224 px a box of 2 or more from the 448 view, a JPEG's at 1/2..1/8 scale; whole for the
technical scorer, whose pixel-level terms need the stored pixels), in the one pass over the shard's
images that the image stages of a task share (``pipeline/imagepass.py``). Decoding and ``prepare``
(resize, crop, normalize — or the technical scorer's measurements) run in ``score.loader_threads``
threads and stay at most two batches ahead of the model, so the model never waits on JPEG decoding
and memory stays bounded. The scorer is built once per worker process
(``scorers.registry.get_scorer``). Outputs: ``stages/score/NNNNN.parquet`` (key, status, error,
aesthetic) and, for scorers that embed, ``embeddings/NNNNN.parquet`` (key + float16 vector), written
before the stage file so a finished stage always has its embeddings."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from zxl.catalog.embeddings import EMBEDDING_KEY, embeddings_path, read_embeddings
from zxl.files import write_table_atomic
from zxl.images import ImageDecodeError
from zxl.pipeline.imagepass import ImageWork, StoredImage
from zxl.pipeline.stages import ShardJob
from zxl.scorers.config import ScoreConfig
from zxl.scorers.registry import get_scorer

SCORE_SCHEMA = pa.schema(
    [("key", pa.string()), ("status", pa.string()), ("error", pa.string()), ("aesthetic", pa.float32())]
)


def _prepare(scorer, image: StoredImage):
    """(the scorer's item, None), or (None, why) when the image does not decode at its side."""
    try:
        return scorer.prepare(image.view(scorer.input_side)), None
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
                pending.append((i, pool.submit(_prepare, scorer, StoredImage(blobs[i]))))
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


class ScoreWork(ImageWork):
    """score on one shard, image by image (``imagepass``): ``prepare`` in the loader threads, the
    model a batch at a time as prepared images arrive, so at most ``ahead`` wait in memory."""

    def __init__(self, job: ShardJob, cfg: ScoreConfig):
        super().__init__(job)
        self.cfg = cfg
        self.scorer = get_scorer(cfg)
        self.side = self.scorer.input_side
        self.ahead = 2 * max(1, cfg.batch_size)
        self.batch: list[tuple[int, Any]] = []
        self.scores: dict[int, float] = {}
        self.embeddings: dict[int, np.ndarray] = {}
        self.errors: dict[int, str] = {}

    def prepare(self, i: int, image: StoredImage):
        return _prepare(self.scorer, image)

    def take(self, i: int, item) -> None:
        if item is None:
            return
        prepared, error = item
        if error is not None:
            self.errors[i] = error
            return
        self.batch.append((i, prepared))
        if len(self.batch) >= self.cfg.batch_size:
            self._run_batch()

    def _run_batch(self) -> None:
        if not self.batch:
            return
        idx = [i for i, _ in self.batch]
        values, emb = self.scorer.score_and_embed(self.scorer.collate([p for _, p in self.batch]))
        for n, i in enumerate(idx):
            self.scores[i] = float(values[n])
            if emb is not None:
                self.embeddings[i] = emb[n]
        self.batch = []

    def finish(self) -> tuple[pa.Table, dict]:
        self._run_batch()
        job, cfg = self.job, self.cfg
        inspect = job.read("inspect", columns=["key", "status", "error"])
        keys, status, error = (inspect[c].to_pylist() for c in ("key", "status", "error"))
        aesthetic: list[float | None] = [None] * len(keys)
        for i, s in enumerate(status):
            if s != "ok":
                continue
            if i in self.errors:
                status[i], error[i] = "failed_decode", self.errors[i]
            else:
                aesthetic[i] = self.scores[i]
        meta = {"zxl.scorer": cfg.scorer}
        done = sorted(self.embeddings)
        if done:  # written before the stage file, so a finished stage always has its embeddings
            vectors = np.stack([self.embeddings[i] for i in done]).astype(np.float16)
            flat = pa.array(vectors.ravel(), pa.float16())
            emb_table = pa.table({"key": [keys[i] for i in done],
                                  "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})  # fmt: skip
            kind = {EMBEDDING_KEY.decode(): self.scorer.embedding_kind}
            write_table_atomic(
                emb_table, embeddings_path(job.run_dir, job.shard), {"zxl.stage_hash": job.stage_hash, **meta, **kind}
            )
        else:
            embeddings_path(job.run_dir, job.shard).unlink(missing_ok=True)
        table = pa.table({"key": keys, "status": status, "error": error, "aesthetic": aesthetic}, schema=SCORE_SCHEMA)
        return table, meta


__all__ = ["ScoreWork", "embeddings_path", "read_embeddings", "score_blobs", "score_stream"]
