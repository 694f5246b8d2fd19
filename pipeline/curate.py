"""``zxl curate``: URL list → shards → the stages of ``zxl.pipeline.graph.STAGES`` → catalog.

The stage table says what runs, in which order and with what hash; this module runs it: the split,
the first phase of per-shard Dask tasks (fetch, inspect, score, tag), the global steps (reduce:
dedup, calibrate, weigh; tagrules: the tag rules over the kept rows), the second phase (caption,
catalog), then the catalog's manifest. A stage's hash covers its config and
the hashes of what it reads, so a change to ``fetch.*`` redoes fetch and everything after it, and
an unchanged run is all skips.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from zxl import __version__
from zxl.captioners import registry as captioner_registry
from zxl.catalog import captions
from zxl.config import ConfigError, check_ranges, config_hash, dump_yaml, to_dict
from zxl.files import file_sha256, write_text_atomic
from zxl.pipeline import executor, fetch, graph, polite, reduce, sources, tag, tagrules
from zxl.pipeline.assemble import write_catalog
from zxl.pipeline.config import CurateConfig
from zxl.pipeline.executor import Executor, Progress, Task
from zxl.pipeline.stages import is_done, remove_temporaries, report_path, run_lock, stage_path
from zxl.scorers.registry import scorer_class
from zxl.taggers import registry as tagger_registry

STAGES = graph.SHARD_STAGES  # the per-shard stages, in table order


@dataclass
class CurateResult:
    run_dir: Path
    catalog_dir: Path
    manifest: dict
    stage_stats: dict
    executor: str
    dashboard: str | None
    workers: dict[str, dict[str, float]]  # Dask worker address → resources it offered ({} on sync)


def _members(cfg: CurateConfig) -> dict[str, list]:
    """Stage → the member classes this config runs in it."""
    captioner = captioner_registry.captioner_class(cfg.caption.captioner)
    return {
        "score": [scorer_class(cfg.score.scorer)],
        "tag": [tagger_registry.tagger_class(n) for n in cfg.tag.taggers],
        "caption": [captioner] if captioner is not None else [],
    }


def model_stages(cfg: CurateConfig) -> list[str]:
    """The stages that run a model with this config (their members' ``runs_model``)."""
    return [stage for stage, members in _members(cfg).items() if any(m.runs_model for m in members)]


# Every worker runs the stage code and fetch (img2dataset, which imports torch).
WORKER_IMPORTS = ("torch", "img2dataset", "zxl.pipeline.graph")


def worker_imports(cfg: CurateConfig) -> list[str]:
    """What a worker imports to run this config: the stages' code and the members' libraries."""
    extra = [lib for members in _members(cfg).values() for m in members for lib in m.imports]
    return list(dict.fromkeys([*WORKER_IMPORTS, *extra]))


def _resources(cfg: CurateConfig) -> dict[str, dict[str, float]]:
    """Stage → the Dask resources its tasks ask for: run.model_resources for the model stages."""
    return dict.fromkeys(model_stages(cfg), cfg.run.model_resources) if cfg.run.model_resources else {}


def _stage_stats(plan_: list[Task], results: dict) -> dict:
    """Rows, wall seconds (first start to last end of the tasks that ran) and images/s per stage."""
    stats = {}
    for stage in STAGES:
        rs = [results[(stage, t.shard)] for t in plan_ if stage in (t.stage, *t.parts)]
        ran = [r for r in rs if not r.get("skipped")]
        rows = sum(r["rows"] for r in ran)
        seconds = (max(r["end"] for r in ran) - min(r["start"] for r in ran)) if ran else 0.0
        stats[stage] = {
            "rows": rows,
            "shards_run": len(ran),
            "shards_skipped": len(rs) - len(ran),
            "seconds": round(seconds, 3),
            "images_per_s": round(rows / seconds, 2) if seconds > 0 else None,
            "workers": sorted({r["worker"] for r in ran if "worker" in r}),  # Dask workers that ran it
        }
    return stats


def _models(cfg: CurateConfig) -> dict:
    from zxl.scorers.registry import scorer_class

    refs: dict = {"scorer": cfg.score.scorer, **scorer_class(cfg.score.scorer).references(cfg.score)}
    refs["taggers"] = list(cfg.tag.taggers)
    for name in cfg.tag.taggers:
        refs.update(tagger_registry.tagger_class(name).references(cfg.tag))
    refs["captioner"] = cfg.caption.captioner
    cls = captioner_registry.captioner_class(cfg.caption.captioner)
    if cls is not None:
        refs.update(cls.references(cfg.caption))
    return refs


def curate(cfg: CurateConfig, urls: pa.Table | None = None, log=print) -> CurateResult:
    """Run every stage; ``urls`` overrides reading ``cfg.source.path`` (used by ``--demo``)."""
    check_ranges(cfg)
    executor.validate(cfg.run)
    fetch.validate(cfg.fetch)
    reduce.validate(cfg)
    tagrules.validate(cfg.tag)
    captions.check_layout(cfg.caption.tag_order, cfg.caption.shuffle)
    fetch.check_hash_source(cfg)
    scorer_class(cfg.score.scorer).check(cfg.score)
    tagger_registry.check(cfg.tag)
    captioner_registry.check(cfg.caption)
    table = urls if urls is not None else sources.read_url_list(cfg.source)
    if urls is not None and cfg.source.url_column not in table.column_names:
        raise ValueError(f"the URL table has no column '{cfg.source.url_column}' (source.url_column)")
    run_dir = Path(cfg.run.runs_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        return _curate(cfg, table, run_dir, log)


def rerun_from_reduce(cfg: CurateConfig, log=print) -> CurateResult:
    """The global step and every stage after it again, on the shard stages' stored outputs (``zxl taste
    apply``): nothing is fetched, inspected, embedded or tagged again. Refused when ``cfg`` would
    redo any of those (its config differs from the run's for them)."""
    from zxl.catalog.schema import read_manifest

    check_ranges(cfg)
    reduce.validate(cfg)
    tagrules.validate(cfg.tag)
    captions.check_layout(cfg.caption.tag_order, cfg.caption.shuffle)
    run_dir = Path(cfg.run.runs_dir) / cfg.run.name
    before = read_manifest(run_dir / "catalog")
    n_shards = len(before["parts"])
    hashes = graph.stage_hashes(cfg, before["stage_hashes"]["source"])
    stale = [f"{stage} {s:05d}" for stage in graph.SHARD_STAGES if stage in {x.name for x in graph.phase(0)}
             for s in range(n_shards) if not is_done(stage_path(run_dir, stage, s), hashes[stage])]  # fmt: skip
    if stale:
        raise ConfigError(
            f"{run_dir}: the stored outputs of {', '.join(stale[:4])}{' …' if len(stale) > 4 else ''} do not match "
            "this config; run `zxl curate` with it (it fetches or embeds again only what changed)"
        )
    with run_lock(run_dir):
        return _curate(cfg, None, run_dir, log, (n_shards, before["stage_hashes"]["source"], before["source"]))


def _part_digests(run_dir: Path, stage: str, n_shards: int) -> list[str | None]:
    paths = [stage_path(run_dir, stage, s) for s in range(n_shards)]
    return [file_sha256(p) if p.is_file() else None for p in paths]


def _clear_after(run_dir: Path, stage: str, n_shards: int, before: list[str | None]) -> None:
    """After ``--retry-failed`` brought rows back, a global step's part can change while its hash does
    not, which makes that shard's later outputs stale although their hashes match: remove them, so
    the next phase redoes exactly those shards. (In any other run a changed part means a changed
    hash, and the later stages' hashes change with it.)"""
    later = [s.name for s in graph.STAGES[graph.STAGES.index(graph.BY_NAME[stage]) + 1 :] if s.scope == "shard"]
    for s, (old, new) in enumerate(zip(before, _part_digests(run_dir, stage, n_shards), strict=True)):
        if old is not None and old != new:
            for name in later:
                stage_path(run_dir, name, s).unlink(missing_ok=True)


def retry_failed(cfg: CurateConfig, log=print) -> CurateResult:
    """``zxl curate --retry-failed``: refetch the transient failures (timeouts, resets, 429, 5xx) of a
    finished run's shards, redo the shard stages of those shards and the global steps, and write the
    catalog; every other shard's stage files stay as they are."""
    from zxl.catalog.schema import read_manifest
    from zxl.pipeline.stages import ShardJob

    check_ranges(cfg)
    fetch.validate(cfg.fetch)
    run_dir = Path(cfg.run.runs_dir) / cfg.run.name
    before = read_manifest(run_dir / "catalog")
    n_shards, source_hash = len(before["parts"]), before["stage_hashes"]["source"]
    hashes = graph.stage_hashes(cfg, source_hash)
    first = [s.name for s in graph.phase(0)]
    with run_lock(run_dir):
        tried = 0
        for s in range(n_shards):
            job = ShardJob(run_dir, "fetch", s, hashes["fetch"], graph.BY_NAME["fetch"].reads)
            if not is_done(job.out, hashes["fetch"]):
                raise ConfigError(f"{run_dir}: shard {s:05d} was fetched with other settings; run `zxl curate` with "
                                  "this config first (--retry-failed retries a finished run's failures)")  # fmt: skip
            n = fetch.retry_failed(job, cfg.fetch, cfg.run.shard_size, cfg.source.hash_column)
            if n:
                tried += n
                for name in first[1:]:  # what was built on this shard's fetch
                    stage_path(run_dir, name, s).unlink(missing_ok=True)
        log(f"retried {tried} transient failures of {run_dir}")
        if tried:  # the global steps and the catalog were made from other rows: made again
            for g in graph.GLOBALS:
                report_path(run_dir, g.name).unlink(missing_ok=True)
            (run_dir / "catalog" / "_manifest.json").unlink(missing_ok=True)
        return _curate(cfg, None, run_dir, log, (n_shards, source_hash, before["source"]), redo_first=True)


def _curate(cfg: CurateConfig, table: pa.Table | None, run_dir: Path, log, stored=None,
            redo_first: bool = False) -> CurateResult:  # fmt: skip
    removed = remove_temporaries(run_dir)  # what a killed run left; this run holds the lock, so none is live
    if removed:
        log(f"removed {removed} temporary files left by an earlier, interrupted run")
    text = dump_yaml(cfg)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file() or config_file.read_text() != text:  # an unchanged rerun rewrites nothing
        write_text_atomic(text, config_file)
    t0 = time.time()
    n_rows: int
    if stored is None:
        assert table is not None  # curate passes the table; only rerun_from_reduce passes stored instead
        source_report = sources.report(table, cfg.source)
        n_shards, source_hash = sources.split(table, cfg.source, run_dir, cfg.run.shard_size)
        n_rows = table.num_rows
    else:  # rerun_from_reduce: the split and the first phase are done
        n_shards, source_hash, source_report = stored
        n_rows = source_report["rows"]
    split_seconds = time.time() - t0
    hashes = graph.stage_hashes(cfg, source_hash)
    shared_dir = run_dir.absolute()  # what workers are told: a relative path means their own working folder
    with Executor(cfg.run, preload=worker_imports(cfg)) as ex:
        log(f"zxl curate: {n_rows} URLs in {n_shards} shards, run folder {run_dir}")
        log(f"executing on {ex.description}" + (f"; Dask dashboard: {ex.dashboard}" if ex.dashboard else ""))
        if ex.client is not None and cfg.run.model_resources:
            log(f"model stages ({', '.join(model_stages(cfg)) or 'none'}) ask for {cfg.run.model_resources}")
        ex.check_shared(shared_dir)
        progress = Progress(dict.fromkeys(STAGES, n_rows), cfg.run.progress)
        all_tasks, results, globals_ = [], {}, {}
        try:
            for kind, which in graph.order():
                if kind == "global":
                    t = time.time()
                    before = _part_digests(run_dir, str(which), n_shards) if redo_first else None
                    globals_[which] = graph.run_global(str(which), run_dir, n_shards, hashes, cfg)
                    globals_[which]["wall"] = time.time() - t
                    if before is not None:
                        _clear_after(run_dir, str(which), n_shards, before)
                elif which or stored is None or redo_first:  # rerun_from_reduce: phase 0 is done
                    phase_tasks = graph.tasks(int(which), shared_dir, n_shards, hashes, cfg, _resources(cfg))
                    all_tasks += phase_tasks
                    results.update(ex.run(phase_tasks, progress))
        finally:
            progress.close()
        description, dashboard, workers = ex.description, ex.dashboard, ex.workers()
    reduced, ruled = globals_["reduce"], globals_["tagrules"]
    stats = {
        "split": {"rows": n_rows, "seconds": round(split_seconds, 3)},
        **_stage_stats(all_tasks, results),
        "reduce": {
            "rows": n_rows,
            "seconds": round(reduced["wall"], 3),
            "skipped": bool(reduced.get("skipped")),
            **reduced["seconds"],
        },  # fmt: skip
        "tagrules": {"rows": n_rows, "seconds": round(ruled["wall"], 3), "skipped": bool(ruled.get("skipped"))},
    }
    t1 = time.time()
    manifest = write_catalog(
        run_dir,
        n_shards,
        {
            "zxl_version": __version__,
            "config": to_dict(cfg),
            "config_hash": config_hash(cfg),
            "stage_hashes": hashes,
            "models": _models(cfg),
            "source": source_report,
            "score_edges": reduced["score_edges"],
            "dedup": reduced["dedup"],
            "embedding": reduced["embedding"],
            "diversity": reduced["diversity"],
            "score_year": reduced["score_year"],
            "tag_rules": {k: v for k, v in ruled.items() if k not in ("skipped", "seconds", "wall", "stage_hash")},
            **({"taste": reduced["taste"]} if "taste" in reduced else {}),
            "tag_problems": tag.problem_counts(run_dir, n_shards),
            "fetch_hosts": fetch_hosts(run_dir, n_shards),
            "stages": stats,
        },
    )
    stats["write"] = {"seconds": round(time.time() - t1, 3)}
    return CurateResult(run_dir, run_dir / "catalog", manifest, stats, description, dashboard, workers)


def fetch_hosts(run_dir: Path, n_shards: int) -> dict[str, dict]:
    """Per host: requests, 429/503 answers, waits, retries, over every shard's fetch."""
    parts = []
    for s in range(n_shards):
        meta = pq.read_schema(stage_path(run_dir, "fetch", s)).metadata or {}
        parts.append(json.loads(meta.get(b"zxl.fetch_hosts", b"{}")))
    return polite.merge_host_stats(parts)


def tag_lines(m: dict) -> list[str]:
    """What the tag rules, the hash check and calibrate.within did, from a manifest."""
    lines = []
    rules = m.get("tag_rules") or {}
    if rules:
        did = rules["rules"]
        lines.append(
            f"tag rules: {did['aliased']} tags aliased, {did['replaced']} replaced, {did['excluded']} excluded, "
            f"{did['implied']} implied tags dropped, {did['merged']} duplicates merged, {did.get('moved_to_meta', 0)} "
            f"meta tags moved out of other strings; {rules['rare_tags_dropped']} "
            f"rare tags (on fewer than {rules['min_count']} trainable rows) dropped, {rules['rare_instances_dropped']} "
            "instances"
        )
    if m["config"]["fetch"].get("verify_hash"):
        lines.append(f"{m['config']['fetch']['verify_hash']} checked against source.hash_column: "
                     f"{m.get('hash_mismatches', 0)} mismatches (failed_download, no image stored)")  # fmt: skip
    sy = m.get("score_year") or {}
    if sy.get("rows"):
        within = m["score_edges"].get("within")
        how = f"score tags cut within {'/'.join(within)}" if within else "global score edges"
        rho = "n/a" if sy["rho"] is None else f"{sy['rho']:+.3f}"
        glob = "n/a" if sy["rho_global_edges"] is None else f"{sy['rho_global_edges']:+.3f}"
        lines.append(f"score-year Spearman rho over {sy['rows']} kept rows: {rho} ({how}; {glob} with global edges)")
    return lines


def summary(result: CurateResult) -> str:
    """The end-of-run report: rows per status, images/s per stage, where the catalog is."""
    m = result.manifest
    lines = [
        f"catalog: {result.catalog_dir}  ({m['rows']} rows, {len(m['parts'])} parts, schema v{m['schema_version']})"
    ]
    lines.append("rows per status:")
    for status, n in m["counts"]["status"].items():
        lines.append(f"  {status:<16} {n:>8}")
    lines.append("stages:")
    for stage in STAGES:
        s = result.stage_stats[stage]
        rate = f"{s['images_per_s']:.1f} img/s" if s["images_per_s"] else "-"
        skipped = f", {s['shards_skipped']} shards already done" if s["shards_skipped"] else ""
        lines.append(f"  {stage:<8} {s['rows']:>8} rows in {s['seconds']:>8.2f} s  {rate:>14}{skipped}")
    r = result.stage_stats["reduce"]
    done = ", already done" if r.get("skipped") else ""
    lines.append(f"  {'reduce':<8} {r['rows']:>8} rows in {r['seconds']:>8.2f} s  (dedup, calibrate, weigh{done})")
    r = result.stage_stats["tagrules"]
    done = ", already done" if r.get("skipped") else ""
    lines.append(f"  {'tagrules':<8} {r['rows']:>8} rows in {r['seconds']:>8.2f} s  (aliases, exclusions, "
                 f"implied and rare tags{done})")  # fmt: skip
    scores = m["counts"]["score"]
    lines.append(
        f"{m['ok_rows']} rows to train on; score 1..9: "
        + " ".join(f"{k}:{scores.get(str(k), 0)}" for k in range(1, 10))
        + f"; repeats: {' '.join(f'{k}x{v}' for k, v in sorted(m['counts']['repeats'].items()))}"
    )
    lines.append(f"duplicates: {m['dedup']['duplicates']} ({m['dedup']['pairs_by_evidence']} pairs by evidence)")
    d = m.get("diversity") or {}
    if d.get("clusters"):
        chosen, zero = d["chosen"]["weights"], d["zero"]
        lines.append(
            f"draws over {d['clusters']['k']} clusters of the {m.get('embedding')} embeddings: effective clusters "
            f"{chosen['effective_clusters']:.2f}, mean score {chosen['mean_score']:.2f} at weigh.diversity "
            f"{d['setting']} ({zero['effective_clusters']:.2f}, {zero['mean_score']:.2f} at 0)"
        )
    for host, h in (m.get("fetch_hosts") or {}).items():
        if h.get("throttled") or h.get("retries"):
            lines.append(f"host {host}: {h['requests']} requests, {h['throttled']} answered 429/503, "
                         f"{h['waits']} waits ({h['wait_seconds']:.1f} s), {h['retries']} retries")  # fmt: skip
    lines.extend(tag_lines(m))
    ratings = m["counts"]["rating"]
    lines.append(
        f"ratings: {', '.join(f'{k} {v}' for k, v in ratings.items())}; captions: {m['captioned']}"
        f" (ok rows with score >= {m['config']['caption']['min_score']})"
    )
    if m["tag_problems"]:
        lines.append(
            "metadata problems (nulls with a reason): " + "; ".join(f"{k} x{v}" for k, v in m["tag_problems"].items())
        )
    return "\n".join(lines)
