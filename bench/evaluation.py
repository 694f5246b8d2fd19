"""``zxl eval`` benchmark: wall time per checkpoint against plain sampling of the same images (the
same prompts, tags, seeds, steps and size through the same ``generate``), on the tiny SDXL and a
synthetic catalog, CPU, one torch thread. What eval adds is scoring, embeddings, tone and the
validation loss; the target is ≤ 1.2× of sampling alone."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench import one_torch_thread


@one_torch_thread
def run(quick: bool = False) -> dict:
    from bench.training import synthetic_catalog
    from zxl.sampler.pipeline import SDXL, Sampling, generate
    from zxl.sampler.prompts import Prompt
    from zxl.testing import build_tiny_sdxl
    from zxl.trainer.evaluate import TAGS, EvalConfig, EvalSet, evaluate_model

    cfg = EvalConfig(prompts=1, seeds=2, steps=8 if quick else 12, resolution=128, holdout=0.3,
                     val_rows=4 if quick else 8, images=False)  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        folder = build_tiny_sdxl(d / "tiny-sdxl")
        es = EvalSet.build(synthetic_catalog(d / "run", 48, 128), cfg)
        model = SDXL.load(folder, device="cpu", precision="fp32")
        n = len(es.prompts) * (len(TAGS) + 1) * cfg.seeds
        ours, theirs = [], []
        for _ in range(2):  # alternate, best of each
            t0 = time.perf_counter()
            evaluate_model(model, es, None, log=lambda *a: None)
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for pi, p in enumerate(es.prompts):
                for tag in (None, *TAGS):
                    for s in range(cfg.seeds):
                        sp = Prompt(p.text(tag), negative="", width=p.width, height=p.height, seed=pi * 100 + s,
                                    cfg=cfg.cfg, steps=cfg.steps)  # fmt: skip
                        generate(model, sp, Sampling())
            theirs.append(time.perf_counter() - t0)
    o, t = min(ours), min(theirs)
    return {
        "name": f"zxl eval per checkpoint, tiny SDXL, {n} samples of {cfg.steps} steps at 128 px + validation loss "
        f"on {cfg.val_rows} rows, CPU, 1 thread",
        "ours": o,
        "baseline": t,
        "baseline_name": "sampling the same images alone",
        "unit": "s",
        "ratio": o / t,
        "target": "≤ 1.2×",
    }
