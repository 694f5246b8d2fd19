"""Tag rules (taggers/rules.py) on Danbooru-shaped tables: aliases, implications, replace, exclude, counts."""

from __future__ import annotations

import csv
import gzip
import pickle
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zxl.config import ConfigError
from zxl.taggers.rules import (
    Aliases,
    Implications,
    RuleCounts,
    TagRules,
    drop_tags,
    rare_tags,
    read_rule_table,
)

# Danbooru's export columns, in its order; only antecedent_name, consequent_name and status matter
HEADER = ["id", "antecedent_name", "consequent_name", "created_at", "reason", "forum_topic_id", "status"]
MIXED = [
    (" blond_hair ", "blonde_hair", "active"),
    ("bunny_ears", "rabbit_ears", "Active "),
    ("deleted_one", "x", "deleted"),
    ("pending_one", "y", "pending"),
    ("retired_one", "z", "retired"),
    ("", "empty_antecedent", "active"),
    (None, "null_antecedent", "active"),
    ("fgo", "fate/grand_order", "ACTIVE"),
    ("no_status", "q", None),
    ("processing_one", "p", "processing"),
]
MIXED_ACTIVE = [("blond_hair", "blonde_hair"), ("bunny_ears", "rabbit_ears"), ("fgo", "fate/grand_order")]


def danbooru_rows(rules):
    return [
        {
            "id": i + 1,
            "antecedent_name": a,
            "consequent_name": c,
            "created_at": "2019-05-01T12:00:00.000-04:00",
            "reason": f"topic #{i}\nsecond line, with a comma",
            "forum_topic_id": 1000 + i,
            "status": s,
        }
        for i, (a, c, s) in enumerate(rules)
    ]


def write_parquet(path, rules, columns=HEADER):
    rows = danbooru_rows(rules)
    pq.write_table(pa.table({name: [r[name] for r in rows] for name in columns}), path)
    return str(path)


def write_csv(path, rules, columns=HEADER):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in danbooru_rows(rules):
            writer.writerow(["" if row[name] is None else row[name] for name in columns])
    return str(path)


def rules_from(aliases=(), implications=(), **kwargs) -> TagRules:
    alias = Aliases(list(aliases)) if aliases else None
    implied = Implications(list(implications), alias) if implications else None
    return TagRules(alias, implied, **kwargs)


# --- reading the tables


def test_read_parquet_keeps_active_rows_stripped(tmp_path):
    assert read_rule_table(write_parquet(tmp_path / "tag_aliases.parquet", MIXED), "tag.aliases") == MIXED_ACTIVE


@pytest.mark.parametrize("name", ["tag_aliases.csv", "tag_aliases.csv.gz"])
def test_read_csv_keeps_active_rows_and_names_as_text(tmp_path, name):
    path = write_csv(tmp_path / name, [*MIXED, ("nan", "null", "active")])
    # multi-line reasons parse; "nan" and "null" are tag names, not missing values
    assert read_rule_table(path, "tag.aliases") == [*MIXED_ACTIVE, ("nan", "null")]


