"""``zxl curate``: URL list → shards → fetch → inspect → catalog, as Dask tasks per shard.

Stage hashes chain: each stage's hash covers its own config section and the hash of the stage it
reads, so a change to ``fetch.*`` redoes fetch and everything after it, and an unchanged run is
all skips.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from catalog.build import assemble_shard, write_catalog
from catalog.schema import SCHEMA_VERSION
from pipeline import executor, fetch, inspection, sources
from pipeline.executor import Executor, Progress, Task
from pipeline.stages import write_text_atomic
from zxl import __version__
from zxl.config import CurateConfig, config_hash, dump_yaml, to_dict

STAGES = ("fetch", "inspect", "catalog")


@dataclass
class CurateResult:
    run_dir: Path
    catalog_dir: Path
    manifest: dict
    stage_stats: dict
    executor: str
    dashboard: str | None


# Settings that change how fast a stage runs, not what it writes: changing them redoes nothing.
SPEED_ONLY = {"fetch": {"thread_count"}}


def _section(cfg, stage: str) -> dict:
    return {k: v for k, v in to_dict(cfg).items() if k not in SPEED_ONLY.get(stage, ())}


def stage_hashes(cfg: CurateConfig, source_hash: str) -> dict[str, str]:
    h_fetch = config_hash({"stage": "fetch", "cfg": _section(cfg.fetch, "fetch"), "shard_size": cfg.run.shard_size,
                           "up": source_hash})  # fmt: skip
    h_inspect = config_hash({"stage": "inspect", "cfg": _section(cfg.inspect, "inspect"), "up": h_fetch})
    h_catalog = config_hash({"stage": "catalog", "schema": SCHEMA_VERSION, "up": h_inspect})
    return {"source": source_hash, "fetch": h_fetch, "inspect": h_inspect, "catalog": h_catalog}


def plan(run_dir: Path, n_shards: int, hashes: dict, cfg: CurateConfig) -> list[Task]:
    tasks = []
    rd = str(run_dir)
    for s in range(n_shards):
        tasks.append(Task("fetch", s, fetch.fetch_shard, (rd, s, hashes["fetch"], cfg.fetch, cfg.run.shard_size)))
        tasks.append(Task("inspect", s, inspection.inspect_shard, (rd, s, hashes["inspect"], cfg.inspect),
                          [("fetch", s)]))  # fmt: skip
        tasks.append(Task("catalog", s, assemble_shard, (rd, s, hashes["catalog"]), [("inspect", s)]))
    return tasks


def _stage_stats(plan_: list[Task], results: dict) -> dict:
    """Rows, wall seconds (first start to last end of the tasks that ran) and images/s per stage."""
    stats = {}
    for stage in STAGES:
        rs = [results[t.id] for t in plan_ if t.stage == stage]
        ran = [r for r in rs if not r.get("skipped")]
        rows = sum(r["rows"] for r in ran)
        seconds = (max(r["end"] for r in ran) - min(r["start"] for r in ran)) if ran else 0.0
        stats[stage] = {
            "rows": rows,
            "shards_run": len(ran),
            "shards_skipped": len(rs) - len(ran),
            "seconds": round(seconds, 3),
            "images_per_s": round(rows / seconds, 2) if seconds > 0 else None,
        }
    return stats


def curate(cfg: CurateConfig, urls: pa.Table | None = None, log=print) -> CurateResult:
    """Run every stage; ``urls`` overrides reading ``cfg.source.path`` (used by ``--demo``)."""
    executor.validate(cfg.run)
    fetch.validate(cfg.fetch)
    table = urls if urls is not None else sources.read_url_list(cfg.source)
    if urls is not None and cfg.source.url_column not in table.column_names:
        raise ValueError(f"the URL table has no column '{cfg.source.url_column}' (source.url_column)")
    run_dir = Path(cfg.run.runs_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(dump_yaml(cfg), run_dir / "config.yaml")
    t0 = time.time()
    n_shards, source_hash = sources.split(table, cfg.source, run_dir, cfg.run.shard_size)
    split_seconds = time.time() - t0
    hashes = stage_hashes(cfg, source_hash)
    tasks = plan(run_dir, n_shards, hashes, cfg)
    with Executor(cfg.run) as ex:
        log(f"zxl curate: {table.num_rows} URLs in {n_shards} shards, run folder {run_dir}")
        log(f"executing on {ex.description}" + (f"; Dask dashboard: {ex.dashboard}" if ex.dashboard else ""))
        progress = Progress(dict.fromkeys(STAGES, table.num_rows), cfg.run.progress)
        try:
            results = ex.run(tasks, progress)
        finally:
            progress.close()
        description, dashboard = ex.description, ex.dashboard
    stats = {"split": {"rows": table.num_rows, "seconds": round(split_seconds, 3)}, **_stage_stats(tasks, results)}
    t1 = time.time()
    manifest = write_catalog(
        run_dir,
        n_shards,
        {
            "zxl_version": __version__,
            "config": to_dict(cfg),
            "config_hash": config_hash(cfg),
            "stage_hashes": hashes,
            "models": {},
            "score_edges": None,
            "stages": stats,
        },
    )
    stats["write"] = {"seconds": round(time.time() - t1, 3)}
    return CurateResult(run_dir, run_dir / "catalog", manifest, stats, description, dashboard)


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
    return "\n".join(lines)
