"""The stage table: every stage of ``zxl curate`` declared once, and what is derived from it.

Each entry names the stage, the stages whose outputs (of the same shard) it reads, and the config
sections it is given. From the table alone come:

- the **order**: entries are listed so that every stage comes after what it reads (a test checks);
- the **tasks**: one Dask task per shard for a ``shard`` stage, waiting on the tasks of the stages it
  reads in the same phase; a ``global`` stage (reduce, tagrules) runs once over every shard, and
  the global stages cut the shard stages into phases: phase 0 before the first, phase n after the n-th;
- the **hashes**: a stage's hash covers its sections (less the ``speed_only`` settings and the ones
  ``later`` stages apply; only ``keys`` when it names some), what ``extra`` adds and the hashes of
  every stage it reads, so a change redoes exactly what it reaches;
- the **reads**: a stage function gets a ``ShardJob`` (or, for the global step, ``StageInputs``) that
  opens only the outputs its entry declares.

"source" is the split's output (``stages/source``), hashed by the URL list's content.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zxl.captioners.config import LAYOUT_KEYS
from zxl.catalog.schema import SCHEMA_VERSION
from zxl.config import config_hash, to_dict
from zxl.files import file_sha256
from zxl.pipeline import caption, fetch, inspection, reduce, score, tag, tagrules
from zxl.pipeline.assemble import assemble_shard
from zxl.pipeline.calibrate import edges_from_catalog
from zxl.pipeline.config import CurateConfig
from zxl.pipeline.executor import Task
from zxl.pipeline.imagepass import run_pass
from zxl.pipeline.stages import ShardJob, StageInputs, run_job
from zxl.scorers.registry import scorer_class
from zxl.scorers.taste import head_hash
from zxl.taggers.config import RULE_KEYS
from zxl.taggers.registry import tagger_class


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable  # shard: run(job, *sections) -> table | (table, metadata); global: see reduce_all
    reads: tuple[str, ...]  # the stages whose outputs it reads
    sections: tuple[str, ...] = ()  # config it is given, in order: "fetch" (a section) or "run.shard_size"
    scope: str = "shard"  # "shard": a task per shard; "global": one step over every shard
    speed_only: frozenset[str] = field(default_factory=frozenset)  # settings that change speed, not output
    later: frozenset[str] = field(default_factory=frozenset)  # settings of its sections a later stage applies
    keys: frozenset[str] = field(default_factory=frozenset)  # if set: the only settings of its sections it uses
    extra: Callable[[CurateConfig], Any] | None = None  # more its hash covers
    images: bool = False  # reads the stored images: ``run`` makes its ImageWork, fed by pipeline/imagepass.py


def _edges_and_head(cfg: CurateConfig):
    """The score edges calibrate.edges_from names and the taste head's content (values, not paths)."""
    edges = edges_from_catalog(cfg.calibrate.edges_from) if cfg.calibrate.edges_from else None
    return [edges, head_hash(cfg.taste.head)] if cfg.taste.head else edges


def _rule_tables(cfg: CurateConfig):
    """The content of the alias and implication tables the rules name (a file edited in place is a change)."""
    tables = (cfg.tag.aliases, cfg.tag.implications)
    return [file_sha256(p) if p and Path(p).is_file() else p or None for p in tables]


def _scorer_version(cfg: CurateConfig):
    """The scorer's version and that of what it stores beside its scores (the technical scorer's pixel
    embedding): how it reads and measures images."""
    cls = scorer_class(cfg.score.scorer)
    return [getattr(cls, "embedding_version", None), cls.version]


def _tagger_versions(cfg: CurateConfig):
    return [tagger_class(name).version for name in cfg.tag.taggers]


STAGES = (
    Stage("fetch", fetch.fetch_shard, ("source",), ("fetch", "run.shard_size", "source.hash_column"),
          speed_only=frozenset({"thread_count", "connect_to", "per_host_concurrency", "per_host_rate"})),
    Stage("inspect", inspection.InspectWork, ("fetch",), ("inspect",), extra=lambda cfg: inspection.VERSION,
          images=True),
    Stage("score", score.ScoreWork, ("fetch", "inspect"), ("score",),
          speed_only=frozenset({"batch_size", "loader_threads", "device"}), extra=_scorer_version, images=True),
    Stage("tag", tag.TagWork, ("source", "fetch", "inspect"), ("tag",),
          speed_only=frozenset({"batch_size", "device"}), later=RULE_KEYS, extra=_tagger_versions, images=True),
    Stage("reduce", reduce.reduce_all, ("score", "inspect", "tag"), ("taste", "calibrate", "dedup", "weigh"),
          scope="global", extra=_edges_and_head),
    Stage("tagrules", tagrules.tagrules_all, ("tag", "reduce"), ("tag",), scope="global", keys=RULE_KEYS,
          extra=_rule_tables),
    Stage("caption", caption.caption_shard, ("fetch", "reduce", "tagrules"), ("caption",),
          speed_only=frozenset({"batch_size", "device"}), later=LAYOUT_KEYS),
    Stage("catalog", assemble_shard, ("source", "fetch", "inspect", "reduce", "tag", "tagrules", "caption"),
          extra=lambda cfg: SCHEMA_VERSION),
)  # fmt: skip
BY_NAME = {s.name: s for s in STAGES}
SHARD_STAGES = tuple(s.name for s in STAGES if s.scope == "shard")
GLOBALS = tuple(s for s in STAGES if s.scope == "global")


