"""Exports to what trainers already read. One family: ``exporter(name, seed=…, folder_name=…)`` builds one,
``.export(rows, images, out) -> summary`` writes it.

- ``kohya``: a kohya sd-scripts DreamBooth-style folder, ``<out>/<repeats>_<name>/<key>.<ext>``
  with ``<key>.txt`` beside each image, and ``kohya_args.txt``, the exact sd-scripts arguments it is
  made for: captions keep score, rating and year (and the caption layout's fixed head: characters,
  copyrights, artists) in front through ``--keep_tokens_separator``, and
  an image whose bucket kohya's rule would choose differently is fitted to zxl's bucket;
- ``kohya-json``: kohya's fine-tuning metadata: ``images/``, ``meta.json`` ({file name: {"caption"}})
  and, for the repeats, ``meta_<r>x.json`` files with a ``dataset.toml`` (``--dataset_config``);
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
import shlex
import tarfile
from abc import ABC, abstractmethod
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from zxl.buckets import BUCKETS
from zxl.catalog.captions import DEFAULT_LAYOUT, KEEP_SEPARATOR, TagLayout, build_caption, kohya_caption
from zxl.catalog.images import ImageStore
from zxl.catalog.schema import SCHEMA
from zxl.config import ConfigError

BUCKET_MIN, BUCKET_MAX, BUCKET_STEP = min(min(b) for b in BUCKETS), max(max(b) for b in BUCKETS), 64
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

    def __init__(self, seed: int = 0, folder_name: str = "zxl", layout: TagLayout = DEFAULT_LAYOUT):
        self.rng = random.Random(seed)
        self.folder_name = folder_name
        self.layout = layout  # the catalog's caption layout (catalog.captions.layout_of its manifest)

    def caption(self, row: dict) -> str:
        return build_caption(row, self.rng, layout=self.layout)

    @abstractmethod
    def export(self, rows, images: ImageStore, out: Path) -> dict:
        """Write ``rows`` (dicts) with their images under ``out``; returns counts."""


def kohya_bucket(width: int, height: int, buckets: list[tuple[int, int]] = BUCKETS) -> tuple[int, int]:
    """The bucket kohya's ``BucketManager.select_bucket`` picks (upscaling allowed) from
    ``make_bucket_resolutions`` buckets: the image's own size when it is one, else the first
    bucket with the least |w/h − bw/bh| (linear, where zxl measures in log aspect)."""
    if (width, height) in set(buckets):
        return width, height
    errors = [abs(bw / bh - width / height) for bw, bh in buckets]
    return buckets[errors.index(min(errors))]


def fit_bucket(data: bytes, ext: str, bucket: tuple[int, int]) -> tuple[bytes, str]:
    """The image resized to cover ``bucket`` and centre-cropped to it (what kohya does at training
    time), so kohya's own bucket choice is exactly ``bucket``; JPEG stays JPEG (quality 95), the rest
    become PNG."""
    from PIL import Image, ImageOps

    from zxl.images import decode

    im = ImageOps.exif_transpose(decode(data))
    im = ImageOps.fit(im.convert("RGBA" if "A" in im.mode else "RGB"), bucket, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if ext in ("jpg", "jpeg") and im.mode == "RGB":
        im.save(buf, "JPEG", quality=95)
        return buf.getvalue(), ext
    im.save(buf, "PNG")
    return buf.getvalue(), "png"


def _kohya_image(row: dict, data: bytes, ext: str, summary: dict) -> tuple[bytes, str]:
    """The stored image, or, where kohya's bucket rule would pick another bucket than zxl's, the image
    fitted to zxl's bucket (counted in the summary)."""
    want = None
    if row.get("bucket"):
        bucket_w, bucket_h = (int(v) for v in row["bucket"].split("x"))
        want = (bucket_w, bucket_h)
    width, height = row.get("width"), row.get("height")
    if want is None or width is None or height is None or kohya_bucket(width, height) == want:
        return data, ext
    summary["fitted_to_bucket"] += 1
    return fit_bucket(data, ext, want)


KOHYA_BUCKET_ARGS = (f"--enable_bucket --min_bucket_reso {BUCKET_MIN} --max_bucket_reso {BUCKET_MAX} "
                     f"--bucket_reso_steps {BUCKET_STEP} --resolution 1024,1024")  # fmt: skip
# Booru captions pass 75 tokens: kohya encodes 225 in 75-token chunks, as zxl's recipe trains (data.max_token_length)
KOHYA_MODEL_ARGS = "--v_parameterization --zero_terminal_snr --max_token_length 225"


