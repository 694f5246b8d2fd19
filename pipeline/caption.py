"""caption: natural-language captions for the ok rows scored at least ``caption.min_score``.

Runs after the global steps (it needs the calibrated score, and the template captioner writes from
the tags as the curator's rules left them). A row the captioner returns nothing for keeps a null caption
and its ``problem`` says so. Output: ``stages/caption/NNNNN.parquet`` (key, caption, problem).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from zxl.captioners.config import CaptionConfig
from zxl.captioners.registry import get_captioner
from zxl.images import try_decode
from zxl.pipeline.stages import ShardJob

CAPTION_SCHEMA = pa.schema([("key", pa.string()), ("caption", pa.string()), ("problem", pa.string())])


def caption_rows(captioner, images: list | None, rows) -> tuple[list[str | None], list[str | None]]:
    """Captions of these rows (a DataFrame with tags and characters; images when the captioner
    needs them) and, where the captioner returned nothing, a problem saying so: the stage's loop,
    which ``zxl caption FOLDER`` runs too."""
    captions: list[str | None] = [None] * len(rows)
    problems: list[str | None] = [None] * len(rows)
    texts = captioner.caption(images, rows) if len(rows) else []
    for n, text in enumerate(texts):
        text = (text or "").strip()
        if text:
            captions[n] = text
        else:
            tags_n = rows["tags"].iloc[n]
            shown = list(tags_n) if tags_n is not None else None
            problems[n] = f"captioner {captioner.name} returned nothing (tags: {shown})"
    return captions, problems


def caption_shard(job: ShardJob, cfg: CaptionConfig) -> pa.Table:
    reduce = job.read("reduce", columns=["key", "status", "score"])
    keys = reduce["key"].to_pylist()
    captions: list[str | None] = [None] * len(keys)
    problems: list[str | None] = [None] * len(keys)
    wanted = pc.and_(pc.equal(reduce["status"], "ok"), pc.greater_equal(reduce["score"], cfg.min_score))  # pyright: ignore[reportAttributeAccessIssue] - pyarrow.compute makes its functions at import
    idx = [i for i, w in enumerate(wanted.to_pylist()) if w]
    captioner = get_captioner(cfg) if idx else None
    if captioner is not None:
        rows = job.read("tagrules").drop_columns(["key"]).take(idx).to_pandas()  # the tags after the rules
        images = None
        if captioner.needs_images:
            shard_keys = job.read("fetch", columns=["shard_key"])["shard_key"].to_pylist()
            images = [try_decode(b, captioner.input_side) for b in job.images([shard_keys[i] for i in idx])]
        texts, why = caption_rows(captioner, images, rows)
        for n, i in enumerate(idx):
            captions[i], problems[i] = texts[n], why[n]
    return pa.table({"key": keys, "caption": captions, "problem": problems}, schema=CAPTION_SCHEMA)
