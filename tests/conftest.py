"""Shared fixtures: a small demo corpus (every bad-row kind twice), served on 127.0.0.1."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from zxl.config import CurateConfig, load_config  # noqa: E402
from zxl.demo_corpus import build_corpus  # noqa: E402
from zxl.demo_server import DemoServer  # noqa: E402

# Small enough to run in seconds; bad_fraction 0.1 of 140 rows gives each of the 7 kinds twice.
DEMO_SIZE, DEMO_SEED, DEMO_BAD = 140, 7, 0.1
FETCH_TIMEOUT, SLOW_SECONDS = 1.5, 4.0


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
            "fetch.thread_count=16",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def sync_run(urls_file, tmp_path_factory):
    """One uninterrupted in-process run that several tests read."""
    from pipeline.curate import curate

    cfg = make_config(tmp_path_factory.mktemp("runs"), "sync", urls_file)
    return cfg, curate(cfg, log=lambda *_: None)
