"""Stats and queries over a catalog with DuckDB, straight from the Parquet parts (no full load).

``open_catalog`` checks what it is given: a folder with ``_manifest.json`` of a schema version
this zxl reads (v2, and v1 with the columns v2 added read as null), and parts that open. A
missing or corrupt part is reported by name and left out, so the rest of the catalog still answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from zxl.catalog.schema import SCHEMA, SCHEMA_VERSION
from zxl.catalog.tagstats import TOP_PER_CATEGORY, score_year, tag_counts, token_lengths_safe

READS = (1, SCHEMA_VERSION)  # a v1 catalog reads with v2's tag columns null


class CatalogError(ValueError):
    """A catalog that cannot be read; the message says which file and why."""


@dataclass
class Catalog:
    path: Path
    manifest: dict
    parts: list[Path]
    problems: list[str] = field(default_factory=list)

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with a ``catalog`` view over the readable parts."""
        con = duckdb.connect()
        if self.parts:
            files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in self.parts)
            have = set(pq.read_schema(self.parts[0]).names)  # a catalog from before a column was added
            extra = "".join(f', NULL::{_duck_type(f.type)} AS "{f.name}"' for f in SCHEMA if f.name not in have)
            con.execute(f"CREATE VIEW catalog AS SELECT *{extra} FROM read_parquet([{files}])")
        else:
            cols = ", ".join(f'NULL::{_duck_type(f.type)} AS "{f.name}"' for f in SCHEMA)
            con.execute(f"CREATE VIEW catalog AS SELECT {cols} WHERE false")
        return con


def _duck_type(t) -> str:
    s = str(t)
    return {
        "string": "VARCHAR", "int64": "BIGINT", "int32": "INTEGER", "int16": "SMALLINT", "int8": "TINYINT",
        "float": "FLOAT", "list<item: string>": "VARCHAR[]",
    }.get(s, "VARCHAR")  # fmt: skip


def open_catalog(path: str | Path) -> Catalog:
    path = Path(path)
    manifest_path = path / "_manifest.json"
    if not manifest_path.is_file():
        raise CatalogError(f"{path} is not a zxl catalog: it has no _manifest.json")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as e:
        raise CatalogError(f"{manifest_path} is not valid JSON: {e}") from None
    version = manifest.get("schema_version")
    if version not in READS:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        hint = "upgrade zxl to read it" if newer else "recreate it with this zxl"
        raise CatalogError(
            f"{path} has catalog schema v{version}; this zxl reads {' and '.join(f'v{v}' for v in READS)}: {hint}"
        )
    parts, problems = [], []
    for name in manifest.get("parts", []):
        p = path / name
        if not p.is_file():
            problems.append(f"part {name} is missing")
            continue
        try:
            pq.read_metadata(p)
        except Exception as e:  # noqa: BLE001 - a corrupt part is reported and skipped
            problems.append(f"part {name} cannot be read: {e}")
            continue
        parts.append(p)
    return Catalog(path, manifest, parts, problems)


def _counts(con, expr: str, where: str = "status = 'ok'") -> dict[str, int]:
    rows = con.execute(
        f"SELECT {expr} AS k, count(*) FROM catalog WHERE {where} GROUP BY 1 ORDER BY 2 DESC, 1"
    ).fetchall()
    return {("null" if k is None else str(k)): n for k, n in rows}


def stats(cat: Catalog, top_tags: int = 20, per_category: int = TOP_PER_CATEGORY, tokens: bool = False) -> dict:
    """Everything ``zxl catalog stats`` prints, as a dict. ``tokens``: also count the captions' CLIP
    tokens (catalog/tagstats.py: loads the tokenizer, seconds; the rest takes well under one)."""
    con = cat.connect()
    total, ok, captioned, repeats = con.execute(
        "SELECT count(*), count(*) FILTER (status = 'ok'), count(caption) FILTER (status = 'ok'), "
        "coalesce(sum(repeats), 0) FROM catalog"
    ).fetchall()[0]
    categories, tags = tag_counts(con, per_category, top_ok=top_tags)
    extra = {"token_lengths": token_lengths_safe(con, cat.manifest)} if tokens else {}
    return {
        "catalog": str(cat.path),
        "rows": total,
        "ok_rows": ok,
        "images_per_epoch": int(repeats),
        "status": _counts(con, "status", "true"),
        "score": dict(sorted(_counts(con, "score").items())),
        "rating": _counts(con, "rating"),
        "year": dict(sorted(_counts(con, "year").items())),
        "bucket": _counts(con, "bucket"),
        "top_tags": dict(tags),
        "caption_coverage": {"captioned": captioned, "ok_rows": ok, "share": round(captioned / ok, 4) if ok else 0.0},
        "score_edges": (cat.manifest.get("score_edges") or {}).get("edges"),
        "diversity": cat.manifest.get("diversity"),
        "taste": cat.manifest.get("taste"),
        "tag_categories": categories,
        "score_year": score_year(con, cat.manifest),
        **extra,
        "tag_rules": cat.manifest.get("tag_rules"),
        "hash_mismatches": cat.manifest.get("hash_mismatches"),
        "problems": cat.problems,
    }


def query(cat: Catalog, where: str = "", columns: str = "", order: str = "", limit: int | None = 20):
    """A DuckDB relation over the catalog: SELECT columns WHERE where ORDER BY order LIMIT limit."""
    sql = f"SELECT {columns or '*'} FROM catalog"
    if where:
        sql += f" WHERE {where}"
    if order:
        sql += f" ORDER BY {order}"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    con = cat.connect()
    try:
        return con, con.sql(sql)
    except duckdb.Error as e:
        raise CatalogError(f"the query does not run: {e}".splitlines()[0]) from None
