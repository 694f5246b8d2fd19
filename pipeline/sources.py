"""Read a URL list (parquet, csv or jsonl), map its columns onto ours and split it into shards.

Every input row becomes exactly one row downstream. Its ``key`` is the source's own id where the
list has one (``source.id_column``), else a hash of the URL. An id seen again gets ``#2``, ``#3``…
in input order, skipping any such name that is itself an id in the list, so keys are unique,
every id that appears keeps its own key, and the same list always gives the same keys.

The source's other columns travel with the row in ``stages/source/`` (renamed ``src_<name>`` where
they would clash with a column zxl adds), whatever their Arrow type: timestamps become ISO 8601
text in their own offset (``2021-03-04T05:06:07+09:00``; a naive timestamp stays naive), dates and
times ISO text, decimals exact text, durations seconds; binary columns are dropped and named in the
manifest (``source.dropped_columns``), which also counts the repeated ids.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from zxl.config import ConfigError, config_hash, to_dict
from zxl.files import write_table_atomic
from zxl.pipeline.config import SourceConfig
from zxl.pipeline.stages import remove_stale, stage_path, stored_hash

RESERVED = {
    "key", "url", "source_id", "zxl_key", "status", "error", "error_message", "width", "height",
    "original_width", "original_height", "exif", "sha256", "md5", "caption", "shard", "shard_key",
}  # fmt: skip
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


def _format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        if fmt not in ("parquet", "csv", "jsonl"):
            raise ConfigError(f"source.format must be auto, parquet, csv or jsonl, got '{fmt}'")
        return fmt
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ConfigError(
            f"cannot tell the format of URL list {path} from its suffix; set source.format to parquet, csv or jsonl"
        ) from None


def read_url_list(cfg: SourceConfig) -> pa.Table:
    """The URL list as an Arrow table, with clear errors for every way it can be unusable."""
    if not cfg.path:
        raise ConfigError("no URL list: pass --urls PATH (or set source.path), or use --demo")
    path = Path(cfg.path)
    if not path.is_file():
        raise ConfigError(f"URL list not found: {path} (source.path)")
    fmt = _format(path, cfg.format)
    try:
        if fmt == "parquet":
            table = pq.read_table(path)
        elif fmt == "csv":
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            table = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
            )
        else:
            table = pajson.read_json(path)
    except (pa.ArrowInvalid, OSError, ValueError) as e:
        raise ConfigError(f"cannot read URL list {path} as {fmt}: {e}") from e
    if table.num_rows == 0:
        raise ConfigError(f"URL list {path} is empty: it has no rows")
    names = table.column_names
    for option, column in (("source.url_column", cfg.url_column), ("source.id_column", cfg.id_column)):
        if column and column not in names:
            raise ConfigError(
                f"URL list {path} has no column '{column}' ({option}); its columns are: {', '.join(names)}"
            )
    return table


def _keys(urls: list, ids: list | None) -> list[str]:
    bases = [
        str(ids[i]) if ids is not None and ids[i] is not None else hashlib.sha256((url or "").encode()).hexdigest()[:20]
        for i, url in enumerate(urls)
    ]
    taken, keys, seen = set(bases), [], {}
    for base in bases:
        if base not in seen:
            seen[base] = 1
            keys.append(base)
            continue
        n = seen[base]
        while True:  # the next #n that is neither an id of the list nor a key already given
            n += 1
            key = f"{base}#{n}"
            if key not in taken:
                break
        seen[base] = n
        taken.add(key)
        keys.append(key)
    return keys


def _plain(col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """A source column as types every stage (and img2dataset's JSON) can carry; None: drop it."""
    t = col.type
    if pa.types.is_dictionary(t):
        return _plain(col.cast(t.value_type))
    if pa.types.is_null(t):
        return col.cast(pa.string())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return None
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t):
        return pa.chunked_array(
            [pa.array([None if v is None else v.isoformat() for v in col.to_pylist()], pa.string())]
        )
    if pa.types.is_decimal(t):
        return col.cast(pa.string())
    if pa.types.is_duration(t):
        return pa.chunked_array(
            [pa.array([None if v is None else v.total_seconds() for v in col.to_pylist()], pa.float64())]
        )
    return col


