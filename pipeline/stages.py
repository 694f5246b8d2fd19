"""The stage contract on disk: one Parquet file per shard per stage, written atomically.

A stage output carries the hash of everything that produced it (its config section and the hash
of its input) in the Parquet key-value metadata under ``zxl.stage_hash``. A rerun skips a shard
whose output exists with the same hash, so a killed run resumes, and a changed setting redoes
exactly the stages it touches.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from zxl import tars
from zxl.files import write_table_atomic

HASH_KEY = b"zxl.stage_hash"


_OBJECT_AT = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")


def plain_error(error: BaseException | str) -> str:
    """An error's text without what changes from run to run (``<_io.BytesIO object at 0x7f…>``
    becomes ``<_io.BytesIO object>``), so a redone shard gives the same catalog."""
    return _OBJECT_AT.sub(r"<\1 object>", " ".join(str(error).split()))


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def stage_path(run_dir: Path, stage: str, shard: int) -> Path:
    return Path(run_dir) / "stages" / stage / f"{shard_name(shard)}.parquet"


def stored_hash(path: Path) -> str | None:
    """The stage hash a finished output was written with, or None (missing or unreadable)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    value = meta.get(HASH_KEY)
    return value.decode() if value else None


def is_done(path: Path, stage_hash: str) -> bool:
    return Path(path).exists() and stored_hash(path) == stage_hash


def skipped(path: Path, stage_hash: str) -> dict | None:
    """A stage task's result when its output is already there with this hash, else None."""
    if is_done(path, stage_hash):
        return {"rows": pq.read_metadata(path).num_rows, "skipped": True}
    return None


REPORT = "_report.json"  # a global step's report, beside its parts, stamped with its hash


def report_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "stages" / stage / REPORT


def stored_report(run_dir: Path, stage: str, n_shards: int, stage_hash: str) -> dict | None:
    """The report of a global step already done with this hash (every part and the report stamped
    with it), or None: then it runs. An unchanged rerun reads ~100 bytes instead of every input."""
    try:
        report = json.loads(report_path(run_dir, stage).read_text())
    except (OSError, ValueError):
        return None
    if report.get("stage_hash") != stage_hash:
        return None
    if not all(is_done(stage_path(run_dir, stage, s), stage_hash) for s in range(n_shards)):
        return None
    return report


class UndeclaredReadError(RuntimeError):
    pass


class StageInputs:
    """What one stage may read: the outputs of the stages its entry in the stage table
    (``zxl.pipeline.graph.STAGES``) names, and nothing else."""

    def __init__(self, run_dir: str | Path, stage: str, reads: Iterable[str]):
        self.run_dir, self.stage, self.reads = Path(run_dir), stage, tuple(reads)

    def path(self, stage: str, shard: int) -> Path:
        if stage not in self.reads:
            raise UndeclaredReadError(
                f"stage {self.stage} reads the output of {stage}, which its entry in the stage table "
                f"(zxl/pipeline/graph.py) does not declare (it reads {', '.join(self.reads) or 'nothing'})"
            )
        return stage_path(self.run_dir, stage, shard)

    def read(self, stage: str, shard: int, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(stage, shard), columns=columns)


class ShardJob(StageInputs):
    """One stage's work on one shard: its declared inputs, the shard's stored images, one output."""

    def __init__(self, run_dir: str | Path, stage: str, shard: int, stage_hash: str, reads: Iterable[str]):
        super().__init__(run_dir, stage, reads)
        self.shard, self.stage_hash = shard, stage_hash
        self.out = stage_path(self.run_dir, stage, shard)

    def read(self, stage: str, columns: list[str] | None = None) -> pa.Table:  # type: ignore[override]
        return super().read(stage, self.shard, columns)

    @functools.cached_property
    def tar_path(self) -> Path | None:
        """The shard's webdataset tar, named by the fetch output (None when the shard has no rows)."""
        fetch = self.read("fetch", ["shard"])
        return self.run_dir / "shards" / fetch["shard"][0].as_py() if fetch.num_rows else None

    def images(self, shard_keys: list[str | None]) -> list[bytes | None]:
        """The stored bytes of these tar members, in order (None where the tar lacks one or the key
        is None); the tar is read once, only the wanted members."""
        tar = self.tar_path
        found = tars.read_images(tar, [k for k in shard_keys if k]) if tar else {}
        return [found.get(k) if k else None for k in shard_keys]


def run_job(job: ShardJob, fn, *args) -> dict:
    """The one stage preamble and epilogue: skip a shard whose output has this hash, else run
    ``fn(job, *args)`` (a table, or a table and extra string metadata), write it with its hash, and
    return the task's result (rows, start, end)."""
    if done := skipped(job.out, job.stage_hash):
        return done
    start = time.time()
    out = fn(job, *args)
    table, meta = out if isinstance(out, tuple) else (out, {})
    write_table_atomic(table, job.out, {HASH_KEY.decode(): job.stage_hash, **meta})
    return {"rows": table.num_rows, "skipped": False, "start": start, "end": time.time()}


def remove_stale(folder: Path, keep: int, pattern: str = "*.parquet") -> None:
    """Delete shard files numbered ``keep`` and above (left by an earlier, larger split)."""
    for p in Path(folder).glob(pattern):
        stem = p.name.split(".", 1)[0].split("_", 1)[0]
        if stem.isdigit() and int(stem) >= keep:
            p.unlink()


# What a writer leaves behind when it is killed between writing and renaming: ``.<name>.tmp-<pid>-<hex>``
# (zxl.files.replacing, every writer: files, the catalog folder and the folder it moves aside), ``.tmp-NNNNN-…``
# (a fetch shard's img2dataset folder), ``.zxl-probe-…`` (Executor.check_shared); and the spellings of
# earlier versions (``.catalog.old-<pid>``), so an old run's litter goes too.
_TEMPORARY = re.compile(r"^\.(.+\.(tmp|old)-.+|tmp-.+|zxl-probe-.+)$")


def remove_temporaries(run_dir: Path) -> int:
    """Delete the temporaries any earlier process left in a run folder (its top, ``stages/*``,
    ``shards/``, ``embeddings/``, ``taste/``, ``catalog/``: every folder a run writes); returns how
    many. Call it only while holding ``run_lock``."""
    run_dir = Path(run_dir)
    folders = [run_dir, run_dir / "shards", run_dir / "embeddings", run_dir / "taste", run_dir / "catalog",
               *sorted((run_dir / "stages").glob("*"))]  # fmt: skip
    removed = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if _TEMPORARY.match(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
    return removed


class RunFolderBusyError(RuntimeError):
    pass


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``<run_dir>/.lock`` (an advisory flock) for the block: one curate per run folder at a time."""
    path = Path(run_dir) / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunFolderBusyError(
                f"run folder {run_dir} is in use by {holder}: wait for it to finish, or set another run.name"
            ) from None
        f.truncate(0)
        f.write(f"zxl curate pid {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
