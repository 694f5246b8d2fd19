"""Taste and diversity at the scale of the real URL list: 950k embeddings of 768 float16 values.

- **clustering** (pipeline/weigh.py's ``cluster``: k chosen by silhouette, then MiniBatchKMeans
  streamed in float32 chunks, then the assignment) against scikit-learn's ``MiniBatchKMeans.fit``
  on the whole array made float32, the way one would call it; time and peak memory (RSS) of each,
  in its own process. Targets: under 5 minutes and under 4 GB.
- **taste fit** (``zxl taste fit``: read the embeddings from the run's Parquet shards, choose C by
  5-fold cross-validation, held-out accuracy, learning curve, the head written) on 10k simulated
  choices, against one plain Bradley–Terry fit of the same choices on embeddings already in memory.
- **rating latency**: the rate view's next pair (refit on 300 choices, 256 candidates, Laplace
  posterior) plus the choice written to SQLite, against drawing a random pair; median per pair.

The embeddings are synthetic (300 Gaussian centres with Zipf-distributed sizes + noise,
L2-normalised), the same for every entry (seeded). ``--quick``: 95k rows and 1k choices.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULL, QUICK = (950_000, 10_000), (95_000, 1_000)
DIM = 768


def embeddings(n: int, dim: int = DIM, seed: int = 0, chunk: int = 50_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(300, dim)).astype(np.float32)
    sizes = 1 / np.arange(1, 301)  # Zipf: a few big clusters (popular styles), a long tail
    out = np.empty((n, dim), np.float16)
    for a in range(0, n, chunk):
        m = min(chunk, n - a)
        x = centres[rng.choice(300, size=m, p=sizes / sizes.sum())] + 0.6 * rng.normal(size=(m, dim)).astype(np.float32)
        out[a : a + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


CHILD = """
import json, resource, sys, time
import numpy as np
from bench.taste import embeddings
n, how, k = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
x = embeddings(n)
t0 = time.perf_counter()
if how == "ours":
    from zxl.pipeline.weigh import cluster
    labels, info = cluster(x, k, 0)
    k = info["k"]
else:
    from sklearn.cluster import MiniBatchKMeans
    labels = MiniBatchKMeans(k, random_state=0, n_init=1, batch_size=4096).fit(x.astype(np.float32)).labels_
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"seconds": seconds, "k": int(k), "peak_gb": peak, "clusters_used": int(len(np.unique(labels)))}))
"""


def _child(*args) -> dict:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True, cwd=root,
                         check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def clustering(quick: bool = False) -> list[dict]:
    """k chosen from the data (weigh.clusters 0), and k = 512 set: ours, then scikit-learn's plain fit."""
    n = (QUICK if quick else FULL)[0]
    out = []
    for k in (0, 512):
        ours = _child(n, "ours", k)
        theirs = _child(n, "sklearn-fit", ours["k"])
        how = "chosen from the data" if k == 0 else "set"
        out.append({
            "name": f"clustering {n} × {DIM} float16 embeddings (300 Zipf-sized clusters), k {how}: {ours['k']} "
            f"({ours['clusters_used']} used); peak RSS {ours['peak_gb']:.2f} GB vs {theirs['peak_gb']:.2f} GB",
            "ours": ours["seconds"],
            "baseline": theirs["seconds"],
            "baseline_name": "MiniBatchKMeans.fit on the float32 array, same k",
            "unit": "s",
            "ratio": ours["seconds"] / theirs["seconds"],
            "target": "< 300 s, < 4 GB",
            "peak_gb": ours["peak_gb"],
            "baseline_peak_gb": theirs["peak_gb"],
        })  # fmt: skip
    return out


