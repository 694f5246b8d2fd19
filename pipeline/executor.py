"""Run a plan of shard tasks on Dask distributed, or in-process with ``--scheduler sync``.

A plan is a list of ``Task``s in dependency order; a task names the tasks it waits for. On Dask
every task is submitted at once (dependencies passed as futures, so the scheduler orders them and
shard 7's inspect starts while shard 9 still downloads); with ``sync`` they run in plan order in
this process, which is what a debugger wants. Both report each finished task to the same progress
display, and both retry a failed task ``run.shard_retries`` times: the only broad ``except`` in
the pipeline, at the shard boundary.

A task may ask for Dask resources (``Task.resources``: the model stages ask for
``run.model_resources``); it then runs only on workers that offer them — ``run.worker_resources``
on a LocalCluster, ``dask worker --resources GPU=1`` on a cluster of your own — and a run whose
cluster has no such worker stops before submitting anything. A Dask task's result names the
worker that ran it.

A LocalCluster's workers fork from a server process (multiprocessing's forkserver, where the
platform has one) that imported the run's libraries once: torch, img2dataset, the stage code and
the members' models' libraries (``preload``). Spawned, each worker imported them itself, 8–20 s
of CPU a worker (open_clip alone ~12 s), and a worker the nanny restarts after a crash paid it
again; forked, a worker starts in well under a second and shares those pages with the others.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from zxl.config import ConfigError
from zxl.pipeline.config import RunConfig


@dataclass
class Task:
    stage: str
    shard: int
    fn: Callable
    args: tuple
    deps: list[tuple[str, int]] = field(default_factory=list)
    resources: dict[str, float] | None = None  # Dask resources, e.g. {"GPU": 1}; None: any worker
    # The later stages this task runs too (image stages sharing one pass over the shard): its result is
    # then ``{"parts": {stage: result}}``, and a task that waits for any of them waits for this one.
    parts: tuple[str, ...] = ()

    @property
    def id(self) -> tuple[str, int]:
        return (self.stage, self.shard)

    @property
    def ids(self) -> list[tuple[str, int]]:
        return [(s, self.shard) for s in (self.stage, *self.parts)]

    def split(self, result: dict) -> dict[tuple[str, int], dict]:
        """Stage id → its result (a task of several stages reports each; the worker goes to each)."""
        if "parts" not in result:
            return {self.id: result}
        extra = {k: v for k, v in result.items() if k != "parts"}
        return {(s, self.shard): {**r, **extra} for s, r in result["parts"].items()}


class ShardFailedError(RuntimeError):
    pass


def _call(fn, args, *deps):
    """What a Dask task runs; ``deps`` only order it after the tasks it waits for. A stage's result
    (a dict) comes back with the address of the worker that ran it."""
    from distributed import get_worker

    result = fn(*args)
    return {**result, "worker": get_worker().address} if isinstance(result, dict) else result


def _read_probe(path: str) -> str:
    """On a worker: the probe file's text, or why it cannot be read."""
    try:
        return Path(path).read_text()
    except OSError as e:
        return f"{type(e).__name__}: {e}"


class Progress:
    """One bar per stage, counting rows (so the rate is images/s). Each bar keeps its own stage's
    clock — from the start of that stage's first task to the end of its last — and closes as soon as
    its stage is done, so the figures it leaves are that stage's time and rate, not the run's."""

    def __init__(self, stage_rows: dict[str, int], enabled: bool, file=None):
        self.bars = {
            stage: tqdm(
                total=n,
                desc=f"{stage:>8}",
                unit="img",
                position=i,
                leave=True,
                disable=not enabled,
                dynamic_ncols=True,
                file=file,
            )  # fmt: skip
            for i, (stage, n) in enumerate(stage_rows.items())
        }
        self.skipped = dict.fromkeys(stage_rows, 0)
        self.first: dict[str, float] = {}
        self.closed: set[str] = set()

    def done(self, task: Task, result: dict) -> None:
        for (stage, _), part in task.split(result).items():
            self._done(stage, part)

    def _done(self, stage: str, result: dict) -> None:
        bar = self.bars[stage]
        start = result.get("start")
        if start is not None and (stage not in self.first or start < self.first[stage]):
            self.first[stage] = start
            bar.start_t = min(start, time.time())  # the stage's own clock (a worker's clock may run ahead)
        if result.get("skipped"):
            self.skipped[stage] += 1
            bar.set_postfix_str(f"{self.skipped[stage]} shards already done", refresh=False)
        bar.update(result.get("rows", 0))
        if bar.total and bar.n >= bar.total and stage not in self.closed:
            self.closed.add(stage)
            bar.close()  # the stage is done: its bar stops here, with its own elapsed time and rate

    def close(self) -> None:
        for stage, bar in self.bars.items():
            if stage not in self.closed:
                self.closed.add(stage)
                bar.close()


