"""``python -m bench.gpu`` (``make bench-gpu``): the GPU benchmarks, one script for a CUDA machine.

Nothing is downloaded: every model is built from its config with random weights (speed does not
depend on the weights) and the images are JPEGs this script writes into webdataset tars. It prints
one JSON report on stdout (progress goes to stderr) and writes it to
``bench/results/gpu-<time>.json``. Budget: under 8 minutes on one H100, start-up included.

Entries (``ENTRIES``; each is ``fn(setup) -> list[dict]``, so a new benchmark — a trainer step, say —
is one function and one line):

- ``clip``: CLIP ViT-L/14 + the LAION aesthetic head (``scorers.clip_mlp``), fp16, batch 256, on
  4,096 JPEGs of 512 px in 4 tars: through the score stage's own path (``score_stream``: PIL
  decode and preprocessing in loader threads, overlapping the model), through a GPU decode
  (``torchvision.io.decode_jpeg`` on the device, resize and crop on the device), and the model
  alone on a batch already on the device — the ceiling. Target: 2,000 images/s on an H100.
- ``wd``: the WD tagger (``taggers.wd``) on a real model given by ``ZXL_BENCH_WD_MODEL`` (a folder
  with model.onnx and selected_tags.csv); skipped, with a note, without one.
- ``train``: the SDXL U-Net training step at 1024×1024, batch 4, images/s and peak memory, fp16 and
  bf16, gradient checkpointing on and off: ``trainer.train`` against a plain diffusers loop with the
  same U-Net and Adafactor.
- ``sdxl``: seconds per 1024×1024 image, 28 Euler steps with CFG, prompt encoding and VAE decode
  included: ``sampler.pipeline.generate`` against diffusers' ``StableDiffusionXLPipeline`` on the
  same random-weight full-size SDXL in fp16, both calling the same U-Net object.

``--tiny`` runs every entry with tiny models, sizes and counts on the CPU, to check the script
itself (the tests do); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import io
import json
import math
import os
import platform
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"
SDXL_CONFIGS = Path(__file__).resolve().parents[1] / "sampler" / "configs" / "sdxl"
WD_ENV = "ZXL_BENCH_WD_MODEL"
CLIP_TARGET = 2000.0  # images/s, CLIP ViT-L/14 + head on an H100


@dataclass
class Setup:
    tiny: bool
    device: torch.device
    work: Path  # scratch folder for the shards and tokenizer files

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def timed(setup: Setup, fn: Callable[[], object], warmup: int, reps: int) -> list[float]:
    """Wall seconds of ``fn`` per repetition, after ``warmup`` untimed calls, the device drained
    before each clock read."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        setup.sync()
        t0 = time.perf_counter()
        fn()
        setup.sync()
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------- data


def write_shards(folder: Path, n: int, side: int, per_tar: int, seed: int = 0) -> list[Path]:
    """``n`` distinct photo-like JPEGs (smooth colour fields plus grain, quality 90, ~1 bit per
    pixel like real pictures) of ``side`` px, in webdataset tars of ``per_tar``, keyed like
    img2dataset's."""
    folder.mkdir(parents=True, exist_ok=True)
    grain = np.random.default_rng(seed).integers(-10, 11, (2 * side, 2 * side, 3), dtype=np.int16)

    def one(i: int) -> bytes:
        rng = np.random.default_rng([seed, i])
        field = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((side, side), Image.BICUBIC)
        dy, dx = rng.integers(0, side, 2)
        pixels = np.clip(np.asarray(field, np.int16) + grain[dy : dy + side, dx : dx + side], 0, 255)
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=90)
        return buf.getvalue()

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        blobs = list(pool.map(one, range(n)))
    tars = []
    for t in range(math.ceil(n / per_tar)):
        path = folder / f"{t:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(t * per_tar, min(n, (t + 1) * per_tar)):
                info = tarfile.TarInfo(f"{i:09d}.jpg")
                info.size = len(blobs[i])
                tar.addfile(info, io.BytesIO(blobs[i]))
        tars.append(path)
    return tars


def shards(setup: Setup) -> tuple[list[Path], int]:
    """The benchmark's tars and their pictures' side, written once per run: 4,096 JPEGs of 512 px
    in 4 tars (tiny: 48 of 64 px in 2)."""
    folder = setup.work / "shards"
    n, side, per_tar = (48, 64, 24) if setup.tiny else (4096, 512, 1024)
    if not folder.exists():
        t0 = time.perf_counter()
        write_shards(folder, n, side, per_tar)
        log(f"  wrote {n} JPEGs of {side} px in {math.ceil(n / per_tar)} tars in {time.perf_counter() - t0:.1f} s")
    return sorted(folder.glob("*.tar")), side


