import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sources import normalize, read_url_list, split
from pipeline.stages import stage_path
from zxl.config import ConfigError, SourceConfig

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
