import hashlib
import io
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from zxl.demo_corpus import (
    ALIASES,
    BAD_KINDS,
    CHARACTERS,
    EXPECTED_STATUS,
    FOLDED_META,
    HEAD_ARTISTS,
    IMPLICATIONS,
    LADDER,
    RARE_TAGS,
    YEAR_ERAS,
    bomb_png,
    build_corpus,
    plan,
    size_meta,
)

TAG_COLUMNS = ["tag_string_general", "tag_string_character", "tag_string_copyright", "tag_string_artist",
               "tag_string_meta"]  # fmt: skip
SOURCE_COLUMNS = ["id", "file_url", *TAG_COLUMNS, "rating", "created_at", "image_width", "image_height", "md5"]
RULE_COLUMNS = ["id", "antecedent_name", "consequent_name", "status", "created_at", "reason"]
DANBOORU_META = {"highres", "absurdres", "incredibly_absurdres", "commentary_request", "commentary",
                 "translation_request", "translated", "bad_id", "bad_pixiv_id"}  # fmt: skip


def _source(corpus, truth):
    return pq.read_table(corpus / "source.parquet").to_pandas().merge(truth, on="id")


def _tokens(values) -> list[set[str]]:
    return [set(v.split()) for v in values]


def test_source_table_is_shaped_like_a_booru_export(corpus, truth):
    src = pq.read_table(corpus / "source.parquet").to_pandas()
    assert list(src.columns) == SOURCE_COLUMNS
    assert src["id"].is_unique
    issues = src.merge(truth, on="id")["meta_issue"]
    assert issues.notna().any()  # some metadata mistakes, as real exports have
    src = src[issues.isna().to_numpy()]
    assert set(src["rating"]) <= {"g", "s", "q", "e"}
    stamp = re.compile(r"^(\d{4})-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+09:00$")
    years = [int(stamp.match(v).group(1)) for v in src["created_at"]]
    assert 2005 <= min(years) and max(years) <= 2025
    assert src["md5"].str.fullmatch(r"[0-9a-f]{32}").all()


def test_every_bad_kind_and_the_ladder(corpus, truth):
    assert set(truth["bad"].dropna()) == set(BAD_KINDS)
    good = truth[truth["bad"].isna()]
    assert set(good["variant"]) == set(LADDER)
    assert good.groupby("picture")["variant"].nunique().max() == len(LADDER)
    assert 0.08 <= truth["bad"].notna().mean() <= 0.12


