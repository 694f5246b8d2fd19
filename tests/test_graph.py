"""The stage table: order, task dependencies, hashes and reads all come from one declaration."""

import pyarrow as pa
import pytest

from zxl.config import load_config
from zxl.pipeline import graph
from zxl.pipeline.config import CurateConfig
from zxl.pipeline.stages import ShardJob, UndeclaredReadError, run_job, stage_path, stored_hash


def _cfg(*overrides):
    return load_config(CurateConfig, overrides=list(overrides))


def test_every_stage_comes_after_what_it_reads():
    seen = {"source"}
    for stage in graph.STAGES:
        assert set(stage.reads) <= seen, f"{stage.name} reads {set(stage.reads) - seen} before it is made"
        seen.add(stage.name)
    assert [s.name for s in graph.STAGES if s.scope == "global"] == ["reduce", "tagrules"]
    assert graph.SHARD_STAGES == ("fetch", "inspect", "score", "tag", "caption", "catalog")


def test_sections_name_real_config():
    cfg = _cfg()
    for stage in graph.STAGES:
        for name in stage.sections:
            graph.section(cfg, name)  # raises AttributeError on a typo
        for key in stage.speed_only | stage.later | stage.keys:
            assert any(key in vars(graph.section(cfg, n)) for n in stage.sections), (stage.name, key)


def test_the_run_order_alternates_phases_and_global_steps():
    assert graph.order() == [("phase", 0), ("global", "reduce"), ("phase", 1), ("global", "tagrules"), ("phase", 2)]
    assert [s.name for s in graph.phase(0)] == ["fetch", "inspect", "score", "tag"]
    assert graph.phase(1) == ()  # tagrules follows reduce at once
    assert [s.name for s in graph.phase(2)] == ["caption", "catalog"]


def test_tasks_wait_on_what_they_read_in_their_phase():
    hashes = graph.stage_hashes(_cfg(), "src")
    first = graph.tasks(0, "/r", 2, hashes, _cfg())
    deps = {t.id: t.deps for t in first}
    assert deps[("fetch", 1)] == []  # source is the split's, before any task
    # inspect, score and tag share one task per shard: one pass over its images
    assert {t.id: t.parts for t in first} == {("fetch", 0): (), ("inspect", 0): ("score", "tag"),
                                              ("fetch", 1): (), ("inspect", 1): ("score", "tag")}  # fmt: skip
    assert deps[("inspect", 1)] == [("fetch", 1)]
    second = {t.id: t.deps for t in graph.tasks(2, "/r", 2, hashes, _cfg())}
    assert second[("caption", 1)] == []  # fetch, reduce and tagrules are done before phase 2
    assert second[("catalog", 1)] == [("caption", 1)]


def test_image_stages_share_a_task_only_where_they_ask_for_the_same_workers():
    cfg = _cfg("run.model_resources={GPU: 1}", "score.scorer=clip-mlp", "tag.taggers=[metadata, wd]")
    hashes = graph.stage_hashes(cfg, "src")
    resources = dict.fromkeys(("score", "tag"), {"GPU": 1})
    first = {t.id: t for t in graph.tasks(0, "/r", 1, hashes, cfg, resources)}
    assert sorted(first) == [("fetch", 0), ("inspect", 0), ("score", 0)]
    assert first[("inspect", 0)].parts == () and first[("inspect", 0)].resources is None
    assert first[("score", 0)].parts == ("tag",) and first[("score", 0)].resources == {"GPU": 1}
    assert first[("score", 0)].deps == [("fetch", 0), ("inspect", 0)]


def test_a_change_redoes_what_it_reaches_and_nothing_else():
    base = graph.stage_hashes(_cfg(), "src")
    assert set(base) == {"source", *(s.name for s in graph.STAGES)}

    def changed(*overrides, source="src"):
        new = graph.stage_hashes(_cfg(*overrides), source)
        return {k for k in base if base[k] != new[k]}

    every = {"fetch", "inspect", "score", "tag", "reduce", "tagrules", "caption", "catalog"}
    assert changed("fetch.timeout=7") == every
    assert changed("tag.exif_year=false") == {"tag", "reduce", "tagrules", "caption", "catalog"}  # years: calibrate
    assert changed("weigh.default=2") == {"reduce", "tagrules", "caption", "catalog"}
    assert changed("caption.min_score=3") == {"caption", "catalog"}
    # the tag rules redo the rules step, the captions and the catalog: nothing fetched, scored or tagged again
    for rule in ("tag.min_count=5", "tag.drop_implied=true", "tag.exclude=[x*]", "tag.replace={a: b}"):
        assert changed(rule) == {"tagrules", "caption", "catalog"}, rule
    assert changed("caption.tag_order=[general]", "caption.shuffle=[general]") == set()  # read from the manifest
    assert changed("fetch.verify_hash=md5", "source.hash_column=md5") == every
    assert changed("run.shard_size=77") == changed("fetch.timeout=7")  # fetch is given run.shard_size
    assert changed("fetch.thread_count=3", "score.batch_size=3", "tag.device=cpu") == set()  # speed only
    assert changed(source="other") == set(base)


def test_a_stage_reads_only_what_it_declares(tmp_path):
    pa_table = pa.table({"key": ["a"]})
    from zxl.files import write_table_atomic

    write_table_atomic(pa_table, stage_path(tmp_path, "fetch", 0))
    write_table_atomic(pa_table, stage_path(tmp_path, "tag", 0))
    job = ShardJob(tmp_path, "inspect", 0, "h", reads=("fetch",))
    assert job.read("fetch")["key"].to_pylist() == ["a"]
    with pytest.raises(UndeclaredReadError, match="stage inspect reads the output of tag.*it reads fetch"):
        job.read("tag")


def test_run_job_writes_once_with_its_hash_then_skips(tmp_path):
    calls = []

    def stage(job, x):
        calls.append(x)
        return pa.table({"key": ["a", "b"]}), {"zxl.extra": "1"}

    job = ShardJob(tmp_path, "inspect", 3, "h1", reads=())
    first = run_job(job, stage, 5)
    assert first["rows"] == 2 and not first["skipped"] and calls == [5]
    assert stored_hash(job.out) == "h1"
    assert run_job(job, stage, 5) == {"rows": 2, "skipped": True} and calls == [5]
    assert not run_job(ShardJob(tmp_path, "inspect", 3, "h2", reads=()), stage, 6)["skipped"]
