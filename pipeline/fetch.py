"""fetch: one URL shard through img2dataset's own Downloader, Resizer and WebDataset writer.

This is img2dataset, called per shard from a Dask task instead of from its own distributor. What
zxl adds sits at the edges:

- the shard is written for img2dataset into a private temporary folder and its outputs
  (``NNNNN.tar``, ``NNNNN.parquet``, ``NNNNN_stats.json``) are renamed into ``shards/`` only once
  complete, then the stage file ``stages/fetch/NNNNN.parquet`` is written atomically: a killed
  task leaves nothing under a final name that a rerun would trust;
- ``GuardedResizer`` looks at the bytes before OpenCV decodes them, so an empty body, an HTML
  page, an SVG drawing and a decompression bomb fail with an error that names the cause (and
  the bomb is never decoded), and OpenCV's own pixel limit is set to the same bound;
- a transparent image is matted on white before the Resizer sees it, with the Resizer's own
  formula computed exactly in integers (``flatten_alpha``: the same bytes out, at a third of the
  cost), and handed on uncompressed;
- it also hands OpenCV only what OpenCV gets right: an image with an EXIF orientation is turned
  upright first (``ImageOps.exif_transpose``; OpenCV's ``IMREAD_UNCHANGED`` ignores the tag and
  a JPEG kept byte for byte would keep it), and a 16-bit image is reduced to 8 bits per channel
  first (OpenCV saturates 16-bit values when it writes a JPEG: a white picture);
- the size filters (``fetch.min_image_size``, ``fetch.max_aspect_ratio``) are applied to the
  upright header size before any decoding and give the status ``filtered``;
- every request goes through the shard's own ``netguard.Guard`` (only http and https, first URL
  and redirects; only allowed addresses): img2dataset's timeout carries it, so threads and other
  shards in the same worker never share or swap a policy. A response must arrive whole within
  ``RESPONSE_DEADLINE_FACTOR`` × ``fetch.timeout`` and hold at most ``fetch.max_response_bytes``,
  so a slow drip or an endless body cannot hold a download thread or fill memory;
- img2dataset gets only the URL, the key and the row's position: the source's other columns stay
  in ``stages/source/`` (img2dataset's writer JSON-encodes every column it is given, and loses
  the row when one does not encode), and rows are matched back by position, not by key;
- with ``fetch.verify_hash`` each downloaded body is hashed and compared with the source's hash
  (``source.hash_column``, a booru export's ``md5``) before anything decodes it: a mismatch is a
  failed download, ``md5 mismatch: expected …, got …``, retried like one, and stores no image.
  (img2dataset's own ``verify_hash`` does the same check at the same point, but says only "hash
  mismatch" and fails rows whose expected hash is missing; zxl checks it in img2dataset's
  ``download_image`` instead, where the bytes are at hand, and leaves a row without one unchecked);
- every input row comes out as exactly one row, with img2dataset's status mapped onto ours
  (success → ok, failed_to_download → failed_download, failed_to_resize → failed_decode, or
  filtered for a size filter), and urllib's error text made to name the cause (``explain``) and
  the same in every run (``plain_error``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import uuid
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from zxl.config import ConfigError, check_ranges  # noqa: E402
from zxl.files import move_into_place
from zxl.pipeline import netguard, polite  # noqa: E402
from zxl.pipeline.config import FetchConfig  # noqa: E402
from zxl.pipeline.stages import ShardJob, plain_error, shard_name  # noqa: E402

STATUS = {"success": "ok", "failed_to_download": "failed_download", "failed_to_resize": "failed_decode"}
# A response (status line, headers, body) must arrive whole within this many fetch.timeouts:
# 60 s with the default timeout of 10 s, enough for a 30 MB original at 0.5 MB/s.
RESPONSE_DEADLINE_FACTOR = 6
# Resizer errors that are a size filter, not a broken image (ours first, then img2dataset's own).
FILTER_REASONS = ("too small:", "aspect ratio too large:", "image too small", "aspect ratio too large",
                  "image area too large")  # fmt: skip
ORIENTATION = 0x0112  # the EXIF orientation tag; 5..8 swap width and height
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # more than 8 bits per sample
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
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
        ("attempts", pa.int16()),  # requests made for the row, retries included
    ]
)


def _not_an_image(data: bytes, error: str) -> str:
    head = data[:1024].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "not an image: the server sent an HTML page"
    if b"<svg" in head:
        return "not a raster image: the server sent an SVG drawing (image/svg+xml), which zxl does not rasterize"
    if head.startswith(b"<?xml"):
        return "not an image: the server sent an XML document"
    if head[:1] in (b"{", b"["):
        return "not an image: the server sent JSON"
    return f"not an image: {error}"


def look(data: bytes, max_pixels: int) -> tuple[str | None, dict]:
    """(why these bytes must not reach the decoder or None, header facts), from the header only.

    The facts: ``size`` upright (width and height swapped for EXIF orientations 5..8),
    ``orientation`` (1 when there is none), ``deep`` (more than 8 bits per sample) and ``alpha``
    (an alpha channel or a transparent colour, which OpenCV decodes as a fourth channel).
    """
    if not data:
        return "empty response body (0 bytes)", {}
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            try:
                orientation = int(_exif(im, data).get(ORIENTATION, 1))
            except Exception:  # noqa: BLE001 - a broken EXIF block is no orientation
                orientation = 1
            deep = im.mode in DEEP_MODES or (data[:8] == b"\x89PNG\r\n\x1a\n" and data[24:25] == b"\x10")
            alpha = im.mode in ALPHA_MODES or (im.mode in ("P", "RGB") and "transparency" in im.info)
    except Image.DecompressionBombError as e:
        return f"decompression bomb: {e}", {}
    except Exception as e:  # noqa: BLE001 - anything Pillow cannot identify is not an image
        return _not_an_image(data, plain_error(e)), {}
    if w * h > max_pixels:
        return (
            f"decompression bomb: {w}x{h} = {w * h} pixels, over the limit of {max_pixels} (fetch.max_image_pixels)",
            {},
        )
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return None, {"size": (w, h), "orientation": orientation, "deep": deep, "alpha": alpha}


def _exif(im: Image.Image, data: bytes) -> Image.Exif:
    """The image's EXIF from its header. A PNG's eXIf chunk may follow the pixel data, where Pillow's
    ``getexif`` finds it by decoding the whole image; its chunks are walked instead (lengths only)."""
    if im.format != "PNG":
        return im.getexif()
    pos = 8  # after the signature: chunks of length (4 bytes), type (4), data, CRC (4)
    while pos + 8 <= len(data) and "exif" not in im.info:
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind == b"eXIf":
            im.info["exif"] = b"Exif\x00\x00" + data[pos + 8 : pos + 8 + length]
        if kind == b"IEND":
            break
        pos += 12 + length
    return Image.Image.getexif(im)  # the base method: from info (eXIf, XMP, ImageMagick's text), no decode


def sniff(data: bytes, max_pixels: int) -> str | None:
    """Why these bytes must not reach the decoder, or None if they look like an image."""
    return look(data, max_pixels)[0]


def upright_8bit(data: bytes) -> bytes:
    """The first frame, turned upright by its EXIF orientation, 8 bits per channel, as a PNG."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode == "F":
            im = im.convert("L")  # Pillow clips floats to 0..255
        elif im.mode in DEEP_MODES:  # 16-bit samples (Pillow keeps them in I;16* or I): the high byte
            im = Image.fromarray((np.clip(np.asarray(im, np.int64), 0, 65535) >> 8).astype(np.uint8), "L")
        alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
        im = im.convert("RGBA" if alpha else "RGB")
        buf = io.BytesIO()
        im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def flatten_alpha(data: bytes) -> bytes | None:
    """The image on white, exactly as img2dataset's Resizer mattes it, as an uncompressed PAM; None
    when OpenCV does not decode it to four 8-bit channels (the Resizer then gets the bytes as they are).

    The Resizer computes ``rint(clip(alpha / 255 * colour + 255 - alpha))`` in float64 over the whole
    image, about half of the cost of fetching a transparent picture. That is ``round(n / 255)`` for
    the integer ``n = 255 * 255 - alpha * (255 - colour)``, which never falls on a half: OpenCV's
    rounding scale-and-convert gives the same bytes for every alpha and colour (tests/test_fetch.py
    checks all 65536 pairs) in a fraction of the time, and the Resizer decodes the PAM with a copy.
    """
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 4:
        return None
    alpha = img[:, :, 3]
    covered = cv2.multiply(cv2.merge([alpha, alpha, alpha]), cv2.bitwise_not(img[:, :, :3]), dtype=cv2.CV_16U)
    flat = cv2.convertScaleAbs(covered, alpha=-1 / 255, beta=255)  # 255 - alpha * (255 - colour) / 255, rounded
    ok, encoded = cv2.imencode(".pam", flat)
    return encoded.tobytes() if ok else None