def test_served_bytes_match_the_table(corpus, truth):
    src = pq.read_table(corpus / "source.parquet").to_pandas().merge(truth, on="id")
    for row in src[src["bad"].isna()].itertuples():
        data = (corpus / "files" / row.file_url.lstrip("/")).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            assert im.size == (row.image_width, row.image_height)
            assert im.mode == row.mode
            assert {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[im.format] == row.format


def test_the_plan_covers_shapes_modes_and_sizes():
    items = plan(600, 0, 0.05)
    good = [i for i in items if i.bad is None]
    assert len(items) == 600 and sum(i.bad is not None for i in items) == 30
    aspects = {round(i.pic_width / i.pic_height, 2) for i in good}
    assert {0.57, 1.0, 1.75, 0.33, 3.0} <= aspects  # recipe buckets and odd ones
    assert {i.fmt for i in good} == {"jpg", "png", "webp"}
    assert {i.mode for i in good} == {"RGB", "RGBA", "L", "P", "CMYK"}
    ladder = [max(i.width, i.height) for i in good if not i.single]  # the downscaled rungs give the 256s
    assert min(ladder) == 256 and max(ladder) == 2048
    singles = [i for i in good if i.single]  # half the pictures, each served once, every rung among them
    assert 0.35 < len({i.picture for i in singles}) / len({i.picture for i in good}) < 0.65
    assert {i.variant for i in singles} == set(LADDER)
    assert min(max(i.width, i.height) for i in singles if i.variant == "downscaled") == 48


def test_deterministic_from_the_seed(tmp_path):
    a = build_corpus(tmp_path / "a", size=30, seed=3, bad_fraction=0.1, workers=1)
    b = build_corpus(tmp_path / "b", size=30, seed=3, bad_fraction=0.1, workers=2)
    c = build_corpus(tmp_path / "c", size=30, seed=4, bad_fraction=0.1, workers=1)
    md5 = lambda d: pq.read_table(d / "source.parquet")["md5"].to_pylist()  # noqa: E731
    assert md5(a) == md5(b)
    assert md5(a) != md5(c)
    assert build_corpus(tmp_path / "a", size=30, seed=3, bad_fraction=0.1) == a  # cached


def test_ladder_rungs_really_degrade(corpus, truth):
    """Blur and downscaling remove detail, noise adds it: the rungs differ the way their names say."""
    src = pq.read_table(corpus / "source.parquet").to_pandas().merge(truth, on="id")

    def detail(row):
        with Image.open(corpus / "files" / row.file_url.lstrip("/")) as im:
            a = np.asarray(im.convert("L").resize((256, 256)), dtype=np.float32)
        return float(np.abs(np.diff(a, axis=1)).mean())

    pictures = src[src["variant"] == "clean"]["picture"]
    checked = 0
    for p in pictures:
        rungs = {r.variant: detail(r) for r in src[src["picture"] == p].itertuples()}
        if len(rungs) == len(LADDER):
            assert rungs["blurred"] < rungs["clean"] < rungs["noisy"]
            checked += 1
    assert checked >= 10


def test_bomb_claims_a_huge_image_in_a_small_file():
    data = bomb_png(4000)
    assert len(data) < 20_000
    Image.MAX_IMAGE_PIXELS, old = None, Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as im:
            assert im.size == (4000, 4000)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_five_tag_strings_like_danbooru(corpus, truth):
    """Space-separated, sorted, every category in use; every copy of a picture shares its tags
    (only the size's meta tags follow each copy)."""
    src = _source(corpus, truth)
    plain = src[src["meta_issue"] != "comma_tags"]
    for column in TAG_COLUMNS:
        for value in plain[column]:
            assert isinstance(value, str) and "," not in value and value == value.strip() and "  " not in value
            assert value.split() == sorted(value.split())
        assert plain[column].str.len().gt(0).any(), column
    assert plain["tag_string_general"].str.len().gt(0).all()
    good = src[src["bad"].isna()]
    assert good.groupby("picture")[TAG_COLUMNS[:4]].nunique().max().max() == 1
    characters = set().union(*_tokens(src["tag_string_character"]))
    old_names = {a for a, _, s in ALIASES if s == "active"}
    assert characters <= set(CHARACTERS) | old_names and len(characters) >= 4
    copyrights = set().union(*_tokens(src["tag_string_copyright"]))
    assert {"original", "zxl_(series)", "fate/grand_order", "fate_(series)"} <= copyrights
    assert set().union(*_tokens(src["tag_string_meta"])) <= DANBOORU_META
    for row in src.itertuples():  # highres/absurdres by the post's size, as Danbooru does
        sized = set(row.tag_string_meta.split()) & {"highres", "absurdres", "incredibly_absurdres"}
        assert sized == set(size_meta(row.image_width, row.image_height)), row
    assert src["tag_string_meta"].str.contains("highres").any()
    # a few prolific artists, and a long tail of one or two pictures each
    artists = good.drop_duplicates("picture")["tag_string_artist"].value_counts()
    assert artists[artists.index.isin(HEAD_ARTISTS)].max() >= 4
    tail = artists[~artists.index.isin(HEAD_ARTISTS) & (artists.index != "")]
    assert len(tail) >= 5 and tail.max() <= 2


def test_rule_tables_in_danbooru_export_shape(corpus):
    aliases = pd.read_csv(corpus / "tag_aliases.csv", dtype=str, keep_default_na=False)
    implications = pq.read_table(corpus / "tag_implications.parquet").to_pandas()
    for table, pairs in ((aliases, ALIASES), (implications, IMPLICATIONS)):
        assert list(table.columns) == RULE_COLUMNS
        assert list(zip(table["antecedent_name"], table["consequent_name"], table["status"], strict=True)) == pairs
        assert table["id"].is_unique and table["reason"].str.len().gt(0).all()
        assert table["created_at"].str.match(r"^\d{4}-\d\d-\d\dT").all()
        assert "active" in set(table["status"]) and len(set(table["status"]) & {"deleted", "retired", "pending"}) >= 2
    active = {a: c for a, c, s in ALIASES if s == "active"}
    assert active["cat_ear"] in active  # a chain of aliases
    assert ("smile", "grin", "deleted") in ALIASES and "smile" not in active  # would do harm if applied


def test_posts_carry_what_the_rules_clean(corpus, truth):
    src = _source(corpus, truth)
    src = src[src["meta_issue"] != "comma_tags"]
    general = _tokens(src["tag_string_general"])
    named = [g | c | k for g, c, k in zip(general, _tokens(src["tag_string_character"]),
                                           _tokens(src["tag_string_copyright"]), strict=True)]  # fmt: skip
    old = {a for a, _, s in ALIASES if s == "active"}
    spelled = set().union(*(t & old for t in named))
    assert len(spelled) >= 4  # old spellings of aliased tags
    assert spelled & {"hikari_(zxl_series)", "fgo"}  # one in the character or copyright string
    assert any("smile" in t for t in general)  # what the deleted alias would wrongly rename
    copyrights = _tokens(src["tag_string_copyright"])
    assert any({"fate/grand_order", "fate_(series)"} <= t for t in copyrights)
    for child, parent, status in IMPLICATIONS:  # implied parents beside their children
        if status == "active" and parent in {"hat", "school_uniform", "skirt", "holding_weapon"}:
            assert any({child, parent} <= t for t in general), (child, parent)
    assert any({"holding_sword", "holding_weapon", "holding"} <= t for t in general)  # a chain of implications
    assert sum(bool(t & set(FOLDED_META)) for t in general) >= 3  # for tag.exclude
    # a long tail of rare tags, each on one to three pictures (for tag.min_count)
    pictures = src[src["bad"].isna()].drop_duplicates("picture")
    rare = pd.Series([t for v in pictures["tag_string_general"] for t in v.split() if t in RARE_TAGS])
    counts = rare.value_counts()
    assert len(counts) >= 10 and counts.max() <= 3 and (counts == 1).any()


def test_md5_mismatch_rows_serve_other_bytes(corpus, truth):
    """Every good row's md5 is the md5 of the bytes served; an md5_mismatch row's is not, though it
    serves a valid image (the file was replaced: only a fetch that checks the md5 fails it)."""
    src = _source(corpus, truth)
    md5 = lambda row: hashlib.md5((corpus / "files" / row.file_url.lstrip("/")).read_bytes()).hexdigest()  # noqa: E731
    for row in src[src["bad"].isna()].itertuples():
        assert md5(row) == row.md5
    mismatch = src[src["bad"] == "md5_mismatch"]
    assert len(mismatch) >= 2 and (mismatch["expected_status"] == EXPECTED_STATUS["md5_mismatch"]).all()
    for row in mismatch.itertuples():
        assert md5(row) != row.md5 and row.file_url.endswith(f"/{row.md5}.jpg")
        with Image.open(corpus / "files" / row.file_url.lstrip("/")) as im:
            im.load()
            assert im.size == (row.image_width, row.image_height)
    assert sum(i.bad == "md5_mismatch" for i in plan(600, 0, 0.05)) >= 4
    assert not any(i.bad for i in plan(200, 0, 0.0))  # a corpus asked to be clean is clean


def test_older_posts_are_more_often_degraded(corpus, truth):
    """The year follows the ladder rung (YEAR_ERAS), yet every era has every rung."""
    src = _source(corpus, truth)
    good = src[src["bad"].isna() & src["created_at"].fillna("").str.match(r"^\d{4}-")].copy()
    good["year"] = good["created_at"].str[:4].astype(int)
    mean = good.groupby("variant")["year"].mean()
    assert mean["clean"] > mean["noisy"] > mean["blurred"] + 2
    assert mean["clean"] > max(mean["jpeg_crushed"], mean["downscaled"]) + 3
    level = good["variant"].map({v: len(LADDER) - i for i, v in enumerate(LADDER)})
    assert 0.3 < level.rank().corr(good["year"].rank()) < 0.8
    era = pd.cut(good["year"], [y[0] - 1 for y in YEAR_ERAS] + [YEAR_ERAS[-1][1]], labels=False)
    assert (pd.crosstab(era, good["variant"]) > 0).all().all()
    # reposts: the copies of one picture have dates of their own
    assert good[~good["single"]].groupby("picture")["created_at"].nunique().gt(1).mean() > 0.8
