"""inspect: decode check, sha256, perceptual hash, stored size and aspect bucket of each image.

Reads the shard's webdataset tar once, in order. An image that fetch stored but that does not
decode (a truncated JPEG kept byte for byte, say) becomes ``failed_decode`` with the decoder's
message. The perceptual hash is the DCT hash of Zauner (2010) as ``imagehash.phash`` computes it
(grey, 32×32 Lanczos, 2-D DCT-II, the top-left 8×8 against their median), stored as the signed
int64 with the same 64 bits, most significant first.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.fft
from PIL import Image

from zxl.buckets import bucket_name
from zxl.files import write_table_atomic
from zxl.pipeline.config import InspectConfig
from zxl.pipeline.stages import plain_error, skipped, stage_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
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


def phash(image: Image.Image, hash_size: int = 8, highfreq_factor: int = 4) -> int:
    """64-bit DCT perceptual hash as a signed int64 (bit-for-bit ``imagehash.phash``)."""
    n = hash_size * highfreq_factor
    grey = image.convert("L").resize((n, n), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    dct = scipy.fft.dct(scipy.fft.dct(pixels, axis=0), axis=1)
    low = dct[:hash_size, :hash_size]
    bits = (low > np.median(low)).ravel()
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return value - (1 << 64) if value >= 1 << 63 else value


def read_tar_images(tar_path: Path) -> dict[str, bytes]:
    """shard_key -> stored image bytes, from an img2dataset webdataset tar."""
    images = {}
    if not tar_path.exists():
        return images
    with tarfile.open(tar_path) as tar:
        for member in tar:
            name = member.name
            stem, dot, suffix = name.rpartition(".")
            if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES and member.isfile():
                images[stem] = tar.extractfile(member).read()
    return images


def inspect_image(data: bytes, cfg: InspectConfig) -> dict:
    """The facts of one stored image, or a failed_decode row with the decoder's message."""
    row = {"sha256": hashlib.sha256(data).hexdigest()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > cfg.max_image_pixels:
                    raise ValueError(f"{w}x{h} is over inspect.max_image_pixels={cfg.max_image_pixels}")
                im.load()
                row["phash"] = phash(im, cfg.phash_size)
    except Exception as e:  # noqa: BLE001 - any decoder failure is this row's data
        return {**row, "status": "failed_decode", "error": f"stored image does not decode: {plain_error(e)}"}
    return {**row, "status": "ok", "error": None, "width": w, "height": h, "bucket": bucket_name(w, h)}


def inspect_shard(run_dir: str, shard: int, stage_hash: str, cfg: InspectConfig) -> dict:
    run_dir = Path(run_dir)
    out = stage_path(run_dir, "inspect", shard)
    if done := skipped(out, stage_hash):
        return done
    start = time.time()
    fetch = pq.read_table(stage_path(run_dir, "fetch", shard), columns=["key", "shard", "shard_key", "status"])
    tar_name = fetch["shard"][0].as_py() if fetch.num_rows else None
    images = read_tar_images(run_dir / "shards" / tar_name) if tar_name else {}
    rows = {name: [] for name in INSPECT_SCHEMA.names}
    for key, shard_key, status in zip(
        fetch["key"].to_pylist(), fetch["shard_key"].to_pylist(), fetch["status"].to_pylist(), strict=True
    ):
        facts: dict = {"status": status, "error": None}
        if status == "ok":
            data = images.get(shard_key)
            if data is None:
                facts = {"status": "failed_decode", "error": f"image {shard_key} is missing from shard {tar_name}"}
            else:
                facts = inspect_image(data, cfg)
        facts["key"] = key
        for name in INSPECT_SCHEMA.names:
            rows[name].append(facts.get(name))
    table = pa.table(rows, schema=INSPECT_SCHEMA)
    write_table_atomic(table, out, {"zxl.stage_hash": stage_hash})
    return {"rows": table.num_rows, "skipped": False, "start": start, "end": time.time()}