def explain(error: str, timeout: float) -> str:
    """urllib's or img2dataset's error text for a failed download, made to name the cause."""
    text = error
    while m := re.fullmatch(r"<urlopen error (.*)>", text, re.S):
        text = m.group(1)
    text = plain_error(text)
    if "did not arrive whole within" in text:
        return f"{text} ({RESPONSE_DEADLINE_FACTOR} x fetch.timeout: a slow drip)"
    if "timed out" in text:
        return f"{text} (no answer within fetch.timeout={timeout:g} s)"
    if m := re.fullmatch(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)", text):
        got, more = int(m.group(1)), int(m.group(2))
        return f"truncated: the connection closed after {got} of the {got + more} bytes its Content-Length promised"
    if text.startswith("unknown url type"):
        return f"refused: not an http or https URL ({text})"
    if "infinite loop" in text:
        return f"redirect loop ({text})"
    return text


def _pillow_reason(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 - we only want the message
        return plain_error(e)
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
            data = img_stream.read()
            img_stream.seek(0)
            reason, facts = look(data, self.max_image_pixels)
            if reason is None:
                reason = self._filtered(*facts["size"])
            if reason is not None:
                return None, None, None, None, None, reason
            if facts["orientation"] != 1 or facts["deep"]:
                try:
                    data = upright_8bit(data)
                except Exception as e:  # noqa: BLE001 - a decoder failure is this row's data
                    return None, None, None, None, None, f"Image decoding error: {plain_error(e)}"
                img_stream = io.BytesIO(data)
            if facts["alpha"] and (flat := flatten_alpha(data)) is not None:
                img_stream = io.BytesIO(flat)
            result = super().__call__(img_stream, blurring_bbox_list)
            if result[-1] == "Image decoding error":  # OpenCV says no more than that: ask Pillow why
                result = (*result[:-1], f"Image decoding error: {_pillow_reason(data)}")
            return result

        def _filtered(self, w: int, h: int) -> str | None:
            if min(w, h) < self.min_image_size:
                return f"too small: {w}x{h}, the short side under fetch.min_image_size={self.min_image_size}"
            ratio = max(w, h) / max(min(w, h), 1)
            if ratio > self.max_aspect_ratio:
                limit = f"fetch.max_aspect_ratio={self.max_aspect_ratio:g}"
                return f"aspect ratio too large: {w}x{h} is {ratio:.2f}:1, over {limit}"
            return None

    return GuardedResizer


def make_resizer(cfg: FetchConfig):
    """The fetch's GuardedResizer with ``cfg``'s settings (OpenCV's pixel limit is the caller's to set)."""
    return _resizer_class()(
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


def guard(cfg: FetchConfig) -> netguard.Guard:
    """The fetch policy of ``cfg`` (netguard): addresses, response deadline and size, connect_to."""
    connect_to = {}
    for rule in cfg.connect_to:
        host, port, host2, port2 = parse_connect_to(rule)
        connect_to[(host, port)] = (host2, port2)
    return netguard.Guard(
        cfg.allowed_hosts,
        cfg.allow_private_networks,
        response_deadline=RESPONSE_DEADLINE_FACTOR * cfg.timeout,
        max_bytes=cfg.max_response_bytes or None,
        connect_to=connect_to,
        max_idle=cfg.thread_count,  # one a download thread
    )


def parse_connect_to(rule: str) -> tuple[str, int, str, int]:
    """``HOST:PORT:HOST2:PORT2`` (curl's --connect-to; IPv6 in brackets) → its four parts."""
    parts = re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+):(\d+):(\[[^\]]+\]|[^:\[\]]+):(\d+)", rule.strip())
    if not parts:
        raise ConfigError(f"fetch.connect_to entries are HOST:PORT:HOST2:PORT2, got {rule!r}")
    host, port, host2, port2 = parts.groups()
    ports = int(port), int(port2)
    if not all(1 <= p <= 65535 for p in ports):
        raise ConfigError(f"fetch.connect_to: ports must be in 1..65535, got {rule!r}")
    return host.strip("[]"), ports[0], host2.strip("[]"), ports[1]


