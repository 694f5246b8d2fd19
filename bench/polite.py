"""polite: fetching from one host that throttles, zxl's ``zxl curate`` beside the bare ``img2dataset``.

200 small JPEGs (``quick``: 100) on one ``ThrottleServer`` (zxl/throttle_server.py) on 127.0.0.1
that admits at most C=4 requests in flight and R=40 requests per second (a sliding one-second
window) and answers the rest ``429 Too Many Requests`` with ``Retry-After: 1``; five of the URLs
fail once with a 503 (transient). Each side runs once, against the same server, its counters and
transient failures reset in between; everything comes from one seed.

- **zxl**: ``zxl curate`` in this process (LocalCluster of 2 workers × 2 threads, 4 shards of 50,
  16 download threads a shard) with ``fetch.per_host_concurrency=4``, ``fetch.per_host_rate=40``,
  ``fetch.retries=3``, ``fetch.max_retry_wait=30``;
- **baseline**: the ``img2dataset`` command as bench/fetch.py runs it (2 processes × 16 threads, 50 a
  shard, ``--retries 3``), which knows nothing of the host's limits.

Reported: rows lost (not stored), the most requests the client had in flight at the host (those
answered 429 included: the server's ``peak_all``), the 429s it drew, and zxl's fetch-stage wall time
against the limit's lower bound, URLs / R. While ``fetch.per_host_*`` do not exist yet (or the zxl
side fails for any other reason) the zxl figures are NaN and the entries' names say why.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from zxl.throttle_server import ThrottleServer, jpeg_images

SEED = 0
C, R = 4, 40.0  # the host's limits: requests in flight, requests per second
RETRY_AFTER, HOLD_S = 1.0, 0.05
TRANSIENT = 5  # URLs that fail once with 503
WORKERS, THREADS = 2, 16
SHARD = 50


def _rows(files, columns: list[str]) -> list[dict]:
    return [row for f in sorted(files) for row in pq.read_table(f, columns=columns).to_pylist()]


def _zxl(urls: Path, work: Path) -> dict:
    from zxl.config import load_config
    from zxl.pipeline.config import CurateConfig
    from zxl.pipeline.curate import curate

    cfg = load_config(
        CurateConfig,
        overrides=[
            f"run.runs_dir={work}", "run.name=polite", "run.scheduler=local", f"run.workers={WORKERS}",
            "run.threads_per_worker=2", f"run.shard_size={SHARD}", "run.progress=false", "run.dashboard_address=",
            f"source.path={urls}", "source.url_column=url", f"fetch.thread_count={THREADS}",
            "fetch.allowed_hosts=[127.0.0.1]", f"fetch.per_host_concurrency={C}", f"fetch.per_host_rate={R:g}",
            "fetch.retries=3", "fetch.max_retry_wait=30", "score.scorer=technical", "tag.taggers=[metadata]",
            "caption.captioner=none",
        ],
    )  # fmt: skip
    t0 = time.perf_counter()
    result = curate(cfg, log=lambda *_: None)
    wall = time.perf_counter() - t0
    rows = _rows((work / "polite" / "stages" / "fetch").glob("*.parquet"), ["status", "error"])
    return {
        "wall": wall,
        "fetch_wall": result.stage_stats["fetch"]["seconds"],
        "ok": sum(r["status"] == "ok" for r in rows),
        "rows": len(rows),
        "errors": collections.Counter(r["error"] for r in rows if r["status"] != "ok").most_common(3),
    }


def _bare(urls: Path, out: Path) -> dict:
    """The img2dataset command, built as bench/fetch.py builds it (default fetch settings)."""
    from zxl.pipeline.config import FetchConfig

    f = FetchConfig(thread_count=THREADS, retries=3)
    cmd = [
        str(Path(sys.executable).with_name("img2dataset")),
        "--url_list", str(urls), "--input_format", "parquet", "--url_col", "url",
        "--output_format", "webdataset", "--output_folder", str(out),
        "--processes_count", str(WORKERS), "--thread_count", str(f.thread_count),
        "--number_sample_per_shard", str(SHARD), "--distributor", "multiprocessing",
        "--image_size", str(f.image_size), "--resize_mode", f.resize_mode,
        "--resize_only_if_bigger", str(f.resize_only_if_bigger), "--encode_format", f.encode_format,
        "--encode_quality", str(f.encode_quality), "--skip_reencode", str(f.skip_reencode),
        "--timeout", str(f.timeout), "--retries", str(f.retries), "--enable_wandb", "False",
    ]  # fmt: skip
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rows = _rows(out.glob("*.parquet"), ["status", "error_message"])
    return {
        "wall": wall,
        "ok": sum(r["status"] == "success" for r in rows),
        "rows": len(rows),
        "errors": collections.Counter(r["error_message"] for r in rows if r["status"] != "success").most_common(3),
    }


def _side(name: str, server: ThrottleServer, fn, *args) -> dict:
    server.reset_stats()
    out: dict
    try:
        out = fn(*args)
    except Exception as e:  # noqa: BLE001 - one side failing is a result to report, not a crash of the bench
        traceback.print_exc(limit=3, file=sys.stdout)
        out = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    s = server.stats(settle_s=5.0)
    out["server"] = {k: v for k, v in s.items() if k not in ("per_path", "per_path_ok")}
    line = {k: v for k, v in out.items() if k != "server"} | {
        k: s[k]
        for k in ("peak_all", "peak_all_paths", "peak_in_flight", "requests", "served", "throttled",
                  "throttled_in_flight", "throttled_rate", "unavailable", "early_retries", "span_s")
    }  # fmt: skip
    print(f"  {name}: {json.dumps(line, default=str)}", flush=True)
    return out


def run(quick: bool = False) -> list[dict]:
    n = 100 if quick else 200
    images = jpeg_images(n, size=(128, 128), seed=SEED)
    rng = np.random.default_rng(SEED)
    transient = {p: 1 for p in rng.choice(sorted(images), TRANSIENT, replace=False).tolist()}
    work = Path(tempfile.mkdtemp(prefix="zxl-bench-polite-"))
    try:
        with ThrottleServer(images, max_in_flight=C, max_rate=R, retry_after=RETRY_AFTER, hold_s=HOLD_S,
                            transient=transient, block_after=0) as server:  # fmt: skip
            urls = server.write_urls(work / "urls.parquet")
            ours = _side("zxl", server, _zxl, urls, work / "runs")
            bare = _side("img2dataset", server, _bare, urls, work / "bare")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bound = n / R
    nan = float("nan")
    why = f"; zxl side failed: {ours['error']}" if "error" in ours else ""
    if "error" in bare:
        why += f"; img2dataset side failed: {bare['error']}"
    lost = lambda side: side["rows"] - side["ok"] if "ok" in side else nan  # noqa: E731
    peak = lambda side: side["server"]["peak_all"] if "ok" in side else nan  # noqa: E731
    throttled = lambda side: side["server"]["throttled"] if "ok" in side else nan  # noqa: E731
    ratio = lambda a, b: a / b if b else nan  # noqa: E731
    limits = f"1 host, ≤ {C} in flight, ≤ {R:g} req/s, Retry-After {RETRY_AFTER:g}"
    common = {"baseline_name": f"img2dataset CLI, {WORKERS} procs × {THREADS} threads, --retries 3",
              "runs": {"ours": ours, "baseline": bare}}  # fmt: skip
    fetch_wall = ours.get("fetch_wall", nan)
    return [
        {"name": f"polite: rows lost of {n} URLs ({limits}; {TRANSIENT} fail once){why}",
         "ours": lost(ours), "baseline": lost(bare), "unit": "rows", "ratio": ratio(lost(ours), lost(bare)),
         "target": "zxl 0 rows lost", **common},
        {"name": f"polite: most requests in flight at the host (429s included){why}",
         "ours": peak(ours), "baseline": peak(bare), "unit": "requests", "ratio": ratio(peak(ours), peak(bare)),
         "target": f"zxl ≤ {C}", **common},
        {"name": f"polite: 429 answers drawn{why}", "ours": throttled(ours), "baseline": throttled(bare),
         "unit": "429s", "ratio": ratio(throttled(ours), throttled(bare)), "target": "zxl ≪ baseline", **common},
        {"name": f"polite: zxl fetch-stage wall time against {n} URLs / {R:g} req/s "
                 f"(whole curate {ours.get('wall', nan):.1f} s){why}",
         "ours": fetch_wall, "baseline": bound, "baseline_name": "the rate limit's lower bound, URLs / R",
         "unit": "s", "ratio": fetch_wall / bound, "target": "≤ 1.2×", "runs": common["runs"]},
    ]  # fmt: skip
