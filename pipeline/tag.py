"""tag: rating, year and the tags of each category (general, character, copyright, artist, meta) for
every row of a shard, as the source and the taggers give them: the curator's rules (aliases,
exclusions …) are applied later, by the global ``tagrules`` step (pipeline/tagrules.py).

The configured taggers run in priority order (``taggers.registry.merge``); model taggers see the
shard's stored images (ok rows only), the metadata tagger every row's source columns. A row with
no year from its source takes the year of the original file's EXIF DateTimeOriginal, which
img2dataset kept in ``shards/NNNNN.parquet`` (``fetch.extract_exif``). Bad values never stop
a shard: they become nulls, the row's ``problem`` says why, and the counts per kind of problem
go into the stage file's metadata (``zxl.problems``) and from there into the manifest.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from zxl.images import ImageDecodeError
from zxl.pipeline.imagepass import ImageWork, StoredImage
from zxl.pipeline.stages import ShardJob, shard_name, stage_path
from zxl.taggers.base import empty
from zxl.taggers.config import TagConfig
from zxl.taggers.registry import get_taggers, merge

TAG_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("rating", pa.string()),
        ("rating_source", pa.string()),
        ("year", pa.int16()),
        ("tags", pa.list_(pa.string())),
        ("characters", pa.list_(pa.string())),
        ("copyrights", pa.list_(pa.string())),
        ("artists", pa.list_(pa.string())),
        ("meta", pa.list_(pa.string())),
        ("problem", pa.string()),
    ]
)
EXIF_DATE = re.compile(r"^\s*(\d{4}):(\d\d):(\d\d)")


def exif_years(run_dir: Path, shard: int) -> dict[str, int]:
    """zxl key → year of EXIF DateTimeOriginal (or DateTime), from img2dataset's shard parquet."""
    path = run_dir / "shards" / f"{shard_name(shard)}.parquet"
    if not path.exists() or "exif" not in pq.read_schema(path).names:
        return {}
    t = pq.read_table(path, columns=["zxl_key", "exif"])
    years = {}
    for key, blob in zip(t["zxl_key"].to_pylist(), t["exif"].to_pylist(), strict=True):
        if not blob:
            continue
        try:
            exif = json.loads(blob)
        except ValueError:
            continue
        for field in ("EXIF DateTimeOriginal", "Image DateTime"):
            m = EXIF_DATE.match(str(exif.get(field, "")))
            if m and 1990 <= int(m.group(1)) <= 2100:
                years[key] = int(m.group(1))
                break
    return years


def exif_year_of(image) -> int | None:
    """The year of an opened image's EXIF DateTimeOriginal (or DateTime), if it has one."""
    try:
        exif = image.getexif()
        value = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)  # DateTimeOriginal, DateTime
    except Exception:  # noqa: BLE001 - broken EXIF is no year
        return None
    m = EXIF_DATE.match(str(value or ""))
    return int(m.group(1)) if m and 1990 <= int(m.group(1)) <= 2100 else None


def problem_kind(problem: str) -> str:
    """'metadata: rating: unknown rating 'x'' → 'metadata: rating: unknown rating …' (for counting)."""
    return re.sub(r"'[^']*'|\d{4}", "…", problem)


def _largest(sides: list[int | None]) -> int | None:
    """The side that serves every image tagger: None (whole) when one needs the whole image."""
    known = [s for s in sides if s is not None]
    return None if len(known) < len(sides) or not known else max(known)


def tag_rows(cfg: TagConfig, rows, images_for) -> tuple[pd.DataFrame, Counter]:
    """Run the taggers over a DataFrame; ``images_for(side)`` decodes the rows' images on demand, reduced
    to the largest input side the image taggers need (``Tagger.input_side``; None: whole)."""
    taggers = get_taggers(cfg)
    readers = [t for t in taggers if t.needs_images]
    sides = [t.input_side for t in readers]
    images = images_for(_largest(sides)) if readers else None
    merged = merge([(t.source, t.tag(images if t.needs_images else None, rows)) for t in taggers], len(rows))
    return merged, _problems(merged)


def _problems(merged: pd.DataFrame) -> Counter:
    """How many rows have each kind of problem."""
    counts = Counter()
    for p in merged["problem"].dropna():
        for part in p.split("; "):
            counts[problem_kind(part)] += 1
    return counts


class TagWork(ImageWork):
    """tag on one shard (``imagepass``): the image taggers a chunk of ``tag.batch_size`` images at a
    time as the pass hands them over (each image decoded at the largest input side they need), the
    metadata tagger over every row at the end, then the merge."""

    def __init__(self, job: ShardJob, cfg: TagConfig):
        super().__init__(job)
        self.cfg = cfg
        self.taggers = get_taggers(cfg)
        self.readers = [t for t in self.taggers if t.needs_images]
        self.needs_images = bool(self.readers)
        self.side = _largest([t.input_side for t in self.readers])
        self.long = bool(self.readers) and all(t.input_long for t in self.readers)
        self.ahead = max(1, cfg.batch_size)
        self.rows = job.read("source").to_pandas()
        self.chunk: list[tuple[int, Image.Image | None]] = []
        self.outputs: dict[int, dict[int, dict]] = {id(t): {} for t in self.readers}  # tagger → row → values

    def prepare(self, i: int, image: StoredImage):
        try:
            return image.view(self.side, long=self.long)
        except ImageDecodeError:
            return None  # inspect passed it; a tagger that cannot read it leaves the row's tags empty

    def take(self, i: int, item) -> None:
        if item is None:  # no image for this row (inspect refused it, or it did not decode): as alone
            return
        self.chunk.append((i, item))
        if len(self.chunk) >= self.cfg.batch_size:
            self._run_chunk()

    def _run_chunk(self) -> None:
        if not self.chunk:
            return
        idx = [i for i, _ in self.chunk]
        images = [im for _, im in self.chunk]
        for t in self.readers:
            out = t.tag(images, self.rows.iloc[idx].reset_index(drop=True)).to_dict("records")
            self.outputs[id(t)].update(zip(idx, out, strict=True))
        self.chunk = []

    def _frame(self, tagger) -> pd.DataFrame:
        """An image tagger's output over every row (rows it saw no image of: all None)."""
        frame = empty(len(self.rows))
        got = self.outputs[id(tagger)]
        for column in {c for values in got.values() for c in values}:
            frame[column] = pd.Series([got[i].get(column) if i in got else None for i in range(len(frame))],
                                      dtype=object)  # fmt: skip
        return frame

    def finish(self) -> tuple[pa.Table, dict]:
        self._run_chunk()
        rows = self.rows
        results = [(t.source, self._frame(t) if t.needs_images else t.tag(None, rows)) for t in self.taggers]
        merged = merge(results, len(rows))
        counts = _problems(merged)
        if self.cfg.exif_year:
            years = exif_years(self.job.run_dir, self.job.shard)
            filled = [y if y is not None else years.get(k) for y, k in zip(merged["year"], rows["key"], strict=True)]
            merged["year"] = pd.Series(filled, dtype=object)
        merged.insert(0, "key", rows["key"].tolist())
        table = pa.Table.from_pandas(merged[TAG_SCHEMA.names], schema=TAG_SCHEMA, preserve_index=False)
        return table, {"zxl.problems": json.dumps(dict(counts))}


def problem_counts(run_dir: Path, n_shards: int) -> dict[str, int]:
    total = Counter()
    for s in range(n_shards):
        meta = pq.read_schema(stage_path(run_dir, "tag", s)).metadata or {}
        total.update(json.loads(meta.get(b"zxl.problems", b"{}")))
    return dict(total.most_common())