def normalize(table: pa.Table, cfg: SourceConfig) -> pa.Table:
    """key, url, source_id first, then the kept source columns (see the module docstring)."""
    urls = [None if u is None else str(u).strip() for u in table[cfg.url_column].to_pylist()]
    ids = table[cfg.id_column].to_pylist() if cfg.id_column else None
    out = {
        "key": pa.array(_keys(urls, ids), pa.string()),
        "url": pa.array([u or "" for u in urls], pa.string()),
        "source_id": pa.array([None if i is None else str(i) for i in ids] if ids else [None] * len(urls), pa.string()),
    }
    for name in kept_columns(table, cfg):
        col = _plain(table[name])
        if col is not None:
            out[f"src_{name}" if name in RESERVED else name] = col
    return pa.table(out)


def kept_columns(table: pa.Table, cfg: SourceConfig) -> list[str]:
    """The source columns that travel with each row (``source.keep_columns``), the URL's aside."""
    keep = table.column_names if "*" in cfg.keep_columns else cfg.keep_columns
    for name in keep:
        if name not in table.column_names:
            raise ConfigError(f"source.keep_columns names '{name}', which the URL list does not have")
    if cfg.hash_column:  # fetch.verify_hash reads it from the source stage, whatever keep_columns says
        if cfg.hash_column not in table.column_names:
            raise ConfigError(f"source.hash_column names '{cfg.hash_column}', which the URL list does not have")
        keep = list(dict.fromkeys([*keep, cfg.hash_column]))
    return [name for name in keep if name != cfg.url_column]


def report(table: pa.Table, cfg: SourceConfig) -> dict:
    """What the manifest says of the list: rows, repeated ids, columns dropped (binary) and why."""
    dropped = {n: str(table[n].type) for n in kept_columns(table, cfg) if _plain(table.slice(0, 0)[n]) is None}
    ids = table[cfg.id_column].to_pylist() if cfg.id_column else None
    repeats = sum(n - 1 for n in Counter(str(i) for i in ids if i is not None).values()) if ids else 0
    return {
        "rows": table.num_rows,
        "id_column": cfg.id_column or None,
        "repeated_ids": repeats,  # rows whose id an earlier row already had: keyed <id>#2, #3, …
        "dropped_columns": {n: f"{t}: binary columns are not carried" for n, t in dropped.items()},
    }


def split(table: pa.Table, cfg: SourceConfig, run_dir: Path, shard_size: int) -> tuple[int, str]:
    """Write ``stages/source/NNNNN.parquet``; returns (number of shards, the source hash).

    The hash covers the list's content and the settings that shape it, so an unchanged list
    reuses every shard and all that was computed from it.
    """
    if shard_size < 1:
        raise ConfigError(f"run.shard_size must be at least 1, got {shard_size}")
    fingerprint = hashlib.sha256()
    for batch in table.to_batches():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as w:
            w.write_batch(batch)
        fingerprint.update(sink.getvalue().to_pybytes())
    shape = {k: v for k, v in to_dict(cfg).items() if k != "path"}  # the content is hashed, not its path
    source_hash = config_hash({"content": fingerprint.hexdigest(), "source": shape, "shard_size": shard_size})
    n_shards = -(-table.num_rows // shard_size)
    folder = Path(run_dir) / "stages" / "source"
    normalized = None
    for shard in range(n_shards):
        path = stage_path(run_dir, "source", shard)
        if stored_hash(path) == source_hash:
            continue
        if normalized is None:
            normalized = normalize(table, cfg)
        part = normalized.slice(shard * shard_size, shard_size)
        write_table_atomic(part, path, {"zxl.stage_hash": source_hash})
    remove_stale(folder, n_shards)
    return n_shards, source_hash
