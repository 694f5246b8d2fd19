"""The trainer's typed configuration (``zxl train -c configs/train/<preset>.yaml --set key=value``).

Same rules as the curation config (zxl/config.py): YAML presets loaded safely, every key checked
against these dataclasses, unknown keys named with the closest valid one, the resolved config
written next to the output with its hash. ``configs/train/zero-xl.yaml`` is the recipe exactly
(docs/recipe.md "Training loss", "Optimizer and precision", "Aspect buckets", "Captions for training").
"""

from __future__ import annotations

import dataclasses

from zxl.config import ConfigError, check_ranges, num


@dataclasses.dataclass
class ModelConfig:
    base: str = ""  # single-file SDXL .safetensors (Pony Diffusion V6 XL is one) or a diffusers folder
    config: str = ""  # a diffusers folder with the component configs; empty = the SDXL configs zxl ships
    v_pred: bool = True  # train v-prediction (the recipe); the exported file carries the marker key
    ztsnr: bool = True  # Zero Terminal SNR schedule (the recipe)


@dataclasses.dataclass
class DataConfig:
    catalog: str = "runs/demo/catalog"
    resolution: int = num(
        1024, "[64, 8192]"
    )  # bucket area = resolution²; the eleven recipe buckets scale with it (multiple of 64)
    flip: bool = False  # also cache horizontally flipped latents and draw one of the two per sample
    seed: int = num(
        0, "[0, 4294967295]"
    )  # shuffles, bucket order, noise, timesteps, captions: all keyed by seed + step
    caption_styles: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.25, 0.25])  # tags, natural, mixed
    caption_dropout: float = num(0.05, "[0, 1)")  # the caption becomes the empty string
    # Caption tokens the text encoders see: 75 (one CLIP window), 150 or 225 (kohya's --max_token_length:
    # 75-token chunks, sampler/chunks.py); a booru caption often passes 75 and would lose its last tags.
    max_token_length: int = num(75, "[75, 225]")  # and one of 75, 150, 225
    rating_format: str = "rating:{}"
    year_format: str = "year {}"
    cache_batch_size: int = num(8, "[1, 4096]")  # images per VAE encode
    holdout: float = num(0.0, "[0, 1)")  # rows kept out of training for zxl eval (by key hash; the same rows there)
    draw: str = "weight"  # weight: the catalog's draw weights (fractional with weigh.diversity > 0) | repeats


@dataclasses.dataclass
class LossConfig:
    loss: str = "huber"  # huber (pseudo-Huber) | l2
    huber_schedule: str = "snr"  # snr | exponential | constant
    huber_c: float = num(0.1, "(0, 1]")  # c₀
    ip_noise_gamma: float = num(0.1, "[0, 1]")  # input perturbation; the target stays clean
    min_timestep: int = num(
        0, "[0, 999]"
    )  # t ~ uniform over [min, max) (kohya's --min_timestep/--max_timestep); the recipe: 0, 1000
    max_timestep: int = num(1000, "[1, 1000]")
    adaptive_weighting: bool = True  # EDM2's learned per-noise-level loss weighting u(t)
    weighting_lr: float = num(2e-2, "(0, 1]")
    weighting_channels: int = num(128, "[2, 4096]")  # Fourier features of the noise level


@dataclasses.dataclass
class OptimConfig:
    optimizer: str = "adafactor"  # adafactor (fixed lr) | adamw
    unet_lr: float = num(2e-5, "[0, 1]")
    text_encoder_lr: float = num(1e-5, "[0, 1]")  # both encoders; 0 freezes them
    warmup_steps: int = num(250, "[0, inf)")  # linear warm-up, then constant
    batch_size: int = num(4, "[1, 4096]")  # per process
    grad_accum: int = num(8, "[1, 4096]")
    max_grad_norm: float = num(1.0, "[0, inf)")  # 0 turns clipping off
    precision: str = "fp16"  # fp16 (autocast + gradient scaler, fp32 master weights) | bf16 | fp32
    gradient_checkpointing: bool = True
    ema_decay: float = num(0.0, "[0, 1)")  # 0 = no EMA; e.g. 0.9999 keeps an fp32 EMA of the U-Net, exported instead


