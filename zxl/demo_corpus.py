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
timeout; a fifth of them (``MD5_MISMATCH_SHARE``) are ``md5_mismatch`` rows, a valid image whose
bytes are not the ones the table's ``md5`` names (the file was replaced on the server: only a
fetch that checks the md5 fails them). About 4% of the pictures carry a metadata mistake of a
real export: the pre-2022 rating "safe", an unknown rating, an unparseable or missing date, tags
joined by commas.

The tags are Danbooru's five strings, space-separated and sorted, shared by every copy of a
picture as reposts share them (only ``highres``/``absurdres`` follow each copy's own size). They
hold what a curator's tag rules clean: old spellings of aliased tags (``ALIASES``: ``longhair``,
a chain ``cat_ear`` -> ``cat_ears_(old)`` -> ``cat_ears``, a character's and a copyright's old
names), implied parents beside their children (``IMPLICATIONS``: ``witch_hat`` with ``hat``, the
chain ``holding_sword`` -> ``holding_weapon`` -> ``holding``, ``fate/grand_order`` with
``fate_(series)``), meta tags folded into the general string of a few posts (``FOLDED_META``) and
a long tail of rare general tags (``RARE_TAGS``, each on one to three pictures). Artists are a few
prolific ones (``HEAD_ARTISTS``) and a long tail with one or two pictures each. Older posts are
more often degraded: the year a row was posted depends on its ladder rung (``YEAR_ERAS``).

