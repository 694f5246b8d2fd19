"""One pass over a shard's stored images for every image stage that runs in the task: each image is
read from the tar once and decoded once per size a stage needs, not once per stage.

The image stages (inspect, score, tag: ``Stage.images`` in the stage table) are written as
``ImageWork``: ``prepare`` is the per-image CPU work (thread-safe: it runs in loader threads, ahead
of the rest), ``take`` receives the prepared items in row order (where a model batch runs), ``finish``
returns the stage's table. When consecutive image stages of a phase ask for the same resources,
the stage table runs them as one task (``graph.tasks``) and this pass feeds them together; a stage
run alone (``zxl curate`` on a cluster where they may not share a worker, a test, a resumed run
whose other stages are done) is the same pass with one work. Either way each stage writes its own
file with its own hash, skips when that file is there, and computes exactly the same values: a
stage's view of an image depends only on the bytes and the side it asks for (``StoredImage``).

inspect is the gate: the other stages see only the images inspect passed (when inspect runs in the
same pass, its verdict on each image is taken before theirs; otherwise its stored output is read),
so an image over ``inspect.max_image_pixels`` is never decoded by them.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
from PIL import Image

from zxl.files import write_table_atomic
from zxl.images import BASE_SIDE, decode_reduced, from_base, load, open_reduced, reduce_to
from zxl.pipeline.stages import HASH_KEY, ShardJob, skipped


class StoredImage:
    """One stored image's bytes and the views stages ask of it, each made once.

    A view is exactly what ``decode_reduced`` gives its stage alone, so it is the same whether the
    stage ran alone or with others. A view at or under ``BASE_SIDE`` (both sides, or the long side) is
    box-reduced from the ``BASE_SIDE`` view. A JPEG's view of a larger side is its DCT-scaled decode
    (1/2..1/8) then a box reduce: views whose DCT scale is the same share that decode; views of
    different scales get a decode each. Any other format is decoded whole once and each view
    box-reduced from that, which is what ``decode_reduced`` does for it too.
    """

    def __init__(self, data: bytes, max_pixels: int | None = None, option: str = "max_image_pixels"):
        self.data, self.max_pixels, self.option = data, max_pixels, option
        self.jpeg = data[:2] == b"\xff\xd8"
        self.size: tuple[int, int] | None = None
        self._views: dict[tuple[int | None, bool], Image.Image] = {}
        self._decoded: dict[tuple[tuple[int, int], str], Image.Image] = {}  # a JPEG's decodes by scaled size

    def view(self, side: int | None, long: bool = False) -> Image.Image:
        """The image reduced to ``side`` (``decode_reduced``); raises ImageDecodeError."""
        long = long and side is not None
        key = (side, long)
        if key in self._views:
            return self._views[key]
        if side is not None and from_base(side, long):
            im = reduce_to(self.view(BASE_SIDE), side, long)
        elif self.jpeg:
            opened, self.size = open_reduced(self.data, side, self.max_pixels, self.option, long=long)
            scaled = (opened.size, opened.mode)  # what the DCT scale decodes to: shared by views that match
            if scaled not in self._decoded:
                self._decoded[scaled] = load(opened)
            im = self._decoded[scaled]
            im = reduce_to(im, side, long) if side is not None else im
        elif side is None:
            im, self.size = decode_reduced(self.data, None, self.max_pixels, self.option)
        else:
            im = reduce_to(self.view(None), side, long)
        self._views[key] = im
        return im


class ImageWork(ABC):
    """One image stage's work on one shard, fed image by image (module docstring)."""

    side: int | None = None  # the view it needs: both sides at least this (None: the stored image whole)
    needs_images: bool = True  # False: it reads no pixels (a tag stage with the metadata tagger alone)
    ahead: int = 16  # how many images the loader threads may prepare ahead of ``take``

    def __init__(self, job: ShardJob):
        self.job = job

    @abstractmethod
    def prepare(self, i: int, image: StoredImage) -> Any:
        """Row ``i``'s item (thread-safe CPU work: measure, resize, normalise)."""

    @abstractmethod
    def take(self, i: int, item: Any) -> None:
        """Row ``i``'s item, in row order (None: no image for it); may run a model batch."""

    @abstractmethod
    def finish(self) -> pa.Table | tuple[pa.Table, dict]:
        """The stage's table (and extra metadata), after every row was taken."""


class Gate(ImageWork):
    """The work that decides which images the others see (inspect): its pixel limit applies to every
    view of the pass."""

    max_pixels: int | None = None
    option: str = "max_image_pixels"  # the config key that names max_pixels, for the error

    @abstractmethod
    def passed(self, item: Any) -> bool: ...

    @abstractmethod
    def missing(self, i: int) -> Any:
        """Row ``i``'s item when the shard's tar lacks its image."""


def run_pass(parts: list[tuple[ShardJob, Any, tuple]], threads: int = 1) -> dict[str, dict]:
    """Run the image stages ``parts`` ((job, work factory, sections), in stage-table order) over one
    shard in one pass; each skips when its output has its hash. Returns stage → task result."""
    results: dict[str, dict] = {}
    todo = []
    for job, factory, sections in parts:
        if done := skipped(job.out, job.stage_hash):
            results[job.stage] = done
        else:
            todo.append((job, factory, sections))
    if not todo:
        return results
    start = time.time()
    works: list[ImageWork] = [factory(job, *sections) for job, factory, sections in todo]
    gate = works[0] if isinstance(works[0], Gate) else None
    others = [w for w in works if w is not gate and w.needs_images]
    job = todo[0][0]
    fetch = job.read("fetch", columns=["shard_key", "status"])
    shard_keys, status = fetch["shard_key"].to_pylist(), fetch["status"].to_pylist()
    if gate is not None:
        rows = [i for i, s in enumerate(status) if s == "ok"]
    else:  # inspect is done: its stored verdict is the gate
        verdict = job.read("inspect", columns=["status"])["status"].to_pylist()
        rows = [i for i, s in enumerate(verdict) if s == "ok"]
    if gate is None and not others:
        rows = []
    blobs = job.images([shard_keys[i] for i in rows]) if rows else []
    limit = (gate.max_pixels, gate.option) if gate is not None else (None, "max_image_pixels")

    def prepare(n: int) -> list:
        i, data = rows[n], blobs[n]
        image = StoredImage(data or b"", *limit)
        items: list = []
        ok = True
        if gate is not None:
            item = gate.prepare(i, image) if data is not None else gate.missing(i)
            items.append(item)
            ok = gate.passed(item)
        items += [w.prepare(i, image) if ok else None for w in others]
        return items

    takers = ([gate] if gate is not None else []) + others
    ahead = max([w.ahead for w in works] + [1])
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="zxl-prepare") as pool:
        pending: deque = deque()
        submitted = 0
        for n in range(len(rows)):
            while submitted < len(rows) and len(pending) < ahead:
                pending.append(pool.submit(prepare, submitted))
                submitted += 1
            items = pending.popleft().result()
            blobs[n] = None  # its bytes are no longer needed
            for w, item in zip(takers, items, strict=True):
                w.take(rows[n], item)
    for (job, _, _), work in zip(todo, works, strict=True):
        out = work.finish()
        table, meta = out if isinstance(out, tuple) else (out, {})
        write_table_atomic(table, job.out, {HASH_KEY.decode(): job.stage_hash, **meta})
        results[job.stage] = {"rows": table.num_rows, "skipped": False, "start": start, "end": time.time()}
    return results
