import io
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import make_config
from zxl.config import ConfigError
from zxl.demo_corpus import bomb_png
from zxl.pipeline import sources
from zxl.pipeline.config import FetchConfig
from zxl.pipeline.fetch import sniff
from zxl.pipeline.graph import run_shard
from zxl.pipeline.stages import stage_path, stored_hash


def _png(size=(8, 8)):
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty response body"),
        (b"<!DOCTYPE html><html>blocked</html>", "HTML page"),
        (b'{"error": "rate limited"}', "JSON"),
        (b"\x00\x01garbage", "not an image"),
        (bomb_png(20_000), "decompression bomb"),
    ],
)
def test_sniff_names_the_cause(data, reason):
    assert reason in sniff(data, 89_478_485)


def test_sniff_passes_images_and_applies_the_pixel_limit():
    assert sniff(_png(), 1000) is None
    assert "over the limit of 10" in sniff(_png(), 10)


def test_fetch_one_shard(urls_file, tmp_path, truth):
    cfg = make_config(tmp_path, "one", urls_file, "run.shard_size=70")
    run_dir = tmp_path / "one"
    n, h = sources.split(sources.read_url_list(cfg.source), cfg.source, run_dir, cfg.run.shard_size)
    assert n == 2
    result = run_shard(str(run_dir), "fetch", 1, "h1", cfg.fetch, cfg.run.shard_size)
    assert result["rows"] == 70 and not result["skipped"]
    out = pq.read_table(stage_path(run_dir, "fetch", 1)).to_pandas()
    src = pq.read_table(stage_path(run_dir, "source", 1)).to_pandas()
    assert out["key"].tolist() == src["key"].tolist()  # rows in = rows out, in order
    assert stored_hash(stage_path(run_dir, "fetch", 1)) == "h1"
    shards = run_dir / "shards"
    assert sorted(p.name for p in shards.iterdir()) == ["00001.parquet", "00001.tar", "00001_stats.json"]
    # img2dataset gets the URL, the key and the position only; the source columns stay in stages/source
    i2d = pq.read_table(shards / "00001.parquet")
    assert {"url", "zxl_key", "zxl_row", "status", "error_message"} <= set(i2d.column_names)
    assert not {"tag_string_general", "rating", "created_at"} & set(i2d.column_names)
    assert {"tag_string_general", "rating", "created_at"} <= set(src.columns)
    ok = out[out["status"] == "ok"]
    with tarfile.open(shards / "00001.tar") as tar:
        stored = {m.name.split(".")[0] for m in tar if m.name.endswith(".jpg")}
    assert set(ok["shard_key"]) == stored
    merged = out.merge(truth, on="key")
    assert (merged["status"] == merged["expected_status"]).all()
    assert merged.loc[merged["status"] != "ok", "error"].str.len().gt(0).all()
    # no upscaling, and nothing downscaled below the cap
    assert (ok["width"] <= ok["original_width"]).all()
    assert (ok[["width", "height"]].min(axis=1) <= 1024).all()
    # a second call with the same hash is a skip
    assert run_shard(str(run_dir), "fetch", 1, "h1", cfg.fetch, cfg.run.shard_size)["skipped"]


def test_bad_fetch_settings_are_config_errors(urls_file, tmp_path):
    from zxl.pipeline.fetch import validate

    with pytest.raises(ConfigError, match="fetch.resize_mode"):
        validate(FetchConfig(resize_mode="stretch"))
    with pytest.raises(ConfigError, match="fetch.timeout"):
        validate(FetchConfig(timeout=0))
