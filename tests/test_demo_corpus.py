import io
import re

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from zxl.demo_corpus import BAD_KINDS, LADDER, bomb_png, build_corpus, plan

SOURCE_COLUMNS = ["id", "file_url", "tag_string_general", "tag_string_character", "rating", "created_at",
                  "image_width", "image_height", "md5"]  # fmt: skip


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