def section(cfg: CurateConfig, name: str):
    """A declared section's value: ``cfg.fetch`` for "fetch", ``cfg.run.shard_size`` for "run.shard_size"."""
    value = cfg
    for part in name.split("."):
        value = getattr(value, part)
    return value


def _hashed(stage: Stage, cfg: CurateConfig) -> list:
    out = []
    for name in stage.sections:
        value = section(cfg, name)
        if hasattr(value, "__dataclass_fields__"):
            value = {k: v for k, v in to_dict(value).items() if k not in stage.speed_only | stage.later}
            if stage.keys:
                value = {k: v for k, v in value.items() if k in stage.keys}
        out.append({name: value})
    return out


def stage_hashes(cfg: CurateConfig, source_hash: str) -> dict[str, str]:
    """Stage name → hash, in table order ("source" first)."""
    hashes = {"source": source_hash}
    for stage in STAGES:
        hashes[stage.name] = config_hash(
            {
                "stage": stage.name,
                "cfg": _hashed(stage, cfg),
                "extra": stage.extra(cfg) if stage.extra else None,
                "up": [hashes[r] for r in stage.reads],
            }
        )
    return hashes


def run_shard(run_dir: str, name: str, shard: int, stage_hash: str, *sections) -> dict:
    """What a task runs: stage ``name`` on one shard, skipped when its output has this hash."""
    stage = BY_NAME[name]
    if stage.images:
        return run_images(run_dir, shard, [(name, stage_hash, sections)])["parts"][name]
    return run_job(ShardJob(run_dir, name, shard, stage_hash, stage.reads), stage.run, *sections)


def run_images(run_dir: str, shard: int, parts: list[tuple[str, str, tuple]]) -> dict:
    """What an image task runs: the image stages ``parts`` ((name, hash, sections), in table order) on
    one shard in one pass over its images (pipeline/imagepass.py); ``{"parts": {name: result}}``."""
    jobs = [(ShardJob(run_dir, name, shard, h, BY_NAME[name].reads), BY_NAME[name].run, tuple(sections))
            for name, h, sections in parts]  # fmt: skip
    threads = next((sec[0].loader_threads for name, _, sec in parts if name == "score"), 1)
    return {"parts": run_pass(jobs, threads)}


def run_global(name: str, run_dir: Path, n_shards: int, hashes: dict, cfg: CurateConfig) -> dict:
    """The global step ``name`` over every shard."""
    stage = BY_NAME[name]
    inputs = StageInputs(run_dir, stage.name, stage.reads)
    return stage.run(inputs, n_shards, hashes[stage.name], *(section(cfg, n) for n in stage.sections))


def phase(n: int) -> tuple[Stage, ...]:
    """The shard stages after the n-th global step and before the next (phase 0: before the first)."""
    bounds = [-1, *(STAGES.index(g) for g in GLOBALS), len(STAGES)]
    return tuple(s for s in STAGES[bounds[n] + 1 : bounds[n + 1]] if s.scope == "shard")


def order() -> list[tuple[str, int | str]]:
    """What a run does, in order: ("phase", n) for a phase's shard tasks, ("global", name) for a global step."""
    out: list[tuple[str, int | str]] = [("phase", 0)]
    for n, g in enumerate(GLOBALS, 1):
        out += [("global", g.name), ("phase", n)]
    return out


def tasks(
    n: int, run_dir: Path, n_shards: int, hashes: dict, cfg: CurateConfig, resources: dict[str, dict] | None = None
) -> list[Task]:
    """Phase ``n``'s tasks, shard by shard, each waiting on the tasks of what it reads in this phase."""
    stages = phase(n)
    names = {s.name for s in stages}
    resources = resources or {}
    out = []
    for shard in range(n_shards):
        for group in _groups(stages, resources):
            members = {s.name for s in group}
            deps = list(dict.fromkeys((r, shard) for s in group for r in s.reads if r in names - members))
            first = group[0]
            if first.images:
                parts = [(s.name, hashes[s.name], tuple(section(cfg, name) for name in s.sections)) for s in group]
                out.append(Task(first.name, shard, run_images, (str(run_dir), shard, parts), deps,
                                resources.get(first.name), tuple(s.name for s in group[1:])))  # fmt: skip
            else:
                args = (str(run_dir), first.name, shard, hashes[first.name],
                        *(section(cfg, name) for name in first.sections))  # fmt: skip
                out.append(Task(first.name, shard, run_shard, args, deps, resources.get(first.name)))
    return out


def _groups(stages: tuple[Stage, ...], resources: dict[str, dict]) -> list[list[Stage]]:
    """The phase's stages as tasks: consecutive image stages that ask for the same resources share
    one task (one pass over the shard's images); every other stage is a task of its own."""
    groups: list[list[Stage]] = []
    for s in stages:
        last = groups[-1][-1] if groups else None
        if last is not None and s.images and last.images and resources.get(s.name) == resources.get(last.name):
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups
