"""``zxl train``: the ZTSNR v-prediction SDXL fine-tune, one visible loop (docs/style.md 10).

Order of work: trainable rows and their buckets from the catalog → the base model → the VAE
latent cache (encoded once, reused) → optimizers → resume → the loop: per micro-batch, cached
latents, fresh captions, noise and timesteps keyed by (seed, micro-step, sample), the loss of
trainer/loss.py; per optimizer step, gradient averaging across processes, unscale, clip,
Adafactor, the weighting net's Adam, warm-up, EMA; every N steps a checkpoint and a validation
grid. At the end: a last checkpoint and the model exported as a single file.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from zxl.catalog.captions import DEFAULT_LAYOUT, TagLayout, layout_of
from zxl.catalog.schema import read_manifest
from zxl.config import ConfigError, config_hash, dump_yaml, to_dict
from zxl.files import write_text_atomic
from zxl.trainer import checkpoint
from zxl.trainer.config import TrainConfig, validate
from zxl.trainer.data import (
    buckets_for,
    caption,
    caption_fields,
    check_plan,
    epoch_plan,
    held_out,
    load_rows,
    rng_for,
)
from zxl.trainer.distributed import Dist
from zxl.trainer.latents import LatentCache, tensor_hash
from zxl.trainer.loss import AdaptiveWeighting, Schedule, huber_c, per_sample_loss

AMP = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def output_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.loop.output) if cfg.loop.output else Path(cfg.data.catalog).resolve().parent / "train"


def sample_noise(shape, seed: int, micro: int, slot: int, t_range=(0, 1000)) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ε, ξ, t) of one sample: drawn on the CPU from a generator keyed by (seed, micro-step, slot)."""
    digest = hashlib.sha256(repr(("noise", seed, micro, slot)).encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    t = int(torch.randint(t_range[0], t_range[1], (1,), generator=g))
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g), t


def make_optimizer(cfg: TrainConfig, groups: list[dict]):
    if cfg.optim.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        # the recipe's fixed-lr Adafactor (transformers' flags for it)
        return Adafactor(groups, lr=cfg.optim.unet_lr, relative_step=False, scale_parameter=False, warmup_init=False)
    return torch.optim.AdamW(groups, lr=cfg.optim.unet_lr, weight_decay=1e-2)


def warmup(steps: int):
    """diffusers' ``get_constant_schedule_with_warmup``: step/warmup, then 1."""
    return lambda s: s / max(1, steps) if s < steps else 1.0


class Logger:
    """CSV and TensorBoard, written by the main process only. The CSV files are append-only logs, each
    row one write; readers (``zxl merge --best``) ignore a last line a kill left without its newline."""

    def __init__(self, folder: Path, enabled: bool):
        self.enabled = enabled
        self.rows = []
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = folder / "log.csv"
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(folder / "tensorboard"))

    def log(self, step: int, values: dict) -> None:
        self.rows.append({"step": step, **values})
        if self.enabled:
            self._write(self.csv_path, "train", step, values)

    def _write(self, path: Path, group: str, step: int, values: dict) -> None:
        """One CSV row (a header first in a new file) and the finite numbers as TensorBoard scalars."""
        new = not path.exists()
        buf = io.StringIO()  # the row (and a new file's header) in one write: a kill tears at most the last line
        w = csv.DictWriter(buf, fieldnames=["step", *values])
        if new:
            w.writeheader()
        w.writerow({"step": step, **values})
        with open(path, "a", newline="") as f:  # an append-only log: rows are added, never rewritten
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        for k, v in values.items():
            if isinstance(v, int | float) and math.isfinite(v):
                self.tb.add_scalar(f"{group}/{k}", v, step)

    def eval(self, step: int, figures: dict) -> None:
        """One row of eval.csv (zxl merge --best reads it) and the eval/ scalars in TensorBoard."""
        if self.enabled:
            self._write(self.csv_path.with_name("eval.csv"), "eval", step, figures)
            self.tb.flush()

    def curve(self, step: int, points: list[tuple[int, float]]) -> None:
        if self.enabled:
            for t, u in points:
                self.tb.add_scalar(f"weighting/u_t{t:03d}", u, step)
            self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()


