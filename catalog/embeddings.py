"""The run's cached image embeddings: ``runs/<name>/embeddings/NNNNN.parquet`` (key + float16 vector).

The score stage writes them (pipeline/score.py); dedup, ``zxl taste`` (fitting and applying a
personal head), the diversity-aware repeats and the browser's rate view read them, so nothing is
embedded twice. Each file's key-value metadata names what made the vectors (``zxl.embedding``):
``pixels-v1`` for the weight-free embedding of scorers/pixels.py (stored by the technical scorer),
``open_clip <arch>`` for CLIP. Vectors are L2-normalised; cosine similarity compares them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from numpy.typing import DTypeLike

EMBEDDING_KEY = b"zxl.embedding"
PIXELS = "pixels-v1"  # scorers/pixels.py: colour, tone, texture and a thumbnail, no weights


def embeddings_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "embeddings"


def embeddings_path(run_dir: str | Path, shard: int) -> Path:
    return embeddings_dir(run_dir) / f"{shard:05d}.parquet"


def _files(run_dir: str | Path, n_shards: int | None) -> list[Path]:
    if n_shards is None:
        return sorted(p for p in embeddings_dir(run_dir).glob("*.parquet") if p.stem.isdigit())
    return [p for s in range(n_shards) if (p := embeddings_path(run_dir, s)).exists()]


def embedding_kind(run_dir: str | Path, n_shards: int | None = None) -> str | None:
    """What made the run's embeddings (``zxl.embedding``), or None when there are none."""
    for p in _files(run_dir, n_shards):
        meta = pq.read_schema(p).metadata or {}
        return meta.get(EMBEDDING_KEY, b"unknown").decode()
    return None


def read_embeddings(
    run_dir: str | Path, n_shards: int | None = None, dtype: DTypeLike = np.float32
) -> tuple[list[str], np.ndarray | None]:
    """All shards' embeddings as (keys, [N, D] in ``dtype``); (…, None) when the scorer made none.
    ``n_shards`` None reads every shard file present; ``dtype`` float16 keeps 950k × 768 at 1.5 GB."""
    files = _files(run_dir, n_shards)
    if not files:
        return [], None
    sizes = [pq.read_metadata(p).num_rows for p in files]
    dim = pq.read_schema(files[0]).field("embedding").type.list_size
    out = np.empty((sum(sizes), dim), dtype)  # filled shard by shard: no second copy of the whole
    keys, at = [], 0
    for p, n in zip(files, sizes, strict=True):
        t = pq.read_table(p)
        keys.extend(t["key"].to_pylist())
        col = t["embedding"].combine_chunks()
        out[at : at + n] = col.values.to_numpy(zero_copy_only=False).reshape(n, dim)
        at += n
    return keys, out