class KohyaFolder(Exporter):
    """``<repeats>_<name>/<stem>.<ext>`` with ``<stem>.txt``, and ``kohya_args.txt``: the sd-scripts
    arguments it is made for (sdxl_train.py / sdxl_train_network.py)."""

    name = "kohya"

    def export(self, rows, images, out):
        summary = {"written": 0, "missing": [], "folders": {}, "fitted_to_bucket": 0}
        for row, data, ext in _images(rows, images, summary):
            reps = int(row.get("repeats") or 0)
            if reps <= 0:
                continue
            folder = out / f"{reps}_{self.folder_name}"
            folder.mkdir(parents=True, exist_ok=True)
            stem = _name(row["key"])
            data, ext = _kohya_image(row, data, ext, summary)
            (folder / f"{stem}.{ext}").write_bytes(data)
            (folder / f"{stem}.txt").write_text(kohya_caption(row, self.rng, self.layout) + "\n")
            summary["folders"][folder.name] = summary["folders"].get(folder.name, 0) + 1
            summary["written"] += 1
        out.mkdir(parents=True, exist_ok=True)
        where = shlex.quote(str(out.resolve()))
        args = (f'--caption_extension .txt --shuffle_caption --keep_tokens_separator "{KEEP_SEPARATOR}" '
                f"{KOHYA_BUCKET_ARGS} {KOHYA_MODEL_ARGS} --train_data_dir {where}")  # fmt: skip
        (out / "kohya_args.txt").write_text(args + "\n")
        summary["kohya_args"] = args
        return summary


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


class KohyaJson(Exporter):
    """kohya's fine-tuning metadata: ``images/``, ``meta.json`` (every image, for ``--in_json`` with
    ``--train_data_dir images``), ``meta_<r>x.json`` per repeat count and ``dataset.toml`` with one
    subset per repeat count (for ``--dataset_config``, which carries the repeats). Keys are image file
    names relative to ``images/`` (kohya joins them to the subset's ``image_dir``); the caption holds
    the tags, so there is no ``tags`` entry for kohya to append a second time."""

    name = "kohya-json"

    def export(self, rows, images, out):
        summary = {"written": 0, "missing": [], "fitted_to_bucket": 0, "subsets": {}}
        image_dir = out / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        meta: dict[str, dict] = {}
        by_repeats: dict[int, dict[str, dict]] = {}
        for row, data, ext in _images(rows, images, summary):
            data, ext = _kohya_image(row, data, ext, summary)
            name = f"{_name(row['key'])}.{ext}"
            (image_dir / name).write_bytes(data)
            entry = {"caption": kohya_caption(row, self.rng, self.layout)}
            meta[name] = entry
            reps = int(row.get("repeats") or 0)
            if reps > 0:
                by_repeats.setdefault(reps, {})[name] = entry
            summary["written"] += 1
        (out / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        lines = ["[general]", "shuffle_caption = true", f"keep_tokens_separator = {_toml_str(KEEP_SEPARATOR)}", "",
                 "[[datasets]]", "resolution = 1024", "enable_bucket = true", f"min_bucket_reso = {BUCKET_MIN}",
                 f"max_bucket_reso = {BUCKET_MAX}", f"bucket_reso_steps = {BUCKET_STEP}"]  # fmt: skip
        for reps in sorted(by_repeats):
            path = out / f"meta_{reps}x.json"
            path.write_text(json.dumps(by_repeats[reps], indent=1, ensure_ascii=False))
            summary["subsets"][path.name] = {"images": len(by_repeats[reps]), "num_repeats": reps}
            lines += ["", "  [[datasets.subsets]]", f"  image_dir = {_toml_str(str(image_dir.resolve()))}",
                      f"  metadata_file = {_toml_str(str(path.resolve()))}", f"  num_repeats = {reps}"]  # fmt: skip
        (out / "dataset.toml").write_text("\n".join(lines) + "\n")
        args = f"--dataset_config {shlex.quote(str((out / 'dataset.toml').resolve()))} {KOHYA_MODEL_ARGS}"
        (out / "kohya_args.txt").write_text(args + "\n")
        summary["kohya_args"] = args
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
                assert tar is not None  # opened on the first row (written is 0 then)
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
        **{f.name: _hf_feature(f.type) for f in SCHEMA},
    }
    SCHEMA = pa.schema(
        [
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("text", pa.string()),
            *[(f.name, f.type) for f in SCHEMA],
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
                "text": self.caption(row), **{f.name: row.get(f.name) for f in SCHEMA},
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
