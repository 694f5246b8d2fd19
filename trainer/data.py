"""Training samples from the catalog: trainable rows, scaled recipe buckets, the epoch plan.

docs/recipe.md "Aspect buckets" and "Repeats": rows with ``status = ok`` and ``repeats > 0``; an image
appears ``repeats`` times per epoch; a batch holds one bucket; the order of batches is shuffled
each epoch with seed + epoch. Every random choice here is a pure function of (seed, epoch) or
(seed, step, sample), never of a running generator, so a resumed run draws exactly what an
uninterrupted one draws, and N processes draw what one process with N times the batch draws.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from zxl.buckets import recipe_buckets
from zxl.catalog.captions import DEFAULT_LAYOUT, TagLayout, build_caption
from zxl.catalog.schema import SCHEMA
from zxl.config import ConfigError

COLUMNS = ["key", "status", "shard", "shard_key", "sha256", "width", "height", "original_width", "original_height",
           "score", "rating", "year", "tags", "characters", "copyrights", "artists", "meta", "caption", "repeats",
           "weight", "cluster"]  # fmt: skip


def buckets_for(resolution: int) -> list[tuple[int, int]]:
    """The eleven recipe buckets scaled to an area of resolution² (1024: 768×1344 … 1344×768)."""
    s = resolution / 1024
    return recipe_buckets(area=resolution * resolution, lo=round(768 * s), hi=round(1344 * s), step=round(64 * s))


def nearest(width: np.ndarray, height: np.ndarray, buckets: list[tuple[int, int]]) -> np.ndarray:
    """Index of the bucket nearest in log aspect ratio, for arrays of sizes."""
    logs = np.array([math.log(w / h) for w, h in buckets])
    return np.abs(np.log(width / height)[:, None] - logs[None, :]).argmin(axis=1)


def check_catalog(catalog: str | Path, option: str = "data.catalog") -> Path:
    """``catalog`` as a Path once it is a folder with a readable ``_manifest.json``; else a
    ConfigError naming ``option`` (the config key or flag that gave it) and what is wrong."""
    path = Path(catalog)
    manifest = path / "_manifest.json"
    if not path.is_dir():
        raise ConfigError(f"{option}: {path} does not exist (a catalog folder that zxl curate wrote)")
    if not manifest.is_file():
        raise ConfigError(f"{option}: {path} is not a zxl catalog (no _manifest.json); run zxl curate first")
    try:
        json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{option}: {manifest} does not load ({_one_line(e)}); run zxl curate again to rewrite the catalog"
        ) from None
    return path


def _one_line(e: BaseException, path: Path | None = None) -> str:
    text = str(e).replace(f"Could not open Parquet input source '{path}': ", "") if path else str(e)
    return " ".join(f"{type(e).__name__}: {text}".split())[:300]


def read_parts(catalog: Path, columns: list[str], option: str = "data.catalog") -> pa.Table:
    """``columns`` of every Parquet part in the catalog folder (what ``pq.read_table`` of the folder
    reads), one part at a time so that a damaged one is named: a part that does not read is an error,
    never left out (zxl.catalog.query's ``open_catalog`` reports and skips one for browsing; a
    training run must not quietly train on less than its catalog)."""
    files = ds.dataset(catalog, format="parquet", schema=SCHEMA).files  # discovery opens no file
    tables = []
    for f in sorted(files):
        try:  # a catalog from before `weight`: nulls there
            tables.append(pq.read_table(f, columns=columns, schema=SCHEMA))
        except (pa.ArrowException, OSError) as e:
            raise ConfigError(
                f"{option}: part {f} cannot be read ({_one_line(e, Path(f))}); the catalog is damaged: "
                "run zxl curate again to rewrite it"
            ) from None
    if not tables:
        return SCHEMA.empty_table().select(columns)
    return pa.concat_tables(tables)


def load_rows(catalog: str | Path, resolution: int, draw: str = "weight", option: str = "data.catalog") -> pd.DataFrame:
    """Trainable rows with their bucket and ``draws`` per epoch (the catalog's ``weight`` — fractional
    with weigh.diversity > 0 — or, with ``draw`` "repeats" or a catalog without weights, ``repeats``);
    a clear error, naming ``option``, when there are none or a part does not read."""
    if draw not in ("weight", "repeats"):
        raise ConfigError(f"data.draw must be weight or repeats, got '{draw}'")
    path = check_catalog(catalog, option)
    df = read_parts(path, COLUMNS, option).to_pandas()
    ok = df[(df.status == "ok") & (df.repeats > 0) & df.width.notna()].reset_index(drop=True)
    if ok.empty:
        counts = ", ".join(f"{k} {v}" for k, v in df.status.value_counts().items()) or "no rows"
        raise ConfigError(f"{option}: {path} has no trainable rows (status ok and repeats > 0); it has {counts}")
    weight = ok.weight.astype(float)
    whole = ok.repeats.astype(float)
    ok["draws"] = whole if draw == "repeats" else weight.where(weight.notna(), whole)
    buckets = buckets_for(resolution)
    ok["bucket_index"] = nearest(ok.width.to_numpy(float), ok.height.to_numpy(float), buckets)
    ok = ok.sort_values("key", kind="stable").reset_index(drop=True)
    return ok


def held_out(keys, fraction: float) -> np.ndarray:
    """True for the rows held out of training: those whose key hashes (sha256, as a number in
    [0, 1)) below ``fraction``. The same keys are held out by every run and by ``zxl eval``."""
    keys = list(keys)
    if fraction <= 0:
        return np.zeros(len(keys), bool)
    u = [int.from_bytes(hashlib.sha256(str(k).encode()).digest()[:8], "little") / 2**64 for k in keys]
    return np.asarray(u) < fraction


def rng_for(*parts) -> random.Random:
    """A generator keyed by its parts (seed, epoch, …): the same parts give the same draws anywhere."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class Batch:
    bucket: int
    rows: tuple[int, ...]  # row indices into the frame