SCHEDULER_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://")


def n_workers(cfg: RunConfig) -> int:
    """LocalCluster worker processes: run.workers (0: one per core), at least one per
    run.worker_resources entry."""
    return max(cfg.workers or os.cpu_count() or 1, len(cfg.worker_resources))


def offers(worker: dict[str, float], wanted: dict[str, float]) -> bool:
    """Whether a worker offering ``worker`` can run a task that asks for ``wanted``."""
    return all(worker.get(name, 0) >= amount for name, amount in wanted.items())


def _check_resources(resources: dict[str, float], key: str) -> None:
    for name, amount in resources.items():
        if not name or any(c.isspace() or c in "=,:" for c in name):
            raise ConfigError(f"{key}: '{name}' is not a Dask resource name (a word such as GPU)")
        if not (amount > 0 and math.isfinite(amount)):
            raise ConfigError(f"{key}.{name} must be a positive number, got {amount}")


def validate(cfg: RunConfig) -> None:
    """Configuration errors before any work starts, named by key."""
    if cfg.scheduler not in ("local", "sync") and not cfg.scheduler.startswith(SCHEDULER_SCHEMES):
        raise ConfigError(
            f"run.scheduler must be local, sync or an address like tcp://host:8786, got '{cfg.scheduler}'"
        )
    if cfg.workers < 0 or cfg.threads_per_worker < 1 or cfg.shard_retries < 0:
        raise ConfigError("run.workers must be >= 0, run.threads_per_worker >= 1 and run.shard_retries >= 0")
    if "://" in cfg.runs_dir:
        raise ConfigError(
            f"run.runs_dir must be a folder, got the URL '{cfg.runs_dir}': stage files are written under a "
            "temporary name and renamed, which object stores cannot do atomically. On several machines use a "
            "folder every worker sees at the same path (an NFS or other shared mount); see docs/scale-out.md"
        )
    _check_resources(cfg.model_resources, "run.model_resources")
    for i, res in enumerate(cfg.worker_resources):
        _check_resources(res, f"run.worker_resources[{i}]")
    if cfg.worker_resources and cfg.scheduler.startswith(SCHEDULER_SCHEMES):
        raise ConfigError(
            "run.worker_resources sets up LocalCluster workers, but run.scheduler is an address: start that "
            "cluster's workers with `dask worker ADDRESS --resources GPU=1` instead (docs/scale-out.md)"
        )
    if cfg.scheduler == "local" and cfg.workers and len(cfg.worker_resources) > cfg.workers:
        raise ConfigError(
            f"run.worker_resources lists {len(cfg.worker_resources)} workers but run.workers is {cfg.workers}"
        )
    if cfg.scheduler == "local" and cfg.model_resources:
        if not any(offers(w, cfg.model_resources) for w in cfg.worker_resources):
            raise ConfigError(
                f"run.model_resources asks for {cfg.model_resources} but no LocalCluster worker offers that, so "
                f"the model stages would wait forever: set run.worker_resources (e.g. [{cfg.model_resources}]) "
                "or clear run.model_resources"
            )


