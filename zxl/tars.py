"""The one reader of img2dataset's webdataset tars: an index of image members, then seek-and-read.

The index (member stem → data offset, size, extension) comes from the tar headers alone, so no image
is read to build it; a stage then reads the images it wants in file order, and the browser one image
per request (``zxl.catalog.images.ImageStore`` caches indexes).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

Index = dict[str, tuple[int, int, str]]


def image_index(path: str | Path) -> Index:
    """stem → (offset of its data, size, lower-case extension) for each image member of a tar."""
    index: Index = {}
    with tarfile.open(path) as tar:
        for member in tar:
            stem, dot, suffix = member.name.rpartition(".")
            if dot and member.isfile() and f".{suffix.lower()}" in IMAGE_SUFFIXES:
                index[stem] = (member.offset_data, member.size, suffix.lower())
    return index


def read_member(path: str | Path, entry: tuple[int, int, str]) -> bytes:
    offset, size, _ = entry
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def read_images(path: str | Path, stems: Iterable[str] | None = None) -> dict[str, bytes]:
    """stem → stored bytes for ``stems`` (all images when None) that the tar holds; a missing tar
    holds none. Reads in file order, one pass."""
    path = Path(path)
    if not path.exists():
        return {}
    index = image_index(path)
    wanted = index.keys() if stems is None else {s for s in stems if s in index}
    images = {}
    with open(path, "rb") as f:
        for stem in sorted(wanted, key=lambda s: index[s][0]):
            offset, size, _ = index[stem]
            f.seek(offset)
            images[stem] = f.read(size)
    return images
