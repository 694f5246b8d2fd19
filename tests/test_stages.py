import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zxl.files import write_table_atomic
from zxl.pipeline.stages import is_done, stored_hash


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


def test_plain_error_drops_what_changes_between_runs():
    from zxl.pipeline.stages import plain_error

    a = plain_error("cannot identify image file <_io.BytesIO object at 0x7f3a2b1c9d30>")
    b = plain_error(OSError("cannot identify image file <_io.BytesIO object at 0x7fffd00d0e10>"))
    assert a == b == "cannot identify image file <_io.BytesIO object>"
    assert plain_error("two\nlines  and   spaces") == "two lines and spaces"


def test_temporaries_of_any_process_are_removed_and_finished_files_kept(tmp_path):
    from zxl.files import write_text_atomic
    from zxl.pipeline.stages import remove_temporaries

    run = tmp_path / "run"
    keep = [write_text_atomic(text, run / name) for text, name in
            (("x", "stages/fetch/00000.parquet"), ("y", "config.yaml"), ("z", "shards/00000.tar"))]  # fmt: skip
    litter = [run / "stages" / "fetch" / ".00001.parquet.tmp-999999-abcd1234", run / ".config.yaml.tmp-1-ffff0000",
              run / "embeddings" / ".00000.parquet.tmp-5-0", run / ".zxl-probe-0a1b2c3d",
              run / "taste" / ".head.safetensors.tmp-7-0badc0de", run / "taste" / ".fit.json.tmp-7-12345678",
              run / "catalog" / "._manifest.json.tmp-8-aaaaaaaa"]  # fmt: skip
    for p in litter:
        write_text_atomic("half", p)
    folders = [run / ".catalog.tmp-31337", run / ".catalog.old-31337", run / "shards" / ".tmp-00001-beefcafe"]
    for d in folders:
        (d / "inner").mkdir(parents=True)
    assert remove_temporaries(run) == len(litter) + len(folders)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in litter + folders)
    assert remove_temporaries(run) == 0 and remove_temporaries(tmp_path / "none") == 0


def test_one_curate_per_run_folder_at_a_time(tmp_path):
    from zxl.pipeline.stages import RunFolderBusyError, run_lock

    with run_lock(tmp_path):
        with pytest.raises(
            RunFolderBusyError, match=f"run folder {tmp_path} is in use by zxl curate pid {os.getpid()}"
        ):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released at the end of the block
        pass
