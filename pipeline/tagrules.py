"""tagrules: the curator's tag rules over every row, once dedup has said which rows are trained on.

A global step after reduce (docs/tagging.md). For each row it takes the tags the tag stage read
(every category as the source and the taggers gave them) and applies, in order: aliases, replace,
exclude, duplicates merged, ``drop_implied`` (taggers/rules.py); then ``move_meta`` (a tag the meta
column holds anywhere is moved out of the other categories of every row) and ``min_count``, which
needs the whole catalog: a tag carried by fewer than ``tag.min_count`` trainable rows (status ok
after dedup; counted per category, after the other rules) is dropped from every row.

It writes ``stages/tagrules/NNNNN.parquet`` per shard (key and the five tag columns: what captions
and the catalog are made of) and ``stages/tagrules/_report.json`` (what each rule did, for the
manifest). Its hash covers only the rule settings and its inputs', so a changed rule redoes this
step, the captions and the catalog, and nothing is fetched, scored, tagged or deduplicated again;
the tag stage's output keeps the original tags, so any rule can be taken back.
"""

from __future__ import annotations

import time

import pyarrow as pa

from zxl.files import write_json_atomic, write_table_atomic
from zxl.pipeline.stages import HASH_KEY, StageInputs, report_path, stage_path, stored_report
from zxl.taggers.base import TAG_FIELDS
from zxl.taggers.config import TagConfig
from zxl.taggers.rules import RuleCounts, TagRules, drop_tags, rare_tags

STAGE = "tagrules"
TAGRULES_SCHEMA = pa.schema([("key", pa.string()), *[(f, pa.list_(pa.string())) for f in TAG_FIELDS]])


def tagrules_all(inputs: StageInputs, n_shards: int, stage_hash: str, cfg: TagConfig) -> dict:
    """Apply the rules to every row (module docstring); returns the report the manifest records.
    Skipped, returning the stored report, when it was done with this hash."""
    run_dir = inputs.run_dir
    if (done := stored_report(run_dir, STAGE, n_shards, stage_hash)) is not None:
        return {**done, "skipped": True, "seconds": 0.0}
    t0 = time.time()
    rules = TagRules.from_config(cfg)
    tags = [inputs.read("tag", s, columns=["key", *TAG_FIELDS]) for s in range(n_shards)]
    status = [inputs.read("reduce", s, columns=["status"])["status"].to_pylist() for s in range(n_shards)]
    table = pa.concat_tables(tags)
    trainable = [v == "ok" for part in status for v in part]
    counts = RuleCounts()
    columns, report = {}, {}
    for field in TAG_FIELDS:
        columns[field], c = rules.apply_many(table[field].to_pylist())
        counts.add(c)
    moved = move_meta(columns) if cfg.move_meta else 0
    for field in TAG_FIELDS:
        rare = rare_tags(columns[field], trainable, cfg.min_count)
        columns[field], dropped = drop_tags(columns[field], rare)
        report[field] = {"rare_tags": len(rare), "rare_instances": dropped, **_spread(columns[field], trainable)}
    _write(run_dir, table["key"].to_pylist(), columns, [t.num_rows for t in tags], stage_hash)
    out = {
        "rules": {**counts.as_dict(), "moved_to_meta": moved},
        "min_count": cfg.min_count,
        "rare_tags_dropped": sum(r["rare_tags"] for r in report.values()),
        "rare_instances_dropped": sum(r["rare_instances"] for r in report.values()),
        "categories": report,
    }
    write_json_atomic({"stage_hash": stage_hash, **out}, report_path(run_dir, STAGE))
    return {**out, "seconds": round(time.time() - t0, 3)}


def move_meta(columns: dict[str, list]) -> int:
    """Tags the meta column holds anywhere are meta tags everywhere: a source that folds some into
    another tag string (``highres`` among the general tags) has them moved to the row's ``meta``, so
    they stay out of captions. Changes ``columns`` in place; returns the instances moved."""
    known = {t for tags in columns["meta"] if tags for t in tags}
    moved = 0
    for field in TAG_FIELDS:
        if field == "meta" or not known:
            continue
        for i, tags in enumerate(columns[field]):
            if tags and (found := [t for t in tags if t in known]):
                columns[field][i] = [t for t in tags if t not in known]
                meta = columns["meta"][i] or []
                columns["meta"][i] = meta + [t for t in dict.fromkeys(found) if t not in meta]
                moved += len(found)
    return moved


def _spread(lists: list, trainable: list[bool]) -> dict:
    """Distinct tags and tag instances of one category over the trainable rows, after the rules."""
    seen, instances = set(), 0
    for tags, ok in zip(lists, trainable, strict=True):
        if ok and tags:
            seen.update(tags)
            instances += len(tags)
    return {"distinct": len(seen), "instances": instances}


def _write(run_dir, keys: list[str], columns: dict[str, list], sizes: list[int], stage_hash: str) -> None:
    start = 0
    for s, n in enumerate(sizes):
        part = {"key": keys[start : start + n], **{f: v[start : start + n] for f, v in columns.items()}}
        start += n
        table = pa.table(part, schema=TAGRULES_SCHEMA)
        write_table_atomic(table, stage_path(run_dir, STAGE, s), {HASH_KEY.decode(): stage_hash})


def validate(cfg: TagConfig) -> None:
    """Read and check the rule tables before any work (a cycle or a two-way alias names its rows)."""
    TagRules.from_config(cfg)
