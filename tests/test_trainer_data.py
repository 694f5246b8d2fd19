"""Trainable rows, scaled buckets, the epoch plan and the training captions."""

import json
from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zxl.buckets import BUCKETS
from zxl.catalog.schema import SCHEMA
from zxl.config import ConfigError
from zxl.trainer.data import buckets_for, caption, check_plan, epoch_plan, load_rows, nearest


def frame(n_per_bucket: dict[int, int], repeats=1) -> pd.DataFrame:
    rows = []
    for b, n in n_per_bucket.items():
        for i in range(n):
            rows.append(
                {
                    "key": f"b{b}-{i}",
                    "bucket_index": b,
                    "repeats": repeats if isinstance(repeats, int) else repeats[i % len(repeats)],
                }
            )
    return pd.DataFrame(rows)


def write_catalog(folder, rows: list[dict]):
    folder.mkdir(parents=True)
    full = [{f.name: r.get(f.name) for f in SCHEMA} for r in rows]
    for r in full:
        r["tags"] = r["tags"] or []
        r["characters"] = r["characters"] or []
    pq.write_table(pa.Table.from_pylist(full, schema=SCHEMA), folder / "part-00000.parquet")
    (folder / "_manifest.json").write_text(json.dumps({"schema_version": 1}))
    return folder


def test_buckets_scale_the_recipe():
    assert buckets_for(1024) == BUCKETS and len(BUCKETS) == 11
    small = buckets_for(128)
    assert len(small) == 11 and (96, 168) in small and (128, 128) in small
    assert all(w % 8 == 0 and h % 8 == 0 for w, h in small)
    import numpy as np

    assert [small[i] for i in nearest(np.array([1000.0, 500.0]), np.array([1000.0, 1000.0]), small)] == [
        (128, 128),
        (96, 168),
    ]


