"""Catalog benchmarks on a synthetic 950k-row catalog: stats, a filtered sorted page query, and a
page rendered over HTTP by the browser (p50/p95). Targets: stats < 1 s, query p50 < 50 ms,
page p50 < 300 ms."""

from __future__ import annotations

import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from zxl.catalog.schema import SCHEMA, conform
from zxl.demo_corpus import CHARACTERS, GENERAL_TAGS

RATINGS = ["general", "sensitive", "questionable", "explicit"]


def synthetic_catalog(folder: Path, n: int, part_rows: int = 50_000, seed: int = 0) -> Path:
    """A v1 catalog of n rows with realistic columns (no images behind it)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    tags = np.array(GENERAL_TAGS)
    for p, start in enumerate(range(0, n, part_rows)):
        m = min(part_rows, n - start)
        status = rng.choice(["ok", "duplicate", "failed_download", "failed_decode"], m, p=[0.8, 0.1, 0.06, 0.04])
        ok = status == "ok"
        score = rng.integers(1, 10, m).astype(np.int8)
        cols = {
            "key": [str(start + i) for i in range(m)],
            "url": [f"https://example.invalid/{start + i}.jpg" for i in range(m)],
            "status": status.tolist(),
            "error": [None if s == "ok" else "HTTP Error 404: Not Found" for s in status],
            "shard": [f"{(start + i) // 10000:05d}.tar" for i in range(m)],
            "shard_key": [f"{start + i:09d}" for i in range(m)],
            "aesthetic": pa.array(rng.normal(6, 1, m).astype(np.float32)),
            "score": pa.array(score, mask=~ok),
            "rating": pa.array(rng.choice(RATINGS, m).tolist(), pa.string()),
            "year": pa.array(rng.integers(2005, 2026, m).astype(np.int16)),
            "bucket": rng.choice(["832x1216", "1024x1024", "1216x832", "768x1344"], m).tolist(),
            "tags": [rng.choice(tags, 8, replace=False).tolist() for _ in range(m)],
            "characters": [[str(rng.choice(CHARACTERS))] if rng.random() < 0.3 else [] for _ in range(m)],
            "caption": [
                ("A girl in a field of flowers." if (o and s >= 8) else None) for o, s in zip(ok, score, strict=True)
            ],
            "repeats": pa.array(np.where(ok, 1, 0).astype(np.int16)),
        }
        name = f"part-{p:05d}.parquet"
        pq.write_table(conform(cols, m), folder / name, row_group_size=64 * 1024)
        parts.append(name)
    manifest = {"schema_version": 1, "rows": n, "parts": parts, "columns": SCHEMA.names, "score_edges": None}
    (folder / "_manifest.json").write_text(json.dumps(manifest))
    return folder


def _percentiles(times: list[float]) -> tuple[float, float]:
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 95) * 1e3)


def run(quick: bool = False) -> list[dict]:
    from werkzeug.datastructures import MultiDict

    from zxl.catalog.browse import Browser, parse_filters, serve
    from zxl.catalog.query import open_catalog, stats

    n = 95_000 if quick else 950_000
    reps = 20 if quick else 40
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as d:
        folder = synthetic_catalog(Path(d) / "catalog", n)
        cat = open_catalog(folder)
        t0 = time.perf_counter()
        stats(cat)
        t_stats = time.perf_counter() - t0
        browser = Browser(cat)
        urls, q_times, c_times = [], [], []
        for _ in range(reps):
            args = MultiDict([("score_min", str(rng.integers(1, 9))), ("rating", str(rng.choice(RATINGS))),
                              ("tag", str(rng.choice(GENERAL_TAGS))), ("sort", "aesthetic"),
                              ("page", str(rng.integers(1, 20)))])  # fmt: skip
            urls.append("/?" + "&".join(f"{k}={v}" for k, v in args.items(multi=True)))
            f = parse_filters(args)
            t0 = time.perf_counter()
            browser.page(f)
            q_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            browser.summary(f)  # the count and the charts, one pass
            c_times.append(time.perf_counter() - t0)
        server = serve(folder, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        urllib.request.urlopen(base + urls[0]).read()  # warm-up: per-thread connection
        p_times = []
        for u in urls:
            t0 = time.perf_counter()
            urllib.request.urlopen(base + u).read()
            p_times.append(time.perf_counter() - t0)
        server.shutdown()
    q50, q95 = _percentiles(q_times)
    c50, _ = _percentiles(c_times)
    p50, p95 = _percentiles(p_times)
    return [
        {"name": f"catalog stats, {n:,} rows", "ours": t_stats * 1e3, "baseline": 1000.0,
         "baseline_name": "target", "unit": "ms", "ratio": t_stats * 1e3 / 1000.0, "target": "< 1 s (ratio < 1)"},
        {"name": f"filtered, sorted page query, {n:,} rows (p50; p95 {q95:.0f}; count+charts p50 {c50:.0f} ms)",
         "ours": q50, "baseline": 50.0, "baseline_name": "target", "unit": "ms", "ratio": q50 / 50.0,
         "target": "p50 < 50 ms (ratio < 1)"},
        {"name": f"page over HTTP, {n:,} rows (p50; p95 {p95:.0f} ms)", "ours": p50, "baseline": 300.0,
         "baseline_name": "target", "unit": "ms", "ratio": p50 / 300.0, "target": "p50 < 300 ms (ratio < 1)"},
    ]  # fmt: skip
