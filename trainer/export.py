"""Checkpoints out to the formats the ecosystem reads (docs/recipe.md "Formats the ecosystem reads").

- a single-file SDXL model in the A1111/ComfyUI layout, with the empty ``v_pred`` and ``ztsnr``
  marker keys and the VScaling ``.yaml`` beside it (sampler/single_file.py writes both);
- a diffusers folder (``StableDiffusionXLPipeline.save_pretrained``) whose scheduler config says
  v-prediction, ZTSNR and trailing timesteps.
A zxl checkpoint holds only what trains (the U-Net, and the text encoders unless frozen); the
rest (the VAE, frozen encoders, tokenizers) comes from the base model the run started from.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import torch

from zxl.config import ConfigError
from zxl.files import replacing
from zxl.trainer import checkpoint


def write_diffusers(model, folder: Path, v_pred: bool = True, ztsnr: bool = True) -> Path:
    """A diffusers SDXL folder, written beside its final name and renamed."""
    from diffusers import (
        EulerDiscreteScheduler,  # pyright: ignore[reportPrivateImportUsage] - diffusers exports lazily
        StableDiffusionXLPipeline,  # pyright: ignore[reportPrivateImportUsage] - diffusers exports lazily
    )

    from zxl.sampler.tokenizer import write_slow_files

    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=ztsnr,
        timestep_spacing="trailing", prediction_type="v_prediction" if v_pred else "epsilon",
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline(
        vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
        tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.unet,
        scheduler=scheduler,  # pyright: ignore[reportArgumentType] - diffusers annotates it with an enum of names
    )  # fmt: skip
    folder = Path(folder)
    with replacing(folder, folder=True, umask=True) as tmp:
        pipe.save_pretrained(tmp)
        for sub, tok in (("tokenizer", model.tokenizer), ("tokenizer_2", model.tokenizer_2)):
            write_slow_files(tok, tmp / sub)  # what transformers 4.x loads (it cannot read tokenizer.json alone)
    return folder


def write_model(model, out: Path, v_pred: bool = True, ztsnr: bool = True, unet_state: dict | None = None) -> Path:
    """``out`` ending in .safetensors: a single file; otherwise a diffusers folder. ``unet_state``
    replaces the U-Net's weights in a single file (the trainer's EMA weights)."""
    from zxl.sampler.single_file import write_single_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}  # noqa: E731
        unet = cpu({**model.unet.state_dict(), **(unet_state or {})})
        return write_single_file(out, unet, cpu(model.vae.state_dict()), cpu(model.text_encoder.state_dict()),
                                 cpu(model.text_encoder_2.state_dict()), v_pred=v_pred, ztsnr=ztsnr)  # fmt: skip
    return write_diffusers(model, out, v_pred, ztsnr)


def merge_and_write(paths: list[Path], out: Path, weights: list[float] | None = None, base: str | None = None,
                    ema: bool = False, config: str | None = None) -> Path:  # fmt: skip
    """``zxl merge``: average checkpoints (or single files) and write the result. Checkpoint folders:
    the first one's meta.json and the base model are checked before any weights are read."""
    meta = None
    first = Path(paths[0]) if paths else None
    if first is not None and first.is_dir() and (first / "model.safetensors").is_file():
        meta = checkpoint.read_meta(first)
        base = base or meta.get("base") or ""
        if not base or not Path(base).exists():
            raise ConfigError(f"--base: the base model {base!r} that {first} was trained from is not here; give "
                              "--base")  # fmt: skip
    merged, kind, metadata = checkpoint.merge(paths, weights)
    out = Path(out)
    if kind == "single-file":
        v_pred, ztsnr = "v_pred" in merged, "ztsnr" in merged
        if out.suffix == ".safetensors":
            return _write_raw(out, merged, metadata, yaml=v_pred)
        tmp = out.with_name(f".{out.name}.merge-{os.getpid()}.safetensors")
        _write_raw(tmp, merged, metadata, yaml=False)
        try:
            return _save_loaded(tmp, out, config, v_pred, ztsnr)
        finally:
            tmp.unlink(missing_ok=True)
    assert meta is not None and base is not None  # a "checkpoint" merge: paths[0] is a checkpoint folder, read above
    config = config if config is not None else meta["config"]["model"].get("config") or ""
    parts = checkpoint.split(merged, ema=ema)
    model = checkpoint.base_with(parts, base, config)
    return write_model(model, out, meta["config"]["model"]["v_pred"], meta["config"]["model"]["ztsnr"])


def best_checkpoints(folder: Path, k: int, metric: str = "val_loss") -> list[tuple[Path, float]]:
    """The ``k`` checkpoints of a run whose eval figure ``metric`` is best (lowest validation loss,
    highest otherwise), read from the eval.csv that ``loop.eval_every`` writes beside checkpoints/;
    ``folder`` is the run's output folder or its checkpoints folder. (path, figure), by step."""
    from zxl.trainer.metrics import LOWER_IS_BETTER, RANKED

    if metric not in RANKED:
        raise ConfigError(f"--by: {metric!r} is not an eval figure; choose from {', '.join(RANKED)}")
    if k < 1:
        raise ConfigError(f"--best: at least 1, got {k}")
    folder = Path(folder)
    ckpt_dir = folder if checkpoint.step_dirs(folder) else folder / "checkpoints"
    path = ckpt_dir.parent / "eval.csv"
    if not path.is_file():
        raise ConfigError(f"--best: {path} does not exist; train with loop.eval_every (and data.holdout) to log "
                          "the figures it ranks by")  # fmt: skip
    text = path.read_text()
    if text and not text.endswith("\n"):  # a row a kill cut short is not a row
        text = text[: text.rfind("\n") + 1]
    by_step = {int(r["step"]): r for r in csv.DictReader(io.StringIO(text, newline=""))}  # a resumed run's re-eval wins
    have = {int(m.group(1)): p for p in checkpoint.step_dirs(ckpt_dir) if (m := checkpoint.STEP_DIR.match(p.name))}
    scored = [
        (float(r[metric]), step) for step, r in by_step.items() if step in have and r.get(metric) not in (None, "")
    ]
    if not scored:
        raise ConfigError(f"--best: no evaluated step ({', '.join(map(str, sorted(by_step))) or 'none'}) has a "
                          f"checkpoint left in {ckpt_dir} ({', '.join(map(str, sorted(have))) or 'none'}); keep more "
                          "with loop.keep_last, or evaluate at the save steps")  # fmt: skip
    scored.sort(key=lambda x: x[0], reverse=metric not in LOWER_IS_BETTER)
    return [(have[step], value) for value, step in sorted(scored[:k], key=lambda x: x[1])]


def _write_raw(out: Path, state: dict[str, torch.Tensor], metadata: dict, yaml: bool) -> Path:
    """A merged single file, as it came (layout, markers, metadata), written atomically."""
    from safetensors.torch import save_file

    from zxl.sampler.single_file import YAML_V

    with replacing(out, umask=True) as tmp:
        save_file(
            {k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={**metadata, "modelspec.title": out.stem}
        )
    if yaml:
        shutil.copyfile(YAML_V, out.with_suffix(".yaml"))
    return out


def _save_loaded(single: Path, out: Path, config: str | None, v_pred: bool, ztsnr: bool) -> Path:
    from zxl.sampler.pipeline import SDXL

    model = SDXL.load(single, device="cpu", precision="fp32", config=config or None)
    with torch.no_grad():
        return write_diffusers(model, out, v_pred, ztsnr)
