"""The last stage: assemble each shard's catalog rows, then write ``catalog/`` with its manifest.

``assemble_shard`` (a Dask task per shard) joins the source, fetch, inspect, reduce, tag, tagrules
and caption outputs of one shard into a catalog table, ``stages/catalog/NNNNN.parquet``. ``write_catalog``
(one global step) counts over all of them, then writes ``catalog/part-NNNNN.parquet`` with the
manifest in each file's key-value metadata and ``_manifest.json`` last. The new catalog is built in
a temporary folder and swapped in by rename, so a reader never sees half of one.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zxl.catalog.schema import MANIFEST_KEY, SCHEMA, SCHEMA_VERSION, conform
from zxl.files import replacing, write_json_atomic, write_table_atomic
from zxl.pipeline.stages import ShardJob, shard_name, stage_path
from zxl.taggers.base import TAG_FIELDS


def assemble_shard(job: ShardJob) -> pa.Table:
    shard = job.shard
    source = job.read("source", columns=["key", "url", "source_id"])
    fetch, inspect = job.read("fetch"), job.read("inspect")
    reduce, tag, caption = job.read("reduce"), job.read("tag"), job.read("caption")
    ruled = job.read("tagrules")  # the tag columns after the curator's rules
    # All are in source order, one row per input: check it rather than trust it.
    stages = (
        ("fetch", fetch),
        ("inspect", inspect),
        ("reduce", reduce),
        ("tag", tag),
        ("tagrules", ruled),
        ("caption", caption),
    )
    for name, t in stages:
        if t["key"].to_pylist() != source["key"].to_pylist():
            raise RuntimeError(f"stage {name} of shard {shard_name(shard)} does not match its source rows; rerun")
    status = reduce["status"]
    error = pc.coalesce(reduce["error"], inspect["error"], fetch["error"])  # pyright: ignore[reportAttributeAccessIssue] - pyarrow.compute makes its functions at import
    ok = pc.equal(status, "ok")  # pyright: ignore[reportAttributeAccessIssue] - pyarrow.compute makes its functions at import
    columns = {
        "key": source["key"],
        "url": source["url"],
        "source_id": source["source_id"],
        "status": status,
        "error": pc.if_else(ok, pa.scalar(None, pa.string()), error),  # pyright: ignore[reportAttributeAccessIssue] - pyarrow.compute makes its functions at import
        "shard": fetch["shard"],
        "shard_key": fetch["shard_key"],
        "sha256": inspect["sha256"],
        "phash": inspect["phash"],
        "width": inspect["width"],
        "height": inspect["height"],
        "original_width": fetch["original_width"],
        "original_height": fetch["original_height"],
        "bucket": inspect["bucket"],
        "aesthetic": reduce["aesthetic"],  # the scorer's, or the taste head's (taste.head)
        "score": reduce["score"],
        "duplicate_of": reduce["duplicate_of"],
        "rating": tag["rating"],
        "rating_source": tag["rating_source"],
        "year": tag["year"],
        **{f: ruled[f] for f in TAG_FIELDS},
        "caption": caption["caption"],
        "repeats": reduce["repeats"],
        "weight": reduce["weight"],
        "cluster": reduce["cluster"],
        "attempts": fetch["attempts"],
    }
    return conform({k: v.combine_chunks() for k, v in columns.items()}, source.num_rows)


def _counts(values: list) -> dict[str, int]:
    c = Counter("null" if v is None else str(v) for v in values)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def summarize(run_dir: Path, n_shards: int) -> dict:
    """Counts over every shard's rows, reading only the columns counted: status over all rows,
    the rest over the ok rows (the ones a trainer sees)."""
    cols = ["status", "score", "rating", "year", "bucket", "repeats"]
    table = pa.concat_tables(
        pq.read_table(stage_path(run_dir, "catalog", s), columns=[*cols, "caption", "error"]) for s in range(n_shards)
    )
    mismatch = pc.match_substring_regex(table["error"].fill_null(""), r"^(md5|sha256|sha512) mismatch: ")  # pyright: ignore[reportAttributeAccessIssue] - pyarrow.compute makes its functions at import
    ok = table.filter(pc.equal(table["status"], "ok"))  # pyright: ignore[reportAttributeAccessIssue] - pyarrow.compute makes its functions at import
    counts = {"status": _counts(table["status"].to_pylist())}
    counts.update({c: _counts(ok[c].to_pylist()) for c in cols[1:]})
    captioned = table.num_rows - table["caption"].null_count
    return {
        "rows": table.num_rows,
        "ok_rows": ok.num_rows,
        "captioned": captioned,
        "counts": counts,
        "hash_mismatches": sum(mismatch.to_pylist()),  # downloads that were not the source's file
    }


def _unchanged(run_dir: Path, n_shards: int, manifest: dict) -> dict | None:
    folder = run_dir / "catalog"
    try:
        old = json.loads((folder / "_manifest.json").read_text())
    except (OSError, ValueError):
        return None
    keys = ("stage_hashes", "config_hash", "zxl_version")
    parts = [f"part-{shard_name(s)}.parquet" for s in range(n_shards)]
    if any(old.get(k) != manifest.get(k) for k in keys) or old.get("parts") != parts:
        return None
    return old if all((folder / p).is_file() for p in parts) else None


def write_catalog(run_dir: Path, n_shards: int, manifest: dict) -> dict:
    """Write ``catalog/`` from the per-shard tables; returns the manifest written — or, when the
    catalog there was made from the same stage outputs and config (its manifest's stage hashes,
    config hash and zxl version) and is whole, that catalog's manifest, and nothing is written."""
    run_dir = Path(run_dir)
    if (same := _unchanged(run_dir, n_shards, manifest)) is not None:
        return same
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **manifest,
        **summarize(run_dir, n_shards),
        "parts": [f"part-{shard_name(s)}.parquet" for s in range(n_shards)],
        "columns": SCHEMA.names,
    }
    blob = json.dumps(manifest, sort_keys=True, default=str)
    with replacing(run_dir / "catalog", folder=True) as tmp:  # swapped in whole: readers never see a mix
        for s in range(n_shards):
            table = pq.read_table(stage_path(run_dir, "catalog", s))
            write_table_atomic(table.select(SCHEMA.names), tmp / f"part-{shard_name(s)}.parquet",
                               {MANIFEST_KEY: blob})  # fmt: skip
        write_json_atomic(manifest, tmp / "_manifest.json")
    return manifest
