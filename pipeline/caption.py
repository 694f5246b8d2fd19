"""caption: natural-language captions for the ok rows scored at least ``caption.min_score``.

Runs after the global step (it needs the calibrated score) and the tag stage (the template
captioner writes from the tags). A row the captioner returns nothing for keeps a null caption
and its ``problem`` says so. Output: ``stages/caption/NNNNN.parquet`` (key, caption, problem).
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zxl.captioners.config import CaptionConfig
from zxl.captioners.registry import get_captioner
from zxl.files import write_table_atomic
from zxl.pipeline.inspection import read_tar_images
from zxl.pipeline.stages import skipped, stage_path
from zxl.pipeline.tag import decode_image

CAPTION_SCHEMA = pa.schema([("key", pa.string()), ("caption", pa.string()), ("problem", pa.string())])


def caption_shard(run_dir: str, shard: int, stage_hash: str, cfg: CaptionConfig) -> dict:
    run_dir = Path(run_dir)
    out = stage_path(run_dir, "caption", shard)
    if done := skipped(out, stage_hash):
        return done
    start = time.time()
    reduce = pq.read_table(stage_path(run_dir, "reduce", shard), columns=["key", "status", "score"])
    tags = pq.read_table(stage_path(run_dir, "tag", shard)).drop_columns(["key", "problem"])
    keys = reduce["key"].to_pylist()
    captions: list[str | None] = [None] * len(keys)
    problems: list[str | None] = [None] * len(keys)
    wanted = pc.and_(pc.equal(reduce["status"], "ok"), pc.greater_equal(reduce["score"], cfg.min_score))
    idx = [i for i, w in enumerate(wanted.to_pylist()) if w]
    captioner = get_captioner(cfg) if idx else None
    if captioner is not None:
        rows = tags.take(idx).to_pandas()
        images = None
        if captioner.needs_images:
            fetch = pq.read_table(stage_path(run_dir, "fetch", shard), columns=["shard", "shard_key"])
            blobs = read_tar_images(run_dir / "shards" / fetch["shard"][0].as_py())
            shard_keys = fetch["shard_key"].to_pylist()
            images = [decode_image(blobs.get(shard_keys[i])) for i in idx]
        texts = captioner.caption(images, rows)
        for n, (i, text) in enumerate(zip(idx, texts, strict=True)):
            text = (text or "").strip()
            if text:
                captions[i] = text
            else:
                tags_n = rows["tags"].iloc[n]
                shown = list(tags_n) if tags_n is not None else None
                problems[i] = f"captioner {captioner.name} returned nothing (tags: {shown})"
    table = pa.table({"key": keys, "caption": captions, "problem": problems}, schema=CAPTION_SCHEMA)
    write_table_atomic(table, out, {"zxl.stage_hash": stage_hash})
    return {"rows": table.num_rows, "skipped": False, "start": start, "end": time.time()}