@dataclass
class Data:
    """The trainable rows and what a batch needs of them: caption fields, where each row's latent
    is, SDXL's size conditioning (the source's size before the fetch resized it, else the stored
    size), the buckets and the latent cache."""

    rows: Any
    fields: list
    shards: list[str]
    keys: list[str]
    original: list[tuple[int, int]]
    buckets: list[tuple[int, int]]
    cache: LatentCache | None = None
    layout: TagLayout = DEFAULT_LAYOUT  # the catalog's caption layout (its curate run's caption.tag_order …)

    @classmethod
    def load(cls, cfg: TrainConfig) -> Data:
        rows = load_rows(cfg.data.catalog, cfg.data.resolution, cfg.data.draw)
        if cfg.data.holdout:
            rows = rows[~held_out(rows.key, cfg.data.holdout)].reset_index(drop=True)
            assert isinstance(rows, pd.DataFrame)  # pandas infers df[mask] as DataFrame | Series
            if rows.empty:
                raise ConfigError(f"data.holdout: {cfg.data.holdout} holds out every trainable row")
        original = list(zip(rows.original_height.fillna(rows.height).astype(int).tolist(),
                            rows.original_width.fillna(rows.width).astype(int).tolist(), strict=True))  # fmt: skip
        return cls(rows, caption_fields(rows), rows.shard.tolist(), rows.key.tolist(), original,
                   buckets_for(cfg.data.resolution), layout=layout_of(read_manifest(cfg.data.catalog)))  # fmt: skip


def load_model(cfg: TrainConfig, device: torch.device, model=None):
    """The base model at fp32 (``model`` when one is given), set to the recipe's prediction type."""
    from zxl.sampler.pipeline import SDXL

    if model is None and not cfg.model.base:
        raise ConfigError("model.base: give the base model (a single-file SDXL .safetensors or a diffusers folder)")
    if model is None and not Path(cfg.model.base).exists():
        raise ConfigError(f"model.base: {cfg.model.base} does not exist (a single-file SDXL .safetensors or a "
                          "diffusers folder; nothing is downloaded)")  # fmt: skip
    if model is None:
        model = SDXL.load(cfg.model.base, device=str(device), precision="fp32", config=cfg.model.config or None,
                          option="model.base (--base)")  # fmt: skip
    model.v_pred, model.ztsnr = cfg.model.v_pred, cfg.model.ztsnr
    return model