@contextlib.contextmanager
def forkserver(preload: list[str]):
    """Within it, Dask starts workers with the forkserver, started here importing ``preload``.
    Where the platform has none (Windows) it changes nothing: workers are spawned as before.

    The server starts with the environment a nanny gives a spawned worker (``distributed.nanny.
    pre-spawn-environ``: one OpenMP/MKL thread, the shared hash seed), since the libraries read it
    when they are imported, which is in the server: a worker forked later inherits their state.
    It is one per process and keeps the list it started with: a later LocalCluster in the same
    process (the tests run many) forks from it and imports what it lacks itself."""
    import multiprocessing
    import multiprocessing.forkserver

    import dask.config

    if "forkserver" not in multiprocessing.get_all_start_methods():
        yield
        return
    from distributed.utils import get_mp_context

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        ctx = get_mp_context()  # dask's own preload first (distributed and its packages), then ours
        ctx.set_forkserver_preload(list(dict.fromkeys(["distributed", "numpy", "pandas", "pyarrow", *preload])))
        env = {k: str(v) for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ") or {}).items()}
        if env.get("PYTHONHASHSEED") in (None, "0"):
            env["PYTHONHASHSEED"] = "6640"  # what a nanny gives its workers, so that they hash alike
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        yield


class Executor:
    """``with Executor(run_cfg) as ex: results = ex.run(plan, progress)``."""

    def __init__(self, cfg: RunConfig, preload: list[str] | tuple[str, ...] = ()):
        self.cfg = cfg
        self.preload = list(preload)
        self.client = None
        self.cluster = None
        self.dashboard = None
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> Executor:
        scheduler = self.cfg.scheduler
        if scheduler == "sync":
            return self
        from dask.distributed import Client

        if scheduler == "local":
            self._exit.enter_context(forkserver(self.preload))
            self.cluster = self._local_cluster()
            self.client = Client(self.cluster)
            self.client.wait_for_workers(len(self.cluster.worker_spec), timeout=120)
        elif scheduler.startswith(SCHEDULER_SCHEMES):
            self.client = Client(scheduler, timeout="30s")
        else:
            raise ConfigError(
                f"run.scheduler must be local, sync or an address like tcp://host:8786, got '{scheduler}'"
            )
        with contextlib.suppress(Exception):
            self.dashboard = self.client.dashboard_link if self.cfg.dashboard_address or self.cluster is None else None
        return self

    def _local_cluster(self):
        """A LocalCluster of ``n_workers`` processes; worker i offers ``run.worker_resources[i]``."""
        import logging

        from dask.distributed import LocalCluster
        from distributed.worker_memory import parse_memory_limit

        n = n_workers(self.cfg)
        cluster = LocalCluster(
            n_workers=0,
            threads_per_worker=self.cfg.threads_per_worker,
            processes=True,
            dashboard_address=self.cfg.dashboard_address or None,  # pyright: ignore[reportArgumentType] - None (no dashboard) is accepted, the annotation says str
            silence_logs=40,
            memory_limit=parse_memory_limit("auto", 1, n, logger=logging.getLogger(__name__)),
        )
        spec = cluster.new_spec
        assert spec is not None  # a LocalCluster always has its worker spec
        for i in range(n):
            res = self.cfg.worker_resources[i] if i < len(self.cfg.worker_resources) else {}
            cluster.worker_spec[i] = {**spec, "options": {**spec["options"], "resources": dict(res)}} if res else spec
        cluster.scale(n)  # starts the workers just specified
        return cluster

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self._exit.close()

    def workers(self) -> dict[str, dict[str, float]]:
        """Worker address → the resources it offers ({} on sync)."""
        if self.client is None:
            return {}
        info = self.client.scheduler_info().get("workers", {})
        return {addr: dict(w.get("resources") or {}) for addr, w in info.items()}

    @property
    def description(self) -> str:
        if self.client is None:
            return "in-process (sync)"
        workers = self.workers()
        kind = "LocalCluster" if self.cluster is not None else f"cluster at {self.cfg.scheduler}"
        offered = [", ".join(f"{k}={v:g}" for k, v in r.items()) for r in workers.values() if r]
        extra = f" ({len(offered)} offering {'; '.join(sorted(set(offered)))})" if offered else ""
        return f"{kind} with {len(workers)} workers{extra}"

    def check_shared(self, run_dir: Path) -> None:
        """Every worker must see the run folder at the same path: write a probe here, read it there."""
        if self.client is None:
            return
        token = uuid.uuid4().hex
        probe = Path(run_dir) / f".zxl-probe-{token[:8]}"
        probe.write_text(token)
        try:
            seen: dict[str, str] = self.client.run(_read_probe, str(probe))  # pyright: ignore[reportAssignmentType] - typed sync-or-coroutine; a sync Client returns the dict
        finally:
            probe.unlink(missing_ok=True)
        blind = {addr: text for addr, text in seen.items() if text != token}
        if blind:
            addr, why = next(iter(blind.items()))
            raise ConfigError(
                f"run.runs_dir: {len(blind)} of {len(seen)} workers cannot see the run folder {run_dir} (worker "
                f"{addr}: {why}). Every worker and this machine must see run.runs_dir at the same path, e.g. an "
                "NFS or other shared mount; see docs/scale-out.md"
            )

    def run(self, plan: list[Task], progress: Progress) -> dict[tuple[str, int], dict]:
        if self.client is None:
            return self._run_sync(plan, progress)
        return self._run_dask(plan, progress)

    def _run_sync(self, plan, progress):
        results = {}
        for task in plan:
            for attempt in range(self.cfg.shard_retries + 1):
                try:
                    result = task.fn(*task.args)
                    break
                except Exception as e:  # noqa: BLE001 - the shard boundary: retry, then stop the run
                    if attempt == self.cfg.shard_retries:
                        raise ShardFailedError(_failure(task, attempt + 1, e)) from e
                    traceback.print_exc()
            results.update(task.split(result))  # pyright: ignore[reportPossiblyUnbound] - the loop breaks with a result or raises
            progress.done(task, result)  # pyright: ignore[reportPossiblyUnbound]
        return results

    def _run_dask(self, plan, progress):
        from dask.distributed import as_completed

        assert self.client is not None  # run() sends a run here only when it has a client
        self._check_offered(plan)
        futures, by_future = {}, {}
        stamp = uuid.uuid4().hex[:8]  # keys unique per run, so two runs can share a cluster
        for task in plan:
            deps = [futures[d] for d in task.deps]
            fut = self.client.submit(
                _call, task.fn, task.args, *deps, key=f"{task.stage}-{task.shard:05d}-{stamp}",
                retries=self.cfg.shard_retries, pure=False, resources=task.resources or None,
            )  # fmt: skip
            for id_ in task.ids:
                futures[id_] = fut
            by_future[fut.key] = task
        results = {}
        try:
            for fut in as_completed(list({f.key: f for f in futures.values()}.values())):
                task = by_future[fut.key]
                if fut.status == "error":
                    exc = fut.exception()
                    raise ShardFailedError(_failure(task, self.cfg.shard_retries + 1, exc)) from exc
                result = fut.result()
                results.update(task.split(result))
                progress.done(task, result)
        except BaseException:
            self.client.cancel(list(futures.values()))
            raise
        return results

    def _check_offered(self, plan: list[Task]) -> None:
        """A task whose resources no worker offers would wait forever: stop before submitting."""
        workers = self.workers()
        for wanted in {tuple(sorted(t.resources.items())): t.resources for t in plan if t.resources}.values():
            if not any(offers(w, wanted) for w in workers.values()):
                stages = sorted({s for t in plan if t.resources == wanted for s in (t.stage, *t.parts)})
                flags = " ".join(f"{k}={v:g}" for k, v in wanted.items())
                how = (
                    f"run.worker_resources: [{wanted}]"
                    if self.cluster is not None
                    else f'`dask worker {self.cfg.scheduler} --resources "{flags}"`'
                )
                raise ConfigError(
                    f"run.model_resources: the {'/'.join(stages)} tasks ask for Dask resources {wanted} but none of "
                    f"the {len(workers)} workers offers them: start one ({how}), or clear run.model_resources"
                )


def _failure(task: Task, tries: int, exc: BaseException) -> str:
    return (
        f"stage {'+'.join((task.stage, *task.parts))} failed on shard {task.shard:05d} after {tries} tries: "
        f"{type(exc).__name__}: {exc}. "
        "Finished shards are kept: fix the cause and rerun the same command to resume."
    )
