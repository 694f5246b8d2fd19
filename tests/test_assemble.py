"""pipeline/assemble.py: one catalog part per shard from every stage's output, and the catalog."""

import json

import pyarrow.parquet as pq
import pytest

from tests import stage_folder
from zxl.catalog.schema import SCHEMA, read_catalog, read_manifest
from zxl.files import write_table_atomic
from zxl.pipeline.assemble import write_catalog
from zxl.pipeline.stages import stage_path

ALL = ("inspect", "score", "tag", "reduce", "tagrules", "caption", "catalog")


def test_a_shard_assembles_to_the_catalog_schema_in_source_order(tmp_path):
    pics = [stage_folder.picture(i, noise=3 * i) for i in range(6)]
    cfg, hashes = stage_folder.build(tmp_path, [*pics, None])
    stage_folder.run(tmp_path, cfg, hashes, *ALL)
    part = pq.read_table(stage_path(tmp_path, "catalog", 0))
    assert part.schema.remove_metadata() == SCHEMA
    rows = part.to_pandas()
    assert rows["key"].tolist() == [str(1000 + i) for i in range(7)]
    ok = rows[rows["status"] == "ok"]
    assert ok["error"].isna().all() and ok["bucket"].notna().all() and ok["score"].between(1, 9).all()
    assert rows.iloc[6]["status"] == "failed_download" and rows.iloc[6]["error"] == "HTTP 404"
    assert set(ok["rating"]) <= {"general", "explicit"} and (ok["year"] == 2021).all()


def test_a_stage_out_of_step_with_its_source_is_refused(tmp_path):
    cfg, hashes = stage_folder.build(tmp_path, [stage_folder.picture(i) for i in range(3)])
    stage_folder.run(tmp_path, cfg, hashes, *ALL[:-1])
    tag = pq.read_table(stage_path(tmp_path, "tag", 0))
    write_table_atomic(tag.slice(1), stage_path(tmp_path, "tag", 0))  # a row short
    with pytest.raises(RuntimeError, match="stage tag of shard 00000 does not match its source rows"):
        stage_folder.run(tmp_path, cfg, hashes, "catalog")


def test_write_catalog_counts_and_swaps_in_whole(tmp_path):
    cfg, hashes = stage_folder.build(tmp_path, [stage_folder.picture(i) for i in range(4)] + [None])
    stage_folder.run(tmp_path, cfg, hashes, *ALL)
    manifest = write_catalog(tmp_path, 1, {"zxl_version": "test"})
    assert manifest["rows"] == 5 and manifest["ok_rows"] == 4 and manifest["counts"]["status"]["failed_download"] == 1
    assert read_manifest(tmp_path / "catalog")["rows"] == 5 and read_catalog(tmp_path / "catalog").num_rows == 5
    meta = pq.read_schema(tmp_path / "catalog" / "part-00000.parquet").metadata
    assert json.loads(meta[b"zxl.manifest"])["parts"] == ["part-00000.parquet"]
    write_catalog(tmp_path, 1, {"zxl_version": "again"})
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".catalog")) == []
