"""Scale-out on Dask: the model stages run on the workers that offer run.model_resources, the other
stages anywhere, and a cluster of several workers writes the same catalog as ``--scheduler sync``."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_config
from tests.test_curate import assert_same_catalog
from zxl.config import ConfigError, load_config
from zxl.pipeline.config import CurateConfig
from zxl.pipeline.curate import curate, model_stages
from zxl.pipeline.executor import validate

# Their clusters' workers fork from one preloaded server (conftest.forkserver).
pytestmark = pytest.mark.usefixtures("forkserver")

DASK = str(Path(sys.executable).with_name("dask"))


@pytest.fixture(scope="module")
def models(tiny_clip, wd_model):
    """Two model stages: score with clip-mlp (tiny open_clip), tag with the tiny WD tagger."""
    d = tiny_clip
    return [
        "score.scorer=clip-mlp", f"score.clip_model={d / 'zxl-tiny-clip.json'}", f"score.clip_weights={d / 'clip.pt'}",
        f"score.head_weights={d / 'head.safetensors'}", "score.device=cpu", "tag.taggers=[metadata, wd]",
        f"tag.wd_model={wd_model[0]}", "tag.device=cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def sync_models(urls_file, models, tmp_path_factory):
    """The reference: the same config in-process. Torch gets one thread, as on a Dask worker
    (OMP_NUM_THREADS=1 there), so the CLIP embeddings are bit-identical."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return curate(make_config(tmp_path_factory.mktemp("runs"), "sync", urls_file, *models), log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)


def test_model_stages_follow_the_members():
    assert model_stages(CurateConfig()) == []
    cfg = load_config(
        CurateConfig, overrides=["score.scorer=clip-mlp", "tag.taggers=[metadata, wd]", "caption.captioner=hf"]
    )
    assert model_stages(cfg) == ["score", "tag", "caption"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["run.model_resources={GPU: 1}"], "run.model_resources"),  # no LocalCluster worker offers it
        (["run.model_resources={GPU: 2}", "run.worker_resources=[{GPU: 1}]"], "run.model_resources"),
        (["run.model_resources={GPU: 0}", "run.worker_resources=[{GPU: 1}]"], "run.model_resources.GPU"),
        (["run.model_resources={GPU: many}"], "run.model_resources.GPU"),
        (["run.worker_resources=[{'GPU 0': 1}]"], r"run.worker_resources\[0\]"),
        (["run.workers=1", "run.worker_resources=[{GPU: 1}, {GPU: 1}]"], "run.worker_resources"),
        (["run.scheduler=tcp://10.0.0.5:8786", "run.worker_resources=[{GPU: 1}]"], "run.worker_resources"),
        (["run.runs_dir=s3://bucket/runs"], "run.runs_dir"),
    ],
)
def test_resource_and_storage_mistakes_are_config_errors(overrides, key):
    with pytest.raises(ConfigError, match=key):
        validate(load_config(CurateConfig, overrides=overrides).run)


def test_local_cluster_with_a_gpu_worker_gives_the_sync_catalog(sync_models, urls_file, models, tmp_path):
    """Two worker processes, worker 0 offering GPU=1: score and tag run there and only there, fetch
    on both, and the catalog is the in-process one, value for value."""
    cfg = make_config(
        tmp_path, "gpu", urls_file, *models, "run.scheduler=local", "run.workers=2",
        "run.worker_resources=[{GPU: 1}]", "run.model_resources={GPU: 1}",
    )  # fmt: skip
    res = curate(cfg, log=lambda *_: None)
    assert res.executor == "LocalCluster with 2 workers (1 offering GPU=1)"
    gpu = [addr for addr, offered in res.workers.items() if offered.get("GPU")]
    assert len(gpu) == 1 and len(res.workers) == 2
    stages = res.stage_stats
    assert stages["score"]["workers"] == gpu and stages["tag"]["workers"] == gpu
    assert stages["score"]["shards_run"] == stages["tag"]["shards_run"] == 4
    assert set(stages["fetch"]["workers"]) - set(gpu), stages["fetch"]  # CPU stages use the other worker too
    assert res.manifest["stages"]["score"]["workers"] == gpu
    assert_same_catalog(res.catalog_dir, sync_models.catalog_dir)


def test_a_dask_worker_with_resources_joins_a_cluster_by_address(sync_models, urls_file, models, tmp_path):
    """The docs/scale-out.md set-up: a scheduler, a plain worker and `dask worker ADDR --resources GPU=1`."""
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        addr = cluster.scheduler_address
        cfg = make_config(tmp_path, "remote", urls_file, *models, f"run.scheduler={addr}", "run.model_resources.GPU=1")
        with pytest.raises(ConfigError, match=r"run.model_resources: the score/tag tasks .* --resources \"GPU=1\""):
            curate(cfg, log=lambda *_: None)  # no worker offers a GPU yet: stop, never hang
        cmd = [DASK, "worker", addr, "--nthreads", "1", "--resources", "GPU=1", "--name", "gpu", "--no-dashboard"]
        worker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Client(addr) as client:
                client.wait_for_workers(2, timeout=60)
            res = curate(cfg, log=lambda *_: None)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    gpu = [a for a, offered in res.workers.items() if offered == {"GPU": 1.0}]
    assert len(gpu) == 1 and res.executor == f"cluster at {addr} with 2 workers (1 offering GPU=1)"
    assert res.stage_stats["score"]["workers"] == gpu == res.stage_stats["tag"]["workers"]
    assert_same_catalog(res.catalog_dir, sync_models.catalog_dir)


