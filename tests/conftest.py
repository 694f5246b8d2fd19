"""Shared fixtures: a small demo corpus (every bad-row kind twice), served on 127.0.0.1."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs a worker per core: one thread each, or they
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # spin against each other (a test 10x slower)
        os.environ.setdefault(var, "1")
if "ZXL_CACHE" not in os.environ:  # the model-hash cache of the tests is theirs, not the user's
    import tempfile

    os.environ["ZXL_CACHE"] = tempfile.mkdtemp(prefix="zxl-test-cache-")

import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from zxl.config import load_config  # noqa: E402
from zxl.demo_corpus import build_corpus  # noqa: E402
from zxl.demo_server import DemoServer  # noqa: E402
from zxl.pipeline.config import CurateConfig  # noqa: E402
from zxl.scorers.config import ScoreConfig  # noqa: E402
from zxl.testing import TINY_CLIP, build_tiny_llava, build_tiny_sdxl, build_wd_model  # noqa: E402

# Small enough to run in seconds; bad_fraction 0.1 of 140 rows gives each of the 7 kinds twice.
DEMO_SIZE, DEMO_SEED, DEMO_BAD = 140, 7, 0.1
FETCH_TIMEOUT, SLOW_SECONDS = 3.0, 6.0  # generous: a loaded CI machine must not time out good rows


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("demo"), size=DEMO_SIZE, seed=DEMO_SEED, bad_fraction=DEMO_BAD)


@pytest.fixture(scope="session")
def truth(corpus):
    t = pq.read_table(corpus / "truth.parquet").to_pandas()
    t["key"] = t["id"].astype(str)
    return t


@pytest.fixture(scope="session")
def server(corpus):
    with DemoServer(corpus, port=0, slow_seconds=SLOW_SECONDS) as srv:
        yield srv


@pytest.fixture(scope="session")
def urls_file(server, tmp_path_factory):
    return server.write_urls(tmp_path_factory.mktemp("urls") / "urls.parquet")


# The files that take longest go to the workers first (``--dist loadfile`` hands out whole files in
# this order), so that no worker is left with a long file at the end while the other idles.
SLOW_FILES = ("test_trainer_train.py", "test_curate.py", "test_executor.py", "test_polite.py", "test_bench_gpu.py",
              "test_trainer_evaluate.py", "test_browse.py", "test_trainer_autoencoder.py", "test_hostile_lists.py",
              "test_faults.py", "test_sampler_pipeline.py", "test_sampler_single_file.py",
              "test_sampler_chunks.py")  # fmt: skip


def pytest_collection_modifyitems(config, items):
    first = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))


# A URL list with Danbooru's md5 column (the demo's) is checked, as configs/curate/demo.yaml does:
# its md5_mismatch posts fail.
VERIFY_MD5 = ("fetch.verify_hash=md5", "source.hash_column=md5")


def make_config(runs_dir, name, urls_file, *overrides) -> CurateConfig:
    """The test config for the demo corpus: short timeouts, 4 shards, no progress bars."""
    return load_config(
        CurateConfig,
        overrides=[
            f"run.runs_dir={runs_dir}",
            f"run.name={name}",
            "run.shard_size=40",
            "run.scheduler=sync",
            "run.progress=false",
            "run.dashboard_address=",
            f"source.path={urls_file}",
            "source.url_column=file_url",
            "source.id_column=id",
            f"fetch.timeout={FETCH_TIMEOUT}",
            "fetch.allowed_hosts=[127.0.0.1]",
            "fetch.thread_count=16",
            *(VERIFY_MD5 if "md5" in pq.read_schema(urls_file).names else []),
            *overrides,
        ],
    )


def rule_overrides(corpus) -> list[str]:
    """configs/curate/demo.yaml's tag rules, with the corpus's own alias and implication tables."""
    return [f"tag.aliases={corpus / 'tag_aliases.csv'}", f"tag.implications={corpus / 'tag_implications.parquet'}",
            "tag.drop_implied=true", "tag.exclude=['*_request', 'commentary*', 'translated', 'bad_*', 'tagme']",
            "tag.min_count=2"]  # fmt: skip


@pytest.fixture(scope="session")
def sync_run(urls_file, tmp_path_factory):
    """One uninterrupted in-process run that several tests read (no tag rules: test_curate's
    rules test reruns a copy with them)."""
    from zxl.pipeline.curate import curate

    cfg = make_config(tmp_path_factory.mktemp("runs"), "sync", urls_file)
    return cfg, curate(cfg, log=lambda *_: None)


@pytest.fixture(scope="session")
def forkserver():
    """Every Dask worker these tests start forks from one server per test process that imported the
    stages' libraries and the models' the tests use, as a LocalCluster of ``zxl curate`` does for
    its own run (pipeline/executor.py): started here, before any cluster, so that its list is this one."""
    from zxl.pipeline.curate import WORKER_IMPORTS
    from zxl.pipeline.executor import forkserver as use_forkserver

    with use_forkserver([*WORKER_IMPORTS, "open_clip", "onnxruntime"]):
        yield


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny open_clip ViT (random weights, saved like a real checkpoint) and a LAION-layout head."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    from zxl.scorers.heads import laion_state_dict

    d = tmp_path_factory.mktemp("clip")
    (d / "zxl-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(d / "zxl-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("zxl-tiny-clip", pretrained=None)
    torch.save(model.state_dict(), d / "clip.pt")
    head = laion_state_dict(dim=32, seed=1)
    torch.save(head, d / "head.pth")
    save_file(head, str(d / "head.safetensors"))
    return d


def clip_cfg(d, head="head.pth", **kw) -> ScoreConfig:
    return ScoreConfig(
        scorer="clip-mlp", clip_model=str(d / "zxl-tiny-clip.json"), clip_weights=str(d / "clip.pt"),
        head_weights=str(d / head), batch_size=4, **kw,
    )  # fmt: skip


@pytest.fixture(scope="session")
def wd_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wd") / "wd-tiny-tagger"
    w, b = build_wd_model(folder)
    return folder, w, b


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "tiny-llava")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")
