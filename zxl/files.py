"""File modes: what zxl writes is readable as the user's umask says, whatever wrote it.

safetensors' ``save_file`` (and so diffusers' ``save_pretrained``) creates files with mode 0600,
whatever the umask: a model exported for a ComfyUI or A1111 running as another user would not be
readable by it. ``as_umask`` gives a file, or every file and folder under a folder, the mode a
plain ``open()`` would have given it (0644 and 0755 with the usual umask 022).
"""

from __future__ import annotations

import os
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
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