@dataclass
class Optimizers:
    """Everything that steps: the model's optimizer and warm-up, the weighting net and its Adam, the
    fp16 loss scaler; ``params`` are the model's trainable parameters."""

    opt: Any
    lr_sched: Any
    weighting: AdaptiveWeighting
    opt_w: Any
    scaler: Any
    params: list
    train_te: bool

    @classmethod
    def build(cls, cfg: TrainConfig, model, schedule: Schedule, device: torch.device) -> Optimizers:
        unet, te1, te2 = model.unet, model.text_encoder, model.text_encoder_2
        train_te = cfg.optim.text_encoder_lr > 0
        unet.train().requires_grad_(True)
        for enc in (te1, te2):
            enc.train(train_te).requires_grad_(train_te)
        if cfg.optim.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            for enc in (te1, te2) if train_te else ():  # transformers 5 renamed it
                (getattr(enc, "activation_checkpointing_enable", None) or enc.gradient_checkpointing_enable)()
        groups = [{"params": list(unet.parameters()), "lr": cfg.optim.unet_lr}]
        if train_te:
            groups.append({"params": list(te1.parameters()) + list(te2.parameters()), "lr": cfg.optim.text_encoder_lr})
        opt = make_optimizer(cfg, groups)
        weighting = AdaptiveWeighting(schedule.alphas_cumprod.cpu(), cfg.loss.weighting_channels, cfg.data.seed)
        weighting = weighting.to(device)
        return cls(
            opt,
            torch.optim.lr_scheduler.LambdaLR(opt, warmup(cfg.optim.warmup_steps)),
            weighting,
            torch.optim.Adam(weighting.parameters(), lr=cfg.loss.weighting_lr, betas=(0.9, 0.99)),
            torch.amp.GradScaler(device.type, enabled=cfg.optim.precision == "fp16"),
            [p for g in groups for p in g["params"]],
            train_te,
        )

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.opt_w.zero_grad(set_to_none=True)

    def step(self, cfg: TrainConfig, d: Dist) -> float:
        """Average gradients across processes, unscale, clip, step both optimizers; the grad norm."""
        d.average_gradients(self.params + list(self.weighting.parameters()))
        self.scaler.unscale_(self.opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.max_grad_norm or float("inf")).item()
        self.scaler.step(self.opt)
        if cfg.loss.adaptive_weighting:
            self.scaler.unscale_(self.opt_w)
            self.scaler.step(self.opt_w)
        self.scaler.update()
        self.zero_grad()
        self.lr_sched.step()
        return grad_norm

    def state_dict(self, pos: dict) -> dict:
        return {
            "optimizer": self.opt.state_dict(),
            "lr_schedule": self.lr_sched.state_dict(),
            "weighting": self.weighting.state_dict(),
            "weighting_optimizer": self.opt_w.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "position": dict(pos),
        }

    def load_state_dict(self, state: dict) -> dict:
        """Restore every stepper and the CPU generator; returns the loop position."""
        self.opt.load_state_dict(state["optimizer"])
        self.lr_sched.load_state_dict(state["lr_schedule"])
        self.weighting.load_state_dict(state["weighting"])
        self.opt_w.load_state_dict(state["weighting_optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        return {k: int(v) for k, v in state["position"].items()}


def weights_dict(model, train_te: bool, ema: dict | None) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: the UNet, the text encoders when they train, the EMA UNet."""
    w = {f"unet.{k}": v for k, v in model.unet.state_dict().items()}
    if train_te:
        w.update({f"text_encoder.{k}": v for k, v in model.text_encoder.state_dict().items()})
        w.update({f"text_encoder_2.{k}": v for k, v in model.text_encoder_2.state_dict().items()})
    if ema is not None:
        w.update({f"ema.unet.{k}": v for k, v in ema.items()})
    return w


def load_weights(weights: dict, model, ema: dict | None, device) -> dict | None:
    """Put a checkpoint's tensors back into the model; returns the EMA weights (None without EMA)."""
    checkpoint.load_into(model, checkpoint.split(weights))
    if ema is None:
        return None
    return {k[len("ema.unet.") :]: v.to(device) for k, v in weights.items() if k.startswith("ema.unet.")}


@torch.no_grad()
def ema_update(ema: dict | None, unet, decay: float) -> None:
    if ema is not None:
        for n, p in unet.named_parameters():
            ema[n].lerp_(p.detach().float(), 1 - decay)


def get_batch(cfg: TrainConfig, data: Data, batch, micro_id: int, rank: int, device) -> dict:
    """This process's share of one micro-batch: cached latents (flipped by a keyed coin), noise ε,
    input perturbation ξ and timestep keyed by (seed, micro-step, slot), fresh captions, time ids."""
    local_bs = cfg.optim.batch_size
    mine = list(enumerate(batch.rows))[rank * local_bs : (rank + 1) * local_bs]
    w, h = data.buckets[batch.bucket]
    latents, noise, perturb, ts, texts, time_ids = [], [], [], [], [], []
    assert data.cache is not None  # train() sets it up before the first batch
    for slot, i in mine:
        flip = cfg.data.flip and rng_for("flip", cfg.data.seed, micro_id, slot).random() < 0.5
        z, (top, left) = data.cache.get(data.shards[i], data.keys[i], flip)
        eps, xi, t = sample_noise(
            z.shape, cfg.data.seed, micro_id, slot, (cfg.loss.min_timestep, cfg.loss.max_timestep)
        )
        latents.append(z.float())
        noise.append(eps)
        perturb.append(xi * cfg.loss.ip_noise_gamma)
        ts.append(t)
        texts.append(caption(data.fields[i], cfg.data.seed, micro_id, slot, cfg.data.caption_styles,
                             cfg.data.caption_dropout, cfg.data.rating_format, cfg.data.year_format,
                             data.layout))  # fmt: skip
        time_ids.append([*data.original[i], top, left, h, w])
    return {
        "x0": torch.stack(latents).to(device),
        "noise": torch.stack(noise).to(device),
        "perturb": torch.stack(perturb).to(device) if cfg.loss.ip_noise_gamma else None,
        "t": torch.tensor(ts, device=device),
        "texts": texts,
        "time_ids": time_ids,
    }


def micro_loss(cfg: TrainConfig, model, schedule: Schedule, weighting, b: dict, train_te: bool):
    """(the loss to backpropagate, the unweighted per-sample loss) of one micro-batch."""
    x_t, target = schedule.noisy_and_target(b["x0"], b["noise"], b["t"], b["perturb"])
    amp = AMP[cfg.optim.precision]
    with torch.autocast(x_t.device.type, dtype=amp, enabled=amp is not None):
        with torch.set_grad_enabled(train_te):
            emb, pooled = model.encode_with_grad(b["texts"], cfg.data.max_token_length)
        ids = torch.tensor(b["time_ids"], device=x_t.device, dtype=emb.dtype)
        cond = {"text_embeds": pooled, "time_ids": ids}
        pred = model.unet(x_t, b["t"], encoder_hidden_states=emb, added_cond_kwargs=cond).sample
    t = b["t"]
    c = huber_c(t, cfg.loss.huber_schedule, cfg.loss.huber_c, schedule) if cfg.loss.loss == "huber" else None
    raw = per_sample_loss(pred, target, cfg.loss.loss, c)
    loss = weighting.weighted(raw, t) if cfg.loss.adaptive_weighting else raw
    return loss.mean() / cfg.optim.grad_accum, raw


def due(step: int, every: int, max_steps: int) -> bool:
    """Every ``every`` steps and at the last step (never when ``every`` is 0)."""
    return bool(every) and (step % every == 0 or step == max_steps)


def train(cfg: TrainConfig, resume: str | bool = False, log=print, model=None) -> dict:
    """Train as ``cfg`` says; ``model`` is an already built ``sampler.pipeline.SDXL`` with fp32 weights
    (the GPU benchmark's random full-size model) instead of loading ``model.base``."""
    validate(cfg)
    check_inputs(cfg, resume, model)
    d = Dist.from_env()
    say = log if d.main else (lambda *a, **k: None)
    out = output_dir(cfg)
    device = _device(cfg.loop.device, d)
    if device.type == "cpu" and cfg.loop.cpu_threads:
        torch.set_num_threads(cfg.loop.cpu_threads)
    data = Data.load(cfg)
    for note in check_plan(data.rows, cfg.optim.batch_size * d.world, data.buckets):
        say(f"warning: {note}")
    model = load_model(cfg, device, model)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(dump_yaml(cfg), out / "config.yaml")

    # -- the latent cache: encoded once, shared by the processes, reused across runs
    run_dir = Path(cfg.data.catalog).resolve().parent
    data.cache = LatentCache(run_dir, tensor_hash(model.vae.state_dict()), cfg.data.resolution, cfg.data.flip,
                             data.buckets)  # fmt: skip
    stats = data.cache.build(data.rows, model.vae, Path(cfg.data.catalog), device, cfg.data.cache_batch_size,
                             d.rank, d.world, say)  # fmt: skip
    d.barrier()
    say(f"latents: {stats['reused_shards']} shards reused, {stats['encoded_images']} images encoded → "
        f"{data.cache.folder}")  # fmt: skip

    # -- what trains, and how
    schedule = Schedule(cfg.model.ztsnr, device)
    optim = Optimizers.build(cfg, model, schedule, device)
    ema = {n: p.detach().clone().float() for n, p in model.unet.named_parameters()} if cfg.optim.ema_decay else None
    pos = {"step": 0, "epoch": 0, "batch": 0, "nan_streak": 0, "nan_total": 0, "images": 0}
    evalset: dict = {}  # zxl eval's prompts and held-out rows, built at the first eval
    ckpt_dir = out / "checkpoints"
    if resume:
        path = checkpoint.latest(ckpt_dir) if resume is True else Path(resume)
        if path is None:
            raise ConfigError(f"--resume: no checkpoint under {ckpt_dir}")
        weights, state, _ = checkpoint.load(path)
        ema = load_weights(weights, model, ema, device)
        pos = optim.load_state_dict(state)
        say(f"resumed from {path} at step {pos['step']} (epoch {pos['epoch']}, batch {pos['batch']})")

    def save_checkpoint() -> Path | None:
        path = None
        if d.main:
            meta = {"step": pos["step"], "epoch": pos["epoch"], "batch": pos["batch"], "config": to_dict(cfg),
                    "config_hash": config_hash(cfg), "base": cfg.model.base}  # fmt: skip
            path = checkpoint.save(ckpt_dir, pos["step"], weights_dict(model, optim.train_te, ema),
                                   optim.state_dict(pos), meta, cfg.loop.keep_last)  # fmt: skip
            say(f"checkpoint: {path}")
        d.barrier()
        return path

    logger = Logger(out, d.main)
    from tqdm import tqdm

    bar = tqdm(total=cfg.loop.max_steps, initial=pos["step"], disable=not (d.main and cfg.loop.progress),
               unit="step", dynamic_ncols=True)  # fmt: skip
    global_bs = cfg.optim.batch_size * d.world
    plan = epoch_plan(data.rows, global_bs, cfg.data.seed, pos["epoch"])
    if not plan:
        raise ConfigError(f"no bucket holds a full batch of {global_bs} samples; lower optim.batch_size")
    t_start, images_start = time.perf_counter(), pos["images"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    last_ckpt = None
    window: list[float] = []
    while pos["step"] < cfg.loop.max_steps:
        bad, losses = False, []
        for micro in range(cfg.optim.grad_accum):
            if pos["batch"] >= len(plan):
                pos["epoch"], pos["batch"] = pos["epoch"] + 1, 0
                plan = epoch_plan(data.rows, global_bs, cfg.data.seed, pos["epoch"])
            batch = plan[pos["batch"]]
            pos["batch"] += 1
            b = get_batch(cfg, data, batch, pos["step"] * cfg.optim.grad_accum + micro, d.rank, device)
            loss, raw = micro_loss(cfg, model, schedule, optim.weighting, b, optim.train_te)
            if not torch.isfinite(loss):
                bad = True
                continue
            optim.scaler.scale(loss).backward()
            losses.append(raw.mean().item())
        if d.any(bad):
            optim.zero_grad()
            pos["nan_streak"] += 1
            pos["nan_total"] += 1
            say(f"warning: step {pos['step'] + 1}: non-finite loss, step skipped ({pos['nan_streak']} in a row)")
            if pos["nan_streak"] >= cfg.loop.max_nan_steps:
                raise FloatingPointError(
                    f"{pos['nan_streak']} steps in a row had a non-finite loss (loop.max_nan_steps); the last good "
                    f"checkpoint is {last_ckpt or checkpoint.latest(ckpt_dir) or 'none'}. Lower the learning rate or "
                    "use optim.precision bf16/fp32"
                )
            pos["step"] += 1
            continue
        pos["nan_streak"] = 0
        grad_norm = optim.step(cfg, d)
        ema_update(ema, model.unet, cfg.optim.ema_decay)
        pos["step"] += 1
        pos["images"] += global_bs * cfg.optim.grad_accum
        step_loss = d.mean(sum(losses) / max(1, len(losses)))
        window.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if due(pos["step"], cfg.loop.log_every, cfg.loop.max_steps):
            elapsed = time.perf_counter() - t_start
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
            values = {"loss": sum(window) / len(window), "lr": optim.lr_sched.get_last_lr()[0], "grad_norm": grad_norm,
                      "images_per_s": (pos["images"] - images_start) / max(elapsed, 1e-9), "epoch": pos["epoch"],
                      "nan_steps": pos["nan_total"], "peak_memory_gb": peak}  # fmt: skip
            window = []
            logger.log(pos["step"], values)
            logger.curve(pos["step"], optim.weighting.curve())
        if due(pos["step"], cfg.loop.save_every, cfg.loop.max_steps):
            last_ckpt = save_checkpoint()
        if due(pos["step"], cfg.loop.sample_every, cfg.loop.max_steps):
            if d.main:
                _validation_grid(cfg, model, ema, out / "samples" / f"step-{pos['step']:08d}", say)
            d.barrier()
        if due(pos["step"], cfg.loop.eval_every, cfg.loop.max_steps):
            if d.main:
                figures = _eval(cfg, model, ema, evalset, out / "eval" / f"step-{pos['step']:08d}")
                logger.eval(pos["step"], figures)
                say(f"eval: step {pos['step']}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                                for k, v in figures.items()))  # fmt: skip
            d.barrier()
    bar.close()
    logger.close()
    result = {"steps": pos["step"], "epoch": pos["epoch"], "losses": [r["loss"] for r in logger.rows],
              "log": logger.rows, "checkpoint": str(last_ckpt) if last_ckpt else None, "output": str(out),
              "nan_steps": pos["nan_total"], "latents": stats}  # fmt: skip
    if d.main and last_ckpt and cfg.model.base:
        from zxl.trainer.export import write_model

        # the model in memory holds the last checkpoint's weights and the base's VAE: no reload
        name, kinds = f"{cfg.name}-step-{pos['step']:08d}", cfg.loop.export
        if kinds in ("single-file", "both"):
            path = write_model(model, out / "export" / f"{name}.safetensors", cfg.model.v_pred, cfg.model.ztsnr,
                               unet_state=ema)  # fmt: skip
            result["export"] = str(path)
            say(f"exported: {path} (ComfyUI, A1111: the file alone)")
        if kinds in ("diffusers", "both"):
            if ema:  # training is over: the U-Net may take the EMA weights for the folder
                model.unet.load_state_dict({k: v.to(model.unet.dtype) for k, v in ema.items()}, strict=False)
            path = write_model(model, out / "export" / name, cfg.model.v_pred, cfg.model.ztsnr)
            result["export_diffusers"] = str(path)
            say(f"exported: {path} (diffusers: DiffusionPipeline.from_pretrained, no settings)")
    d.barrier()
    if d.main:
        write_text_atomic(json.dumps({k: v for k, v in result.items() if k != "log"}, indent=1), out / "result.json")
    d.close()
    return result


def check_inputs(cfg: TrainConfig, resume: str | bool = False, model=None) -> None:
    """Every file the run reads, before any work: the catalog, the base model (unless ``model`` is
    given), model.config, the validation prompts (read at the first grid, long after step 1: parsed
    here, so a bad line shows now) and the checkpoint to resume from. Each error names its key."""
    from zxl.sampler.prompts import NEGATIVE_PRESETS, Prompt, read_prompt_file
    from zxl.trainer.data import check_catalog

    check_catalog(cfg.data.catalog, "data.catalog")
    if model is None and not cfg.model.base:
        raise ConfigError("model.base: give the base model (--base: a single-file SDXL .safetensors or a diffusers "
                          "folder)")  # fmt: skip
    if model is None and not Path(cfg.model.base).exists():
        raise ConfigError(f"model.base: {cfg.model.base} does not exist (a single-file SDXL .safetensors or a "
                          "diffusers folder; nothing is downloaded)")  # fmt: skip
    if cfg.model.config and not Path(cfg.model.config).is_dir():
        raise ConfigError(f"model.config: {cfg.model.config} is not a folder (a diffusers SDXL folder whose configs "
                          "describe a single-file model.base)")  # fmt: skip
    if cfg.loop.sample_every:
        if not Path(cfg.loop.prompts).is_file():
            raise ConfigError(f"loop.prompts: {cfg.loop.prompts} does not exist (the kohya prompt file of the "
                              "validation grids, every loop.sample_every steps; 0 draws none)")  # fmt: skip
        try:
            read_prompt_file(cfg.loop.prompts, Prompt(prompt="", negative=NEGATIVE_PRESETS["minimal"]))
        except ConfigError as e:
            raise ConfigError(f"loop.prompts: {e}") from None
    if resume is not True and resume and not Path(resume).is_dir():
        raise ConfigError(f"--resume {resume}: no such checkpoint folder")


def _device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{d.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


@contextlib.contextmanager
def eval_mode(model, ema: dict | None):
    """The model in eval mode with the EMA weights in its UNet (when there are) for the block;
    the training weights and modes come back after."""
    saved = None
    if ema is not None:
        saved = {k: v.detach().clone() for k, v in model.unet.state_dict().items()}
        model.unet.load_state_dict({**saved, **{k: v.to(saved[k].dtype) for k, v in ema.items()}})
    parts = (model.unet, model.text_encoder, model.text_encoder_2)
    modes = [m.training for m in parts]
    for m in parts:
        m.eval()
    try:
        yield model
    finally:
        for m, mode in zip(parts, modes, strict=True):
            m.train(mode)
        if saved is not None:
            model.unet.load_state_dict(saved)


@torch.no_grad()
def _eval(cfg: TrainConfig, model, ema, evalset: dict, folder: Path) -> dict:
    """``zxl eval``'s measures on the current weights (EMA when there are), with the held-out rows of
    ``data.holdout``; the global RNG is left as it was, so a resumed run draws the same numbers."""
    from zxl.trainer.evaluate import EvalConfig, EvalSet, evaluate_model, figures

    if "set" not in evalset:
        ec = EvalConfig(prompts=cfg.loop.eval_prompts, seeds=cfg.loop.eval_seeds, steps=cfg.loop.sample_steps,
                        resolution=cfg.data.resolution, holdout=cfg.data.holdout, val_rows=cfg.loop.eval_rows,
                        seed=cfg.data.seed)  # fmt: skip
        evalset["set"] = EvalSet.build(cfg.data.catalog, ec, "data.catalog")
    rng = torch.get_rng_state()
    try:
        with eval_mode(model, ema):
            result = evaluate_model(model, evalset["set"], folder, log=lambda *a: None)
    finally:
        torch.set_rng_state(rng)
    return figures(result)


@torch.no_grad()
def _validation_grid(cfg: TrainConfig, model, ema, folder: Path, log) -> None:
    """A grid through the sampler from the current weights (the EMA weights when there are)."""
    from zxl.sampler.grids import render
    from zxl.sampler.prompts import NEGATIVE_PRESETS, Prompt, read_prompt_file

    prompts = read_prompt_file(cfg.loop.prompts, Prompt(prompt="", negative=NEGATIVE_PRESETS["minimal"],
                                                         steps=cfg.loop.sample_steps))  # fmt: skip
    with eval_mode(model, ema):
        grids = render(model, prompts, folder, ("prompt", []), None, log=lambda *a: None)
    log(f"validation grid: {grids[0]}")