def _can_hide_folders(tmp_path) -> bool:
    """Whether this machine lets a process mount over a folder in its own mount namespace (root)."""
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        cmd = ["unshare", "-m", "sh", "-c", f"mount -t tmpfs none {probe}"]
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_a_worker_that_cannot_see_the_run_folder_stops_the_run(urls_file, tmp_path):
    """A worker on other storage (here: its own empty mount over the runs folder) is named, before any task."""
    from dask.distributed import Client, LocalCluster

    if not _can_hide_folders(tmp_path):
        pytest.skip("needs unshare -m and mount (root) to give one worker its own view of the runs folder")
    runs = tmp_path / "runs"
    runs.mkdir()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        addr = cluster.scheduler_address
        blind = f"mount -t tmpfs none {runs} && exec {DASK} worker {addr} --nthreads 1 --name blind --no-dashboard"
        worker = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", blind], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            with Client(addr) as client:
                client.wait_for_workers(2, timeout=60)
            cfg = make_config(runs, "blind", urls_file, f"run.scheduler={addr}")
            with pytest.raises(ConfigError, match=r"run.runs_dir: 1 of 2 workers cannot see the run folder"):
                curate(cfg, log=lambda *_: None)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert not (runs / "blind" / "stages" / "fetch").exists()  # stopped before the first task


def test_the_dashboard_listens_on_this_machine_only_unless_asked():
    from zxl.pipeline.config import RunConfig
    from zxl.pipeline.executor import Executor

    with Executor(RunConfig(workers=1)) as ex:
        bound = {s.getsockname()[0] for s in ex.cluster.scheduler.http_server._sockets.values()}
        assert bound == {"127.0.0.1"}, bound
        assert ex.dashboard.startswith("http://127.0.0.1:")  # what the log prints is where it listens


def test_each_progress_bar_closes_with_its_own_stages_time_and_rate():
    """A stage's bar stops when its last shard is done, timed from its first task's start: a run of
    fetch (2 s ago, finished) and score (still going) leaves fetch at ~2 s, 100 img/s, score open."""
    import io
    import time

    from zxl.pipeline.executor import Progress, Task

    out = io.StringIO()
    progress = Progress({"fetch": 200, "score": 200}, enabled=True, file=out)
    now = time.time()
    progress.done(Task("fetch", 0, print, ()), {"rows": 100, "start": now - 2.0, "end": now - 1.0})
    progress.done(Task("score", 0, print, ()), {"rows": 100, "start": now - 1.0, "end": now})
    assert "fetch" not in progress.closed
    progress.done(Task("fetch", 1, print, ()), {"rows": 100, "start": now - 1.5, "end": now})
    assert progress.closed == {"fetch"} and not progress.bars["score"].disable
    fetch = progress.bars["fetch"]
    assert fetch.disable and abs(fetch.last_print_t - fetch.start_t - 2.0) < 0.5  # its own 2 s, not the run's
    time.sleep(0.3)
    progress.done(Task("score", 1, print, ()), {"rows": 100, "skipped": True})
    progress.close()
    text = out.getvalue()
    assert "200/200" in text and "img/s" in text


def test_local_cluster_workers_start_with_the_runs_libraries_imported(tmp_path):
    """``Executor(preload=…)``: the LocalCluster's workers fork from a server that imported those
    modules, so a worker has them before its first task. In a fresh process, since the forkserver
    of this one is already running with the tests' list; the test process has 2+ threads for torch."""
    script = tmp_path / "check.py"
    script.write_text(
        "import sys\n"
        "from zxl.pipeline.config import RunConfig\n"
        "from zxl.pipeline.executor import Executor\n"
        "MODULES = ('wave', 'torch', 'img2dataset')\n"
        "def look():\n"
        "    import torch\n"
        "    return [m in sys.modules for m in MODULES] + [torch.get_num_threads()]\n"
        "if __name__ == '__main__':\n"
        "    with Executor(RunConfig(workers=2, dashboard_address=''), preload=list(MODULES[:2])) as ex:\n"
        "        seen = ex.client.run(look)\n"
        "    print(sorted(map(tuple, seen.values())))\n"
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}  # xdist's
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # and torch was imported under the worker's environment: one thread (dask's pre-spawn-environ)
    assert proc.stdout.strip() == "[(True, True, False, 1), (True, True, False, 1)]"
