"""Sampler benchmark: seconds per denoising step, ours against diffusers' StableDiffusionXLPipeline
on the same tiny SDXL-architecture model, prompt, size, CFG and noise, on the CPU, one torch thread:
on a small shared machine a second thread makes each step wait on a busy core (2.4 s instead of
0.2 s per step at 128 px, measured under load), which drowns the comparison in noise."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench import one_torch_thread


@one_torch_thread
def run(quick: bool = False) -> dict:
    from diffusers import StableDiffusionXLPipeline

    from zxl.sampler.pipeline import SDXL, Sampling, generate
    from zxl.sampler.prompts import Prompt
    from zxl.testing import build_tiny_sdxl

    steps = 8 if quick else 20
    reps = 2 if quick else 3
    side = 128 if quick else 256  # the tiny VAE downsamples by 2: 256 px is 128² latents, 4096-token attention
    p = Prompt("score_9, 1girl, smile", negative="score_1", width=side, height=side, seed=1, cfg=4.0, steps=steps)
    with tempfile.TemporaryDirectory() as d:
        folder = build_tiny_sdxl(Path(d) / "tiny-sdxl")
        pipe = StableDiffusionXLPipeline.from_pretrained(str(folder))
        pipe.set_progress_bar_config(disable=True)
        model = SDXL.load(folder, device="cpu")
        h, w = p.height // model.latent_scale, p.width // model.latent_scale
        noise = torch.randn((1, 4, h, w), generator=torch.Generator("cpu").manual_seed(1))
        ours, theirs = [], []
        for _ in range(reps):  # alternate, best of each
            t0 = time.perf_counter()
            generate(model, p, Sampling(terminal="diffusers"), latents_only=True)
            ours.append((time.perf_counter() - t0) / steps)
            t0 = time.perf_counter()
            pipe(p.prompt, negative_prompt=p.negative, num_inference_steps=steps, guidance_scale=p.cfg,
                 height=p.height, width=p.width, latents=noise.clone(), output_type="latent")  # fmt: skip
            theirs.append((time.perf_counter() - t0) / steps)
    o, t = min(ours), min(theirs)
    return {
        "name": f"SDXL sampling per step, tiny model, {p.width}px, CFG, CPU, 1 thread ({steps} steps)",
        "ours": o * 1e3,
        "baseline": t * 1e3,
        "baseline_name": "diffusers StableDiffusionXLPipeline, same model and noise",
        "unit": "ms/step",
        "ratio": o / t,
        "target": "≤ 1.0",
    }
