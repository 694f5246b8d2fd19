"""fetch: one URL shard through img2dataset's own Downloader, Resizer and WebDataset writer.

This is img2dataset, called per shard from a Dask task instead of from its own distributor. What
zxl adds sits at the edges:

- the shard is written for img2dataset into a private temporary folder and its outputs
  (``NNNNN.tar``, ``NNNNN.parquet``, ``NNNNN_stats.json``) are renamed into ``shards/`` only once
  complete, then the stage file ``stages/fetch/NNNNN.parquet`` is written atomically: a killed
  task leaves nothing under a final name that a rerun would trust;
- ``GuardedResizer`` looks at the bytes before OpenCV decodes them, so an empty body, an HTML
  page and a decompression bomb fail with an error that names the cause (and the bomb is never
  decoded), and OpenCV's own pixel limit is set to the same bound;
- every input row comes out as exactly one row, with img2dataset's status mapped onto ours
  (success → ok, failed_to_download → failed_download, failed_to_resize → failed_decode).
"""

from __future__ import annotations

import io
import os
import shutil
import time
import uuid
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline import netguard  # noqa: E402
from pipeline.stages import shard_name, skipped, stage_path, write_table_atomic  # noqa: E402
from zxl.config import FetchConfig  # noqa: E402

STATUS = {"success": "ok", "failed_to_download": "failed_download", "failed_to_resize": "failed_decode"}
FETCH_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("shard_key", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
    ]
)


def sniff(data: bytes, max_pixels: int) -> str | None:
    """Why these bytes must not reach the decoder, or None if they look like an image."""
    if not data:
        return "empty response body (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:
        return f"decompression bomb: {e}"
    except Exception as e:  # noqa: BLE001 - anything Pillow cannot identify is not an image
        head = data[:64].lstrip().lower()
        if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
            return "not an image: the server sent an HTML page"
        if head[:1] in (b"{", b"["):
            return "not an image: the server sent JSON"
        return f"not an image: {e}"
    if w * h > max_pixels:
        return f"decompression bomb: {w}x{h} = {w * h} pixels, over the limit of {max_pixels} (fetch.max_image_pixels)"
    return None


