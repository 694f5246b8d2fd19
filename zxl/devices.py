"""Devices and precisions by name, for every stage and command that runs a model.

``option`` is the setting the name came from (``score.device``, ``caption.device``, ``--device``),
so an error points at what the user typed.
"""

from __future__ import annotations

import torch

from zxl.config import ConfigError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(name: str, option: str = "device") -> torch.device:
    """``auto`` is CUDA when there is one, else the CPU; a CUDA name on a machine without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{option} must be auto, cpu, cuda or cuda:N, got '{name}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option} is '{name}' but this machine has no CUDA device; use auto or cpu")
    return dev


def pick_dtype(name: str, device: torch.device, option: str = "precision") -> torch.dtype:
    """``auto`` is fp16 on CUDA and fp32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"{option} must be auto, fp32, fp16 or bf16, got '{name}'")
    return DTYPES[name]
