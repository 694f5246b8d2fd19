import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_config, rule_overrides
from zxl.catalog.schema import SCHEMA, read_catalog, read_manifest
from zxl.pipeline.curate import curate, summary
from zxl.pipeline.stages import stage_path

# Their clusters' workers fork from one preloaded server (conftest.forkserver).
pytestmark = pytest.mark.usefixtures("forkserver")

REPO = Path(__file__).resolve().parents[1]


def _table(catalog_dir):
    return read_catalog(catalog_dir).sort_by("key")


def assert_same_catalog(a_dir, b_dir):
    a, b = _table(a_dir), _table(b_dir)
    if a.equals(b):
        return
    da, db = a.to_pandas(), b.to_pandas()
    report = []
    for c in da.columns:
        same = da[c].astype(str) == db[c].astype(str)
        if not same.all():
            report.append(f"{c}: {da.loc[~same, ['key', c, 'status', 'error']].head(3).to_dict('records')} vs "
                          f"{db.loc[~same, [c, 'status', 'error']].head(3).to_dict('records')}")  # fmt: skip
    raise AssertionError("catalogs differ:\n" + "\n".join(report))


def test_every_url_is_one_row_with_the_right_status(sync_run, truth):
    cfg, result = sync_run
    cat = read_catalog(result.catalog_dir).to_pandas()
    assert len(cat) == len(truth) and cat["key"].is_unique
    merged = cat.merge(truth, on="key", validate="one_to_one")
    for kind, rows in merged.groupby(merged["bad"].fillna("good")):
        if kind == "good":  # a ladder rung is kept, or a duplicate of its picture's kept copy
            assert rows["status"].isin(["ok", "duplicate"]).all(), rows[["status", "error"]]
        else:
            assert (rows["status"] == rows["expected_status"]).all(), (kind, rows[["status", "error"]])
    failed = merged[merged["status"] != "ok"]
    assert failed["error"].str.len().gt(0).all()
    assert set(failed["repeats"]) == {0}
    ok = merged[merged["status"] == "ok"]
    assert ok["error"].isna().all()
    assert ok["sha256"].str.len().eq(64).all() and ok["phash"].notna().all()
    assert ok["bucket"].notna().all() and ok["width"].notna().all()
    assert (ok["original_width"] >= ok["width"]).all()


def test_every_ok_row_has_a_score_and_repeats_by_the_table(sync_run, truth):
    cfg, result = sync_run
    cat = read_catalog(result.catalog_dir).to_pandas()
    ok = cat[cat["status"] == "ok"]
    assert ok["aesthetic"].notna().all() and ok["score"].between(1, 9).all()
    expected = ok["score"].map(lambda s: cfg.weigh.repeats.get(int(s), cfg.weigh.default))
    assert (ok["repeats"] == expected).all()
    assert (cat.loc[cat["status"] != "ok", "repeats"] == 0).all()
    counts = ok["score"].value_counts()
    assert counts.max() - counts.min() <= 2  # equal ninths of the kept rows
    edges = result.manifest["score_edges"]["edges"]
    assert len(edges) == 8 and edges == sorted(edges)


def test_dedup_keeps_one_copy_per_picture_and_never_merges_two(sync_run, truth):
    cfg, result = sync_run
    cat = read_catalog(result.catalog_dir).to_pandas().merge(truth, on="key")
    picture = cat.set_index("key")["picture"]
    dups = cat[cat["status"] == "duplicate"]
    assert len(dups) > 0 and dups["duplicate_of"].notna().all()
    assert (picture[dups["key"]].to_numpy() == picture[dups["duplicate_of"]].to_numpy()).all()
    kept = cat.set_index("key").loc[dups["duplicate_of"]]
    assert (kept["status"] == "ok").all()
    # the kept copy is the best-scored one of its group
    best = cat[cat["status"].isin(["ok", "duplicate"])].copy()
    best["group"] = best["duplicate_of"].fillna(best["key"])
    top = best.loc[best.groupby("group")["aesthetic"].idxmax()]
    assert (top["status"] == "ok").all()
    assert result.manifest["dedup"]["duplicates"] == len(dups)


def test_catalog_is_plain_parquet_for_every_reader(sync_run):
    cfg, result = sync_run
    d = result.catalog_dir
    assert pq.read_table(d).schema.names == SCHEMA.names
    assert pq.read_table(d).schema.field("score").type == SCHEMA.field("score").type
    assert list(pd.read_parquet(d).columns) == SCHEMA.names
    n = duckdb.sql(f"select count(*) from read_parquet('{d}/*.parquet')").fetchall()[0][0]
    assert n == result.manifest["rows"]
    q = f"select count(*) from read_parquet('{d}/*.parquet') where status = 'ok' and score between 1 and 9"
    assert duckdb.sql(q).fetchall()[0][0] == result.manifest["ok_rows"] > 0


