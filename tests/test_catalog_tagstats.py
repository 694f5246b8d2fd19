"""What a curator reads: tags per category, caption token lengths, score–year ρ (catalog/tagstats.py),
on small catalogs written here (v2, and v1 without the copyrights, artists and meta columns)."""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zxl.catalog.captions import build_caption, layout_of
from zxl.catalog.query import open_catalog, stats
from zxl.catalog.schema import SCHEMA, V1_COLUMNS
from zxl.catalog.tagstats import clip_tokenizer, count_tokens, spearman_from_counts, token_lengths
from zxl.cli import main

LONG_TAGS = [f"{w} {x}" for w in ("red", "blue", "green", "white", "black", "silver") for x in
             ("hair", "eyes", "dress", "ribbon", "gloves", "shoes", "sky", "flower")]  # fmt: skip
LAYOUT = {"tag_order": ["characters", "copyrights", "artists", "general"], "shuffle": ["general"]}


def _row(key, status="ok", repeats=1, **cols) -> dict:
    return {"key": key, "url": f"http://x/{key}", "status": status, "repeats": repeats, **cols}


ROWS = [
    _row("a", repeats=2, score=9, rating="general", year=2021, tags=["1girl", "solo", "long_hair"],
         characters=["hatsune_miku"], copyrights=["vocaloid"], artists=["artist_a"], meta=["highres"]),
    _row("b", score=6, rating="sensitive", year=2019, tags=["1girl", "smile"],
         characters=["hatsune_miku", "kagamine_rin"], copyrights=["vocaloid"], artists=["artist_b"],
         meta=["highres", "absurdres"]),
    _row("c", score=3, rating="general", year=2012, tags=["solo", "1girl", "^_^"], characters=[], copyrights=None,
         artists=["artist_a"], meta=None),
    _row("d", score=5, rating="general", year=2016, tags=[x.replace(" ", "_") for x in LONG_TAGS],
         characters=["kagamine_rin"], copyrights=["vocaloid"]),
    _row("e", score=2, year=2015, tags=["smile"]),  # no rating
    _row("f", repeats=0, score=8, year=2020, tags=["1girl", "untrained"], artists=["artist_c"]),  # ok, not drawn
    _row("g", status="filtered", repeats=0, tags=["filtered_only"], copyrights=["other"]),
    _row("h", status="duplicate", repeats=0, score=7, year=2010, tags=["1girl", "dup_only"]),
]  # fmt: skip


def write_catalog(folder, rows, manifest: dict, columns=None):
    folder.mkdir(parents=True)
    schema = pa.schema([SCHEMA.field(c) for c in columns]) if columns else SCHEMA
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)
    pq.write_table(table, folder / "part-00000.parquet")
    (folder / "_manifest.json").write_text(json.dumps({"parts": ["part-00000.parquet"], "rows": len(rows),
                                                       **manifest}))  # fmt: skip
    return folder


MANIFEST = {
    "schema_version": 2,
    "config": {"caption": LAYOUT},
    "score_edges": {"edges": [0.1, 0.2], "within": ["year"]},
    "score_year": {"rows": 5, "rho": 0.1234, "rho_global_edges": 0.6543},
    "tag_rules": {"rules": {"aliased": 3, "replaced": 1, "excluded": 4, "implied": 5, "merged": 2},
                  "min_count": 2, "rare_tags_dropped": 7, "rare_instances_dropped": 9, "categories": {}},
    "hash_mismatches": 2,
}  # fmt: skip


@pytest.fixture
def v2(tmp_path):
    return write_catalog(tmp_path / "catalog", ROWS, MANIFEST)


