"""A one-shard run folder written by hand (no network): the split's source rows, a webdataset tar
and the fetch stage's rows, so each later stage runs on its own through ``graph.run_shard``."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from zxl.config import load_config
from zxl.files import write_table_atomic
from zxl.pipeline import graph
from zxl.pipeline.config import CurateConfig
from zxl.pipeline.fetch import FETCH_SCHEMA
from zxl.pipeline.stages import stage_path


def picture(seed: int, size=(48, 40), noise: float = 40.0) -> bytes:
    """A flat shape on a gradient; ``noise`` makes it worse for the technical scorer."""
    rng = np.random.default_rng(seed)
    w, h = size
    grad = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    grad[h // 4 : h // 2, w // 4 : w // 2] = rng.integers(0, 255, 3)
    grad += rng.normal(0, noise, grad.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(grad, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def build(run_dir: Path, blobs: list[bytes | None], *overrides: str) -> tuple[CurateConfig, dict]:
    """Rows ``0..n-1``: a row whose blob is None failed to download; the rest are stored. Returns the
    config and the stage hashes, with source, fetch (and the tar) written."""
    cfg = load_config(CurateConfig, overrides=["run.scheduler=sync", "score.loader_threads=1", *overrides])
    n = len(blobs)
    keys = [str(1000 + i) for i in range(n)]
    source = pa.table({
        "key": keys, "url": [f"http://127.0.0.1:9/{k}.png" for k in keys], "source_id": keys,
        "rating": ["g" if i % 2 else "e" for i in range(n)], "created_at": ["2021-05-01"] * n,
        "tag_string_general": ["1girl smile" if i % 3 else "landscape" for i in range(n)],
    })  # fmt: skip
    write_table_atomic(source, stage_path(run_dir, "source", 0))
    (run_dir / "shards").mkdir(parents=True, exist_ok=True)
    rows = {name: [] for name in FETCH_SCHEMA.names}
    with tarfile.open(run_dir / "shards" / "00000.tar", "w") as tar:
        for i, (key, blob) in enumerate(zip(keys, blobs, strict=True)):
            ok = blob is not None
            if ok:
                info = tarfile.TarInfo(f"{i:09d}.png")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
                w, h = Image.open(io.BytesIO(blob)).size
            row = {"key": key, "shard": "00000.tar", "shard_key": f"{i:09d}", "status": "ok" if ok else
                   "failed_download", "error": None if ok else "HTTP 404", "width": w if ok else None,
                   "height": h if ok else None, "original_width": w if ok else None,
                   "original_height": h if ok else None, "attempts": 1}  # fmt: skip
            for name in FETCH_SCHEMA.names:
                rows[name].append(row[name])
    hashes = graph.stage_hashes(cfg, "test-source")
    write_table_atomic(pa.table(rows, schema=FETCH_SCHEMA), stage_path(run_dir, "fetch", 0),
                       {"zxl.stage_hash": hashes["fetch"]})  # fmt: skip
    return cfg, hashes


def run(run_dir: Path, cfg: CurateConfig, hashes: dict, *stages: str) -> dict:
    """Run these stages (names from the table; "reduce" and "tagrules" are global steps) on shard 0, in order."""
    results = {}
    for name in stages:
        if graph.BY_NAME[name].scope == "global":
            results[name] = graph.run_global(name, run_dir, 1, hashes, cfg)
            continue
        stage = graph.BY_NAME[name]
        results[name] = graph.run_shard(str(run_dir), name, 0, hashes[name],
                                        *(graph.section(cfg, s) for s in stage.sections))  # fmt: skip
    return results