def test_manifest_and_file_metadata(sync_run):
    cfg, result = sync_run
    m = read_manifest(result.catalog_dir)
    assert m["schema_version"] == 2 and m["rows"] == sum(m["counts"]["status"].values())
    assert m["config"]["run"]["name"] == "sync" and len(m["config_hash"]) == 16
    assert set(m["stages"]) >= {"fetch", "inspect", "catalog"}
    assert m["stages"]["fetch"]["images_per_s"] > 0
    meta = pq.read_schema(result.catalog_dir / m["parts"][0]).metadata
    assert b"zxl.manifest" in meta
    assert (result.run_dir / "config.yaml").read_text().startswith("# zxl resolved config, hash ")
    text = summary(result)
    assert "failed_download" in text and "img/s" in text and str(result.catalog_dir) in text


def test_rerun_skips_every_shard_and_gives_the_same_catalog(sync_run):
    """An unchanged rerun skips every stage, the global step included, and rewrites no file: each
    file under the run folder keeps its inode, size and modification time (but .lock, where the
    run holding the folder writes its pid)."""
    cfg, first = sync_run

    def snapshot():
        return {p: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
                for p in first.run_dir.rglob("*") if p.is_file() and p.name != ".lock"}  # fmt: skip

    curate(cfg, log=lambda *_: None)  # whatever other tests did to the folder, settled
    before = snapshot()
    again = curate(cfg, log=lambda *_: None)
    for stage in ("fetch", "inspect", "score", "catalog"):
        assert again.stage_stats[stage]["shards_run"] == 0
        assert again.stage_stats[stage]["shards_skipped"] == 4
    assert again.stage_stats["reduce"]["skipped"] and "already done" in summary(again)
    assert_same_catalog(again.catalog_dir, first.catalog_dir)
    after = snapshot()
    changed = {p for p in set(after) | set(before) if after.get(p) != before.get(p)}
    assert not changed, sorted(map(str, changed))


def test_a_changed_setting_redoes_only_what_it_touches(sync_run, tmp_path):
    import shutil

    cfg, first = sync_run
    run_dir = tmp_path / "copy"
    shutil.copytree(first.run_dir, run_dir)
    cfg2 = make_config(tmp_path, "copy", cfg.source.path, "inspect.phash_size=8", "inspect.max_image_pixels=100000000")
    stage_path(run_dir, "fetch", 2).unlink()  # as if killed before shard 2's fetch finished
    res = curate(cfg2, log=lambda *_: None)
    assert res.stage_stats["fetch"]["shards_run"] == 1
    assert res.stage_stats["inspect"]["shards_run"] == 4  # its setting changed
    assert_same_catalog(res.catalog_dir, first.catalog_dir)


def test_local_cluster_gives_the_same_catalog_as_sync(sync_run, tmp_path):
    cfg, first = sync_run
    cfg2 = make_config(tmp_path, "cluster", cfg.source.path, "run.scheduler=local", "run.workers=2")
    res = curate(cfg2, log=lambda *_: None)
    assert "LocalCluster with 2 workers" in res.executor
    assert_same_catalog(res.catalog_dir, first.catalog_dir)


