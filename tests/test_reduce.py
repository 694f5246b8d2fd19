"""pipeline/reduce.py: dedup, calibration and repeats decided over every row at once."""

import pyarrow.parquet as pq

from tests import stage_folder
from zxl.pipeline.stages import UndeclaredReadError, stage_path


def _reduced(tmp_path, blobs, *overrides):
    cfg, hashes = stage_folder.build(tmp_path, blobs, *overrides)
    out = stage_folder.run(tmp_path, cfg, hashes, "inspect", "score", "tag", "reduce")["reduce"]
    return out, pq.read_table(stage_path(tmp_path, "reduce", 0)).to_pandas()


def test_a_copy_is_a_duplicate_of_the_kept_one_and_gets_no_repeats(tmp_path):
    pics = [stage_folder.picture(i, noise=5) for i in range(9)]
    out, table = _reduced(tmp_path, [*pics, pics[3], None], "dedup.phash_distance=-1")  # the pictures look alike
    assert out["dedup"]["duplicates"] == 1 and out["dedup"]["pairs_by_evidence"]["exact"] == 1
    dup = table.iloc[9]
    assert dup["status"] == "duplicate" and dup["duplicate_of"] == "1003" and dup["repeats"] == 0
    assert dup["error"] == "duplicate of 1003"
    assert table.iloc[10]["status"] == "failed_download" and table.iloc[10]["repeats"] == 0


def test_scores_are_ninths_of_the_kept_rows_and_repeats_follow_the_table(tmp_path):
    pics = [stage_folder.picture(i, noise=4 * i) for i in range(18)]
    out, table = _reduced(tmp_path, pics, "weigh.repeats={9: 4, 8: 2}", "weigh.default=1", "dedup.phash_distance=-1")
    counts = table["score"].value_counts().to_dict()
    assert sorted(counts) == list(range(1, 10)) and all(1 <= n <= 3 for n in counts.values())  # ninths of 18
    want = table["score"].map({9: 4, 8: 2}).fillna(1).astype(int)
    assert (table["repeats"] == want).all() and len(out["score_edges"]["edges"]) == 8


def test_reduce_reads_only_the_score_inspect_and_tag_outputs(tmp_path):
    from zxl.pipeline import reduce
    from zxl.pipeline.stages import StageInputs

    cfg, hashes = stage_folder.build(tmp_path, [stage_folder.picture(0)])
    stage_folder.run(tmp_path, cfg, hashes, "inspect", "score")
    try:
        inputs = StageInputs(tmp_path, "reduce", ("score",))
        reduce.reduce_all(inputs, 1, "h", cfg.taste, cfg.calibrate, cfg.dedup, cfg.weigh)
    except UndeclaredReadError as e:
        assert "reads the output of inspect" in str(e)
    else:
        raise AssertionError("reduce read inspect without declaring it")


def test_perceptual_hashes_are_read_exactly_when_some_rows_have_none(tmp_path):
    """A shard with a failed row (null phash) made pyarrow hand the column over as float64, which
    rounded every 64-bit hash to 53 bits before dedup compared them; they are read as integers."""
    import pyarrow as pa

    from zxl.pipeline.reduce import _load
    from zxl.pipeline.stages import StageInputs

    big = (1 << 62) + 12345  # not a float64: rounding would change its low bits
    for stage in ("score", "inspect", "tag"):
        stage_path(tmp_path, stage, 0).parent.mkdir(parents=True)
    pq.write_table(pa.table({"year": pa.array([2020, None], pa.int16()), "rating": ["general", None]}),
                   stage_path(tmp_path, "tag", 0))  # fmt: skip
    pq.write_table(pa.table({"key": ["a", "b"], "status": ["ok", "failed_download"], "error": [None, "404"],
                             "aesthetic": pa.array([5.0, None], pa.float32())}),
                   stage_path(tmp_path, "score", 0))  # fmt: skip
    pq.write_table(pa.table({"sha256": ["x", None], "phash": pa.array([big, None], pa.int64()),
                             "width": pa.array([8, None], pa.int32()), "height": pa.array([8, None], pa.int32())}),
                   stage_path(tmp_path, "inspect", 0))  # fmt: skip
    rows, sizes = _load(StageInputs(tmp_path, "reduce", ("score", "inspect", "tag")), 1)
    assert sizes == [2] and int(rows["phash"][0]) == big
    assert rows["year"].tolist() == [2020, None] and rows["rating"].tolist() == ["general", None]


def test_the_report_says_how_much_the_scores_carry_the_year(tmp_path):
    pics = [stage_folder.picture(i, noise=4 * i) for i in range(18)]
    out, table = _reduced(tmp_path, pics, "dedup.phash_distance=-1")
    sy = out["score_year"]  # stage_folder's rows are all from 2021: no correlation to measure
    assert sy["rows"] == 18 and sy["rho"] is None and sy["rho_global_edges"] is None
