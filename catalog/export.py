"""Exports to what trainers already read. One family: ``export(rows, images, out, opts) -> summary``.

- ``kohya``: a kohya sd-scripts DreamBooth-style folder, ``<out>/<repeats>_<name>/<key>.<ext>``
  with ``<key>.txt`` beside each image (captions as RECIPE.md "Captions for training" builds them;
  the first three comma-separated tokens are score, rating and year: train with
  ``--keep_tokens 3 --shuffle_caption``);
- ``kohya-json``: kohya's fine-tuning metadata, ``<out>/meta.json`` ({image path without
  extension: {"caption", "tags"}}), with the images in ``<out>/images/``;
- ``webdataset``: ``<out>/00000.tar`` … with ``<key>.<ext>``, ``<key>.txt`` and ``<key>.json``
  (the whole catalog row);
- ``hf-parquet``: ``<out>/data-00000.parquet`` … with an ``image`` column (bytes + path) that
  Hugging Face ``datasets`` loads as an Image feature, the caption as ``text``, and every catalog
  column.

Only rows the catalog has bytes for are written; rows the filter selects but whose image is
missing are counted and named in the summary.
"""

from __future__ import annotations

import io
import json
import random
import re
import tarfile
from abc import ABC, abstractmethod
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from zxl.catalog.captions import build_caption
from zxl.catalog.images import ImageStore
from zxl.catalog.schema import SCHEMA_V1
from zxl.config import ConfigError

SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _name(key: str) -> str:
    """A file-system-safe stem for a catalog key (keys are source ids or hashes)."""
    return SAFE.sub("_", key)[:120] or "_"


def _jsonable(row: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()}


def _images(rows, images: ImageStore, summary: dict):
    for row in rows:
        try:
            data, ext = images.get(row["shard"], row["shard_key"])
        except (KeyError, FileNotFoundError) as e:
            summary["missing"].append(f"{row['key']}: {e}")
            continue
        yield row, data, ext


class Exporter(ABC):
    name: str

    def __init__(self, seed: int = 0, folder_name: str = "zxl"):
        self.rng = random.Random(seed)
        self.folder_name = folder_name

    def caption(self, row: dict) -> str:
        return build_caption(row, self.rng)

    @abstractmethod
    def export(self, rows, images: ImageStore, out: Path) -> dict:
        """Write ``rows`` (dicts) with their images under ``out``; returns counts."""


class KohyaFolder(Exporter):
    name = "kohya"

    def export(self, rows, images, out):
        summary = {"written": 0, "missing": [], "folders": {}}
        for row, data, ext in _images(rows, images, summary):
            reps = int(row.get("repeats") or 0)
            if reps <= 0:
                continue
            folder = out / f"{reps}_{self.folder_name}"
            folder.mkdir(parents=True, exist_ok=True)
            stem = _name(row["key"])
            (folder / f"{stem}.{ext}").write_bytes(data)
            (folder / f"{stem}.txt").write_text(self.caption(row) + "\n")
            summary["folders"][folder.name] = summary["folders"].get(folder.name, 0) + 1
            summary["written"] += 1
        return summary


class KohyaJson(Exporter):
    name = "kohya-json"

    def export(self, rows, images, out):
        summary = {"written": 0, "missing": []}
        (out / "images").mkdir(parents=True, exist_ok=True)
        meta = {}
        for row, data, ext in _images(rows, images, summary):
            stem = _name(row["key"])
            (out / "images" / f"{stem}.{ext}").write_bytes(data)
            tags = [t.replace("_", " ") for t in (row.get("characters") or []) + (row.get("tags") or [])]
            entry = {"tags": ", ".join(tags), "caption": self.caption(row)}
            meta[str((out / "images" / stem).resolve())] = entry
            summary["written"] += 1
        (out / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        return summary


class WebDataset(Exporter):
    name = "webdataset"
    per_tar = 1000

    def export(self, rows, images, out):
        summary = {"written": 0, "missing": [], "tars": 0}
        out.mkdir(parents=True, exist_ok=True)
        tar = None
        for row, data, ext in _images(rows, images, summary):
            if summary["written"] % self.per_tar == 0:
                if tar:
                    tar.close()
                tar = tarfile.open(out / f"{summary['tars']:05d}.tar", "w")
                summary["tars"] += 1
            stem = _name(row["key"])
            for suffix, blob in ((ext, data), ("txt", self.caption(row).encode()),
                                 ("json", json.dumps(_jsonable(row), default=str).encode())):  # fmt: skip
                info = tarfile.TarInfo(f"{stem}.{suffix}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
            summary["written"] += 1
        if tar:
            tar.close()
        return summary


def _hf_feature(t: pa.DataType) -> dict:
    """The Hugging Face ``datasets`` feature of an Arrow type (the kinds the catalog uses)."""
    if pa.types.is_list(t):
        return {"feature": _hf_feature(t.value_type), "_type": "List"}
    names = {pa.string(): "string", pa.int8(): "int8", pa.int16(): "int16", pa.int32(): "int32",
             pa.int64(): "int64", pa.float32(): "float32", pa.float64(): "float64", pa.bool_(): "bool"}  # fmt: skip
    return {"dtype": names[t], "_type": "Value"}


class HFParquet(Exporter):
    """Every catalog column, plus ``image`` (bytes + path, an Image feature) and ``text`` (the
    training caption), with the features in the files' ``huggingface`` metadata."""

    name = "hf-parquet"
    per_file = 2000
    FEATURES = {
        "image": {"_type": "Image"},
        "text": {"dtype": "string", "_type": "Value"},
        **{f.name: _hf_feature(f.type) for f in SCHEMA_V1},
    }
    SCHEMA = pa.schema(
        [
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("text", pa.string()),
            *[(f.name, f.type) for f in SCHEMA_V1],
        ],
        metadata={"huggingface": json.dumps({"info": {"features": FEATURES}})},
    )

    def export(self, rows, images, out):
        summary = {"written": 0, "missing": [], "files": 0}
        out.mkdir(parents=True, exist_ok=True)
        batch: list[dict] = []

        def flush():
            if batch:
                table = pa.Table.from_pylist(batch, schema=self.SCHEMA)
                pq.write_table(table, out / f"data-{summary['files']:05d}.parquet")
                summary["files"] += 1
                batch.clear()

        for row, data, ext in _images(rows, images, summary):
            batch.append({
                "image": {"bytes": data, "path": f"{_name(row['key'])}.{ext}"},
                "text": self.caption(row), **{f.name: row.get(f.name) for f in SCHEMA_V1},
            })  # fmt: skip
            summary["written"] += 1
            if len(batch) >= self.per_file:
                flush()
        flush()
        return summary


EXPORTERS = {cls.name: cls for cls in (KohyaFolder, KohyaJson, WebDataset, HFParquet)}


def exporter(name: str, **kw) -> Exporter:
    try:
        return EXPORTERS[name](**kw)
    except KeyError:
        raise ConfigError(f"--format must be one of {', '.join(EXPORTERS)}, got '{name}'") from None
