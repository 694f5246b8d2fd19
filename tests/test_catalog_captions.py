"""catalog/captions.py: the caption layout (which tag categories, in what order, what is shuffled),
as the trainer writes captions and as kohya's keep_tokens_separator reads them."""

import random

import pytest

from zxl.catalog.captions import KEEP_SEPARATOR, TagLayout, build_caption, check_layout, kohya_caption, layout_of
from zxl.config import ConfigError

ROW = {"score": 7, "rating": "general", "year": 2020, "tags": ["long_hair", "smile", "outdoors", "hat"],
       "characters": ["hikari_(zxl)"], "copyrights": ["zxl_(series)"], "artists": ["mikaha"],
       "meta": ["highres", "commentary_request"], "caption": None}  # fmt: skip
GENERAL = {"long hair", "smile", "outdoors", "hat"}


def kohya_split(caption: str, separator: str = KEEP_SEPARATOR, caption_separator: str = ","):
    """How kohya's train_util.process_caption cuts a caption with keep_tokens_separator: the part
    before the first separator is fixed, the part between it and a second one is shuffled, the part
    after the second one is a fixed suffix (tokens stripped, empty ones dropped)."""
    fixed_part, flex_part = caption.split(separator, 1)
    suffix_part = ""
    if separator in flex_part:
        flex_part, suffix_part = flex_part.split(separator, 1)

    def tokens(part):
        return [t.strip() for t in part.split(caption_separator) if t.strip()]

    return tokens(fixed_part), tokens(flex_part), tokens(suffix_part)


def test_default_layout_keeps_who_and_from_where_first_and_shuffles_the_general_tags():
    texts = [build_caption(ROW, random.Random(i), (1, 0, 0)) for i in range(60)]
    for t in texts:
        parts = t.split(", ")
        assert parts[:6] == ["score_7", "rating:general", "year 2020", "hikari (zxl)", "zxl (series)", "mikaha"]
        assert set(parts[6:]) == GENERAL  # meta never enters
    assert len({t for t in texts}) > 10


def test_everything_shuffled_and_a_fixed_tail():
    mixed = TagLayout(("characters", "copyrights", "artists", "general"), ("characters", "copyrights", "artists",
                                                                          "general"))  # fmt: skip
    heads = {build_caption(ROW, random.Random(i), (1, 0, 0), layout=mixed).split(", ")[3] for i in range(60)}
    assert "hikari (zxl)" in heads and heads & GENERAL  # no fixed order at all (the recipe's choice)
    tail = TagLayout(("characters", "general", "artists", "meta"), ("general",))
    for i in range(20):
        parts = build_caption(ROW, random.Random(i), (1, 0, 0), layout=tail).split(", ")
        assert parts[3] == "hikari (zxl)" and parts[-3:] == ["mikaha", "highres", "commentary request"]
        assert set(parts[4:-3]) == GENERAL and "zxl (series)" not in parts


def test_kohya_reads_the_same_head_shuffled_run_and_tail():
    fixed, flex, suffix = kohya_split(kohya_caption(ROW, random.Random(0)))
    assert fixed == ["score_7", "rating:general", "year 2020", "hikari (zxl)", "zxl (series)", "mikaha"]
    assert set(flex) == GENERAL and suffix == []
    layout = TagLayout(("characters", "general", "artists"), ("general",))
    fixed, flex, suffix = kohya_split(kohya_caption(ROW, random.Random(0), layout))
    assert fixed[-1] == "hikari (zxl)" and set(flex) == GENERAL and suffix == ["mikaha"]
    captioned = {**ROW, "caption": "A girl in a hat."}
    texts = {kohya_caption(captioned, random.Random(i), layout) for i in range(40)}
    natural = [t for t in texts if t.endswith(KEEP_SEPARATOR)]  # the sentence alone, nothing to shuffle
    want = ["score_7", "rating:general", "year 2020", "A girl in a hat"]
    assert natural and all(kohya_split(t) == (want, [], []) for t in natural)


def test_layouts_are_checked():
    check_layout(["general"], [])
    with pytest.raises(ConfigError, match="caption.tag_order names the categories general, characters"):
        check_layout(["general", "tags"], ["general"])
    with pytest.raises(ConfigError, match="caption.shuffle names \\['meta'\\], which caption.tag_order leaves out"):
        check_layout(["general"], ["meta"])
    with pytest.raises(ConfigError, match="contiguous run"):
        check_layout(["characters", "general", "artists"], ["characters", "artists"])
    with pytest.raises(ConfigError, match="each category once"):
        check_layout(["general", "general"], [])


def test_the_layout_comes_from_the_catalogs_manifest():
    v2 = {"config": {"caption": {"tag_order": ["general", "artists"], "shuffle": ["general"]}}}
    assert layout_of(v2) == TagLayout(("general", "artists"), ("general",))
    v1 = {"schema_version": 1, "config": {"caption": {"captioner": "template"}}}  # before the settings
    assert layout_of(v1) == TagLayout(("characters", "general"), ("characters", "general"))
    assert layout_of({}) == layout_of(v1)
