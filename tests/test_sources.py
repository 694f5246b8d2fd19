import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zxl.config import ConfigError
from zxl.pipeline.config import SourceConfig
from zxl.pipeline.sources import normalize, read_url_list, split
from zxl.pipeline.stages import stage_path

ROWS = [
    {"post_id": 1, "file_url": "http://127.0.0.1:1/a.jpg", "status": "active", "tags": "1girl solo"},
    {"post_id": 2, "file_url": "http://127.0.0.1:1/b.jpg", "status": "deleted", "tags": "1boy"},
    {"post_id": 2, "file_url": "http://127.0.0.1:1/c.jpg", "status": "active", "tags": ""},
]


@pytest.fixture(params=["parquet", "csv", "jsonl"])
def url_list(request, tmp_path):
    path = tmp_path / f"urls.{request.param}"
    if request.param == "parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    elif request.param == "csv":
        path.write_text("post_id,file_url,status,tags\n" + "".join(
            f"{r['post_id']},{r['file_url']},{r['status']},{r['tags']}\n" for r in ROWS))  # fmt: skip
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_reads_every_format_with_a_column_mapping(url_list):
    cfg = SourceConfig(path=str(url_list), url_column="file_url", id_column="post_id")
    t = normalize(read_url_list(cfg), cfg)
    assert t["key"].to_pylist() == ["1", "2", "2#2"]  # unique, stable, in input order
    assert t["url"].to_pylist() == [r["file_url"] for r in ROWS]
    assert t["source_id"].to_pylist() == ["1", "2", "2"]
    assert "src_status" in t.column_names and "tags" in t.column_names  # travels, renamed if it clashes


def test_key_is_a_url_hash_without_an_id_column(url_list):
    cfg = SourceConfig(path=str(url_list), url_column="file_url")
    keys = normalize(read_url_list(cfg), cfg)["key"].to_pylist()
    assert len(set(keys)) == 3 and all(len(k) == 20 for k in keys)
    assert keys == normalize(read_url_list(cfg), cfg)["key"].to_pylist()


def test_missing_column_names_file_and_column(url_list):
    cfg = SourceConfig(path=str(url_list), url_column="image_url")
    with pytest.raises(ConfigError) as e:
        read_url_list(cfg)
    assert str(url_list) in str(e.value) and "'image_url'" in str(e.value) and "source.url_column" in str(e.value)
    assert "file_url" in str(e.value)  # lists what it has
    with pytest.raises(ConfigError, match="'pid'.*source.id_column"):
        read_url_list(SourceConfig(path=str(url_list), url_column="file_url", id_column="pid"))


def test_empty_missing_and_unreadable_lists(tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"url": pa.array([], pa.string())}), empty)
    with pytest.raises(ConfigError, match=r"empty.parquet is empty"):
        read_url_list(SourceConfig(path=str(empty)))
    with pytest.raises(ConfigError, match=r"not found: .*nope.csv"):
        read_url_list(SourceConfig(path=str(tmp_path / "nope.csv")))
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"this is not parquet at all")
    with pytest.raises(ConfigError, match=r"cannot read URL list .*junk.parquet as parquet"):
        read_url_list(SourceConfig(path=str(junk)))
    odd = tmp_path / "urls.txt"
    odd.write_text("http://x/a.jpg\n")
    with pytest.raises(ConfigError, match="source.format"):
        read_url_list(SourceConfig(path=str(odd)))
    with pytest.raises(ConfigError, match="--urls"):
        read_url_list(SourceConfig())


def test_split_writes_shards_and_reuses_them(tmp_path):
    table = pa.table({"url": [f"http://127.0.0.1:1/{i}.jpg" for i in range(25)]})
    cfg = SourceConfig()
    n, h = split(table, cfg, tmp_path, shard_size=10)
    assert n == 3
    parts = [pq.read_table(stage_path(tmp_path, "source", s)) for s in range(n)]
    assert [p.num_rows for p in parts] == [10, 10, 5]
    mtime = stage_path(tmp_path, "source", 0).stat().st_mtime_ns
    assert split(table, cfg, tmp_path, shard_size=10) == (n, h)
    assert stage_path(tmp_path, "source", 0).stat().st_mtime_ns == mtime  # unchanged list: not rewritten
    n2, h2 = split(table, cfg, tmp_path, shard_size=20)
    assert (n2, h2 != h) == (2, True)
    assert not stage_path(tmp_path, "source", 2).exists()  # the earlier split's extra shard is gone


def test_repeated_ids_never_take_a_key_that_is_an_id_of_the_list():
    cfg = SourceConfig(url_column="u", id_column="id")
    t = pa.table({"id": ["5", "5#2", "5", "5", None, None], "u": ["a", "b", "c", "d", "e", "e"]})
    keys = normalize(t, cfg)["key"].to_pylist()
    assert keys[:4] == ["5", "5#2", "5#3", "5#4"] and keys[5] == f"{keys[4]}#2" and len(set(keys)) == 6
    assert keys == normalize(t, cfg)["key"].to_pylist()  # stable
    from zxl.pipeline.sources import report

    assert report(t, cfg)["repeated_ids"] == 2


def test_a_csv_timestamp_and_other_arrow_types_travel_as_text(tmp_path):
    import datetime as dt
    import decimal

    from zxl.pipeline.sources import report
    from zxl.taggers.metadata import parse_year

    path = tmp_path / "posts.csv"
    path.write_text("id,url,created_at\n1,http://127.0.0.1:1/a.jpg,2021-03-04 05:06:07\n")
    cfg = SourceConfig(path=str(path), id_column="id")
    table = read_url_list(cfg)
    assert pa.types.is_timestamp(table["created_at"].type)  # how pyarrow reads such a CSV
    assert normalize(table, cfg)["created_at"].to_pylist() == ["2021-03-04T05:06:07"]
    t = (
        table.append_column("day", pa.array([dt.date(2020, 5, 6)]))
        .append_column("price", pa.array([decimal.Decimal("12.30")], pa.decimal128(5, 2)))
        .append_column("thumb", pa.array([b"\x89PNG"], pa.binary()))
    )
    row = normalize(t, cfg).to_pylist()[0]
    assert (row["day"], row["price"]) == ("2020-05-06", "12.30") and "thumb" not in row
    assert report(t, cfg)["dropped_columns"] == {"thumb": "binary: binary columns are not carried"}
    assert parse_year(dt.date(2020, 5, 6)) == (2020, None)
    assert parse_year(dt.datetime(2020, 12, 31, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5)))) == (2020, None)