def _write_run(d: Path, x: np.ndarray, shard: int = 100_000) -> list[str]:
    import pyarrow as pa

    from zxl.catalog.embeddings import EMBEDDING_KEY, embeddings_path
    from zxl.files import write_table_atomic

    keys = [f"k{i}" for i in range(len(x))]
    for s, a in enumerate(range(0, len(x), shard)):
        block = x[a : a + shard]
        flat = pa.array(block.ravel(), pa.float16())
        t = pa.table({"key": keys[a : a + shard], "embedding": pa.FixedSizeListArray.from_arrays(flat, x.shape[1])})
        write_table_atomic(t, embeddings_path(d, s), {EMBEDDING_KEY.decode(): "synthetic"})
    return keys


def _simulated(x: np.ndarray, n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=x.shape[1])
    a = rng.integers(len(x), size=n)
    b = (a + 1 + rng.integers(len(x) - 1, size=n)) % len(x)
    u = np.asarray(x[a], np.float32) @ w - np.asarray(x[b], np.float32) @ w
    a_wins = rng.random(n) < 1 / (1 + np.exp(-u / 0.1))
    return np.where(a_wins, a, b), np.where(a_wins, b, a)


def taste_fit(quick: bool = False) -> dict:
    from zxl import preference
    from zxl.pipeline.taste import fit_taste

    n, n_choices = QUICK if quick else FULL
    x = embeddings(n)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        keys = _write_run(d, x)
        win, lose = _simulated(x, n_choices)
        with open(d / "choices.csv", "w") as f:
            f.write("winner,loser\n" + "".join(f"{keys[a]},{keys[b]}\n" for a, b in zip(win, lose, strict=True)))
        t0 = time.perf_counter()
        report = fit_taste(d, d / "choices.csv", log=lambda *_: None)
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        preference.fit(x, preference.Pairs.of(win, lose), report["c"])
        theirs = time.perf_counter() - t0
    return {
        "name": f"zxl taste fit, {n_choices} choices over {n} × {DIM} float16 embeddings (read, C by 5-fold CV, "
        f"held-out accuracy {report['heldout_accuracy']:.3f}, learning curve, head written)",
        "ours": ours,
        "baseline": theirs,
        "baseline_name": "one Bradley–Terry fit, embeddings in memory",
        "unit": "s",
        "ratio": ours / theirs,
        "target": "minutes, not hours",
        "heldout_accuracy": report["heldout_accuracy"],
    }


def rating_latency(quick: bool = False) -> dict:
    from zxl.catalog.choices import ChoiceStore, PairPicker

    n = (QUICK if quick else FULL)[0]
    x = embeddings(n)
    score = np.random.default_rng(2).integers(1, 10, n)
    keys = [f"k{i}" for i in range(n)]
    w = np.random.default_rng(3).normal(size=DIM)
    with tempfile.TemporaryDirectory() as d:
        store = ChoiceStore(Path(d) / "choices.sqlite")
        picker = PairPicker(keys, x, score, store)
        ours = []
        for i in range(330):
            t0 = time.perf_counter()
            p = picker.next_pair()
            a, b = int(p["left"][1:]), int(p["right"][1:])
            store.add_choice("bench", p["left"], p["right"], p["left"] if x[a] @ w > x[b] @ w else p["right"])
            if i >= 300:  # after 300 choices: the head refits on every pair
                ours.append(time.perf_counter() - t0)
        rng = np.random.default_rng(4)
        theirs = []
        for _ in range(30):
            t0 = time.perf_counter()
            a, b = rng.choice(n, 2, replace=False)
            store.add_choice("bench", keys[a], keys[b], keys[a])
            theirs.append(time.perf_counter() - t0)
        store.close()
    o, t = float(np.median(ours)) * 1000, float(np.median(theirs)) * 1000
    p95, worst = float(np.percentile(ours, 95)) * 1000, float(np.max(ours)) * 1000
    return {
        "name": f"rate view, median ms: next pair after 300 choices (256 candidates, {n} × {DIM}) + the choice "
        f"saved; p95 {p95:.0f} ms, slowest {worst:.0f} ms (a refit)",
        "ours": o,
        "baseline": t,
        "baseline_name": "a random pair + the choice saved",
        "unit": "ms",
        "ratio": o / t,
        "target": "< 200 ms a pair",
    }