def test_tags_per_category_over_the_trainable_rows(v2):
    st = stats(open_catalog(v2), top_tags=100, per_category=2)
    cats = st["tag_categories"]
    assert list(cats) == ["general", "characters", "copyrights", "artists", "meta"]
    # general over a–e: 1girl ×3, solo ×2, smile ×2, long_hair, ^_^ and 48 long tags ×1 (f, g, h left out)
    assert cats["general"] == {"distinct": 5 + len(LONG_TAGS), "instances": 9 + len(LONG_TAGS),
                               "top": [["1girl", 3], ["smile", 2]]}  # ties by name: smile before solo  # fmt: skip
    assert cats["characters"] == {"distinct": 2, "instances": 4, "top": [["hatsune_miku", 2], ["kagamine_rin", 2]]}
    assert cats["copyrights"] == {"distinct": 1, "instances": 3, "top": [["vocaloid", 3]]}
    assert cats["artists"] == {"distinct": 2, "instances": 3, "top": [["artist_a", 2], ["artist_b", 1]]}
    assert cats["meta"] == {"distinct": 2, "instances": 3, "top": [["highres", 2], ["absurdres", 1]]}
    assert st["top_tags"]["1girl"] == 4 and "untrained" in st["top_tags"]  # ok rows, as before
    assert "dup_only" not in st["top_tags"] and "filtered_only" not in st["top_tags"]
    assert "token_lengths" not in st  # counted on request only (the plain stats stay fast)


def test_score_year_rho_beside_the_manifests(v2):
    from scipy.stats import spearmanr

    sy = stats(open_catalog(v2))["score_year"]
    trainable = [r for r in ROWS if r["status"] == "ok" and r["repeats"] > 0]
    expect = spearmanr([r["score"] for r in trainable], [r["year"] for r in trainable]).statistic  # pyright: ignore[reportAttributeAccessIssue] - scipy types it `_`
    assert sy["rows"] == 5 and sy["rho"] == round(float(expect), 4)
    assert sy["manifest"] == MANIFEST["score_year"] and sy["within"] == ["year"]


def test_spearman_from_counts_is_scipys():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    a, b = rng.integers(1, 10, 500), rng.integers(2005, 2025, 500)
    b = np.where(rng.random(500) < 0.5, b, 2000 + a * 2)  # some correlation, many ties
    cells = {}
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        cells[(x, y)] = cells.get((x, y), 0) + 1
    got = spearman_from_counts([(x, y, n) for (x, y), n in cells.items()])
    assert got == round(float(spearmanr(a, b).statistic), 4)  # pyright: ignore[reportAttributeAccessIssue] - scipy types it `_`
    assert spearman_from_counts([(5, 2020, 10)]) is None and spearman_from_counts([(1, 2020, 1), (2, 2021, 1)]) is None
    assert spearman_from_counts([]) is None


def test_the_tokenizer_is_the_trainers_clip_l():
    """Built from open_clip's bundled merges without importing open_clip: the same ids as the
    tokenizer the trainer derives from open_clip itself (sampler/tokenizer.py)."""
    from zxl.sampler.tokenizer import derived_tokenizers

    ours, theirs = clip_tokenizer(), derived_tokenizers()[0]
    assert len(ours) == len(theirs) == 49408 and ours.model_max_length == 77
    for text in ("score_9, rating:general, year 2021, hatsune miku, vocaloid, 1girl, long hair, ^_^",
                 "café naïve résumé, 東方, ☆, &amp; <img src=x>", ""):  # fmt: skip
        assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    assert count_tokens(["1girl, solo"]) == [len(theirs("1girl, solo")["input_ids"]) - 2]


