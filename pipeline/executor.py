"""Run a plan of shard tasks on Dask distributed, or in-process with ``--scheduler sync``.

A plan is a list of ``Task``s in dependency order; a task names the tasks it waits for. On Dask
every task is submitted at once (dependencies passed as futures, so the scheduler orders them and
shard 7's inspect starts while shard 9 still downloads); with ``sync`` they run in plan order in
this process, which is what a debugger wants. Both report each finished task to the same progress
display, and both retry a failed task ``run.shard_retries`` times: the only broad ``except`` in
the pipeline, at the shard boundary.
"""

from __future__ import annotations

import contextlib
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from zxl.config import RunConfig


@dataclass
class Task:
    stage: str
    shard: int
    fn: Callable
    args: tuple
    deps: list[tuple[str, int]] = field(default_factory=list)

    @property
    def id(self) -> tuple[str, int]:
        return (self.stage, self.shard)


class ShardFailedError(RuntimeError):
    pass


def _call(fn, args, *deps):
    """What a Dask task runs; ``deps`` only order it after the tasks it waits for."""
    return fn(*args)


class Progress:
    """One bar per stage, counting rows (so the rate is images/s)."""

    def __init__(self, stage_rows: dict[str, int], enabled: bool):
        self.bars = {
            stage: tqdm(
                total=n, desc=f"{stage:>8}", unit="img", position=i, leave=True, disable=not enabled, dynamic_ncols=True
            )  # fmt: skip
            for i, (stage, n) in enumerate(stage_rows.items())
        }
        self.skipped = dict.fromkeys(stage_rows, 0)

    def done(self, task: Task, result: dict) -> None:
        bar = self.bars[task.stage]
        if result.get("skipped"):
            self.skipped[task.stage] += 1
            bar.set_postfix_str(f"{self.skipped[task.stage]} shards already done", refresh=False)
        bar.update(result.get("rows", 0))

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


SCHEDULER_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://")


def validate(cfg: RunConfig) -> None:
    """Configuration errors before any work starts, named by key."""
    from zxl.config import ConfigError

    if cfg.scheduler not in ("local", "sync") and not cfg.scheduler.startswith(SCHEDULER_SCHEMES):
        raise ConfigError(
            f"run.scheduler must be local, sync or an address like tcp://host:8786, got '{cfg.scheduler}'"
        )
    if cfg.workers < 0 or cfg.threads_per_worker < 1 or cfg.shard_retries < 0:
        raise ConfigError("run.workers must be >= 0, run.threads_per_worker >= 1 and run.shard_retries >= 0")


class Executor:
    """``with Executor(run_cfg) as ex: results = ex.run(plan, progress)``."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.client = None
        self.cluster = None
        self.dashboard = None

    def __enter__(self) -> Executor:
        scheduler = self.cfg.scheduler
        if scheduler == "sync":
            return self
        from dask.distributed import Client, LocalCluster

        if scheduler == "local":
            import os

            workers = self.cfg.workers or os.cpu_count() or 1
            self.cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=self.cfg.threads_per_worker,
                processes=True,
                dashboard_address=self.cfg.dashboard_address or None,
                silence_logs=40,
            )
            self.client = Client(self.cluster)
        elif scheduler.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
            self.client = Client(scheduler, timeout="30s")
        else:
            from zxl.config import ConfigError

            raise ConfigError(
                f"run.scheduler must be local, sync or an address like tcp://host:8786, got '{scheduler}'"
            )
        with contextlib.suppress(Exception):
            self.dashboard = self.client.dashboard_link if self.cfg.dashboard_address or self.cluster is None else None
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    @property
    def description(self) -> str:
        if self.client is None:
            return "in-process (sync)"
        n = len(self.client.scheduler_info().get("workers", {}))
        kind = "LocalCluster" if self.cluster is not None else f"cluster at {self.cfg.scheduler}"
        return f"{kind} with {n} workers"

    def run(self, plan: list[Task], progress: Progress) -> dict[tuple[str, int], dict]:
        if self.client is None:
            return self._run_sync(plan, progress)
        return self._run_dask(plan, progress)

    def _run_sync(self, plan, progress):
        results = {}
        for task in plan:
            for attempt in range(self.cfg.shard_retries + 1):
                try:
                    results[task.id] = task.fn(*task.args)
                    break
                except Exception as e:  # noqa: BLE001 - the shard boundary: retry, then stop the run
                    if attempt == self.cfg.shard_retries:
                        raise ShardFailedError(_failure(task, attempt + 1, e)) from e
                    traceback.print_exc()
            progress.done(task, results[task.id])
        return results

    def _run_dask(self, plan, progress):
        from dask.distributed import as_completed

        futures, by_future = {}, {}
        stamp = uuid.uuid4().hex[:8]  # keys unique per run, so two runs can share a cluster
        for task in plan:
            deps = [futures[d] for d in task.deps]
            fut = self.client.submit(
                _call, task.fn, task.args, *deps,
                key=f"{task.stage}-{task.shard:05d}-{stamp}", retries=self.cfg.shard_retries, pure=False,
            )  # fmt: skip
            futures[task.id] = fut
            by_future[fut.key] = task
        results = {}
        try:
            for fut in as_completed(list(futures.values())):
                task = by_future[fut.key]
                if fut.status == "error":
                    exc = fut.exception()
                    raise ShardFailedError(_failure(task, self.cfg.shard_retries + 1, exc)) from exc
                results[task.id] = fut.result()
                progress.done(task, results[task.id])
        except BaseException:
            self.client.cancel(list(futures.values()))
            raise
        return results


def _failure(task: Task, tries: int, exc: BaseException) -> str:
    return (
        f"stage {task.stage} failed on shard {task.shard:05d} after {tries} tries: {type(exc).__name__}: {exc}. "
        "Finished shards are kept: fix the cause and rerun the same command to resume."
    )