HASHES = ("md5", "sha256", "sha512")


class HashCheck:
    """The expected hash of each row of a shard (by its position), and the check of a body against it."""

    def __init__(self, kind: str, expected: list[str | None]):
        self.kind = kind
        self.expected = [str(v).strip().lower() if v is not None and str(v).strip() else None for v in expected]

    def __call__(self, row: int, data: bytes) -> str | None:
        """Why these bytes are not the row's file, or None (also when the row has no expected hash)."""
        want = self.expected[row] if 0 <= row < len(self.expected) else None
        if want is None:
            return None
        got = hashlib.new(self.kind, data).hexdigest()
        if got == want:
            return None
        what = sniff(data, 2**62)  # what came instead, when it is not an image at all (an HTML page, no bytes)
        return f"{self.kind} mismatch: expected {want}, got {got}" + (f" ({what})" if what else "")


def make_downloader(cfg: FetchConfig, output_folder: Path, column_list: list[str], shard_size: int,
                    politeness: polite.Politeness):  # fmt: skip
    from img2dataset.downloader import Downloader
    from img2dataset.writer import WebDatasetSampleWriter

    netguard.patch_img2dataset()  # its requests go through the Guard that the timeout carries
    polite.patch_img2dataset()  # … and its downloads through the shard's Politeness
    timeout = guard(cfg).timeout(cfg.timeout)
    timeout.politeness = politeness  # pyright: ignore[reportAttributeAccessIssue] - read by polite's download_image

    # OpenCV reads its pixel limit once per process from the environment: set it before any decode.
    os.environ.setdefault("CV_IO_MAX_IMAGE_PIXELS", str(cfg.max_image_pixels))
    resizer = make_resizer(cfg)
    return Downloader(
        sample_writer_class=WebDatasetSampleWriter,
        resizer=resizer,
        thread_count=cfg.thread_count,
        save_caption=False,
        extract_exif=cfg.extract_exif,
        output_folder=str(output_folder),
        column_list=column_list,
        timeout=timeout,
        number_sample_per_shard=max(shard_size, 2),
        oom_shard_count=5,
        compute_hash=None,
        verify_hash_type=None,
        encode_format=cfg.encode_format,
        retries=0,  # polite.Politeness retries, with backoff and Retry-After
        user_agent_token=cfg.user_agent_token or None,
        disallowed_header_directives=cfg.disallowed_header_directives or None,
    )