def _pillow_reason(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 - we only want the message
        return str(e)
    return "OpenCV cannot decode it, Pillow can"


def _resizer_class():
    from img2dataset.resizer import Resizer

    class GuardedResizer(Resizer):
        """img2dataset's Resizer behind a header check (see the module docstring)."""

        def __init__(self, *args, max_image_pixels: int, **kwargs):
            super().__init__(*args, **kwargs)
            self.max_image_pixels = max_image_pixels

        def __call__(self, img_stream, blurring_bbox_list=None):
            img_stream.seek(0)
            reason = sniff(img_stream.read(), self.max_image_pixels)
            img_stream.seek(0)
            if reason is not None:
                return None, None, None, None, None, reason
            result = super().__call__(img_stream, blurring_bbox_list)
            if result[-1] == "Image decoding error":  # OpenCV says no more than that: ask Pillow why
                img_stream.seek(0)
                result = (*result[:-1], f"Image decoding error: {_pillow_reason(img_stream.read())}")
            return result

    return GuardedResizer


def make_downloader(cfg: FetchConfig, output_folder: Path, column_list: list[str], shard_size: int):
    from img2dataset.downloader import Downloader
    from img2dataset.writer import WebDatasetSampleWriter

    # OpenCV reads its pixel limit once per process from the environment: set it before any decode.
    os.environ.setdefault("CV_IO_MAX_IMAGE_PIXELS", str(cfg.max_image_pixels))
    resizer = _resizer_class()(
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_quality=cfg.encode_quality,
        encode_format=cfg.encode_format,
        skip_reencode=cfg.skip_reencode,
        min_image_size=cfg.min_image_size,
        max_aspect_ratio=cfg.max_aspect_ratio,
        max_image_area=cfg.max_image_pixels,
        max_image_pixels=cfg.max_image_pixels,
    )
    return Downloader(
        sample_writer_class=WebDatasetSampleWriter,
        resizer=resizer,
        thread_count=cfg.thread_count,
        save_caption=False,
        extract_exif=cfg.extract_exif,
        output_folder=str(output_folder),
        column_list=column_list,
        timeout=cfg.timeout,
        number_sample_per_shard=max(shard_size, 2),
        oom_shard_count=5,
        compute_hash=None,
        verify_hash_type=None,
        encode_format=cfg.encode_format,
        retries=cfg.retries,
        user_agent_token=cfg.user_agent_token or None,
        disallowed_header_directives=cfg.disallowed_header_directives or None,
    )


def validate(cfg: FetchConfig) -> None:
    """Configuration errors before any work starts, named by key."""
    from zxl.config import ConfigError

    modes = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
    if cfg.resize_mode not in modes:
        raise ConfigError(f"fetch.resize_mode must be one of {', '.join(modes)}, got '{cfg.resize_mode}'")
    if cfg.encode_format not in ("jpg", "png", "webp"):
        raise ConfigError(f"fetch.encode_format must be jpg, png or webp, got '{cfg.encode_format}'")
    if cfg.thread_count < 1:
        raise ConfigError(f"fetch.thread_count must be at least 1, got {cfg.thread_count}")
    if cfg.timeout <= 0:
        raise ConfigError(f"fetch.timeout must be positive, got {cfg.timeout}")


def _to_stage_rows(i2d: pa.Table, source: pa.Table, shard: int, timeout: float) -> pa.Table:
    """img2dataset's per-shard parquet → our fetch table, in source order, one row per input."""
    by_key = {k: i for i, k in enumerate(i2d["zxl_key"].to_pylist())}
    cols = {c: i2d[c].to_pylist() for c in ("key", "status", "error_message", "width", "height",
                                            "original_width", "original_height")}  # fmt: skip
    rows = {name: [] for name in FETCH_SCHEMA.names}
    for key in source["key"].to_pylist():
        i = by_key.get(key)
        rows["key"].append(key)
        rows["shard"].append(f"{shard_name(shard)}.tar")
        if i is None:  # img2dataset drops a sample only when its writer raised; keep the row
            for name in ("shard_key", "width", "height", "original_width", "original_height"):
                rows[name].append(None)
            rows["status"].append("failed_download")
            rows["error"].append("img2dataset lost this sample while writing it (see the worker log)")
            continue
        status = STATUS.get(cols["status"][i], "failed_download")
        error = cols["error_message"][i]
        if status != "ok" and not error:
            error = cols["status"][i] or "unknown failure"
        elif status == "failed_download" and "timed out" in error:
            error = f"{error} (no answer within fetch.timeout={timeout:g} s)"
        rows["shard_key"].append(cols["key"][i])
        rows["status"].append(status)
        rows["error"].append(None if status == "ok" else str(error))
        for name in ("width", "height", "original_width", "original_height"):
            rows[name].append(cols[name][i] if status == "ok" else None)
    return pa.table(rows, schema=FETCH_SCHEMA)


def fetch_shard(run_dir: str, shard: int, stage_hash: str, cfg: FetchConfig, shard_size: int) -> dict:
    """Download one shard (skipped when its output exists with the same hash)."""
    run_dir = Path(run_dir)
    out = stage_path(run_dir, "fetch", shard)
    if done := skipped(out, stage_hash):
        return done
    start = time.time()
    source = pq.read_table(stage_path(run_dir, "source", shard))
    shards_dir = run_dir / "shards"
    for stale in shards_dir.glob(f".tmp-{shard_name(shard)}-*"):  # left by a task killed mid-shard
        shutil.rmtree(stale, ignore_errors=True)
    tmp = shards_dir / f".tmp-{shard_name(shard)}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        # img2dataset's input: an Arrow IPC file with "url" and the columns that travel with it.
        extra = [c for c in source.column_names if c not in ("key", "url")]
        i2d_in = source.rename_columns(["zxl_key" if c == "key" else c for c in source.column_names])
        columns = ["url", "zxl_key", *extra]
        with pa.OSFile(str(tmp / "input.arrow"), "wb") as sink, pa.ipc.new_file(sink, i2d_in.schema) as w:
            w.write_table(i2d_in)
        downloader = make_downloader(cfg, tmp, columns, shard_size)
        with netguard.guarded(cfg.allowed_hosts, cfg.allow_private_networks):
            downloader.download_shard((shard, str(tmp / "input.arrow")))
        name = shard_name(shard)
        i2d = pq.read_table(tmp / f"{name}.parquet")
        for suffix in (".tar", "_stats.json", ".parquet"):
            os.replace(tmp / f"{name}{suffix}", shards_dir / f"{name}{suffix}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = _to_stage_rows(i2d, source, shard, cfg.timeout)
    write_table_atomic(table, out, {"zxl.stage_hash": stage_hash})
    return {"rows": table.num_rows, "skipped": False, "start": start, "end": time.time()}
