"""Scoring benchmarks: the technical scorer against decode alone, clip-mlp batched against one image
at a time, and dedup at 95k and 950k synthetic rows (how close to linear it grows)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench import one_torch_thread
from zxl.demo_corpus import build_corpus
from zxl.pipeline.config import DedupConfig
from zxl.scorers.config import ScoreConfig

CACHE = Path(".cache/bench")


def _blobs(n: int) -> list[bytes]:
    corpus = build_corpus(CACHE, size=n, seed=2, bad_fraction=0.0)
    return [p.read_bytes() for p in sorted((corpus / "files").rglob("*.*"))]


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def technical(quick: bool = False) -> dict:
    """Images/s of decode + technical features + score vs decode alone, same images, one thread."""
    from zxl.scorers.technical import TechnicalScorer

    blobs = _blobs(60 if quick else 200)
    scorer = TechnicalScorer()

    def decode():
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                im.convert("RGB").load()

    def score():
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                scorer.score(scorer.prepare(im)[None])

    reps = 1 if quick else 2
    t_decode, t_score = _best(decode, reps), _best(score, reps)
    return {
        "name": f"technical scorer vs decode alone ({len(blobs)} demo images, 1 thread)",
        "ours": len(blobs) / t_score,
        "baseline": len(blobs) / t_decode,
        "baseline_name": "PIL decode + RGB convert only",
        "unit": "images/s",
        "ratio": t_decode / t_score,
        "target": "share of the decode limit",
    }


@one_torch_thread
def clip_batched(quick: bool = False) -> dict:
    """clip-mlp with ViT-B-32 (random weights) on the CPU: batches of 32 against one image at a time."""
    import torch

    from zxl.scorers.clip_mlp import ClipMlpScorer
    from zxl.scorers.heads import laion_state_dict

    torch.manual_seed(0)
    cfg = ScoreConfig(scorer="clip-mlp", clip_model="ViT-B-32", device="cpu", batch_size=32)
    scorer = ClipMlpScorer(cfg, load_weights=False, head_state=laion_state_dict(dim=512))
    blobs = _blobs(64 if quick else 128)[: 32 if quick else 64]
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
    items = [scorer.prepare(im) for im in images]

    def batched():
        for i in range(0, len(items), 32):
            scorer.score(scorer.collate(items[i : i + 32]))

    def single():
        for it in items:
            scorer.score(scorer.collate([it]))

    reps = 1 if quick else 2
    scorer.score(scorer.collate(items[:32]))  # warm-up: the first call of each shape allocates
    scorer.score(scorer.collate(items[:1]))
    t_b, t_s = _best(batched, reps), _best(single, reps)
    return {
        "name": f"clip-mlp ViT-B-32, CPU, batch 32 vs 1 ({len(items)} images, {torch.get_num_threads()} thread)",
        "ours": len(items) / t_b,
        "baseline": len(items) / t_s,
        "baseline_name": "one image per forward",
        "unit": "images/s",
        "ratio": t_s / t_b,
        "target": "> 1",
    }


def synthetic_rows(n: int, n_emb: int, seed: int = 0) -> dict:
    """n catalog rows shaped like a real run: 1% exact copies, 4% near copies, embeddings for n_emb."""
    rng = np.random.default_rng(seed)
    phash = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    sha = rng.integers(0, 2**63 - 1, n, dtype=np.int64)
    near = rng.choice(n, n // 25, replace=False)
    src = rng.choice(n, n // 25)
    flips = np.zeros(len(near), np.uint64)
    for _ in range(3):
        flips |= np.uint64(1) << rng.integers(0, 64, len(near)).astype(np.uint64)
    phash[near] = (phash[src].view(np.uint64) ^ flips).view(np.int64)
    exact = rng.choice(n, n // 100, replace=False)
    sha[exact] = sha[rng.choice(n, len(exact))]
    emb = rng.standard_normal((n_emb, 768)).astype(np.float16).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return {
        "keys": np.array([f"{i:08d}" for i in range(n)], object),
        "aesthetic": rng.normal(5, 1, n),
        "pixels": rng.integers(500_000, 2_000_000, n),
        "sha256": np.char.mod("%016x", sha).astype(object),
        "phash": phash,
        "embeddings": (rng.choice(n, n_emb, replace=False), emb),
    }


def dedup_growth(quick: bool = False) -> dict:
    """find_duplicates at n and 10 n rows (embeddings on a tenth of the rows): seconds per row, ratio."""
    import resource

    from zxl.pipeline.dedup import find_duplicates

    small, big = (9_500, 95_000) if quick else (95_000, 950_000)
    seconds = {}
    for n in (small, big):
        data = synthetic_rows(n, n // 10)
        t0 = time.perf_counter()
        dup, counts = find_duplicates(
            data["keys"], data["aesthetic"], data["pixels"], data["sha256"], data["phash"], DedupConfig(),
            data["embeddings"],
        )  # fmt: skip
        seconds[n] = time.perf_counter() - t0
        print(f"  dedup {n} rows: {seconds[n]:.1f} s, {sum(d is not None for d in dup)} duplicates, {counts}")
        del data, dup
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    per_row = {n: s / n for n, s in seconds.items()}
    return {
        "name": f"dedup {big:,} rows vs {small:,} (µs per row; ratio 1 = linear; peak RSS {peak_gb:.1f} GB)",
        "ours": per_row[big] * 1e6,
        "baseline": per_row[small] * 1e6,
        "baseline_name": f"{small} rows",
        "unit": "µs/row",
        "ratio": per_row[big] / per_row[small],
        "target": "close to 1",
        "seconds": seconds,
    }
