"""Writing files: atomically (a reader sees the whole file or none), with the user's umask.

Every writer puts the bytes under a temporary sibling name (``.<name>.tmp-<pid>-<random>``, which
``zxl.pipeline.stages.remove_temporaries`` sweeps after a kill), then renames it into place.

safetensors' ``save_file`` (and so diffusers' ``save_pretrained``) creates files with mode 0600,
whatever the umask: a model exported for a ComfyUI or A1111 running as another user would not be
readable by it. ``as_umask`` gives a file, or every file and folder under a folder, the mode a
plain ``open()`` would have given it (0644 and 0755 with the usual umask 022).
"""

from __future__ import annotations

import json
import os
import uuid
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


def temp_name(path: Path) -> Path:
    """A sibling name no reader mistakes for a finished file."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_table_atomic(table: pa.Table, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write to a temporary name, then rename: a reader sees the whole file or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    tmp = temp_name(path)
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=64 * 1024)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(text: str, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(obj, path: Path) -> Path:
    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", path)