# --------------------------------------------------------------------------- clip


def _gpu_preprocess(blobs: list[bytes], cfg: dict, device: torch.device) -> torch.Tensor:
    """JPEG bytes → a normalized [N, 3, S, S] batch on ``device``: nvJPEG decode on a GPU, then
    open_clip's resize (shortest side, bicubic) and centre crop, on the device."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F  # noqa: N812

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    side = cfg["size"][0] if isinstance(cfg["size"], tuple | list) else cfg["size"]
    shapes = {tuple(im.shape) for im in images}
    groups = [torch.stack(images)] if len(shapes) == 1 else [im[None] for im in images]
    out = []
    for g in groups:
        g = F.resize(g.float(), [side], interpolation=InterpolationMode.BICUBIC, antialias=True)
        out.append(F.center_crop(g, [side, side]))
    x = torch.cat(out).clamp_(0, 255).div_(255)
    mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def clip(setup: Setup) -> list[dict]:
    """CLIP ViT-L/14 + LAION head: the score stage's path, a GPU-decode path, and the model alone."""
    import open_clip

    from zxl.pipeline.score import score_stream
    from zxl.scorers.clip_mlp import ClipMlpScorer
    from zxl.scorers.config import ScoreConfig
    from zxl.scorers.heads import laion_state_dict
    from zxl.tars import read_images as read_tar_images
    from zxl.testing import TINY_CLIP

    tars, jpeg_side = shards(setup)
    if setup.tiny:
        model_ref, dim, batch, threads = str(setup.work / "zxl-tiny-clip.json"), TINY_CLIP["embed_dim"], 16, 2
        Path(model_ref).write_text(json.dumps(TINY_CLIP))
    else:
        model_ref, dim, batch, threads = "ViT-L-14", 768, 256, os.cpu_count() or 8
    precision = "fp16" if setup.device.type == "cuda" else "fp32"
    cfg = ScoreConfig(scorer="clip-mlp", clip_model=model_ref, device=str(setup.device), precision=precision,
                      batch_size=batch, loader_threads=threads)  # fmt: skip
    torch.manual_seed(0)
    t0 = time.perf_counter()
    scorer = ClipMlpScorer(cfg, load_weights=False, head_state=laion_state_dict(dim=dim))
    log(f"  built {model_ref} (random weights) in {time.perf_counter() - t0:.1f} s")
    pre_cfg = open_clip.get_model_preprocess_cfg(scorer.model)
    blobs = [b for tar in tars for b in read_tar_images(tar).values()]
    n = len(blobs)
    reps = 1 if setup.tiny else 2
    setup.reset_peak()

    def project() -> None:  # the score stage's work per shard: read the tar, then score_stream
        for tar in tars:
            shard = list(read_tar_images(tar).values())
            for _ in score_stream(scorer, shard, cfg.batch_size, cfg.loader_threads):
                pass

    def gpu_decode() -> None:
        for i in range(0, n, batch):
            scorer.score_embeddings(scorer.embed(_gpu_preprocess(blobs[i : i + batch], pre_cfg, setup.device)))

    side = pre_cfg["size"][0] if isinstance(pre_cfg["size"], tuple | list) else pre_cfg["size"]
    x = torch.randn(batch, 3, side, side, device=setup.device)
    model_batches = max(2, n // batch)

    def model_only() -> None:
        for _ in range(model_batches):
            scorer.score_embeddings(scorer.embed(x))

    project_s = min(timed(setup, project, warmup=1, reps=reps))
    log(f"  score stage path: {n / project_s:.0f} images/s")
    decode_s = min(timed(setup, gpu_decode, warmup=1, reps=reps))
    log(f"  device decode:    {n / decode_s:.0f} images/s")
    model_s = min(timed(setup, model_only, warmup=1, reps=reps))
    ceiling = model_batches * batch / model_s
    log(f"  model only:       {ceiling:.0f} images/s")
    peak = setup.peak_gib()
    where = f"{setup.device.type}, {precision}, batch {batch}, {n} JPEGs of {jpeg_side} px"
    target = f"≥ {CLIP_TARGET:,.0f} images/s (H100)"
    common = {"unit": "images/s", "baseline": ceiling, "baseline_name": "the model alone", "target": target,
              "peak_gib": peak, "images": n, "batch": batch}  # fmt: skip
    name = f"clip-mlp {'tiny' if setup.tiny else 'ViT-L-14'} + LAION head"

    def met(rate: float) -> bool | None:  # the target is an H100's
        return rate >= CLIP_TARGET if setup.device.type == "cuda" else None

    return [
        {"name": f"{name}, score stage path ({threads} loader threads, PIL decode; {where})", "ours": n / project_s,
         "ratio": n / project_s / ceiling, "met": met(n / project_s), **common},
        {"name": f"{name}, decode on the device (torchvision.io.decode_jpeg; {where})", "ours": n / decode_s,
         "ratio": n / decode_s / ceiling, "met": met(n / decode_s), **common},
        {"name": f"{name}, model alone (random batch on the device; {setup.device.type}, {precision}, batch {batch})",
         "ours": ceiling, "ratio": 1.0, "met": met(ceiling), **common},
    ]  # fmt: skip


# --------------------------------------------------------------------------- wd


def wd(setup: Setup) -> list[dict]:
    """The WD tagger stage's work (WD preprocessing + onnxruntime) on decoded images, and the model
    alone on a prepared batch."""
    import onnxruntime as ort

    from zxl.taggers.config import TagConfig
    from zxl.taggers.wd import WDTagger, prepare
    from zxl.tars import read_images as read_tar_images
    from zxl.testing import build_wd_model

    ref = os.environ.get(WD_ENV, "")
    if setup.tiny and not ref:
        ref = str(setup.work / "wd-tiny")
        build_wd_model(Path(ref), size=32)
    if not ref:
        note = f"set {WD_ENV} to a WD tagger folder (model.onnx + selected_tags.csv), e.g. wd-eva02-large-tagger-v3"
        log(f"  skipped: {note}")
        return [{"name": "wd tagger", "skipped": note}]
    import pandas as pd

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    batch = 64 if cuda else 16
    tagger = WDTagger(TagConfig(taggers=["wd"], wd_model=ref, batch_size=batch, device="auto"))
    providers = tagger.session.get_providers()
    blobs = [b for tar in shards(setup)[0] for b in read_tar_images(tar).values()]
    n = len(blobs) if (cuda or setup.tiny) else 64  # the CPU provider is slow: keep the run short
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs[:n]]
    rows = pd.DataFrame(index=range(n))
    prepared = np.stack([prepare(im, tagger.size) for im in images[:batch]])
    stage_s = min(timed(setup, lambda: tagger.tag(images, rows), warmup=1, reps=1 if setup.tiny else 2))
    model_s = min(timed(setup, lambda: tagger.predict(prepared), warmup=1, reps=3))
    note = "" if cuda else "onnxruntime has no CUDA provider here (install onnxruntime-gpu for it): CPU figures"
    log(f"  wd {Path(ref).name}: {n / stage_s:.1f} images/s, model alone {batch / model_s:.1f} ({providers[0]})")
    return [
        {"name": f"wd tagger {Path(ref).name}, tag stage work ({tagger.size} px, batch {batch}, {providers[0]})",
         "ours": n / stage_s, "baseline": batch / model_s, "baseline_name": "the model alone (prepared batch)",
         "unit": "images/s", "ratio": (n / stage_s) / (batch / model_s), "target": "-", "met": None,
         "providers": providers, "note": note, "images": n},
    ]  # fmt: skip


