"""Writing files: atomically (a reader sees the whole file or none), with the user's umask.

Every writer in the project goes through ``replacing`` (or the helpers built on it): the bytes go to
a temporary sibling, always spelt ``.<name>.tmp-<pid>-<random>`` (``TEMPORARY`` matches it, and
``zxl.pipeline.stages.remove_temporaries`` sweeps what a kill left), which then takes the final
name in one rename; a folder is swapped the same way. ``os.replace`` appears in this module alone
(tests/test_files.py holds the project to it).

safetensors' ``save_file`` (and so diffusers' ``save_pretrained``) creates files with mode 0600,
whatever the umask: a model exported for a ComfyUI or A1111 running as another user would not be
readable by it. ``as_umask`` gives a file, or every file and folder under a folder, the mode a
plain ``open()`` would have given it (0644 and 0755 with the usual umask 022).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _umask() -> int:
    """The process's umask: read from /proc on Linux; elsewhere set and restored (os.umask is the
    only portable reader, and for that instant another thread's new file would get mode 0666)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)  # the strictest value while it is out of place
    os.umask(mask)
    return mask


def as_umask(path: str | os.PathLike) -> Path:
    """Set the modes under ``path`` to 0666 (files) / 0777 (folders) less the umask; returns it."""
    path, mask = Path(path), _umask()
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    for entry in entries:
        if not entry.is_symlink():
            entry.chmod((0o777 if entry.is_dir() else 0o666) & ~mask)
    return path


TEMPORARY = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]{8}$")


def temp_name(path: Path) -> Path:
    """A sibling name no reader mistakes for a finished file (the one spelling ``TEMPORARY`` matches)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing(path: str | os.PathLike, folder: bool = False, umask: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (an empty folder with ``folder``); when the block
    ends cleanly it takes ``path``'s place in one rename — a folder that exists is first moved aside
    under a temporary name and removed after — so a reader sees the old whole or the new whole,
    never a part. When the block raises, the temporary is removed and ``path`` is as it was.
    ``umask``: give what was written the modes a plain ``open()`` would (``as_umask``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        if umask:
            as_umask(tmp)
        if folder and path.is_dir() and not path.is_symlink():
            old = temp_name(path)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def move_into_place(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """A finished file written elsewhere on the same file system (img2dataset's shard) to its final
    name, in one rename."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    return dst


def write_table_atomic(table: pa.Table, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write to a temporary name, then rename: a reader sees the whole file or none."""
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with replacing(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=64 * 1024)
    return Path(path)


def write_text_atomic(text: str, path: Path) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(obj, path: Path) -> Path:
    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", path)


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