def validate(cfg: FetchConfig) -> None:
    """Configuration errors before any work starts, named by key."""
    check_ranges(cfg, "fetch.")
    modes = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
    if cfg.resize_mode not in modes:
        raise ConfigError(f"fetch.resize_mode must be one of {', '.join(modes)}, got '{cfg.resize_mode}'")
    if cfg.encode_format not in ("jpg", "png", "webp"):
        raise ConfigError(f"fetch.encode_format must be jpg, png or webp, got '{cfg.encode_format}'")
    if cfg.encode_format == "png" and cfg.encode_quality > 9:
        raise ConfigError(
            f"fetch.encode_quality must be in 0..9 with encode_format png (it is the compression level there), "
            f"got {cfg.encode_quality}"
        )
    for rule in cfg.connect_to:
        parse_connect_to(rule)
    if cfg.per_host_rate and not cfg.per_host_concurrency:
        raise ConfigError(
            "fetch.per_host_rate is shared across the run through fetch.per_host_concurrency's leases: set that too"
        )
    if cfg.verify_hash and cfg.verify_hash not in HASHES:
        raise ConfigError(f"fetch.verify_hash must be one of {', '.join(HASHES)} or empty, got '{cfg.verify_hash}'")


def check_hash_source(cfg) -> None:
    """fetch.verify_hash needs the column that holds the hashes (``cfg``: a CurateConfig)."""
    if cfg.fetch.verify_hash and not cfg.source.hash_column:
        raise ConfigError(
            f"fetch.verify_hash is {cfg.fetch.verify_hash}: set source.hash_column to the column holding each "
            "file's hash (a Danbooru export: md5)"
        )


