"""The bundled demo corpus: a booru-shaped source table and its images, generated from a seed.

Each *source picture* is a procedural drawing (gradient sky, hard-edged shapes, fine stripes and
a dotted texture, so sharpness, noise and blocking are all visible) that appears five times, as a
known quality ladder, best first:

    clean > noisy > jpeg_crushed > downscaled > blurred

Half the pictures (``SINGLE_FRACTION``) are served once instead, as one rung drawn at random and
made strong enough to see at the 128 px the demo trains at (a blur of a twentieth of the short
side, noise and JPEG blocks an eighth of the image across, a sixteenth-size copy): dedup keeps
them, so the kept rows differ visibly in quality and the score tags mean something at 128 px.

(the ladder's order is the intended ranking, by construction: Gaussian noise of σ 28 leaves every edge in
place; JPEG at quality 3–7 keeps the shapes but bands the gradients and blocks the detail; a
quarter-size copy (long side 256–512 px) would need 3–5× upscaling to fill any training bucket;
a Gaussian blur of radius short-side/60 wipes out every edge).

Every picture has one aspect ratio, drawn from the eleven recipe buckets and some odd ones
(1:3, 21:9 …), a long side between 512 and 2048 px (256 and up for the downscaled rungs), and a
file format and pixel mode from JPEG/PNG/WebP × RGB/RGBA/L/P/CMYK. About ``bad_fraction`` of
the rows are bad on purpose, one kind after another: a 404, a 500, a truncated JPEG, HTML
served as an image, zero bytes, a decompression bomb and a response slower than the fetch
timeout. About 4% of the pictures carry a metadata mistake of a real export: the pre-2022
rating "safe", an unknown rating, an unparseable or missing date, tags joined by commas.

Layout of a built corpus (``build_corpus``)::

    <dir>/source.parquet   id, file_url (a path; the server adds the host), tag_string_general,
                           tag_string_character, rating (g/s/q/e), created_at (+09:00),
                           image_width, image_height, md5
    <dir>/truth.parquet    id, picture, variant, single, bad (kind or null), expected_status, format, mode,
                           meta_issue (kind or null)
    <dir>/special.json     paths the server answers specially (500, slow)
    <dir>/files/...        the bytes the server serves, by file_url path
    <dir>/COMPLETE         written last: a folder without it is rebuilt
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import struct
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

from zxl.files import replacing

LADDER = ("clean", "noisy", "jpeg_crushed", "downscaled", "blurred")  # best first
CORPUS_VERSION = 4  # bump when the generator changes, so cached corpora are rebuilt
SINGLE_FRACTION = 0.5  # of the pictures: served once, so dedup keeps them and the kept rows differ in quality
BAD_KINDS = ("not_found", "server_error", "truncated_jpeg", "html", "zero_bytes", "bomb", "slow")
EXPECTED_STATUS: dict[str | None, str] = {
    "not_found": "failed_download",
    "server_error": "failed_download",
    "slow": "failed_download",
    "truncated_jpeg": "failed_decode",
    "html": "failed_decode",
    "zero_bytes": "failed_decode",
    "bomb": "failed_decode",
}
# The eleven recipe buckets (w, h) and odd shapes a real corpus has.
RECIPE_ASPECTS = [
    (768, 1344), (768, 1280), (832, 1216), (896, 1152), (960, 1088), (1024, 1024),
    (1088, 960), (1152, 896), (1216, 832), (1280, 768), (1344, 768),
]  # fmt: skip
ODD_ASPECTS = [(1, 3), (3, 1), (21, 9), (9, 21), (4, 3), (3, 4), (1, 2), (239, 100)]
# A picture's long side; its downscaled rung is a quarter of that, 256 px at least.
LONG_SIDES = [512, 640, 768, 1024, 1152, 1344, 1536, 2048]
LONG_SIDE_WEIGHTS = [0.12, 0.1, 0.14, 0.24, 0.14, 0.12, 0.08, 0.06]
FORMAT_MODES = {  # format -> (modes, weights)
    "jpg": (["RGB", "L", "CMYK"], [0.8, 0.1, 0.1]),
    "png": (["RGB", "RGBA", "L", "P"], [0.4, 0.3, 0.1, 0.2]),
    "webp": (["RGB", "RGBA"], [0.7, 0.3]),
}
FORMATS, FORMAT_WEIGHTS = ["jpg", "png", "webp"], [0.55, 0.3, 0.15]
GENERAL_TAGS = (
    "1girl 1boy 2girls solo long_hair short_hair twintails ponytail blue_eyes red_eyes green_eyes "
    "blonde_hair black_hair silver_hair pink_hair smile open_mouth closed_eyes blush looking_at_viewer "
    "school_uniform dress hoodie kimono armor hat ribbon glasses standing sitting running "
    "outdoors indoors sky cloud night city forest beach flower cherry_blossoms rain snow "
    "holding_sword holding_umbrella upper_body full_body from_side simple_background"
).split()
CHARACTERS = "aoi_(zxl) midori_(zxl) kuro_(zxl) hikari_(zxl) sora_(zxl) ren_(zxl)".split()
RATINGS, RATING_WEIGHTS = ["g", "s", "q", "e"], [0.55, 0.25, 0.12, 0.08]
META_ISSUES = ("old_rating", "bad_rating", "bad_date", "no_date", "comma_tags")
BOMB_SIDE = 20_000  # 400 M pixels claimed by a ~50 kB PNG


@dataclass(frozen=True)
class Item:
    """One row of the demo: a ladder rung of a picture, or a bad row."""

    index: int
    picture: int
    variant: str  # a LADDER rung, or "bad"
    bad: str | None
    fmt: str
    mode: str
    width: int  # as served
    height: int
    pic_width: int  # the picture's own size (the downscaled rung is smaller)
    pic_height: int
    single: bool = False  # a picture served once, its rung strong enough to see at 128 px


def corpus_dir(root: str | os.PathLike, size: int, seed: int, bad_fraction: float) -> Path:
    return Path(root) / f"v{CORPUS_VERSION}-n{size}-s{seed}-b{bad_fraction:g}"


def plan(size: int, seed: int, bad_fraction: float) -> list[Item]:
    """Decide every row (deterministic in ``seed``) without drawing anything."""
    if size < 1:
        raise ValueError(f"demo.size must be at least 1, got {size}")
    rng = np.random.default_rng([seed, 0])
    n_bad = int(round(size * bad_fraction))
    n_good = size - n_bad
    items: list[Item] = []
    aspects = RECIPE_ASPECTS + ODD_ASPECTS
    p = -1
    while len(items) < n_good:
        p += 1
        aw, ah = aspects[rng.integers(len(aspects))] if rng.random() < 0.85 else aspects[11 + rng.integers(8)]
        long_side = int(rng.choice(LONG_SIDES, p=LONG_SIDE_WEIGHTS))
        scale = long_side / max(aw, ah)
        w, h = max(32, round(aw * scale)), max(32, round(ah * scale))
        fmt = str(rng.choice(FORMATS, p=FORMAT_WEIGHTS))
        modes, weights = FORMAT_MODES[fmt]
        mode = str(rng.choice(modes, p=weights))
        single = rng.random() < SINGLE_FRACTION
        for rung in [LADDER[rng.integers(len(LADDER))]] if single else LADDER:
            if len(items) == n_good:
                break
            f, m, iw, ih = fmt, mode, w, h
            if rung == "jpeg_crushed":
                f, m = "jpg", ("L" if mode == "L" else "RGB")
            if rung == "downscaled":
                k = (max(48, long_side // 16) if single else max(256, long_side // 4)) / long_side
                iw, ih = max(16, round(w * k)), max(16, round(h * k))
            items.append(Item(len(items), p, rung, None, f, m, iw, ih, w, h, single))
    for b in range(n_bad):
        kind = BAD_KINDS[b % len(BAD_KINDS)]
        fmt = "png" if kind == "bomb" else "jpg"
        w, h = (BOMB_SIDE, BOMB_SIDE) if kind == "bomb" else (640, 896)
        items.append(Item(len(items), -1, "bad", kind, fmt, "RGB", w, h, w, h))
    order = rng.permutation(len(items))  # bad rows land anywhere, as in a real export
    return [dataclasses.replace(items[j], index=i) for i, j in enumerate(order)]


# --------------------------------------------------------------------------- drawing


def draw_picture(picture: int, seed: int, width: int, height: int) -> Image.Image:
    """A clean RGB drawing: gradient, hard-edged shapes, stripes and dots."""
    rng = np.random.default_rng([seed, 1, picture])
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky = (c0 * (1 - t) + c1 * t).astype(np.uint8)
    img = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).copy(), "RGB")
    d = ImageDraw.Draw(img)
    s = min(width, height)
    for _ in range(int(rng.integers(6, 14))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(s // 16, s // 4 + 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = [x - r, y - r, x + r, y + r]
        shape = rng.integers(3)
        if shape == 0:
            d.ellipse(box, fill=colour, outline=(0, 0, 0), width=max(1, s // 200))
        elif shape == 1:
            d.rectangle(box, fill=colour, outline=(255, 255, 255), width=max(1, s // 200))
        else:
            d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour, outline=(0, 0, 0))
    step = max(4, s // 64)  # fine stripes: the first thing blur and downscaling destroy
    x0 = int(rng.integers(0, max(1, width - s // 3)))
    for k in range(0, s // 3, step):
        d.line([(x0 + k, 0), (x0 + k, height // 5)], fill=(250, 250, 250), width=max(1, step // 3))
    dots = rng.integers(0, [width, height], size=(max(50, width * height // 4000), 2))
    for x, y in dots:
        d.point((int(x), int(y)), fill=(0, 0, 0))
    return img


def degrade(img: Image.Image, rung: str, item: Item, seed: int) -> tuple[Image.Image, int]:
    """Apply a ladder rung; returns the image and the JPEG quality to save with."""
    rng = np.random.default_rng([seed, 2, item.index])
    if item.single:
        img = _coarse(img, rung, rng)
    if rung == "blurred":
        return img.filter(ImageFilter.GaussianBlur(radius=max(3.0, min(img.size) / 60))), 92
    if rung == "noisy":
        a = np.asarray(img, dtype=np.int16) + rng.normal(0, 28, (img.height, img.width, 3)).astype(np.int16)
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB"), 92
    if rung == "jpeg_crushed":
        return img, int(rng.integers(3, 8))
    if rung == "downscaled":
        return img.resize((item.width, item.height), Image.Resampling.BILINEAR), 92
    return img, 92


def _coarse(img: Image.Image, rung: str, rng: np.random.Generator) -> Image.Image:
    """A single picture's damage at the scale of a 128 px training image, under its rung's own
    (a blur of a twentieth of the short side; noise and JPEG blocks an eighth of the size across)."""
    w, h = img.size
    small = (max(8, w // 8), max(8, h // 8))
    if rung == "blurred":
        return img.filter(ImageFilter.GaussianBlur(radius=min(w, h) / 20))
    if rung == "noisy":
        noise = rng.normal(0, 40, (small[1], small[0], 3)).astype(np.int16)
        coarse = np.asarray(
            Image.fromarray((noise + 128).clip(0, 255).astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST)
        )
        a = np.asarray(img, dtype=np.int16) + coarse.astype(np.int16) - 128
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    if rung == "jpeg_crushed":
        buf = io.BytesIO()
        img.resize(small, Image.Resampling.BOX).save(buf, "JPEG", quality=int(rng.integers(3, 8)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
    return img


def encode(img: Image.Image, fmt: str, mode: str, quality: int) -> bytes:
    if mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=128)
    elif mode == "RGBA":
        alpha = Image.linear_gradient("L").resize(img.size).point([96 + v * 159 // 255 for v in range(256)])
        img = img.convert("RGBA")
        img.putalpha(alpha)
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, "JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    else:
        img.save(buf, "WEBP", quality=quality)
    return buf.getvalue()


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid 1-bit PNG of side×side zeros: tiny on disk, ~side² pixels when decoded."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\x00" * (1 + (side + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def render(item: Item, seed: int) -> bytes | None:
    """The bytes served for one row (None: the path is not served at all, a 404)."""
    if item.bad == "not_found":
        return None
    if item.bad == "zero_bytes":
        return b""
    if item.bad == "html":
        return b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>checking your browser</body></html>"  # noqa: E501
    if item.bad == "bomb":
        return bomb_png()
    if item.bad in ("truncated_jpeg", "server_error", "slow"):
        full = encode(draw_picture(10_000 + item.index, seed, item.width, item.height), "jpg", "RGB", 90)
        return full[: len(full) * 2 // 3] if item.bad == "truncated_jpeg" else full
    img = draw_picture(item.picture, seed, item.pic_width, item.pic_height)
    img, quality = degrade(img, item.variant, item, seed)
    return encode(img, item.fmt, item.mode, quality)


def _meta(item: Item, seed: int, md5: str) -> tuple[dict, str | None]:
    rng = np.random.default_rng([seed, 3, item.picture if item.picture >= 0 else 100_000 + item.index])
    tags = sorted(set(rng.choice(GENERAL_TAGS, size=int(rng.integers(4, 14)), replace=False).tolist()))
    chars = sorted(set(rng.choice(CHARACTERS, size=int(rng.integers(0, 3)), replace=False).tolist()))
    year = int(rng.integers(2005, 2026))
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    hh, mm, ss = int(rng.integers(0, 24)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    if rng.random() < 0.1:  # near midnight on new year: the year depends on the offset
        month, day, hh = 1, 1, 0
    meta = {
        "id": 1_000_000 + item.index,
        "file_url": f"/data/{md5[:2]}/{md5[2:4]}/{md5}.{item.fmt}",
        "tag_string_general": " ".join(tags),
        "tag_string_character": " ".join(chars),
        "rating": str(rng.choice(RATINGS, p=RATING_WEIGHTS)),
        "created_at": f"{year:04d}-{month:02d}-{day:02d}T{hh:02d}:{mm:02d}:{ss:02d}.000+09:00",
        "image_width": item.width,
        "image_height": item.height,
        "md5": md5,
    }
    # A few rows carry the metadata mistakes real exports have (``META_ISSUES``).
    issue = META_ISSUES[int(rng.integers(len(META_ISSUES)))] if rng.random() < 0.04 else None
    if issue == "old_rating":
        meta["rating"] = "safe"
    elif issue == "bad_rating":
        meta["rating"] = "unrated"
    elif issue == "bad_date":
        meta["created_at"] = "last tuesday"
    elif issue == "no_date":
        meta["created_at"] = None
    elif issue == "comma_tags":
        meta["tag_string_general"] = ", ".join(tags)
    return meta, issue


def _build_one(args: tuple[Item, int]) -> tuple[Item, bytes | None, str]:
    item, seed = args
    data = render(item, seed)
    md5 = hashlib.md5(data if data else f"missing-{seed}-{item.index}".encode()).hexdigest()
    return item, data, md5


def build_corpus(
    root: str | os.PathLike,
    size: int = 600,
    seed: int = 0,
    bad_fraction: float = 0.05,
    workers: int | None = None,
) -> Path:
    """Build (or reuse) the corpus for (size, seed, bad_fraction); returns its folder."""
    out = corpus_dir(root, size, seed, bad_fraction)
    if (out / "COMPLETE").exists():
        return out
    with replacing(out, folder=True) as tmp:
        _write_corpus(tmp, size, seed, bad_fraction, workers)
    return out


def _write_corpus(tmp: Path, size: int, seed: int, bad_fraction: float, workers: int | None) -> None:
    (tmp / "files").mkdir(parents=True)
    items = plan(size, seed, bad_fraction)
    workers = workers or os.cpu_count() or 1
    rows, truth, special = [], [], {}
    jobs = [(it, seed) for it in items]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_build_one, jobs, chunksize=8))
    else:
        results = [_build_one(j) for j in jobs]
    for item, data, md5 in results:
        meta, issue = _meta(item, seed, md5)
        rows.append(meta)
        truth.append(
            {
                "id": meta["id"],
                "picture": item.picture,
                "variant": item.variant,
                "single": item.single,
                "bad": item.bad,
                "expected_status": EXPECTED_STATUS.get(item.bad, "ok"),
                "format": item.fmt,
                "mode": item.mode,
                "meta_issue": issue,
            }
        )
        if data is not None:
            path = tmp / "files" / meta["file_url"].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if item.bad in ("server_error", "slow"):
            special[meta["file_url"]] = item.bad
    pq.write_table(pa.Table.from_pylist(rows), tmp / "source.parquet")
    pq.write_table(pa.Table.from_pylist(truth), tmp / "truth.parquet")
    (tmp / "special.json").write_text(json.dumps(special, indent=1, sort_keys=True))
    (tmp / "COMPLETE").write_text(json.dumps({"size": size, "seed": seed, "bad_fraction": bad_fraction}))