def test_a_table_without_status_has_every_row_active(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", MIXED, columns=["antecedent_name", "consequent_name"])
    assert read_rule_table(path, "tag.aliases") == [
        ("blond_hair", "blonde_hair"),
        ("bunny_ears", "rabbit_ears"),
        ("deleted_one", "x"),
        ("pending_one", "y"),
        ("retired_one", "z"),
        ("fgo", "fate/grand_order"),
        ("no_status", "q"),
        ("processing_one", "p"),
    ]


def test_read_errors_name_the_key_and_the_path(tmp_path):
    with pytest.raises(ConfigError, match=r"^tag\.aliases: .*nope\.parquet: no such file$"):
        read_rule_table(str(tmp_path / "nope.parquet"), "tag.aliases")
    with pytest.raises(ConfigError, match=r"^tag\.aliases: .*: no such file$"):
        read_rule_table(str(tmp_path), "tag.aliases")
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"^tag\.aliases: .*t\.json: a rule table is \.parquet, \.csv, \.csv\.gz$"):
        read_rule_table(str(tmp_path / "t.json"), "tag.aliases")
    (tmp_path / "broken.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(ConfigError, match=r"^tag\.implications: .*broken\.parquet: cannot read it"):
        read_rule_table(str(tmp_path / "broken.parquet"), "tag.implications")


@pytest.mark.parametrize("writer", [write_parquet, write_csv])
def test_a_missing_column_names_the_key_and_the_columns_there(tmp_path, writer):
    suffix = ".parquet" if writer is write_parquet else ".csv"
    path = writer(tmp_path / f"t{suffix}", MIXED, columns=["id", "antecedent_name", "status"])
    with pytest.raises(ConfigError) as err:
        read_rule_table(path, "tag.implications")
    assert str(err.value) == f"tag.implications: {path}: no column consequent_name; it has id, antecedent_name, status"


# --- aliases


def test_aliases_are_transitive():
    aliases = Aliases([("a", "b"), ("b", "c"), ("x", "x"), ("a", "b"), ("old", "new")])
    assert aliases.mapping == {"a": "c", "b": "c", "old": "new"}  # the self-alias says nothing; duplicates agree
    assert [aliases(t) for t in ["a", "b", "c", "x", "old", "other"]] == ["c", "c", "c", "x", "new", "other"]


def test_a_tag_aliased_two_ways_is_an_error():
    with pytest.raises(ConfigError) as err:
        Aliases([("a", "b"), ("x", "y"), ("a", "c")])
    assert str(err.value) == "tag.aliases: 'a' is aliased two ways: 'a' -> 'b' and 'a' -> 'c'"


@pytest.mark.parametrize(
    ("pairs", "cycle"),
    [
        ([("a", "b"), ("b", "a")], "a -> b -> a"),
        ([("x", "y"), ("a", "b"), ("b", "c"), ("c", "a")], "a -> b -> c -> a"),
        ([("z", "a"), ("a", "b"), ("b", "a")], "a -> b -> a"),  # a chain running into a cycle names the cycle
    ],
)
def test_an_alias_cycle_is_an_error(pairs, cycle):
    with pytest.raises(ConfigError) as err:
        Aliases(pairs, key="tag.aliases")
    assert str(err.value) == f"tag.aliases: a cycle: {cycle}"


# --- implications


def test_implications_close_transitively_through_aliases():
    aliases = Aliases([("fgo", "fate/grand_order"), ("mash", "mash_kyrielight")])
    implications = Implications(
        [("mash", "fgo"), ("fgo", "fate_(series)"), ("witch_hat", "hat"), ("fgo", "fate/grand_order")], aliases
    )
    assert implications.implied_by("mash_kyrielight") == {"fate/grand_order", "fate_(series)"}
    assert implications.implied_by("mash") == {"fate/grand_order", "fate_(series)"}  # an old spelling asked
    assert implications.implied_by("fate/grand_order") == {"fate_(series)"}
    assert implications.implied_by("witch_hat") == {"hat"}
    assert implications.implied_by("hat") == frozenset()
    assert implications.implied_by("fate_(series)") == frozenset()
    assert "fgo" not in implications.closure  # fgo -> fate/grand_order became a self-implication: dropped


def test_implications_from_a_table_apply_active_rows_only(tmp_path):
    path = write_csv(
        tmp_path / "tag_implications.csv",
        [("witch_hat", "hat", "active"), ("hat", "headwear", "active"), ("hat", "clothes", "deleted")],
    )
    implications = Implications(read_rule_table(path, "tag.implications"))
    assert implications.implied_by("witch_hat") == {"hat", "headwear"}


def test_an_implication_cycle_is_an_error():
    with pytest.raises(ConfigError) as err:
        Implications([("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")])
    assert str(err.value) == "tag.implications: a cycle: a -> b -> c -> a"


def test_an_implication_cycle_made_by_an_alias_names_the_rows():
    with pytest.raises(ConfigError) as err:
        Implications([("a", "b"), ("b", "old_c"), ("c", "a")], Aliases([("old_c", "c")]))
    assert str(err.value) == (
        "tag.implications: a cycle: a -> b -> c -> a (after tag.aliases; the rows: a -> b, b -> old_c, c -> a)"
    )


def test_deep_implication_chains_need_no_recursion():
    chain = [(f"t{i}", f"t{i + 1}") for i in range(1500)]  # deeper than Python's recursion limit
    implications = Implications(chain)
    assert len(implications.implied_by("t0")) == 1500 and implications.implied_by("t1499") == {"t1500"}


# --- applying the rules


def test_aliases_rewrite_and_merge_duplicates():
    rules = rules_from(aliases=[("blond_hair", "blonde_hair"), ("yellow_hair", "blond_hair")])
    counts = RuleCounts()
    out = rules.apply(["1girl", "yellow_hair", "smile", "blonde_hair", "blond_hair", "smile"], counts)
    assert out == ["1girl", "blonde_hair", "smile"]
    assert counts == RuleCounts(aliased=2, merged=3)


def test_exclude_names_and_wildcards():
    rules = rules_from(aliases=[("bunny_ears", "rabbit_ears")], exclude=["*_request", "commentary*", "bunny_ears"])
    tags = ["translation_request", "commentary_request", "request_x", "commentary", "english_commentary"]
    counts = RuleCounts()
    assert rules.apply([*tags, "bunny_ears", "1girl"], counts) == ["request_x", "english_commentary", "1girl"]
    # bunny_ears is an old spelling of rabbit_ears: excluding it excludes the tag
    assert counts == RuleCounts(aliased=1, excluded=4)


def test_exclude_bracket_escapes_a_literal_question_mark():
    rules = rules_from(exclude=["[?]", "hat?"])
    assert rules.apply(["?", "!", "!?", "hats", "hat", "hat?"]) == ["!", "!?", "hat"]


def test_replace_after_aliases_and_an_empty_value_drops():
    rules = rules_from(
        aliases=[("bunny_ears", "rabbit_ears"), ("blond_hair", "blonde_hair")],
        replace={"bunny_ears": "bunny ears", "1girl": "one girl", "watermark": "", "x": "blond_hair"},
    )
    assert rules.replace == {"rabbit_ears": "bunny ears", "1girl": "one girl", "watermark": "", "x": "blond_hair"}
    counts = RuleCounts()
    out = rules.apply(["bunny_ears", "1girl", "watermark", "rabbit_ears", "x"], counts)
    # the old-spelling key matches the canonical tag; a replacement is not aliased again
    assert out == ["bunny ears", "one girl", "blond_hair"]
    assert counts == RuleCounts(aliased=1, replaced=4, excluded=1, merged=1)


def test_replace_then_exclude_sees_the_new_name():
    rules = rules_from(replace={"translated": "translation_request"}, exclude=["*_request"])
    assert rules.apply(["translated", "solo"]) == ["solo"]


def test_replace_keys_that_alias_to_one_tag_must_agree():
    aliases = [("blond_hair", "blonde_hair")]
    with pytest.raises(ConfigError) as err:
        rules_from(aliases=aliases, replace={"blond_hair": "a", "blonde_hair": "b"})
    assert str(err.value) == (
        "tag.replace: 'blond_hair' and 'blonde_hair' are the same tag after tag.aliases ('blonde_hair') "
        "but are replaced differently: 'a' and 'b'"
    )
    assert rules_from(aliases=aliases, replace={"blond_hair": "a", "blonde_hair": "a"}).apply(["blond_hair"]) == ["a"]


def test_drop_implied_keeps_the_child():
    rules = rules_from(
        aliases=[("fgo", "fate/grand_order")],
        implications=[("witch_hat", "hat"), ("fgo", "fate_(series)"), ("mash_kyrielight", "fate/grand_order")],
        drop_implied=True,
    )
    counts = RuleCounts()
    tags = ["1girl", "hat", "witch_hat", "fate_(series)", "fgo", "solo"]
    assert rules.apply(tags, counts) == ["1girl", "witch_hat", "fate/grand_order", "solo"]
    assert counts == RuleCounts(aliased=1, implied=2)
    # transitively: the character implies the game, which implies the series
    assert rules.apply(["fate_(series)", "mash_kyrielight", "fate/grand_order"]) == ["mash_kyrielight"]
    assert rules.apply(["hat", "fate_(series)"]) == ["hat", "fate_(series)"]  # no child, nothing implied


def test_an_excluded_child_implies_nothing():
    rules = rules_from(implications=[("witch_hat", "hat")], exclude=["witch_hat"], drop_implied=True)
    assert rules.apply(["witch_hat", "hat"]) == ["hat"]


def test_implications_without_drop_implied_change_nothing():
    rules = rules_from(implications=[("witch_hat", "hat")])
    assert not rules.active
    assert rules.apply(["witch_hat", "hat"]) == ["witch_hat", "hat"]


def test_drop_implied_needs_implications():
    with pytest.raises(ConfigError, match=r"^tag\.drop_implied: needs a tag\.implications table"):
        TagRules(drop_implied=True)


def test_none_stays_none_and_no_rule_copies():
    rules = TagRules()
    assert not rules.active
    tags = ["b", "a", "b"]
    out = rules.apply(tags)
    assert out == ["b", "a", "b"] and out is not tags
    assert rules.apply(None) is None
    active = rules_from(exclude=["a"])
    assert active.active
    counts = RuleCounts()
    assert active.apply(None, counts) is None and active.apply([], counts) == [] and counts == RuleCounts()


def test_apply_many_matches_apply_row_by_row():
    rules = rules_from(
        aliases=[("yellow_hair", "blonde_hair"), ("fgo", "fate/grand_order")],
        implications=[("witch_hat", "hat"), ("fate/grand_order", "fate_(series)")],
        exclude=["*_request"],
        replace={"watermark": "", "1girl": "girl"},
        drop_implied=True,
    )
    rows = [
        ["1girl", "yellow_hair", "blonde_hair", "witch_hat", "hat"],
        None,
        [],
        ["fgo", "fate_(series)", "commentary_request", "watermark"],
        ["solo", "hat"],
        ["yellow_hair", "yellow_hair"],
    ]
    out, counts = rules.apply_many(rows)
    assert out == [
        ["girl", "blonde_hair", "witch_hat"],
        None,
        [],
        ["fate/grand_order"],
        ["solo", "hat"],
        ["blonde_hair"],
    ]
    assert counts == RuleCounts(aliased=4, replaced=1, excluded=2, implied=2, merged=2)
    one_by_one = RuleCounts()
    assert [rules.apply(row, one_by_one) for row in rows] == out
    assert one_by_one == counts  # the second pass hits the cache and counts the same
    assert rows[0] == ["1girl", "yellow_hair", "blonde_hair", "witch_hat", "hat"]  # the input is not changed


def test_rules_pickle_with_their_cache():  # a process pool sends them to its workers
    rules = rules_from(aliases=[("a", "b")], implications=[("x", "y")], replace={"q": ""}, drop_implied=True)
    assert rules.apply(["a", "x", "y", "q"]) == ["b", "x"]
    copy = pickle.loads(pickle.dumps(rules))
    counts = RuleCounts()
    assert copy.apply(["a", "x", "y", "q", "b"], counts) == ["b", "x"]
    assert counts == RuleCounts(aliased=1, excluded=1, implied=1, merged=1)


def test_rule_counts_add_and_as_dict():
    total = RuleCounts(aliased=1, merged=2)
    total.add(RuleCounts(aliased=3, replaced=1, excluded=4, implied=5))
    assert total.as_dict() == {"aliased": 4, "replaced": 1, "excluded": 4, "implied": 5, "merged": 2}


def test_from_config_reads_both_tables(tmp_path):
    aliases = write_parquet(tmp_path / "tag_aliases.parquet", [("fgo", "fate/grand_order", "active")])
    implications = write_csv(
        tmp_path / "tag_implications.csv",
        [("fgo", "fate_(series)", "active"), ("witch_hat", "hat", "active"), ("hat", "clothes", "retired")],
    )
    cfg = SimpleNamespace(
        aliases=aliases, implications=implications, exclude=["*_request"], replace={"1girl": "girl"}, drop_implied=True
    )
    rules = TagRules.from_config(cfg)  # pyright: ignore[reportArgumentType]
    assert rules.apply(["fgo", "fate_(series)", "hat", "witch_hat", "clothes", "1girl", "commentary_request"]) == [
        "fate/grand_order",
        "witch_hat",
        "clothes",
        "girl",
    ]
    off = SimpleNamespace(aliases="", implications="", exclude=[], replace={}, drop_implied=False)
    assert not TagRules.from_config(off).active  # pyright: ignore[reportArgumentType]


def test_from_config_errors_name_the_key(tmp_path):
    bad = write_parquet(tmp_path / "imp.parquet", MIXED, columns=["antecedent_name", "status"])
    cfg = SimpleNamespace(aliases="", implications=bad, exclude=[], replace={}, drop_implied=True)
    with pytest.raises(ConfigError, match=r"^tag\.implications: .*imp\.parquet: no column consequent_name"):
        TagRules.from_config(cfg)  # pyright: ignore[reportArgumentType]
    cfg = SimpleNamespace(aliases="", implications="", exclude=[], replace={}, drop_implied=True)
    with pytest.raises(ConfigError, match=r"^tag\.drop_implied"):
        TagRules.from_config(cfg)  # pyright: ignore[reportArgumentType]


# --- the frequency rule


def test_rare_tags_count_trainable_rows_once_per_tag():
    lists = [["a", "b", "a"], ["a", "c"], ["b"], None, ["c", "d"]]
    trainable = [True, True, False, True, False]
    assert rare_tags(lists, trainable, 2) == {"b", "c"}  # b's second row and d's only row are not trained on
    assert rare_tags(lists, trainable, 3) == {"a", "b", "c"}
    assert rare_tags(lists, trainable, 1) == set()
    assert rare_tags(lists, trainable, 0) == set()
    with pytest.raises(ValueError):
        rare_tags(lists, trainable[:-1], 2)


def test_drop_tags():
    lists = [["a", "b", "a"], ["a", "c"], ["b"], None, ["c", "d"]]
    assert drop_tags(lists, {"b", "c"}) == ([["a", "a"], ["a"], [], None, ["d"]], 4)
    out, dropped = drop_tags(lists, set())
    assert out == lists and dropped == 0 and out[0] is not lists[0]