def _to_stage_rows(i2d: pa.Table, source: pa.Table, shard: int, timeout: float,
                   attempts: dict[int, int] | None = None) -> pa.Table:  # fmt: skip
    """img2dataset's per-shard parquet → our fetch table, in source order, one row per input
    (matched by the row's position in the shard, which no source id can make ambiguous)."""
    by_row = {r: i for i, r in enumerate(i2d["zxl_row"].to_pylist())}
    cols = {c: i2d[c].to_pylist() for c in ("key", "status", "error_message", "width", "height",
                                            "original_width", "original_height")}  # fmt: skip
    rows = {name: [] for name in FETCH_SCHEMA.names}
    for row, key in enumerate(source["key"].to_pylist()):
        i = by_row.get(row)
        rows["key"].append(key)
        rows["shard"].append(f"{shard_name(shard)}.tar")
        rows["attempts"].append((attempts or {}).get(row, 1))
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
        elif status == "failed_download":
            error = explain(error, timeout)
        elif status == "failed_decode" and error.startswith(FILTER_REASONS):
            status = "filtered"
        rows["shard_key"].append(cols["key"][i])
        rows["status"].append(status)
        rows["error"].append(None if status == "ok" else plain_error(error))
        for name in ("width", "height", "original_width", "original_height"):
            rows[name].append(cols[name][i] if status == "ok" else None)
    return pa.table(rows, schema=FETCH_SCHEMA)


def _politeness(job_hash: str, cfg: FetchConfig, hash_check: HashCheck | None) -> polite.Politeness:
    return polite.Politeness(job_hash[:16], cfg.per_host_concurrency, cfg.per_host_rate, cfg.retries,
                             cfg.max_retry_wait, cfg.thread_count, hash_check)  # fmt: skip


def _hash_check(cfg: FetchConfig, source: pa.Table, hash_column: str) -> HashCheck | None:
    if not cfg.verify_hash:
        return None
    column = hash_column if hash_column in source.column_names else f"src_{hash_column}"
    if column not in source.column_names:
        raise ConfigError(f"source.hash_column '{hash_column}' is not among the source's columns")
    return HashCheck(cfg.verify_hash, source[column].to_pylist())


def _download(cfg: FetchConfig, shard: int, shard_size: int, folder: Path, source: pa.Table, rows: list[int],
              politeness: polite.Politeness) -> pa.Table:  # fmt: skip
    """These rows of the shard through img2dataset into ``folder`` (NNNNN.tar, .parquet, _stats.json);
    returns img2dataset's parquet. img2dataset gets the URL, our key and the row's position only."""
    i2d_in = pa.table(
        {
            "url": source["url"].take(rows),
            "zxl_key": source["key"].take(rows),
            "zxl_row": pa.array(rows, pa.int64()),
        }
    )
    with pa.OSFile(str(folder / "input.arrow"), "wb") as sink, pa.ipc.new_file(sink, i2d_in.schema) as w:
        w.write_table(i2d_in)
    downloader = make_downloader(cfg, folder, i2d_in.column_names, shard_size, politeness)
    try:
        downloader.download_shard((shard, str(folder / "input.arrow")))
    finally:
        downloader.timeout.guard.close()  # its kept-alive connections
    return pq.read_table(folder / f"{shard_name(shard)}.parquet")


def refetch(run_dir: Path, shard: int, cfg: FetchConfig, shard_size: int, source: pa.Table, rows: list[int],
            politeness: polite.Politeness, attempts: dict[int, int]) -> pa.Table:  # fmt: skip
    """Download these rows of a fetched shard again and fold what arrives into its tar and parquet
    (``shards/NNNNN.*``, replaced whole): a row that now arrives gets its image under the key
    img2dataset gave it the first time, so nothing else in the shard moves. ``attempts`` (row →
    tries so far) grows by this pass's tries. Returns the merged img2dataset parquet."""
    import tarfile

    name = shard_name(shard)
    shards_dir = Path(run_dir) / "shards"
    old = pq.read_table(shards_dir / f"{name}.parquet")
    first_key = dict(zip(old["zxl_row"].to_pylist(), old["key"].to_pylist(), strict=True))
    tmp = shards_dir / f".tmp-{name}-retry-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        check = politeness.hash_check
        if isinstance(check, HashCheck):  # its rows are positions in this pass's input
            politeness.hash_check = HashCheck(check.kind, [check.expected[r] for r in rows])
        politeness.attempts = {}
        new = _download(cfg, shard, shard_size, tmp, source, rows, politeness)
        for j, r in enumerate(rows):
            attempts[r] = attempts.get(r, 0) + politeness.attempts.get(j, 1)
        rename = {k: first_key[r] for k, r in zip(new["key"].to_pylist(), new["zxl_row"].to_pylist(), strict=True)}
        merged_tar = tmp / "merged.tar"
        shutil.copyfile(shards_dir / f"{name}.tar", merged_tar)
        with tarfile.open(tmp / f"{name}.tar") as src, tarfile.open(merged_tar, "a") as dst:
            for member in src.getmembers():
                stem, _, ext = member.name.partition(".")
                data = src.extractfile(member)
                if stem in rename and data is not None:
                    member.name = f"{rename[stem]}.{ext}"
                    dst.addfile(member, data)
        new = new.set_column(new.schema.get_field_index("key"), "key",
                             pa.array([rename[k] for k in new["key"].to_pylist()], pa.string()))  # fmt: skip
        redone = set(rows)
        keep = [i for i, r in enumerate(old["zxl_row"].to_pylist()) if r not in redone]
        merged = pa.concat_tables([old.take(keep), new.select(old.column_names).cast(old.schema)])
        merged = merged.take(pc.sort_indices(merged["zxl_row"]))  # pyright: ignore[reportAttributeAccessIssue] - pyarrow.compute makes its functions at import
        pq.write_table(merged, tmp / "merged.parquet")
        move_into_place(merged_tar, shards_dir / f"{name}.tar")
        move_into_place(tmp / "merged.parquet", shards_dir / f"{name}.parquet")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return merged


