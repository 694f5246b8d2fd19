"""Image bytes of catalog rows, read straight out of the webdataset tar shards.

Each tar is indexed once per process (``zxl.tars.image_index``: member name → data offset and
size, from its headers, so no image is read to build it); then one image costs one seek and one read. A catalog's shards
are ``<run>/shards/`` next to ``<run>/catalog/``. Only names the catalog itself gives (its
``shard`` and ``shard_key`` columns) are ever opened, and a shard name must be a plain file
name: no path from outside reaches the file system.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from zxl import tars

SHARD_NAME = re.compile(r"^\d{5}\.tar$")


class ImageStore:
    def __init__(self, catalog_dir: str | Path):
        self.shards = Path(catalog_dir).resolve().parent / "shards"
        self._index: dict[str, dict[str, tuple[int, int, str]]] = {}
        self._lock = threading.Lock()

    def _tar_index(self, shard: str) -> dict[str, tuple[int, int, str]]:
        if not SHARD_NAME.match(shard or ""):
            raise KeyError(f"not a shard name: {shard!r}")
        with self._lock:
            if shard not in self._index:
                path = self.shards / shard
                if not path.is_file():
                    raise FileNotFoundError(f"shard {path} is missing")
                self._index[shard] = tars.image_index(path)
            return self._index[shard]

    def get(self, shard: str, shard_key: str) -> tuple[bytes, str]:
        """(bytes, extension) of one stored image; KeyError when the shard does not hold it."""
        entry = self._tar_index(shard)[shard_key]
        return tars.read_member(self.shards / shard, entry), entry[2]
