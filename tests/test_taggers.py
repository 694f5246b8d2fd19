"""Contract tests for every tagger, the metadata parser's edge cases, and the WD adapter end to end."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zxl.config import ConfigError
from zxl.taggers.base import COLUMNS, RATINGS
from zxl.taggers.config import TagConfig
from zxl.taggers.metadata import MetadataTagger, parse_rating, parse_year, split_tags
from zxl.taggers.registry import TAGGERS, check, merge, tagger_class
from zxl.taggers.wd import WDTagger, mcut, prepare

ROWS = pd.DataFrame(
    {
        "rating": ["g", "Explicit", "safe", "weird", None],
        "created_at": ["2011-01-01T00:30:00.000+09:00", "2024-12-31T23:59:59Z", "garbage", None, 1293840000],
        "tag_string_general": ["1girl solo", "", "a,b,c", None, "long_hair  smile"],
        "tag_string_character": ["aoi_(zxl)", "", "", None, ""],
    }
)


@pytest.fixture(params=sorted(TAGGERS))
def tagger(request, wd_model):
    cfg = TagConfig(taggers=[request.param], wd_model=str(wd_model[0]), batch_size=2)
    return tagger_class(request.param)(cfg)


def test_contract(tagger):
    """Every member: one row per input, the documented columns, ratings from the four classes."""
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), None, Image.new("RGBA", (8, 8)), None, Image.new("L", (5, 9))]
    out = tagger.tag(images if tagger.needs_images else None, ROWS)
    assert list(out.columns) == list(COLUMNS) and len(out) == len(ROWS)
    assert set(out["rating"].dropna()) <= set(RATINGS)
    for tags in out["tags"].dropna():
        assert isinstance(tags, list) and all(isinstance(t, str) for t in tags)
    if tagger.needs_images:
        assert out["rating"].isna().tolist() == [im is None for im in images]


@pytest.mark.parametrize(
    ("value", "rating"),
    [("g", "general"), ("s", "sensitive"), ("q", "questionable"), ("e", "explicit"), ("General", "general"),
     ("SENSITIVE", "sensitive"), ("questionable", "questionable"), ("explicit", "explicit"), ("safe", "general"),
     (" e ", "explicit"), ("", None), (None, None)],
)  # fmt: skip
def test_every_rating_spelling(value, rating):
    assert parse_rating(value) == (rating, None)


def test_unknown_rating_is_null_with_a_reason():
    assert parse_rating("unrated") == (None, "unknown rating 'unrated'")


@pytest.mark.parametrize(
    ("value", "year"),
    [
        ("2011-01-01T00:30:00.000+09:00", 2011),  # 2010-12-31 15:30 UTC: the local year counts
        ("2010-12-31T23:30:00-05:00", 2010),
        ("2024-12-31T23:59:59Z", 2024),
        ("2019-05-01", 2019),
        (1293840000, 2011),  # a Unix timestamp, UTC
        ("1293840000", 2011),
    ],
)
def test_years_in_the_sources_own_offset(value, year):
    assert parse_year(value) == (year, None)


@pytest.mark.parametrize("value", ["yesterday", "2011-13-45T00:00:00", "1800-01-01", "20110101T00:30:00+0900x"])
def test_bad_dates_are_null_with_a_reason(value):
    year, problem = parse_year(value)
    assert year is None and problem


def test_missing_dates_are_just_missing():
    assert parse_year(None) == (None, None) and parse_year("") == (None, None) and parse_year(np.nan) == (None, None)


def test_tag_strings():
    assert split_tags("1girl  solo long_hair", " ") == (["1girl", "solo", "long_hair"], None)
    assert split_tags("", " ") == ([], None)
    assert split_tags(None, " ") == (None, None)
    assert split_tags("1girl, solo", ", ") == (["1girl", "solo"], None)
    tags, problem = split_tags("1girl,solo", " ")
    assert tags is None and "','" in problem and "tag.separator" in problem
    tags, problem = split_tags("1girl|solo", ", ")
    assert tags is None and "'|'" in problem


def test_metadata_tagger_and_column_mapping():
    out = MetadataTagger(TagConfig()).tag(None, ROWS)
    assert out["rating"].tolist() == ["general", "explicit", "general", None, None]
    assert out["year"].tolist() == [2011, 2024, None, None, 2011]
    assert out["tags"].tolist() == [["1girl", "solo"], [], None, None, ["long_hair", "smile"]]
    assert out["characters"].tolist()[0] == ["aoi_(zxl)"]
    assert "unknown rating 'weird'" in out["problem"][3] and "unparseable date" in out["problem"][2]
    assert out["problem"][0] is None
    other = pd.DataFrame({"safety": ["q"], "posted": ["2015-02-03T04:05:06+00:00"], "all_tags": ["cat dog"]})
    cfg = TagConfig(rating_column="safety", created_at_column="posted", general_column="all_tags", character_column="")
    out = MetadataTagger(cfg).tag(None, other)
    got = (out["rating"][0], out["year"][0], out["tags"][0], out["characters"][0])
    assert got == ("questionable", 2015, ["cat", "dog"], None)


def test_merge_policy_first_value_wins_and_records_the_source():
    meta = pd.DataFrame({"rating": ["general", None], "year": [2011, None], "tags": [["a"], None],
                         "characters": [None, None], "problem": [None, "rating: unknown rating 'x'"]})  # fmt: skip
    model = pd.DataFrame({"rating": ["explicit", "sensitive"], "year": [None, None], "tags": [["b"], ["c"]],
                          "characters": [["k"], []], "problem": [None, None]})  # fmt: skip
    out = merge([("metadata", meta), ("wd:tiny", model)], 2)
    assert out["rating"].tolist() == ["general", "sensitive"]
    assert out["rating_source"].tolist() == ["metadata", "wd:tiny"]
    assert out["tags"].tolist() == [["a"], ["c"]] and out["characters"].tolist() == [["k"], []]
    assert out["problem"].tolist() == [None, "metadata: rating: unknown rating 'x'"]


def test_wd_preprocessing_rgba_palette_and_padding():
    red = prepare(Image.new("RGB", (4, 2), (255, 0, 0)), 4)
    assert red.shape == (4, 4, 3) and red.dtype == np.float32
    assert red[1, 0].tolist() == [0, 0, 255]  # BGR
    assert red[0, 0].tolist() == [255, 255, 255]  # padded with white, centred
    clear = Image.new("RGBA", (6, 6), (0, 0, 0, 0))
    assert (prepare(clear, 6) == 255).all()  # transparent → white, not black
    half = Image.new("RGBA", (2, 2), (0, 0, 255, 128))
    assert prepare(half, 2)[0, 0].tolist() == pytest.approx([255, 127, 127], abs=1)  # blue over white
    pal = Image.new("RGB", (3, 3), (0, 255, 0)).convert("P")
    assert prepare(pal, 3)[1, 1].tolist() == [0, 255, 0]


def test_wd_end_to_end_matches_the_model_by_hand(wd_model):
    folder, w, b = wd_model
    from zxl.testing import WD_LABELS

    images = [Image.new("RGB", (50, 20), (250, 30, 30)), Image.new("RGBA", (30, 30), (10, 200, 10, 255)),
              Image.new("RGB", (10, 40), (0, 0, 0)).convert("P")]  # fmt: skip
    cfg = TagConfig(taggers=["wd"], wd_model=str(folder), wd_general_threshold=0.5, wd_character_threshold=0.5)
    tagger = WDTagger(cfg)
    out = tagger.tag(images, pd.DataFrame(index=range(3)))
    names = [n for n, _ in WD_LABELS]
    for i, im in enumerate(images):
        probs = 1 / (1 + np.exp(-(prepare(im, 32).mean(axis=(0, 1)) @ w + b)))
        assert out["rating"][i] == names[int(np.argmax(probs[:4]))]
        general = [names[j] for j in np.argsort(-probs) if 4 <= j < 9 and probs[j] > 0.5]
        assert out["tags"][i] == general
        chars = [names[j] for j in np.argsort(-probs) if 9 <= j and probs[j] > 0.5]
        assert out["characters"][i] == chars
    assert tagger.source == "wd:wd-tiny-tagger"
    mc = WDTagger(TagConfig(taggers=["wd"], wd_model=str(folder), wd_mcut=True)).tag(
        images[:1], pd.DataFrame(index=[0])
    )
    assert isinstance(mc["tags"][0], list)


def test_mcut():
    assert mcut(np.array([0.9, 0.85, 0.2, 0.1])) == pytest.approx(0.525)
    assert mcut(np.array([0.3])) == 0.5


def test_wd_errors_name_the_key(tmp_path, wd_model):
    with pytest.raises(ConfigError, match="tag.wd_model is empty"):
        check(TagConfig(taggers=["wd"]))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.onnx").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="selected_tags.csv is missing"):
        check(TagConfig(taggers=["wd"], wd_model=str(tmp_path / "half")))
    (tmp_path / "half" / "selected_tags.csv").write_text((wd_model[0] / "selected_tags.csv").read_text())
    with pytest.raises(ConfigError, match="onnxruntime cannot load"):
        WDTagger(TagConfig(taggers=["wd"], wd_model=str(tmp_path / "half")))
    with pytest.raises(ConfigError, match="tag.taggers must be one of metadata, wd, got 'deepdanbooru'"):
        check(TagConfig(taggers=["metadata", "deepdanbooru"]))


def _kohya_preprocess(image, size):
    """kohya-ss/sd-scripts finetune/tag_images_by_wd14_tagger.py, preprocess_image (transcribed)."""
    import cv2

    image = np.array(image)
    image = image[:, :, ::-1]  # RGB->BGR
    side = max(image.shape[0:2])
    pad_x, pad_y = side - image.shape[1], side - image.shape[0]
    pad_l, pad_t = pad_x // 2, pad_y // 2
    image = np.pad(
        image, ((pad_t, pad_y - pad_t), (pad_l, pad_x - pad_l), (0, 0)), mode="constant", constant_values=255
    )
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LANCZOS4
    image = cv2.resize(image, (size, size), interpolation=interp)
    return image.astype(np.float32)


@pytest.mark.parametrize("shape", [(37, 53), (53, 37), (40, 40), (9, 20)])
@pytest.mark.parametrize("mode", ["RGB", "L", "P", "CMYK", "RGBA", "LA"])
def test_wd_preprocessing_is_kohyas_with_transparency_on_white(mode, shape):
    """kohya's tagger script, value for value, after compositing transparency onto white (kohya's
    convert("RGB") drops the alpha channel; SmilingWolf's reference composites onto white)."""
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (*shape, 4), dtype=np.uint8), "RGBA").convert(mode)
    flat = img
    if "A" in img.getbands():
        flat = Image.new("RGBA", img.size, (255, 255, 255, 255))
        flat.alpha_composite(img.convert("RGBA"))
    for size in (32, 24, 64):  # down (INTER_AREA), down, up (LANCZOS4)
        np.testing.assert_array_equal(prepare(img, size), _kohya_preprocess(flat.convert("RGB"), size))


def test_wd_batch_is_the_stack_of_prepared_images():
    from zxl.taggers.wd import batch

    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 41, 3), dtype=np.uint8)) for i in range(3)]
    got = batch(images, 24)
    np.testing.assert_array_equal(got, np.stack([prepare(im, 24) for im in images]))
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