def epoch_plan(rows: pd.DataFrame, batch_size: int, seed: int, epoch: int, drop_last: bool = True) -> list[Batch]:
    """The batches of one epoch. Each row appears ``draws`` times (``repeats`` when the frame has no
    draws): a fractional f as ⌊f⌋ or ⌊f⌋ + 1 times, the second with probability f − ⌊f⌋ (its own
    generator, keyed by seed + epoch, so integer draws give the very plan integer repeats give);
    batches hold one bucket; rows are shuffled within a bucket and batches across buckets, both with
    seed + epoch. A bucket's last incomplete batch is dropped (kohya keeps it; a fixed batch keeps
    data-parallel ranks equal)."""
    rng = rng_for("epoch", seed, epoch)
    rounding = rng_for("draws", seed, epoch)
    batches = []
    for b, group in rows.groupby("bucket_index", sort=True):
        draws = (group.draws if "draws" in group else group.repeats).to_numpy(float)
        whole = np.floor(draws)
        if (draws > whole).any():
            whole = whole + (np.array([rounding.random() for _ in draws]) < draws - whole)
        items = np.repeat(group.index.to_numpy(), whole.astype(int)).tolist()
        rng.shuffle(items)
        stop = len(items) - len(items) % batch_size if drop_last else len(items)
        bucket = int(b)  # pyright: ignore[reportArgumentType] - pandas types a group key as Hashable
        batches += [Batch(bucket, tuple(items[i : i + batch_size])) for i in range(0, stop, batch_size)]
    rng.shuffle(batches)
    return batches


def check_plan(rows: pd.DataFrame, batch_size: int, buckets: list[tuple[int, int]]) -> list[str]:
    """Warnings about buckets whose images never fill a batch (those images are never trained on)."""
    notes = []
    for b, group in rows.groupby("bucket_index"):
        n = int(round((group.draws if "draws" in group else group.repeats).sum()))
        if n < batch_size:
            w, h = buckets[b]  # pyright: ignore[reportCallIssue, reportArgumentType] - a group key: an int
            notes.append(f"bucket {w}x{h}: {n} samples per epoch, fewer than a batch of {batch_size}; not trained on")
    return notes


def caption_fields(rows: pd.DataFrame) -> list[dict]:
    """Per row, the fields captions read, as plain Python values (None for a missing one)."""

    def clean(v):
        if isinstance(v, np.ndarray | list):
            return [str(x) for x in v]
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return None
        return int(v) if isinstance(v, np.integer | float) else v

    cols = ["score", "rating", "year", "tags", "characters", "copyrights", "artists", "meta", "caption"]
    table = rows[cols]
    assert isinstance(table, pd.DataFrame)  # pandas infers df[columns] as DataFrame | Series
    return [{c: clean(r[c]) for c in cols} for r in table.to_dict("records")]


def caption(row: dict, seed: int, step: int, slot: int, styles, dropout: float, rating_format: str,
            year_format: str, layout: TagLayout = DEFAULT_LAYOUT) -> str:  # fmt: skip
    """The caption of one sample (docs/recipe.md "Captions for training"), drawn fresh each step:
    score tag first, tags shuffled, one style of three for captioned rows, and dropout to ''."""
    rng = rng_for("caption", seed, step, slot)
    if rng.random() < dropout:
        return ""
    return build_caption(row, rng, styles, rating_format, year_format, layout)
