"""Checkpoints: written atomically, the last K kept, resumed exactly; merged; exported.

A checkpoint is a folder ``<output>/checkpoints/step-00000500/``:
- ``model.safetensors``: the trainable weights in fp32 under ``unet.``, ``text_encoder.``,
  ``text_encoder_2.`` (and ``ema.unet.`` with EMA), diffusers names;
- ``state.pt``: optimizers, gradient scaler, learning-rate schedule, the adaptive weighting net
  and its optimizer, RNG states, the position in the epoch (plain tensors and numbers, so it loads
  with ``torch.load(weights_only=True)``);
- ``meta.json``: step, epoch, position, the resolved config.
It is written under a temporary name and renamed, so a folder with a final name is always whole;
a failed write (a full disk, an unwritable folder) removes the temporary folder and says that the
previous checkpoint is intact. Older checkpoints are removed only after the new one is in place.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from zxl.config import ConfigError
from zxl.files import replacing
from zxl.models import read_safetensors

STEP_DIR = re.compile(r"^step-(\d{8})$")
PARTS = ("unet", "text_encoder", "text_encoder_2")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says which and what is left intact."""


def step_dirs(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def latest(folder: Path) -> Path | None:
    dirs = step_dirs(folder)
    return dirs[-1] if dirs else None


def save(folder: Path, step: int, weights: dict[str, torch.Tensor], state: dict, meta: dict, keep: int) -> Path:
    folder = Path(folder)
    final = folder / f"step-{step:08d}"
    previous = latest(folder)
    try:
        with replacing(final, folder=True, umask=True) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / "model.safetensors")
            torch.save(state, tmp / "state.pt")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    except OSError as e:
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write checkpoint {final}: {e.strerror or e}; {kept}") from e
    for old in step_dirs(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(weights, state, meta) of a checkpoint folder."""
    path = Path(path)
    for name in ("model.safetensors", "state.pt", "meta.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is not a zxl checkpoint (no {name})")
    try:
        weights = load_file(path / "model.safetensors")
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        meta = json.loads((path / "meta.json").read_text())
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one line naming the checkpoint
        why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise CheckpointError(
            f"--resume {path}: the checkpoint does not load ({why}); resume from an earlier one (--resume FOLDER)"
        ) from None
    return weights, state, meta


def read_meta(folder: Path, option: str = "") -> dict:
    """The ``meta.json`` of a checkpoint folder, with what ``zxl merge`` and ``zxl eval`` read of it
    (``config.model``: ``v_pred``, ``ztsnr``, ``config``) checked. Anything missing or unreadable is
    one ConfigError naming the file (after ``option``, the flag that gave the folder, when given)."""
    path = Path(folder) / "meta.json"
    where = f"{option}: {path}" if option else str(path)
    if not path.is_file():
        raise ConfigError(f"{where} is missing (a zxl checkpoint folder holds model.safetensors, state.pt and "
                          "meta.json)")  # fmt: skip
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise ConfigError(f"{where} does not load ({why})") from None
    written = "the resolved config that zxl train writes into every checkpoint"
    config = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(f"{where} has no 'config' ({written}); not a checkpoint of zxl train")
    model = config.get("model")
    missing = [k for k in ("v_pred", "ztsnr") if not isinstance(model, dict) or not isinstance(model.get(k), bool)]
    if missing or not isinstance(model, dict):  # not a dict: both are missing
        raise ConfigError(f"{where} has no {' or '.join(f'config.model.{k}' for k in missing)} (true or false, in "
                          f"{written})")  # fmt: skip
    if not isinstance(model.get("config") or "", str):
        raise ConfigError(f"{where}: config.model.config must be a string (a diffusers folder, or empty)")
    return meta


def split(weights: dict[str, torch.Tensor], ema: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """{'unet': {...}, 'text_encoder': {...}, …}; ``ema`` takes the U-Net from the EMA copy when there is one."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        part, _, name = key.partition(".")
        if part == "ema":
            continue
        parts.setdefault(part, {})[name] = value
    if ema and any(k.startswith("ema.unet.") for k in weights):
        parts["unet"] = {k[len("ema.unet.") :]: v for k, v in weights.items() if k.startswith("ema.unet.")}
    return parts


def load_into(model, parts: dict[str, dict[str, torch.Tensor]]):
    """Load a checkpoint's parts (``split``) into an SDXL model: the U-Net, and the text encoders when
    the checkpoint trained them. The one place train, export and evaluate do it; returns the model."""
    model.unet.load_state_dict(parts["unet"])
    if "text_encoder" in parts:
        model.text_encoder.load_state_dict(parts["text_encoder"])
        model.text_encoder_2.load_state_dict(parts["text_encoder_2"])
    return model


def base_with(parts: dict[str, dict[str, torch.Tensor]], base: str, config: str | None = None):
    """The base model (fp32, on the CPU) with a checkpoint's trained parts loaded into it."""
    from zxl.sampler.pipeline import SDXL

    return load_into(SDXL.load(base, device="cpu", precision="fp32", config=config or None), parts)


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of a checkpoint folder or a single-file SDXL model, and which of the two it is."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise ConfigError(f"{path}: neither a zxl checkpoint folder nor a .safetensors file")
        return read_safetensors(path / "model.safetensors", "zxl merge"), "checkpoint"
    if path.suffix != ".safetensors" or not path.is_file():
        raise ConfigError(f"{path}: neither a zxl checkpoint folder nor a .safetensors file")
    return read_safetensors(path, "zxl merge"), "single-file"


def merge(paths: list[Path], weights: list[float] | None = None) -> tuple[dict[str, torch.Tensor], str, dict]:
    """The weighted average (uniform by default) of checkpoints of one model, computed in fp32 and
    cast back to each tensor's dtype (docs/recipe.md "Checkpoint merging"). Empty marker tensors
    (``v_pred``, ``ztsnr``) are carried over."""
    if not paths:
        raise ConfigError("zxl merge: give at least one checkpoint")
    w = [1.0] * len(paths) if not weights else list(weights)
    if len(w) != len(paths):
        raise ConfigError(f"--weights: {len(w)} weights for {len(paths)} checkpoints")
    if not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
        raise ConfigError(f"--weights: non-negative weights with a positive sum, all finite; got "
                          f"{', '.join(f'{x:g}' for x in w)}")  # fmt: skip
    total = sum(w)
    acc: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    kind = ""
    for i, (path, wi) in enumerate(zip(paths, w, strict=True)):
        sd, k = read_weights(path)
        if i == 0:
            kind, dtypes = k, {n: t.dtype for n, t in sd.items()}
        elif k != kind or set(sd) != set(dtypes):
            raise ConfigError(f"{path}: its tensors differ from {paths[0]}'s; merge checkpoints of one model")
        for name, t in sd.items():
            if t.numel() == 0:
                acc[name] = t
                continue
            contrib = t.to(torch.float32) * (wi / total)
            acc[name] = contrib if i == 0 else acc[name] + contrib
    metadata = {}
    if kind == "single-file":
        with safe_open(paths[0], "pt") as f:
            metadata = f.metadata() or {}
    return {n: t.to(dtypes[n]) for n, t in acc.items()}, kind, metadata