@dataclasses.dataclass
class LoopConfig:
    output: str = ""  # empty = <run dir of the catalog>/train
    max_steps: int = num(10_000, "[1, inf)")  # optimizer steps
    save_every: int = num(500, "[0, inf)")  # and at the last step; 0 = no checkpoints (benchmarks)
    keep_last: int = num(3, "[1, inf)")  # checkpoints kept; older ones are removed after a new one is safely written
    sample_every: int = num(500, "[0, inf)")  # 0 = no validation grids
    prompts: str = "configs/sample/validation.txt"  # kohya prompt file for the validation grids
    sample_steps: int = num(28, "[1, 1000]")
    eval_every: int = num(0, "[0, inf)")  # 0 = never; else zxl eval's measures on data.holdout rows → eval.csv
    eval_prompts: int = num(2, "[1, 1000]")  # held-out captions sampled with score_1..9 and none
    eval_seeds: int = num(2, "[2, 100]")  # seeds per prompt and tag (the variety set)
    eval_rows: int = num(8, "[1, 100000]")  # held-out rows in the validation loss
    log_every: int = num(10, "[1, inf)")
    max_nan_steps: int = num(10, "[1, inf)")  # a non-finite loss skips the step; this many in a row stops the run
    device: str = "auto"
    cpu_threads: int = num(0, "[0, 4096]")  # torch threads when training on the CPU; 0 = torch's default (one per core)
    progress: bool = True
    # what the end of a run writes under export/: a single file (ComfyUI, A1111, kohya), a diffusers
    # folder (diffusers' from_pretrained with no settings: v-prediction, zero SNR, trailing), or both
    export: str = "single-file"


@dataclasses.dataclass
class TrainConfig:
    name: str = "train"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)


CHOICES = {
    "loss.loss": ("huber", "l2"),
    "loss.huber_schedule": ("snr", "exponential", "constant"),
    "optim.optimizer": ("adafactor", "adamw"),
    "optim.precision": ("fp16", "bf16", "fp32"),
    "loop.export": ("single-file", "diffusers", "both"),
}


def validate(cfg: TrainConfig) -> None:
    """Values a type check cannot catch; each error names the key."""
    check_ranges(cfg)
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    if len(cfg.data.caption_styles) != 3 or min(cfg.data.caption_styles) < 0 or sum(cfg.data.caption_styles) <= 0:
        raise ConfigError("data.caption_styles: three non-negative weights (tags, natural, mixed), not all zero")
    if cfg.data.max_token_length not in (75, 150, 225):
        raise ConfigError(
            f"data.max_token_length must be 75, 150 or 225 (kohya's steps), got {cfg.data.max_token_length}"
        )
    if not 0 <= cfg.data.caption_dropout < 1:
        raise ConfigError("data.caption_dropout: a probability in [0, 1)")
    if cfg.data.resolution % 64 or cfg.data.resolution < 64:
        raise ConfigError(f"data.resolution: {cfg.data.resolution} is not a multiple of 64 (bucket sides step by 1/16)")
    if not 0 <= cfg.loss.min_timestep < cfg.loss.max_timestep <= 1000:
        raise ConfigError("loss.min_timestep, loss.max_timestep: need 0 <= min < max <= 1000")
    for key in ("optim.batch_size", "optim.grad_accum", "loop.max_steps", "loop.keep_last", "loop.log_every"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise ConfigError(f"{key}: must be at least 1")
    if cfg.loop.eval_every and not cfg.data.holdout:
        raise ConfigError("loop.eval_every: needs data.holdout > 0 (the rows zxl eval measures, kept out of training)")
    if cfg.loss.huber_c <= 0 or cfg.loss.huber_c > 1:
        raise ConfigError(f"loss.huber_c: {cfg.loss.huber_c} is not in (0, 1]")