def test_kill_mid_fetch_then_resume(sync_run, tmp_path):
    """kill -9 while shards are being fetched; the rerun finishes the same catalog."""
    cfg, first = sync_run
    name = "killed"
    args = [sys.executable, "-m", "zxl", "curate", "--no-progress", "--urls", cfg.source.path,
            "--url-column", "file_url", "--id-column", "id", "--runs-dir", str(tmp_path), "--name", name,
            "--scheduler", "sync", "--shard-size", "40", "--set", f"fetch.timeout={cfg.fetch.timeout}",
            "--set", "fetch.allowed_hosts=[127.0.0.1]", "--set", "fetch.verify_hash=md5",
            "--set", "source.hash_column=md5"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_shard = stage_path(tmp_path / name, "fetch", 0)
    deadline = time.monotonic() + 120
    while not first_shard.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first_shard.exists()
    assert not (tmp_path / name / "catalog").exists()
    leftovers = [p for p in (tmp_path / name / "stages").rglob("*.parquet") if ".tmp-" in p.name]
    assert all(p.name.startswith(".") for p in leftovers)  # a temporary never has a final name
    run = tmp_path / name
    # and what other killed processes leave: a catalog being built, a stage file, a fetch folder
    (run / ".catalog.tmp-4242").mkdir()
    (run / "stages" / "fetch" / ".00003.parquet.tmp-4242-deadbeef").write_bytes(b"half a file")
    (run / "shards" / ".tmp-00002-deadbeef").mkdir(parents=True, exist_ok=True)
    logged = []
    res = curate(make_config(tmp_path, name, cfg.source.path), log=logged.append)
    assert res.stage_stats["fetch"]["shards_skipped"] >= 1
    assert_same_catalog(res.catalog_dir, first.catalog_dir)
    assert [p for p in run.rglob(".*") if p.name != ".lock"] == []  # no litter of any process is left
    assert any(line.startswith("removed ") and "temporary files" in line for line in logged)


def test_a_bad_url_list_stops_before_any_work(tmp_path, urls_file):
    from zxl.config import ConfigError

    cfg = make_config(tmp_path, "bad", urls_file, "source.url_column=image_url")
    with pytest.raises(ConfigError, match="image_url"):
        curate(cfg, log=lambda *_: None)
    assert not (tmp_path / "bad").exists()


def test_a_rule_table_with_a_cycle_stops_before_any_work(tmp_path, urls_file):
    from zxl.config import ConfigError

    table = tmp_path / "tag_aliases.csv"
    table.write_text("id,antecedent_name,consequent_name,status\n1,a,b,active\n2,b,a,active\n3,c,d,deleted\n")
    cfg = make_config(tmp_path, "cycle", urls_file, f"tag.aliases={table}")
    with pytest.raises(ConfigError, match="tag.aliases.*cycle"):
        curate(cfg, log=lambda *_: None)
    assert not (tmp_path / "cycle").exists()
    cfg = make_config(tmp_path, "shuffle", urls_file, "caption.shuffle=[meta]")
    with pytest.raises(ConfigError, match="caption.shuffle"):
        curate(cfg, log=lambda *_: None)
    cfg = make_config(tmp_path, "hash", urls_file, "source.hash_column=")
    with pytest.raises(ConfigError, match="fetch.verify_hash is md5: set source.hash_column"):
        curate(cfg, log=lambda *_: None)
    assert not (tmp_path / "shuffle").exists() and not (tmp_path / "hash").exists()


def test_an_existing_cluster_by_address(sync_run, tmp_path):
    from dask.distributed import LocalCluster

    cfg, first = sync_run
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        cfg2 = make_config(tmp_path, "remote", cfg.source.path, f"run.scheduler={cluster.scheduler_address}")
        res = curate(cfg2, log=lambda *_: None)
        assert res.executor == f"cluster at {cluster.scheduler_address} with 1 workers"
    assert_same_catalog(res.catalog_dir, first.catalog_dir)


def test_an_unknown_scheduler_is_a_config_error(tmp_path, urls_file):
    from zxl.config import ConfigError

    with pytest.raises(ConfigError, match="run.scheduler"):
        curate(make_config(tmp_path, "x", urls_file, "run.scheduler=yarn"), log=lambda *_: None)
    assert not (tmp_path / "x").exists()


def test_clip_mlp_on_a_cluster_writes_float16_embeddings(sync_run, tmp_path, tiny_clip, truth):
    """The real-model path with a tiny open_clip: scores, embeddings per shard, embedding dedup."""
    cfg, first = sync_run
    d = tiny_clip
    cfg2 = make_config(
        tmp_path, "clip", cfg.source.path, "run.scheduler=local", "run.workers=2",
        "score.scorer=clip-mlp", f"score.clip_model={d / 'zxl-tiny-clip.json'}",
        f"score.clip_weights={d / 'clip.pt'}", f"score.head_weights={d / 'head.safetensors'}",
        "dedup.embedding_cosine=0.999",
    )  # fmt: skip
    res = curate(cfg2, log=lambda *_: None)
    emb = pq.read_table(res.run_dir / "embeddings" / "00000.parquet")
    assert str(emb.schema.field("embedding").type) == "fixed_size_list<element: halffloat>[32]"
    inspect0 = pq.read_table(stage_path(res.run_dir, "inspect", 0)).to_pandas()
    assert set(emb["key"].to_pylist()) == set(inspect0.loc[inspect0["status"] == "ok", "key"])
    m = res.manifest
    assert m["models"]["scorer"] == "clip-mlp" and m["models"]["score.head_weights"].endswith("head.safetensors")
    cat = read_catalog(res.catalog_dir).to_pandas()
    ok = cat[cat["status"] == "ok"]
    assert ok["score"].between(1, 9).all() and ok["aesthetic"].notna().all()
    assert set(m["dedup"]["pairs_by_evidence"]) == {"exact", "phash", "embedding"}


def test_tags_years_ratings_and_captions(sync_run, truth):
    cfg, result = sync_run
    cat = read_catalog(result.catalog_dir).to_pandas().merge(truth, on="key")
    clean = cat[cat["meta_issue"].isna()]
    assert set(clean["rating"]) == {"general", "sensitive", "questionable", "explicit"}
    assert (clean["rating_source"] == "metadata").all()
    assert clean["year"].between(2005, 2025).all()
    assert clean["tags"].map(len).gt(0).all()
    # the planted metadata mistakes are nulls with a counted reason, never a crash
    issues = cat[cat["meta_issue"].notna()]
    assert len(issues) > 0
    problems = result.manifest["tag_problems"]
    for kind, rows in issues.groupby("meta_issue"):
        if kind == "old_rating":
            assert (rows["rating"] == "general").all()
        elif kind == "bad_rating":
            assert rows["rating"].isna().all() and any("unknown rating" in p for p in problems)
        elif kind in ("bad_date", "no_date"):
            assert rows["year"].isna().all()
        elif kind == "comma_tags":
            assert rows["tags"].isna().all() and any("tag.separator" in p for p in problems)
    wanted = (cat["status"] == "ok") & (cat["score"] >= cfg.caption.min_score)
    assert cat.loc[wanted, "caption"].notna().all() and cat.loc[~wanted, "caption"].isna().all()
    assert result.manifest["captioned"] == wanted.sum() > 0
    assert cat.loc[wanted, "caption"].str.endswith(".").all()


def test_model_tagger_and_captioner_in_a_run(sync_run, tmp_path, wd_model, tiny_llava, truth):
    """metadata first, the WD model fills the gaps; the hf captioner on the best rows."""
    cfg, first = sync_run
    cfg2 = make_config(
        tmp_path, "models", cfg.source.path, "tag.taggers=[metadata, wd]", f"tag.wd_model={wd_model[0]}",
        "caption.captioner=hf", f"caption.model={tiny_llava}", "caption.max_new_tokens=5", "caption.min_score=7",
    )  # fmt: skip
    res = curate(cfg2, log=lambda *_: None)
    cat = read_catalog(res.catalog_dir).to_pandas().merge(truth, on="key")
    ok = cat[cat["status"] == "ok"]
    assert set(ok["rating_source"]) <= {"metadata", "wd:wd-tiny-tagger"}
    assert (ok.loc[ok["meta_issue"].isna(), "rating_source"] == "metadata").all()
    assert ok["rating"].notna().all()  # a bad metadata rating is filled by the model
    wanted = (cat["status"] == "ok") & (cat["score"] >= 7)
    assert cat.loc[~wanted, "caption"].isna().all()
    stage = pd.concat(
        pq.read_table(p).to_pandas() for p in sorted((res.run_dir / "stages" / "caption").glob("*.parquet"))
    )
    missing = stage[stage["key"].isin(cat.loc[wanted & cat["caption"].isna(), "key"])]
    assert missing["problem"].str.contains("returned nothing").all()
    assert res.manifest["models"]["tag.wd_model"] == str(wd_model[0])
    assert res.manifest["models"]["caption.model"] == str(tiny_llava)


def test_a_worker_killed_mid_stage_changes_nothing(sync_run, tmp_path):
    """kill -9 one of two Dask workers while shards are fetched: the run finishes, same catalog."""
    import threading

    from dask.distributed import Client, LocalCluster

    cfg, first = sync_run
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        cfg2 = make_config(tmp_path, "killed-worker", cfg.source.path, f"run.scheduler={cluster.scheduler_address}")
        result, errors = {}, []

        def run():
            try:
                result["r"] = curate(cfg2, log=lambda *_: None)
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                errors.append(e)

        worker = threading.Thread(target=run)
        worker.start()
        fetch_dir = tmp_path / "killed-worker" / "stages" / "fetch"
        deadline = time.monotonic() + 120
        while not (fetch_dir.exists() and any(fetch_dir.glob("0*.parquet"))) and time.monotonic() < deadline:
            time.sleep(0.05)
        with Client(cluster.scheduler_address) as client:
            pids = client.run(os.getpid)
            os.kill(next(iter(pids.values())), signal.SIGKILL)  # the nanny starts a new one
        worker.join(timeout=300)
    assert not errors, errors
    assert_same_catalog(result["r"].catalog_dir, first.catalog_dir)


def test_tag_rules_apply_once_the_copies_are_known_and_redo_nothing_fetched(sync_run, corpus, truth, tmp_path):
    """The demo export's rules (its own alias and implication tables, exclusions, drop_implied,
    min_count) over a copy of the run: only the rules step, the captions and the catalog run again;
    the catalog holds one spelling per tag, no excluded, implied or rare tag, the copyright, artist
    and meta columns, and the md5 mismatches failed with their reason. Taking the rules away
    gives back the first catalog, again without a fetch."""
    import fnmatch
    import json
    import random
    import shutil

    from zxl.catalog.captions import build_caption, layout_of, tag_text
    from zxl.catalog.export import exporter
    from zxl.catalog.images import ImageStore
    from zxl.demo_corpus import ALIASES, IMPLICATIONS

    cfg, first = sync_run
    shutil.copytree(first.run_dir, tmp_path / "rules")
    cfg2 = make_config(tmp_path, "rules", cfg.source.path, *rule_overrides(corpus))
    res = curate(cfg2, log=lambda *_: None)
    for stage in ("fetch", "inspect", "score", "tag"):
        assert res.stage_stats[stage]["shards_run"] == 0, stage
    assert res.stage_stats["reduce"]["skipped"] and not res.stage_stats["tagrules"]["skipped"]
    assert res.stage_stats["caption"]["shards_run"] == 4

    cat = read_catalog(res.catalog_dir).to_pandas().merge(truth, on="key")
    ok = cat[cat["status"] == "ok"]
    columns = ("tags", "characters", "copyrights", "artists", "meta")
    rows = [{c: set(r[c]) if r[c] is not None else set() for c in columns} for _, r in ok.iterrows()]
    every = [t for r in rows for c in columns for t in r[c]]
    old = {a for a, _, status in ALIASES if status == "active"}
    assert not old & set(every)  # one spelling per aliased tag
    assert not [t for t in every for p in cfg2.tag.exclude if fnmatch.fnmatchcase(t, p)]
    implied = [(child, parent) for child, parent, status in IMPLICATIONS if status == "active"]
    assert not [(r, c, p) for r in rows for col in columns for c, p in implied if c in r[col] and p in r[col]]
    for col in columns:  # no tag under min_count among the trainable rows
        counts = pd.Series([t for r in rows for t in r[col]]).value_counts()
        assert counts.empty or counts.min() >= cfg2.tag.min_count, (col, counts.tail(3))
    assert ok["copyrights"].map(len).gt(0).any() and ok["artists"].map(len).gt(0).any()
    assert {"highres"} <= {t for r in rows for t in r["meta"]}  # meta stays in its column …
    layout = layout_of(res.manifest)
    trainable = [r for r in read_catalog(res.catalog_dir).to_pylist() if r["status"] == "ok" and r["repeats"] > 0]
    for r in trainable:  # … and out of captions
        text = build_caption(r, random.Random(0), (1, 0, 0), layout=layout)
        assert not {tag_text(m) for m in r["meta"] or []} & set(text.split(", ")), text
    mismatch = cat[cat["bad"] == "md5_mismatch"]
    assert len(mismatch) >= 2 and (mismatch["status"] == "failed_download").all()
    assert mismatch["error"].str.fullmatch(r"md5 mismatch: expected [0-9a-f]{32}, got [0-9a-f]{32}").all()
    m = res.manifest
    assert m["hash_mismatches"] == len(mismatch)
    did = m["tag_rules"]
    assert min(did["rules"]["aliased"], did["rules"]["excluded"], did["rules"]["implied"], did["rare_tags_dropped"]) > 0
    text = summary(res)
    assert "tags aliased" in text and "md5 checked" in text and "score-year Spearman rho" in text

    # the kohya folder and the kohya json carry the same captions
    store = ImageStore(res.catalog_dir)
    exporter("kohya", seed=3, layout=layout).export(trainable, store, tmp_path / "k")
    exporter("kohya-json", seed=3, layout=layout).export(trainable, store, tmp_path / "kj")
    folder = {p.stem: p.read_text().strip() for p in (tmp_path / "k").glob("*/*.txt")}
    meta_json = {Path(n).stem: e["caption"] for n, e in json.loads((tmp_path / "kj" / "meta.json").read_text()).items()}
    assert folder == meta_json and len(folder) == len(trainable)

    back = curate(make_config(tmp_path, "rules", cfg.source.path), log=lambda *_: None)
    assert back.stage_stats["fetch"]["shards_run"] == 0 and back.stage_stats["score"]["shards_run"] == 0
    assert_same_catalog(back.catalog_dir, first.catalog_dir)