# --------------------------------------------------------------------------- sdxl

SDXL_TINY = {  # zxl.testing.build_tiny_sdxl's shapes
    "unet": {
        "sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": [32, 64], "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "attention_head_dim": [2, 4], "use_linear_projection": True, "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8, "transformer_layers_per_block": [1, 1],
        "projection_class_embeddings_input_dim": 6 * 8 + 32, "cross_attention_dim": 64, "norm_num_groups": 8,
    },
    "vae": {
        "block_out_channels": [16, 32], "in_channels": 3, "out_channels": 3, "latent_channels": 4, "norm_num_groups": 8,
        "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2, "sample_size": 64,
        "scaling_factor": 0.13025,
    },
    "text_encoder": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 3,
                     "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 32},
}  # fmt: skip
SDXL_TINY["text_encoder_2"] = SDXL_TINY["text_encoder"]


def sdxl_configs(tiny: bool) -> tuple[dict, str]:
    """The four component configs (stable-diffusion-xl-base-1.0's, as the sampler ships them), and
    where they came from."""
    if tiny:
        return SDXL_TINY, "tiny (zxl.testing's shapes)"
    configs = {part: json.loads((SDXL_CONFIGS / part / "config.json").read_text()) for part in SDXL_TINY}
    return configs, "sampler/configs/sdxl (stable-diffusion-xl-base-1.0)"