def test_repeats_and_one_bucket_per_batch():
    df = frame({0: 10, 5: 7, 9: 3}, repeats=[1, 2, 3])
    plan = epoch_plan(df, batch_size=2, seed=0, epoch=0, drop_last=False)
    seen = Counter(i for b in plan for i in b.rows)
    assert seen == Counter({i: int(r) for i, r in df.repeats.items()})  # each row `repeats` times
    for b in plan:
        assert {df.bucket_index[i] for i in b.rows} == {b.bucket}
    dropped = epoch_plan(df, 2, 0, 0)
    assert all(len(b.rows) == 2 for b in dropped)
    assert sum(len(b.rows) for b in dropped) == sum(
        2 * (int(g.repeats.sum()) // 2) for _, g in df.groupby("bucket_index")
    )


def test_plan_is_a_function_of_seed_and_epoch():
    df = frame({0: 20, 3: 20})
    a, b = epoch_plan(df, 4, seed=1, epoch=0), epoch_plan(df, 4, seed=1, epoch=0)
    assert a == b
    assert epoch_plan(df, 4, seed=1, epoch=1) != a  # bucket order and contents reshuffled per epoch
    assert [x.bucket for x in epoch_plan(df, 4, 1, 1)] != [x.bucket for x in a] or epoch_plan(df, 4, 1, 1)[0].rows != a[
        0
    ].rows


def test_a_bucket_that_never_fills_a_batch_is_named():
    df = frame({0: 10, 4: 1})
    notes = check_plan(df, 4, buckets_for(1024))
    assert len(notes) == 1 and "960x1088" in notes[0] and "fewer than a batch of 4" in notes[0]


ROW = {"score": 8, "rating": "general", "year": 2021, "tags": ["long_hair", "smile", "outdoors", "^_^"],
       "characters": ["hatsune_miku"], "caption": "A girl with long hair smiling outdoors."}  # fmt: skip


def test_caption_score_first_and_shuffled():
    styles = (1.0, 0.0, 0.0)
    texts = [caption(ROW, 0, step, 0, styles, 0.0, "rating:{}", "year {}") for step in range(200)]
    assert all(t.startswith("score_8, rating:general, year 2021, ") for t in texts)
    orders = {t for t in texts}
    assert len(orders) > 20  # tags shuffled every time
    assert all(set(t.split(", ")[3:]) == {"long hair", "smile", "outdoors", "^_^", "hatsune miku"} for t in texts)
    assert caption(ROW, 0, 5, 1, styles, 0.0, "rating:{}", "year {}") == caption(
        ROW, 0, 5, 1, styles, 0.0, "rating:{}", "year {}"
    )


def test_caption_styles_and_dropout_rate():
    n = 4000
    texts = [caption(ROW, 3, step, 0, (0.5, 0.25, 0.25), 0.05, "rating:{}", "year {}") for step in range(n)]
    empty = sum(t == "" for t in texts) / n
    assert 0.04 < empty < 0.06  # 5% dropout
    natural = sum(t == "score_8, A girl with long hair smiling outdoors" for t in texts) / n
    mixed = sum(t.startswith("score_8, A girl with long hair smiling outdoors, ") for t in texts) / n
    tags = sum(t.startswith("score_8, rating:general") for t in texts) / n
    assert abs(natural - 0.95 * 0.25) < 0.03 and abs(mixed - 0.95 * 0.25) < 0.03 and abs(tags - 0.95 * 0.5) < 0.03
    no_caption = {**ROW, "caption": None}
    uncaptioned = [caption(no_caption, 3, s, 0, (0, 1, 0), 0.0, "rating:{}", "year {}") for s in range(20)]
    assert all(t.startswith("score_8, rating:general") for t in uncaptioned)


def test_load_rows_keeps_ok_rows_with_repeats(tmp_path):
    rows = [
        {"key": "a", "url": "u", "status": "ok", "width": 800, "height": 1200, "repeats": 2, "shard": "00000.tar"},
        {"key": "b", "url": "u", "status": "ok", "width": 1200, "height": 800, "repeats": 0, "shard": "00000.tar"},
        {"key": "c", "url": "u", "status": "duplicate", "width": 800, "height": 800, "repeats": 0},
        {"key": "d", "url": "u", "status": "failed_download", "error": "HTTP 404", "repeats": 0},
    ]
    df = load_rows(write_catalog(tmp_path / "catalog", rows), 1024)
    assert df.key.tolist() == ["a"] and BUCKETS[df.bucket_index[0]] == (832, 1216)


def test_no_trainable_rows_is_a_clear_error(tmp_path):
    rows = [{"key": "d", "url": "u", "status": "failed_download", "error": "HTTP 404", "repeats": 0}]
    with pytest.raises(ConfigError, match="no trainable rows.*failed_download 1"):
        load_rows(write_catalog(tmp_path / "catalog", rows), 1024)
    with pytest.raises(ConfigError, match="not a zxl catalog"):
        load_rows(tmp_path, 1024)


def test_fractional_weights_are_drawn_as_often_as_they_say(tmp_path):
    """weigh.diversity > 0 gives fractional weights: ⌊f⌋ or ⌊f⌋ + 1 draws an epoch, f on average; integer
    weights give the very plan integer repeats give."""
    import numpy as np

    df = frame({0: 12, 4: 12}, repeats=[1, 2, 3])
    df["draws"] = df.repeats.astype(float)
    assert epoch_plan(df, 2, seed=3, epoch=5) == epoch_plan(df.drop(columns="draws"), 2, seed=3, epoch=5)
    df["draws"] = [0.25, 1.5, 2.75, 1.0] * 6
    counts = np.zeros(len(df))
    for epoch in range(400):
        plan = epoch_plan(df, 1, seed=0, epoch=epoch, drop_last=False)
        seen = Counter(i for b in plan for i in b.rows)
        for i, n in seen.items():
            assert np.floor(df.draws[i]) <= n <= np.ceil(df.draws[i])
            counts[i] += n
    np.testing.assert_allclose(counts / 400, df.draws, atol=0.1)
    # the catalog's weight column is what load_rows draws with (data.draw: weight); repeats on request
    rows = [{"key": "a", "url": "u", "status": "ok", "width": 800, "height": 1200, "repeats": 1, "weight": 0.4},
            {"key": "b", "url": "u", "status": "ok", "width": 800, "height": 1200, "repeats": 3}]  # fmt: skip
    cat = write_catalog(tmp_path / "catalog", rows)
    assert load_rows(cat, 1024).draws.tolist() == pytest.approx([0.4, 3.0])  # a null weight: the repeats
    assert load_rows(cat, 1024, "repeats").draws.tolist() == [1.0, 3.0]
    with pytest.raises(ConfigError, match="data.draw must be weight or repeats"):
        load_rows(cat, 1024, "score")
    old = pq.read_table(cat / "part-00000.parquet").drop_columns(["weight", "cluster"])
    pq.write_table(old, cat / "part-00000.parquet")  # a catalog from before the columns: repeats
    assert load_rows(cat, 1024).draws.tolist() == [1.0, 3.0]


def _two_part_catalog(folder):
    """A catalog of two parts, each with a trainable row."""
    rows = [{"key": k, "url": "u", "status": "ok", "width": 800, "height": 1200, "repeats": 1, "shard": "00000.tar"}
            for k in ("a", "b")]  # fmt: skip
    write_catalog(folder, rows[:1])
    pq.write_table(pq.read_table(folder / "part-00000.parquet").set_column(
        0, "key", pa.array(["b"])), folder / "part-00001.parquet")  # fmt: skip
    return folder


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "pages"])
def test_a_damaged_part_is_refused_by_name(tmp_path, damage):
    """A part that does not read is an error naming it (never left out, as the browser does), whether its
    footer is gone or its data pages are (the footer reads, the pages do not)."""
    cat = _two_part_catalog(tmp_path / "catalog")
    assert load_rows(cat, 1024).key.tolist() == ["a", "b"]
    part = cat / "part-00001.parquet"
    raw = part.read_bytes()
    if damage == "pages":
        big = [{"key": f"k{i}", "url": "u", "status": "ok", "width": 800, "height": 1200, "repeats": 1,
                "caption": f"caption {i} " * 20} for i in range(2000)]  # fmt: skip
        write_catalog(tmp_path / "big", big)
        raw = (tmp_path / "big" / "part-00000.parquet").read_bytes()
        raw = raw[:4] + b"\0" * (len(raw) // 2) + raw[4 + len(raw) // 2 :]
        pq.read_metadata(pa.BufferReader(raw))  # the footer is intact: only reading the rows fails
    part.write_bytes({"garbage": b"\xff" * 300, "truncated": raw[: len(raw) // 2], "empty": b"", "pages": raw}[damage])
    with pytest.raises(ConfigError) as e:
        load_rows(cat, 1024)
    message = str(e.value)
    assert message.startswith(f"data.catalog: part {part} cannot be read (") and "\n" not in message, message
    assert message.endswith("the catalog is damaged: run zxl curate again to rewrite it")
    with pytest.raises(ConfigError, match=f"^--catalog: part {part} cannot be read"):
        load_rows(cat, 1024, option="--catalog")


def test_a_missing_or_unreadable_catalog_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"^data.catalog: {tmp_path / 'none'} does not exist"):
        load_rows(tmp_path / "none", 1024)
    cat = _two_part_catalog(tmp_path / "catalog")
    (cat / "_manifest.json").write_text('{"schema_version": 1,')
    with pytest.raises(ConfigError, match=rf"^data.catalog: {cat / '_manifest.json'} does not load \(JSONDecodeError"):
        load_rows(cat, 1024)


def test_a_v1_catalog_trains_with_the_new_tag_columns_null(tmp_path):
    """A catalog written before schema v2 has no copyrights, artists or meta: read as null."""
    from zxl.catalog.schema import V1_COLUMNS

    folder = tmp_path / "v1"
    folder.mkdir()
    row = {f.name: None for f in SCHEMA if f.name in V1_COLUMNS}
    row.update(key="a", url="u", status="ok", width=800, height=1200, repeats=1, shard="00000.tar", tags=["smile"],
               characters=[], score=5)  # fmt: skip
    v1 = pa.schema([f for f in SCHEMA if f.name in V1_COLUMNS])
    pq.write_table(pa.Table.from_pylist([row], schema=v1), folder / "part-00000.parquet")
    (folder / "_manifest.json").write_text(json.dumps({"schema_version": 1}))
    df = load_rows(folder, 1024)
    assert df.key.tolist() == ["a"] and df.copyrights.isna().all() and df.meta.isna().all()
    from zxl.trainer.data import caption_fields

    text = caption(caption_fields(df)[0], 0, 0, 0, (1, 0, 0), 0.0, "rating:{}", "year {}")
    assert text == "score_5, smile"