def transient_rows(table: pa.Table) -> list[int]:
    """Rows of a fetch stage table that failed for a reason worth another try (polite.transient)."""
    return [i for i, (s, e) in enumerate(zip(table["status"].to_pylist(), table["error"].to_pylist(), strict=True))
            if s == "failed_download" and polite.transient(e)]  # fmt: skip


def fetch_shard(job: ShardJob, cfg: FetchConfig, shard_size: int, hash_column: str = "") -> tuple[pa.Table, dict]:
    """Download one shard: img2dataset writes its tar, parquet and stats into a temporary folder,
    which are renamed into ``shards/`` before the stage file is written; then the rows that failed
    for a transient reason are tried once more (``refetch``), after the shard's other URLs."""
    source = job.read("source")
    shard = job.shard
    shards_dir = job.run_dir / "shards"
    for stale in shards_dir.glob(f".tmp-{shard_name(shard)}-*"):  # left by a task killed mid-shard
        shutil.rmtree(stale, ignore_errors=True)
    politeness = _politeness(job.stage_hash, cfg, _hash_check(cfg, source, hash_column))
    tmp = shards_dir / f".tmp-{shard_name(shard)}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        try:
            i2d = _download(cfg, shard, shard_size, tmp, source, list(range(source.num_rows)), politeness)
            name = shard_name(shard)
            for suffix in (".tar", "_stats.json", ".parquet"):
                move_into_place(tmp / f"{name}{suffix}", shards_dir / f"{name}{suffix}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        attempts = dict(politeness.attempts)
        table = _to_stage_rows(i2d, source, shard, cfg.timeout, attempts)
        if again := transient_rows(table):  # the retry pass
            i2d = refetch(job.run_dir, shard, cfg, shard_size, source, again, politeness, attempts)
            table = _to_stage_rows(i2d, source, shard, cfg.timeout, attempts)
    finally:
        politeness.close()
    return table, {"zxl.fetch_hosts": polite.dumps(politeness.host_stats())}


def retry_failed(job: ShardJob, cfg: FetchConfig, shard_size: int, hash_column: str = "") -> int:
    """``zxl curate --retry-failed``: refetch the transient failures of a fetched shard and rewrite
    its stage file (same hash; the caller clears what was built on it). Returns the rows tried."""
    from zxl.files import write_table_atomic
    from zxl.pipeline.stages import HASH_KEY

    old = pq.read_table(job.out)
    rows = transient_rows(old)
    if not rows:
        return 0
    source = job.read("source")
    politeness = _politeness(job.stage_hash, cfg, _hash_check(cfg, source, hash_column))
    attempts = {i: a for i, a in enumerate(old["attempts"].to_pylist()) if a is not None} \
        if "attempts" in old.column_names else {}  # fmt: skip
    try:
        i2d = refetch(job.run_dir, job.shard, cfg, shard_size, source, rows, politeness, attempts)
    finally:
        politeness.close()
    table = _to_stage_rows(i2d, source, job.shard, cfg.timeout, attempts)
    meta = pq.read_schema(job.out).metadata or {}
    hosts = polite.merge_host_stats([json.loads(meta.get(b"zxl.fetch_hosts", b"{}")), politeness.host_stats()])
    write_table_atomic(table, job.out, {HASH_KEY.decode(): job.stage_hash, "zxl.fetch_hosts": polite.dumps(hosts)})
    return len(rows)
