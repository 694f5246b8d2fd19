"""pipeline/polite.py through a whole fetch: per-host limits across workers and threads, 429 and
Retry-After, a host that never stops throttling, the retry pass and --retry-failed, against a real
throttling server on 127.0.0.1 (zxl.throttle_server)."""

import time

import pyarrow.parquet as pq
import pytest

from tests.conftest import make_config
from zxl.catalog.schema import read_catalog
from zxl.pipeline.curate import curate, retry_failed
from zxl.pipeline.polite import retry_after, transient
from zxl.pipeline.stages import stage_path
from zxl.throttle_server import ThrottleServer, jpeg_images

pytestmark = pytest.mark.usefixtures("forkserver")  # the cluster test's workers fork from one server


def _config(tmp_path, name, urls, *overrides):
    return make_config(tmp_path, name, urls, "source.url_column=url", "source.id_column=", "run.shard_size=10",
                       "score.scorer=technical", "caption.captioner=none", *overrides)  # fmt: skip


def test_retry_after_and_what_is_worth_another_try():
    assert retry_after("3") == 3.0 and retry_after(" 1.5 ") == 1.5 and retry_after(None) is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 30) == pytest.approx(30)
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 + 30) == 0.0  # in the past: now
    assert retry_after("soon") is None
    for error in ("HTTP Error 429: Too Many Requests", "HTTP Error 503: Service Unavailable", "timed out",
                  "[Errno 104] Connection reset by peer", "Remote end closed connection without response",
                  "truncated: the connection closed after 10 of the 20 bytes its Content-Length promised"):  # fmt: skip
        assert transient(error), error
    for error in ("HTTP Error 404: Not Found", "HTTP Error 403: Forbidden", None, "md5 mismatch: expected a, got b",
                  "refused: 10.0.0.1 is a private address (fetch.allowed_hosts)"):  # fmt: skip
        assert not transient(error), error


def test_the_limits_hold_across_two_workers_of_two_threads(tmp_path):
    """4 in flight and 20 a second, across 2 Dask workers × 2 threads × 16 download threads each: the
    host never sees more, so it never has to say 429, and every row arrives."""
    with ThrottleServer(jpeg_images(40, size=(64, 64)), max_in_flight=4, max_rate=20, hold_s=0.05) as srv:
        urls = srv.write_urls(tmp_path / "urls.parquet")
        cfg = _config(tmp_path, "limits", urls, "run.scheduler=local", "run.workers=2", "run.threads_per_worker=2",
                      "fetch.per_host_concurrency=4", "fetch.per_host_rate=20")  # fmt: skip
        t0 = time.monotonic()
        res = curate(cfg, log=lambda *_: None)
        wall = time.monotonic() - t0
        seen = srv.stats()
    cat = read_catalog(res.catalog_dir).to_pandas()
    why = ({k: v for k, v in seen.items() if "per_path" not in k}, res.manifest["fetch_hosts"],
           cat["error"].dropna().tolist()[:3], cat["attempts"].tolist())  # fmt: skip
    assert seen["peak_all"] <= 4 and seen["throttled"] == 0, why
    assert seen["served"] == 40 and res.manifest["counts"]["status"] == {"ok": 40}
    assert wall >= 40 / 20 - 1  # the rate held: 40 requests at 20/s take about 2 s


def test_retry_after_is_honoured_and_every_row_arrives(tmp_path):
    """An impolite client (no limits of its own) against a host that allows 2 in flight and answers
    429 + Retry-After: 1 beyond: it waits as asked, never early, and loses nothing."""
    with ThrottleServer(jpeg_images(30, size=(64, 64)), max_in_flight=2, retry_after=1, hold_s=0.1) as srv:
        urls = srv.write_urls(tmp_path / "urls.parquet")
        res = curate(_config(tmp_path, "ra", urls, "fetch.thread_count=8"), log=lambda *_: None)
        seen = srv.stats()
    assert res.manifest["counts"]["status"] == {"ok": 30}
    assert seen["throttled"] > 0 and seen["early_retries"] == 0, seen
    ((host, h),) = res.manifest["fetch_hosts"].items()
    assert host == f"127.0.0.1:{srv.port}" and h["throttled"] == seen["throttled"] and h["waits"] > 0
    cat = read_catalog(res.catalog_dir).to_pandas()
    assert cat["attempts"].max() > 1 and cat["attempts"].sum() == seen["requests"]


def test_a_host_that_always_throttles_ends_bounded(tmp_path):
    images = jpeg_images(6, size=(64, 64))
    never = frozenset(sorted(images)[:2])
    with ThrottleServer(images, always_429=never, retry_after=1, hold_s=0.0) as srv:
        urls = srv.write_urls(tmp_path / "urls.parquet")
        t0 = time.monotonic()
        res = curate(_config(tmp_path, "never", urls, "fetch.max_retry_wait=2", "fetch.retries=1"),
                     log=lambda *_: None)  # fmt: skip
        wall = time.monotonic() - t0
    cat = read_catalog(res.catalog_dir).to_pandas().sort_values("url")
    failed = cat[cat["status"] == "failed_download"]
    assert len(failed) == 2 and (cat["status"] == "ok").sum() == 4
    assert failed["error"].str.fullmatch(r"HTTP Error 429: Too Many Requests \(retried \d+ times over \d+ s\)").all()
    assert wall < 60  # two waits of 1 s per try, a retry pass: bounded


def test_retry_failed_refetches_exactly_the_transient_rows(tmp_path):
    """Two paths fail twice (503), one is missing (404): the run's own retry pass tries the 503s once
    more (still failing), then --retry-failed refetches exactly those two: the server counts three
    requests for each and one for every other path, and the shards without them keep every file."""
    images = jpeg_images(30, size=(64, 64))
    paths = sorted(images)
    flaky = {paths[3]: 2, paths[4]: 2}  # both in shard 0 (shard_size 10)
    gone = paths[25]
    del images[gone]
    with ThrottleServer(images, transient=flaky, hold_s=0.0) as srv:
        urls = tmp_path / "urls.parquet"
        import pyarrow as pa

        pq.write_table(pa.table({"url": [srv.url(p) for p in paths]}), urls)
        cfg = _config(tmp_path, "retry", urls)
        first = curate(cfg, log=lambda *_: None)
        assert first.manifest["counts"]["status"] == {"ok": 27, "failed_download": 3}
        stages = ("fetch", "inspect", "score", "tag")
        untouched = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for s in (1, 2)
                     for p in (stage_path(first.run_dir, st, s) for st in stages)}  # fmt: skip
        res = retry_failed(cfg, log=lambda *_: None)
        seen = srv.stats()
    counts = seen["per_path"]
    assert counts[paths[3]] == counts[paths[4]] == 3 and counts[gone] == 1  # a 404 is final: never retried
    assert all(counts[p] == 1 for p in paths if p not in (paths[3], paths[4], gone))  # nothing else refetched
    assert res.manifest["counts"]["status"] == {"ok": 29, "failed_download": 1}
    cat = read_catalog(res.catalog_dir).to_pandas().set_index("url")
    assert cat.loc[srv.url(paths[3]), "attempts"] == 3 and cat.loc[srv.url(paths[0]), "attempts"] == 1
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in untouched} == untouched