def build_sdxl(setup: Setup):
    """(our SDXL, diffusers' pipeline) over one random-weight model: the same U-Net and text
    encoders; the VAE is ours in fp32 (sampler.pipeline decodes in fp32) and a copy in the
    pipeline's dtype for diffusers, which upcasts it itself (force_upcast)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from zxl.sampler.pipeline import SDXL
    from zxl.sampler.tokenizer import clip_tokenizer

    diffusers_logging.set_verbosity_error()  # its advice on fp32 modules is for from_pretrained
    configs, source = sdxl_configs(setup.tiny)
    dtype = torch.float16 if setup.device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with setup.device:  # parameters are created (and randomly initialised) on the device
        unet = UNet2DConditionModel.from_config(configs["unet"]).to(dtype).eval()
        vae = AutoencoderKL.from_config(configs["vae"]).to(torch.float32).eval()
        te = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).to(dtype).eval()
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])).to(dtype).eval()
    if setup.device.type == "cuda":
        unet.to(memory_format=torch.channels_last)  # as SDXL.load does on a GPU
    params = sum(p.numel() for p in unet.parameters())
    log(f"  built SDXL ({source}; U-Net {params / 1e9:.2f} B parameters) in {time.perf_counter() - t0:.1f} s")
    tok, tok2 = clip_tokenizer(setup.work / "tokenizer"), clip_tokenizer(setup.work / "tokenizer", pad_token="!")
    ours = SDXL(
        unet=unet, vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2, v_pred=True,
        ztsnr=True, name="random-sdxl", hash="random", device=setup.device, dtype=dtype,
    )  # fmt: skip
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True,
        timestep_spacing="trailing", prediction_type="v_prediction",
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline(
        vae=copy.deepcopy(vae).to(dtype), text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
        unet=unet, scheduler=scheduler, add_watermarker=False,  # ours does not watermark either
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return ours, pipe, source, params


def sdxl(setup: Setup) -> list[dict]:
    """Seconds per image, ours against diffusers, alternating, best of each."""
    from zxl.sampler.pipeline import Sampling, generate
    from zxl.sampler.prompts import Prompt

    ours, pipe, source, params = build_sdxl(setup)
    side, steps, reps = (64, 2, 1) if setup.tiny else (1024, 28, 3)
    p = Prompt("score_9, score_8_up, 1girl, solo, smile, outdoors", negative="score_1", width=side, height=side,
               seed=1, cfg=4.0, steps=steps, sampler="euler")  # fmt: skip
    setup.reset_peak()

    def run_ours():
        generate(ours, p, Sampling(terminal="diffusers"))

    def run_diffusers():
        with torch.inference_mode():
            pipe(p.prompt, negative_prompt=p.negative, num_inference_steps=steps, guidance_scale=p.cfg, height=side,
                 width=side, generator=torch.Generator("cpu").manual_seed(p.seed), output_type="pil")  # fmt: skip

    timed(setup, run_ours, warmup=1, reps=0)
    timed(setup, run_diffusers, warmup=1, reps=0)
    t_ours, t_theirs = [], []
    for _ in range(reps):  # alternate, so drift on the machine hits both
        t_ours += timed(setup, run_ours, warmup=0, reps=1)
        t_theirs += timed(setup, run_diffusers, warmup=0, reps=1)
    o, t = min(t_ours), min(t_theirs)
    log(f"  sdxl {side}px {steps} steps: ours {o:.2f} s/image, diffusers {t:.2f} s/image")
    return [
        {"name": f"SDXL {side}×{side}, {steps} Euler steps, CFG 4, prompt encode + VAE decode "
                 f"({setup.device.type}, {str(ours.dtype).removeprefix('torch.')}; "
                 f"{'tiny' if setup.tiny else 'full-size'} random weights)",
         "ours": o, "baseline": t, "baseline_name": "diffusers StableDiffusionXLPipeline, same U-Net object",
         "unit": "s/image", "ratio": o / t, "target": "≤ 1.0 (ratio)", "met": o / t <= 1.0,
         "steps_per_s": {"ours": steps / o, "baseline": steps / t}, "peak_gib": setup.peak_gib(),
         "configs": source, "unet_parameters": params, "runs": {"ours": t_ours, "baseline": t_theirs}},
    ]  # fmt: skip


def eval_entry(setup: Setup) -> list[dict]:
    """``zxl eval`` of one checkpoint at 1024 px (one held-out prompt × no tag and score_1..9 × 2 seeds,
    the technical scorer, the validation loss on 4 rows) against sampling the same 20 images alone."""
    import tempfile

    from bench.training import synthetic_catalog
    from zxl.sampler.pipeline import Sampling, generate
    from zxl.sampler.prompts import Prompt
    from zxl.trainer.evaluate import TAGS, EvalConfig, EvalSet, evaluate_model

    ours, _pipe, _source, _params = build_sdxl(setup)
    side = 64 if setup.tiny else 1024
    cfg = EvalConfig(prompts=1, seeds=2, steps=2 if setup.tiny else 28, resolution=side, holdout=0.3, val_rows=4,
                     images=False)  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        es = EvalSet.build(synthetic_catalog(Path(d) / "run", 12, side), cfg)

        def run_eval():
            evaluate_model(ours, es, None, log=lambda *a: None)

        def run_plain():
            for p in es.prompts:
                for tag in (None, *TAGS):
                    for s in range(cfg.seeds):
                        generate(ours, Prompt(p.text(tag), negative="", width=p.width, height=p.height, seed=s,
                                              cfg=cfg.cfg, steps=cfg.steps), Sampling())  # fmt: skip

        setup.reset_peak()
        t_eval = timed(setup, run_eval, warmup=0, reps=1)
        t_plain = timed(setup, run_plain, warmup=0, reps=1)
    o, t = min(t_eval), min(t_plain)
    log(f"  eval {side}px: {o:.1f} s per checkpoint, sampling alone {t:.1f} s")
    return [{"name": f"zxl eval per checkpoint, {side} px, 20 samples × {cfg.steps} steps + validation loss "
                     f"({setup.device.type}; {'tiny' if setup.tiny else 'full-size'} random weights)",
             "ours": o, "baseline": t, "baseline_name": "sampling the same 20 images alone", "unit": "s",
             "ratio": o / t, "target": "≤ 1.2 (ratio)", "met": o / t <= 1.2, "peak_gib": setup.peak_gib()}]  # fmt: skip


def train_step(setup: Setup) -> list[dict]:
    """The SDXL U-Net training step at 1024×1024, batch 4: ours (``trainer.train`` on a synthetic
    one-bucket catalog: cached latents, captions encoded each step by the frozen text encoders,
    pseudo-Huber + adaptive weighting, Adafactor) against the plain diffusers loop of
    bench/training.py (embeddings precomputed, MSE, the same Adafactor), on one random-weight
    U-Net with fp32 master weights; fp16 (gradient scaler) and bf16, gradient checkpointing on and
    off. images/s over the steps after the warm-up, and peak memory."""
    from safetensors import safe_open

    from bench.training import plain_loop, steady_rate, synthetic_catalog
    from zxl.config import load_config
    from zxl.trainer.config import TrainConfig
    from zxl.trainer.train import train

    side, batch, warm, steps = (64, 2, 1, 1) if setup.tiny else (1024, 4, 3, 8)
    ours_model, _, source, params = build_sdxl(setup)
    for m in (ours_model.unet, ours_model.text_encoder, ours_model.text_encoder_2):
        m.float()  # fp32 master weights; autocast does the rest
    ours_model.dtype = torch.float32
    catalog = synthetic_catalog(setup.work / "train-run", 4 * batch, side)
    out, latents = [], None
    for precision in ("fp16", "bf16"):
        for checkpointing in (True, False):
            if setup.device.type == "cpu" and precision == "fp16":
                continue  # fp16 autocast with a gradient scaler is a GPU set-up
            overrides = [
                f"data.catalog={catalog}", f"data.resolution={side}", f"optim.batch_size={batch}", "optim.grad_accum=1",
                f"optim.precision={precision}", f"optim.gradient_checkpointing={str(checkpointing).lower()}",
                "optim.text_encoder_lr=0", "optim.warmup_steps=0", f"loop.max_steps={warm + steps}",
                "loop.save_every=0", "loop.sample_every=0", "loop.log_every=1", "loop.progress=false",
                f"loop.output={setup.work / 'train-out'}", f"loop.device={setup.device}",
            ]  # fmt: skip
            cfg = load_config(TrainConfig, [], overrides)
            label = f"SDXL U-Net training step {side}×{side}, batch {batch}, {precision}, gradient checkpointing " \
                    f"{'on' if checkpointing else 'off'}"  # fmt: skip
            setup.sync()
            try:
                result = train(cfg, log=lambda *a: None, model=ours_model)
            except torch.cuda.OutOfMemoryError as e:  # checkpointing off at 1024 px may not fit: say so, go on
                log(f"  {label}: out of memory")
                out.append({"name": label, "error": f"out of memory: {str(e).splitlines()[0]}"})
                ours_model.unet.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                continue
            ours = steady_rate(result["log"], batch, warm)
            ours_peak = result["log"][-1]["peak_memory_gb"] if setup.device.type == "cuda" else None
            unet = ours_model.unet
            if checkpointing:
                unet.enable_gradient_checkpointing()
            else:
                unet.disable_gradient_checkpointing()
            if latents is None:  # the trainer's latent cache, written by its first run: the baseline's data
                cache = next((setup.work / "train-run" / "latents").iterdir())
                with safe_open(next(cache.glob("*.safetensors")), "pt") as f:
                    latents = torch.stack([f.get_tensor(k).float() for k in f.keys()])
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()
            setup.reset_peak()
            try:
                theirs = plain_loop(unet, ours_model.text_encoder, ours_model.text_encoder_2, ours_model.tokenizer,
                                    latents, steps, batch, optimizer="adafactor", precision=precision, warmup=warm,
                                    sync=setup.sync)  # fmt: skip
                theirs_peak = setup.peak_gib()
            except torch.cuda.OutOfMemoryError:
                theirs, theirs_peak = float("nan"), "out of memory"
                unet.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
            log(f"  train {side}px b{batch} {precision} ckpt={checkpointing}: ours {ours:.2f} img/s, "
                f"diffusers {theirs:.2f} img/s; peak {ours_peak} vs {theirs_peak} GiB")  # fmt: skip
            out.append({
                "name": f"{label}, Adafactor, text encoders frozen ({setup.device.type}; "
                        f"{'tiny' if setup.tiny else 'full-size'} random weights)",
                "ours": ours, "baseline": theirs, "baseline_name": "plain diffusers loop, same U-Net and optimizer",
                "unit": "images/s", "ratio": ours / theirs, "target": "≥ 1.0 (ratio), less memory",
                "met": ours >= theirs, "peak_gib": {"ours": ours_peak, "baseline": theirs_peak},
                "configs": source, "unet_parameters": params,
            })  # fmt: skip
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()
    return out


ENTRIES: dict[str, Callable[[Setup], list[dict]]] = {"clip": clip, "wd": wd, "sdxl": sdxl, "eval": eval_entry,
                                                     "train": train_step}  # fmt: skip


def _environment(device: torch.device) -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("torchvision", "open_clip_torch", "diffusers", "transformers", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        machine |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
        out["cudnn"] = torch.backends.cudnn.version()
    return {"machine": machine, "versions": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help=f"entries to run (default all: {', '.join(ENTRIES)})")
    p.add_argument("--tiny", action="store_true", help="tiny models and sizes, on the CPU: checks the script")
    p.add_argument("--device", default="", help="default cuda (cpu with --tiny)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for gpu-<time>.json (default bench/results)")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in ENTRIES]
    if unknown:
        p.error(f"unknown entry {unknown[0]!r}; choose from {', '.join(ENTRIES)}")
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here: make bench-gpu needs one (--tiny runs a CPU check of the script)")
    started = time.perf_counter()
    entries, seconds = [], {}
    with tempfile.TemporaryDirectory(prefix="zxl-bench-gpu-") as work:
        setup = Setup(tiny=args.tiny, device=device, work=Path(work))
        for name in args.names or ENTRIES:
            log(f"== {name}")
            t0 = time.perf_counter()
            try:
                entries.extend(ENTRIES[name](setup))
            except Exception as e:  # noqa: BLE001 - one failed entry must not cost the others their figures
                log(f"  {name} failed: {e!r}")
                entries.append({"name": name, "error": f"{type(e).__name__}: {e}"})
            seconds[name] = round(time.perf_counter() - t0, 1)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    now = dt.datetime.now(dt.UTC)
    report = {
        "date": now.isoformat(timespec="seconds"),
        "tiny": args.tiny,
        **_environment(device),
        "seconds": {**seconds, "total": round(time.perf_counter() - started, 1)},
        "entries": entries,
    }
    text = json.dumps(report, indent=2, default=str)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu-{'tiny-' if args.tiny else ''}{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(text + "\n")
    print(text)
    log(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
