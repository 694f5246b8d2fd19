import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.stages import is_done, stored_hash, write_table_atomic


def test_atomic_write_carries_the_stage_hash(tmp_path):
    path = tmp_path / "stages" / "x" / "00000.parquet"
    write_table_atomic(pa.table({"a": [1, 2]}), path, {"zxl.stage_hash": "abc"})
    assert pq.read_table(path)["a"].to_pylist() == [1, 2]
    assert stored_hash(path) == "abc"
    assert is_done(path, "abc") and not is_done(path, "abd")
    assert [p.name for p in path.parent.iterdir()] == ["00000.parquet"]  # no temporary left behind


def test_a_partial_file_is_not_done(tmp_path):
    path = tmp_path / "00000.parquet"
    path.write_bytes(b"PAR1 half a file")
    assert stored_hash(path) is None and not is_done(path, "abc")
    assert not is_done(tmp_path / "missing.parquet", "abc")