Layout of a built corpus (``build_corpus``)::

    <dir>/source.parquet   id, file_url (a path; the server adds the host), tag_string_general,
                           tag_string_character, tag_string_copyright, tag_string_artist,
                           tag_string_meta (Danbooru's five tag strings), rating (g/s/q/e),
                           created_at (+09:00), image_width, image_height, md5 (of the original
                           file: not of the served bytes on md5_mismatch rows)
    <dir>/truth.parquet    id, picture, variant, single, bad (kind or null), expected_status, format, mode,
                           meta_issue (kind or null)
    <dir>/tag_aliases.csv          Danbooru's tag alias export (``ALIASES``): id, antecedent_name,
    <dir>/tag_implications.parquet consequent_name, status, created_at, reason; and its implications
                                   (``IMPLICATIONS``). Only ``active`` rows apply: the deleted,
                                   retired and pending ones would do harm (``smile`` -> ``grin``)
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
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

from zxl.files import replacing

LADDER = ("clean", "noisy", "jpeg_crushed", "downscaled", "blurred")  # best first
CORPUS_VERSION = 6  # bump when the generator changes, so cached corpora are rebuilt
SINGLE_FRACTION = 0.5  # of the pictures: served once, so dedup keeps them and the kept rows differ in quality
BAD_KINDS = ("not_found", "server_error", "truncated_jpeg", "html", "zero_bytes", "bomb", "slow", "md5_mismatch")
MD5_MISMATCH_SHARE = 0.2  # of the bad rows: served a valid image whose md5 is not the table's
EXPECTED_STATUS: dict[str | None, str] = {
    "not_found": "failed_download",
    "server_error": "failed_download",
    "slow": "failed_download",
    "truncated_jpeg": "failed_decode",
    "html": "failed_decode",
    "zero_bytes": "failed_decode",
    "bomb": "failed_decode",
    "md5_mismatch": "failed_download",  # the fetch checks the bytes against the table's md5
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
    "holding_sword holding_umbrella upper_body full_body from_side simple_background "
    "very_long_hair cat_ears animal_ears witch_hat serafuku pleated_skirt skirt holding_weapon holding"
).split()  # canonical names; the posts also carry old spellings (ALIASES) and rare tags (RARE_TAGS)
CHARACTERS = "aoi_(zxl) midori_(zxl) kuro_(zxl) hikari_(zxl) sora_(zxl) ren_(zxl)".split()
# A picture with a character is from zxl_(series); the others from one of these, or none.
COPYRIGHTS, COPYRIGHT_WEIGHTS = ["original", "fate/grand_order", "touhou", "hololive", ""], [0.4, 0.25, 0.1, 0.1, 0.15]
HEAD_ARTISTS = "kurosawa_pen mizuiro_megane hanabi_no_oto tsukimi_dango amane_ryou kitsune_udon".split()
HEAD_ARTIST_WEIGHTS = [0.3, 0.22, 0.16, 0.13, 0.1, 0.09]  # a few prolific artists; the rest: ``tail_artist``
_SYLLABLES = "ka mi to ri sa ne yu ha ru no ki mo".split()
# The long tail of general tags: RARE_TAGS[k] goes to pictures 2k and 2k+1 (each with p 0.8) and to
# 2k+2 or 2k+3 when that one is a multiple of 5, so each is on one to three pictures (until the
# list wraps, past 512 pictures).
_RARE_ADJ = (
    "paper glass striped tiny floating broken wooden checkered origami neon frozen velvet brass chipped lace hollow"
).split()
_RARE_NOUN = (
    "lantern teacup windmill bicycle goldfish kite clocktower bookshelf mailbox jellyfish telescope birdcage "
    "hourglass gramophone lighthouse snow_globe"
).split()
RARE_TAGS = tuple(f"{_RARE_ADJ[i % 16]}_{_RARE_NOUN[(i // 16 + i) % 16]}" for i in range(16 * 16))  # each pair once
# Meta tags some exports fold into the general string: what ``tag.exclude`` is for.
FOLDED_META = ("commentary_request", "artist_request", "highres", "translation_request", "commentary", "tagme")
# Danbooru's rule tables (tag_aliases.csv, tag_implications.parquet): (antecedent, consequent, status).
# Only the active rows apply; each inactive one would do harm if it did.
ALIASES: list[tuple[str, str, str]] = [
    ("longhair", "long_hair", "active"),
    ("smiling", "smile", "active"),
    ("blond_hair", "blonde_hair", "active"),
    ("cat_ear", "cat_ears_(old)", "active"),  # a chain: cat_ear -> cat_ears_(old) -> cat_ears
    ("cat_ears_(old)", "cat_ears", "active"),
    ("hikari_(zxl_series)", "hikari_(zxl)", "active"),  # a character's old name
    ("fgo", "fate/grand_order", "active"),  # a copyright's
    ("smile", "grin", "deleted"),
    ("sky", "blue_sky", "retired"),
    ("glasses", "eyewear", "pending"),
]
IMPLICATIONS: list[tuple[str, str, str]] = [
    ("witch_hat", "hat", "active"),
    ("serafuku", "school_uniform", "active"),
    ("pleated_skirt", "skirt", "active"),
    ("very_long_hair", "long_hair", "active"),
    ("cat_ears", "animal_ears", "active"),
    ("holding_sword", "holding_weapon", "active"),  # a chain: holding_sword -> holding_weapon -> holding
    ("holding_weapon", "holding", "active"),
    ("holding_umbrella", "holding", "active"),
    ("fate/grand_order", "fate_(series)", "active"),  # in the copyright string
    ("bad_pixiv_id", "bad_id", "active"),  # in the meta string
    ("hat", "headwear", "deleted"),
    ("school_uniform", "uniform", "pending"),
    ("serafuku", "sailor_collar", "retired"),
]
RATINGS, RATING_WEIGHTS = ["g", "s", "q", "e"], [0.55, 0.25, 0.12, 0.08]
META_ISSUES = ("old_rating", "bad_rating", "bad_date", "no_date", "comma_tags")
# The year plan: older posts are more often degraded. A row draws an era with its rung's weights,
# then a year in the era uniformly (and a date in the year): a blurred row is from 2005–2011 two
# times in three, a clean one from 2018–2025 nearly three in four, yet every era has every rung,
# and each copy of a picture has its own date, as a repost has. The mean years run from about 2011
# (blurred, downscaled) through 2012 (jpeg_crushed) and 2016 (noisy) to 2019 (clean); over the rows
# dedup keeps (the best copy of each picture), the technical score and the year have a Spearman ρ of
# about 0.4–0.5 (0.42 on the default corpus, 0.48 on the tests'). Bad rows draw the eras evenly.
YEAR_ERAS = ((2005, 2011), (2012, 2017), (2018, 2025))
ERA_WEIGHTS = {  # rung -> weights of YEAR_ERAS
    "clean": (0.08, 0.2, 0.72),
    "noisy": (0.2, 0.35, 0.45),
    "jpeg_crushed": (0.5, 0.3, 0.2),
    "downscaled": (0.55, 0.3, 0.15),
    "blurred": (0.65, 0.25, 0.1),
    "bad": (0.33, 0.33, 0.34),
}
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
    n_md5 = int(round(n_bad * MD5_MISMATCH_SHARE))  # the last bad rows; the others take turns
    for b in range(n_bad):
        kind = BAD_KINDS[-1] if b >= n_bad - n_md5 else BAD_KINDS[b % (len(BAD_KINDS) - 1)]
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
    if item.bad in ("truncated_jpeg", "server_error", "slow", "md5_mismatch"):
        full = encode(draw_picture(10_000 + item.index, seed, item.width, item.height), "jpg", "RGB", 90)
        return full[: len(full) * 2 // 3] if item.bad == "truncated_jpeg" else full
    img = draw_picture(item.picture, seed, item.pic_width, item.pic_height)
    img, quality = degrade(img, item.variant, item, seed)
    return encode(img, item.fmt, item.mode, quality)


def tail_artist(k: int) -> str:
    """The k-th artist of the long tail: a made-up name, sometimes qualified as Danbooru does."""
    n = len(_SYLLABLES)
    m = k * 1141 % n**3  # 1141 is prime to 12³: every k below 1728 a name of its own
    name = "".join(_SYLLABLES[m // n**j % n] for j in range(3)) + (str(k // n**3) if k >= n**3 else "")
    return f"{name}_(artist)" if k % 4 == 0 else name


def _closure(tags: set[str], parents: dict[str, list[str]]) -> set[str]:
    todo, out = list(tags), set(tags)
    while todo:
        for parent in parents.get(todo.pop(), []):
            if parent not in out:
                out.add(parent)
                todo.append(parent)
    return out


def _active(pairs: list[tuple[str, str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for antecedent, consequent, status in pairs:
        if status == "active":
            out.setdefault(antecedent, []).append(consequent)
    return out


def _old_spellings() -> dict[str, list[str]]:
    """Canonical name -> every older spelling an active alias (or a chain of them) leads from."""
    direct = {a: c[0] for a, c in _active(ALIASES).items()}
    out: dict[str, list[str]] = {}
    for antecedent in direct:
        name = antecedent
        while name in direct:
            name = direct[name]
        out.setdefault(name, []).append(antecedent)
    return {k: sorted(v) for k, v in out.items()}


_PARENTS = _active(IMPLICATIONS)
_OLD = _old_spellings()


def _spell(tags: set[str], rng: np.random.Generator) -> list[str]:
    """The names sorted, some in an old spelling (an active alias's antecedent, as older posts have)."""
    out = []
    for tag in sorted(tags):
        old = _OLD.get(tag, [])
        if old and rng.random() < 0.3:
            tag = old[int(rng.integers(len(old)))]
        out.append(tag)
    return sorted(out)


def _picture_tags(rng: np.random.Generator, picture: int) -> dict[str, list[str]]:
    """The tags every copy of one picture shares (all but the size's meta tags), by category."""
    general = set(rng.choice(GENERAL_TAGS, size=int(rng.integers(4, 14)), replace=False).tolist())
    n_chars = int(rng.choice(3, p=[0.5, 0.35, 0.15]))
    chars = set(rng.choice(CHARACTERS, size=n_chars, replace=False).tolist())
    if chars:
        copyrights = {"zxl_(series)"}
    else:
        c = str(rng.choice(COPYRIGHTS, p=COPYRIGHT_WEIGHTS))
        copyrights = {c} if c else set()
    # implied parents beside their children, as Danbooru adds them (now and then missing, as in an
    # export made before the implication was)
    if rng.random() < 0.9:
        general, copyrights = _closure(general, _PARENTS), _closure(copyrights, _PARENTS)
    if picture >= 0:  # the long tail (RARE_TAGS)
        if rng.random() < 0.8:
            general.add(RARE_TAGS[(picture // 2) % len(RARE_TAGS)])
        if picture % 5 == 0 and picture >= 2:
            general.add(RARE_TAGS[(picture // 2 - 1) % len(RARE_TAGS)])
    r = rng.random()
    if r < 0.55:
        artists = [str(rng.choice(HEAD_ARTISTS, p=HEAD_ARTIST_WEIGHTS))]
    elif r < 0.92 and picture >= 0:
        artists = [tail_artist(picture // 2)]  # one or two pictures each
    else:
        artists = []  # unknown: now and then artist_request (in the general string) says so
    if not artists and rng.random() < 0.4:
        general.add("artist_request")
    elif rng.random() < 0.1:  # a meta tag folded into the general string
        general.add(FOLDED_META[int(rng.integers(len(FOLDED_META)))])
    meta = set()
    r = rng.random()
    if r < 0.25:
        meta.add("commentary_request")
    elif r < 0.35:
        meta.add("commentary")
    r = rng.random()
    if r < 0.08:
        meta.add("translation_request")
    elif r < 0.16:
        meta.add("translated")
    if rng.random() < 0.06:
        meta.add("bad_id")
        if rng.random() < 0.7:
            meta.add("bad_pixiv_id")
    return {
        "general": _spell(general, rng),
        "character": _spell(chars, rng),
        "copyright": _spell(copyrights, rng),
        "artist": sorted(artists),
        "meta": sorted(meta),
    }


def size_meta(width: int, height: int) -> list[str]:
    """Danbooru's resolution meta tags for a post of this size."""
    out = []
    if width >= 1600 or height >= 1200:
        out.append("highres")
    if width >= 3200 or height >= 2400:
        out.append("absurdres")
    if width >= 10_000 or height >= 10_000:
        out.append("incredibly_absurdres")
    return out


def _meta(item: Item, seed: int, md5: str) -> tuple[dict, str | None]:
    rng = np.random.default_rng([seed, 3, item.picture if item.picture >= 0 else 100_000 + item.index])
    tags = _picture_tags(rng, item.picture)
    rating = str(rng.choice(RATINGS, p=RATING_WEIGHTS))
    issue = META_ISSUES[int(rng.integers(len(META_ISSUES)))] if rng.random() < 0.04 else None
    # Each copy has its own date, its era drawn by its rung (YEAR_ERAS).
    when = np.random.default_rng([seed, 4, item.index])
    lo, hi = YEAR_ERAS[int(when.choice(len(YEAR_ERAS), p=ERA_WEIGHTS[item.variant]))]
    year = int(when.integers(lo, hi + 1))
    month, day = int(when.integers(1, 13)), int(when.integers(1, 29))
    hh, mm, ss = int(when.integers(0, 24)), int(when.integers(0, 60)), int(when.integers(0, 60))
    if when.random() < 0.1:  # near midnight on new year: the year depends on the offset
        month, day, hh = 1, 1, 0
    # the path is named by the md5, as Danbooru's are; zero-byte files all share one md5, so theirs by the row
    name = hashlib.md5(f"empty-{seed}-{item.index}".encode()).hexdigest() if item.bad == "zero_bytes" else md5
    meta = {
        "id": 1_000_000 + item.index,
        "file_url": f"/data/{name[:2]}/{name[2:4]}/{name}.{item.fmt}",
        "tag_string_general": " ".join(tags["general"]),
        "tag_string_character": " ".join(tags["character"]),
        "tag_string_copyright": " ".join(tags["copyright"]),
        "tag_string_artist": " ".join(tags["artist"]),
        "tag_string_meta": " ".join(sorted([*tags["meta"], *size_meta(item.width, item.height)])),
        "rating": rating,
        "created_at": f"{year:04d}-{month:02d}-{day:02d}T{hh:02d}:{mm:02d}:{ss:02d}.000+09:00",
        "image_width": item.width,
        "image_height": item.height,
        "md5": md5,
    }
    # A few pictures carry the metadata mistakes real exports have (``META_ISSUES``).
    if issue == "old_rating":
        meta["rating"] = "safe"
    elif issue == "bad_rating":
        meta["rating"] = "unrated"
    elif issue == "bad_date":
        meta["created_at"] = "last tuesday"
    elif issue == "no_date":
        meta["created_at"] = None
    elif issue == "comma_tags":
        meta["tag_string_general"] = ", ".join(tags["general"])
    return meta, issue


def _build_one(args: tuple[Item, int]) -> tuple[Item, bytes | None, str]:
    item, seed = args
    data = render(item, seed)
    if item.bad == "md5_mismatch":  # the table names the original file; the server has another
        return item, data, hashlib.md5(f"original-{seed}-{item.index}".encode()).hexdigest()
    # The md5 of what is served, broken files too (the booru stored them so: they fail to decode, not the check);
    # a row with nothing served (404, 500) names a file that is not there.
    md5 = hashlib.md5(data if data is not None else f"missing-{seed}-{item.index}".encode()).hexdigest()
    return item, data, md5


def _rule_table(pairs: list[tuple[str, str, str]], first_id: int, kind: str) -> pa.Table:
    """A Danbooru rule export: id, antecedent_name, consequent_name, status, created_at, reason."""
    rows = []
    for i, (antecedent, consequent, status) in enumerate(pairs):
        year, month, day = 2009 + (i * 5) % 16, 1 + (i * 7) % 12, 1 + (i * 11) % 28
        reason = {
            "active": f"topic #{2_000 + 37 * i}: {antecedent} -> {consequent}, approved",
            "deleted": f"{kind} request rejected: {antecedent} and {consequent} are not the same",
            "retired": f"retired in the {year + 1} cleanup: superseded",
            "pending": f"proposed in topic #{9_000 + i}",
        }[status]
        rows.append(
            {
                "id": first_id + i,
                "antecedent_name": antecedent,
                "consequent_name": consequent,
                "status": status,
                "created_at": f"{year}-{month:02d}-{day:02d}T{(i * 5) % 24:02d}:{(i * 13) % 60:02d}:00.000-05:00",
                "reason": reason,
            }
        )
    return pa.Table.from_pylist(rows)


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
    pacsv.write_csv(_rule_table(ALIASES, 3_001, "alias"), tmp / "tag_aliases.csv")
    pq.write_table(_rule_table(IMPLICATIONS, 5_001, "implication"), tmp / "tag_implications.parquet")
    (tmp / "special.json").write_text(json.dumps(special, indent=1, sort_keys=True))
    (tmp / "COMPLETE").write_text(json.dumps({"size": size, "seed": seed, "bad_fraction": bad_fraction}))
