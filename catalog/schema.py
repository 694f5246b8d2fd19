"""Catalog schema v2 (docs/design.md "The catalog"): one row per source item, failures included, and
reading a catalog's files (its parts and ``_manifest.json``).

v2 adds the booru tag categories beside ``tags`` (general) and ``characters``: ``copyrights``,
``artists`` and ``meta``. Every reader opens parts with ``SCHEMA``, so a v1 catalog reads with
those columns null (as ``weight`` and ``cluster``, added within v1, read for older v1 catalogs)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 2
MANIFEST_KEY = "zxl.manifest"  # the manifest, also in every part's key-value metadata
STATUSES = ("ok", "failed_download", "failed_decode", "filtered", "duplicate")
RATINGS = ("general", "sensitive", "questionable", "explicit")

SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("source_id", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("shard_key", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("phash", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("bucket", pa.string()),
        pa.field("aesthetic", pa.float32()),
        pa.field("score", pa.int8()),
        pa.field("rating", pa.string()),
        pa.field("rating_source", pa.string()),
        pa.field("year", pa.int16()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("characters", pa.list_(pa.string())),
        pa.field("copyrights", pa.list_(pa.string())),  # v2
        pa.field("artists", pa.list_(pa.string())),  # v2
        pa.field("meta", pa.list_(pa.string())),  # v2: highres, commentary_request …, out of captions by default
        pa.field("caption", pa.string()),
        pa.field("duplicate_of", pa.string()),
        pa.field("repeats", pa.int16(), nullable=False),
        # Added within v1 (older catalogs read them as null): the diversity-aware draw weight per epoch
        # (zxl's trainer draws with it; equal to repeats at weigh.diversity 0) and the k-means cluster.
        pa.field("weight", pa.float32()),
        pa.field("cluster", pa.int32()),
        pa.field("attempts", pa.int16()),  # v2: requests made for the row's URL, retries included
    ]
)
V1_COLUMNS = tuple(n for n in SCHEMA.names if n not in ("copyrights", "artists", "meta", "attempts"))
TAG_CATEGORIES = {"general": "tags", "characters": "characters", "copyrights": "copyrights", "artists": "artists",
                  "meta": "meta"}  # fmt: skip  # category -> its column


def conform(columns: dict[str, list | pa.Array], n_rows: int) -> pa.Table:
    """A catalog table from the columns a stage has; every other column is present and null."""
    unknown = set(columns) - set(SCHEMA.names)
    if unknown:
        raise KeyError(f"not catalog columns: {sorted(unknown)}")
    arrays = []
    for field in SCHEMA:
        if field.name in columns:
            values = columns[field.name]
            arrays.append(pa.array(values, field.type) if isinstance(values, list) else values.cast(field.type))
        else:
            arrays.append(pa.nulls(n_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def read_manifest(catalog_dir: str | Path) -> dict:
    path = Path(catalog_dir) / "_manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{catalog_dir} is not a zxl catalog: it has no _manifest.json")
    return json.loads(path.read_text())


def read_catalog(catalog_dir: str | Path) -> pa.Table:
    """The whole catalog as one Arrow table (small catalogs and tests; use DuckDB for large ones)."""
    return pq.read_table(Path(catalog_dir), schema=SCHEMA)