def test_token_lengths_of_the_tag_soup_captions(v2):
    st = stats(open_catalog(v2), tokens=True)
    tl = st["token_lengths"]
    tok = clip_tokenizer()
    # the long row's caption, written out: score, rating, year, then the layout's characters,
    # copyrights, artists (none) and general tags (shuffled: the count does not depend on the order)
    long_caption = "score_5, rating:general, year 2016, kagamine rin, vocaloid, " + ", ".join(LONG_TAGS)
    n_long = len(tok(long_caption)["input_ids"]) - 2  # without BOS/EOS
    assert n_long > 150  # two chunks of 75 are not enough: kohya needs --max_token_length 225
    layout = layout_of(MANIFEST)
    trainable = [r for r in ROWS if r["status"] == "ok" and r["repeats"] > 0]
    each = [len(tok(build_caption(r, random.Random(0), (1, 0, 0), layout=layout))["input_ids"]) - 2
            for r in trainable]  # fmt: skip
    assert max(each) == n_long and tl["max"] == n_long
    assert tl["rows"] == tl["trainable_rows"] == 5 and not tl["sampled"]
    assert tl["p50"] == round(float(np.percentile(each, 50)), 1)
    assert tl["p95"] == round(float(np.percentile(each, 95)), 1)
    assert tl["over"] == {"75": 1, "150": 1, "225": int(n_long > 225)}
    assert sum(n for _, n in tl["histogram"]) == 5 and tl["histogram"][0][0] == "0–25"
    assert len(tl["histogram"]) >= 9 and tl["histogram"][8][0] == "201–225"
    # a sample of a larger catalog: seeded, said so
    cat = open_catalog(v2)
    one, two = token_lengths(cat.connect(), cat.manifest, sample=3), token_lengths(cat.connect(), cat.manifest, 3)
    assert one == two and one["sampled"] and one["rows"] == 3 and one["trainable_rows"] == 5


def test_stats_command_prints_what_a_curator_reads(v2, capsys):
    assert main(["catalog", "stats", str(v2), "--per-category", "3"]) == 0
    out = capsys.readouterr().out
    assert "tags per category (trainable rows)" in out
    assert "copyrights        1         3  vocaloid (3)" in out
    assert "caption tokens (CLIP ViT-L/14 BPE, tag soup, without BOS/EOS; 5 trainable rows):" in out
    assert "rows over 75: 1, 150: 1, 225: 0" in out
    assert "score-year Spearman rho:" in out and "score tags cut within year" in out
    assert "the curate run recorded +0.123 over 5 kept rows, +0.654 with global edges" in out
    assert "tag rules: 3 aliased, 1 replaced, 4 excluded, 5 implied tags dropped, 2 duplicates merged" in out
    assert "7 rare tags dropped (on fewer than 2 trainable rows), 9 instances" in out
    assert "hash mismatches: 2" in out
    assert main(["catalog", "stats", str(v2), "--json", "--no-tokens"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["tag_categories"]["artists"]["distinct"] == 2 and "token_lengths" not in st
    assert st["tag_rules"]["rare_tags_dropped"] == 7 and st["hash_mismatches"] == 2


def test_a_v1_catalog_still_gives_stats(tmp_path, capsys):
    """v1: no copyrights, artists or meta columns, a manifest without caption settings, tag rules,
    score_year or score_edges.within."""
    d = write_catalog(tmp_path / "v1", ROWS, {"schema_version": 1, "score_edges": {"edges": [0.5]}},
                      columns=V1_COLUMNS)  # fmt: skip
    st = stats(open_catalog(d), tokens=True)
    cats = st["tag_categories"]
    assert cats["general"]["top"][0] == ["1girl", 3] and cats["characters"]["distinct"] == 2
    assert all(cats[c] == {"distinct": 0, "instances": 0, "top": []} for c in ("copyrights", "artists", "meta"))
    assert st["score_year"]["rows"] == 5 and st["score_year"]["manifest"] is None and st["score_year"]["within"] == []
    tl = st["token_lengths"]
    assert tl["rows"] == 5 and tl["max"] > 75  # v1 layout: characters then general tags
    assert st["tag_rules"] is None and st["hash_mismatches"] is None
    assert main(["catalog", "stats", str(d)]) == 0
    out = capsys.readouterr().out
    assert "global score edges" in out and "tag rules" not in out and "hash mismatches" not in out


def test_an_empty_catalog(tmp_path):
    d = write_catalog(tmp_path / "empty", [], {"schema_version": 2})
    st = stats(open_catalog(d), tokens=True)
    assert st["tag_categories"]["general"] == {"distinct": 0, "instances": 0, "top": []}
    assert st["token_lengths"]["rows"] == 0 and st["token_lengths"]["max"] is None
    assert st["score_year"] == {"rows": 0, "rho": None, "manifest": None, "within": []}
