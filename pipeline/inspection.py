"""inspect: decode check, sha256, perceptual hash, stored size and aspect bucket of each image.

Reads the shard's webdataset tar once, in order. An image that fetch stored but that does not
decode (a truncated JPEG kept byte for byte, say) becomes ``failed_decode`` with the decoder's
message. The perceptual hash is the DCT hash of Zauner (2010) as ``imagehash.phash`` computes it
(grey, 32×32 Lanczos, 2-D DCT-II, the top-left 8×8 against their median), stored as the signed
int64 with the same 64 bits, most significant first, computed on a reduced view of the image
(``zxl.images.decode_reduced``: both sides at least 224 px, seven times the hash's 32×32 grid, a
box of 2 or more from the 448 view the WD tagger sees) instead of the full one: a JPEG decodes at
1/2..1/8 scale, so inspect costs a fraction of one full decode, and the Lanczos filter to 32×32
reads a quarter of the pixels it read at 448. What that moves is measured in
tests/test_inspection.py (near copies pair the same; hashes within a few bits of the full-size
ones) and docs/performance.md (the demo's copies: 25 missed, against 26 with full-size hashes).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import scipy.fft
from PIL import Image

from zxl.buckets import bucket_name
from zxl.images import ImageDecodeError
from zxl.pipeline.config import InspectConfig
from zxl.pipeline.imagepass import Gate, StoredImage
from zxl.pipeline.stages import ShardJob, plain_error

INSPECT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("sha256", pa.string()),
        ("phash", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bucket", pa.string()),
    ]
)


# The hash is taken on the image reduced to at least this side (7× its 32×32 grid): CLIP's view, a box of
# 2 or more from the 448 view (zxl.images.BASE_SIDE). On the demo's 570 stored images it finds one more
# copy of a picture than full-size hashes do and merges no two pictures (docs/performance.md).
PHASH_SIDE = 224
# in the stage's hash; 3: phash of the 224 view (2: of the 448 view, 1: of the whole image)
VERSION = "3"


def phash(image: Image.Image, hash_size: int = 8, highfreq_factor: int = 4) -> int:
    """64-bit DCT perceptual hash as a signed int64 (bit-for-bit ``imagehash.phash``)."""
    n = hash_size * highfreq_factor
    grey = image.convert("L").resize((n, n), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    dct: np.ndarray = scipy.fft.dct(scipy.fft.dct(pixels, axis=0), axis=1)  # pyright: ignore[reportAssignmentType] - scipy.fft's dispatch wrapper hides the ndarray it returns
    low = dct[:hash_size, :hash_size]
    bits = (low > np.median(low)).ravel()
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return value - (1 << 64) if value >= 1 << 63 else value


def inspect_image(data: bytes, cfg: InspectConfig) -> dict:
    """The facts of one stored image, or a failed_decode row with the decoder's message."""
    return inspect_stored(StoredImage(data, cfg.max_image_pixels, "inspect.max_image_pixels"), cfg)


def inspect_stored(image: StoredImage, cfg: InspectConfig) -> dict:
    row: dict = {"sha256": hashlib.sha256(image.data).hexdigest()}
    try:
        im = image.view(PHASH_SIDE)
        row["phash"] = phash(im, cfg.phash_size)
    except ImageDecodeError as e:
        return {**row, "status": "failed_decode", "error": f"stored image does not decode: {plain_error(e)}"}
    assert image.size is not None  # set by the first decode
    w, h = image.size
    return {**row, "status": "ok", "error": None, "width": w, "height": h, "bucket": bucket_name(w, h)}


class InspectWork(Gate):
    """inspect on one shard: the facts of every fetched image, and the verdict the other image stages
    go by (``imagepass``)."""

    side = PHASH_SIDE

    def __init__(self, job: ShardJob, cfg: InspectConfig):
        super().__init__(job)
        self.cfg = cfg
        self.max_pixels, self.option = cfg.max_image_pixels, "inspect.max_image_pixels"
        self.fetch = job.read("fetch", columns=["key", "shard", "shard_key", "status"])
        self.facts: dict[int, dict] = {}

    def prepare(self, i: int, image: StoredImage) -> dict:
        return inspect_stored(image, self.cfg)

    def missing(self, i: int) -> dict:
        """The facts of an ok row whose image the shard's tar lacks."""
        shard_key, tar_name = self.fetch["shard_key"][i].as_py(), self.fetch["shard"][0].as_py()
        return {"status": "failed_decode", "error": f"image {shard_key} is missing from shard {tar_name}"}

    def passed(self, item: dict) -> bool:
        return item["status"] == "ok"

    def take(self, i: int, item: dict) -> None:
        self.facts[i] = item

    def finish(self) -> pa.Table:
        rows = {name: [] for name in INSPECT_SCHEMA.names}
        keys, status = self.fetch["key"].to_pylist(), self.fetch["status"].to_pylist()
        for i, (key, status_) in enumerate(zip(keys, status, strict=True)):
            facts = {**self.facts[i]} if status_ == "ok" else {"status": status_, "error": None}
            facts["key"] = key
            for name in INSPECT_SCHEMA.names:
                rows[name].append(facts.get(name))
        return pa.table(rows, schema=INSPECT_SCHEMA)
