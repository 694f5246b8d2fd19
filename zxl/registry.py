"""The one mechanism behind every family's name → class table (scorers, taggers, captioners).

Tables map a config name to ``"module:Class"``, imported on first use, so naming one member
never imports the others' heavy dependencies (torch, open_clip, onnxruntime, transformers).
"""

from __future__ import annotations

import importlib

from zxl.config import ConfigError


def load_class(table: dict[str, str], name: str, key: str) -> type:
    """The class for ``name``; a ConfigError naming ``key`` and the choices otherwise."""
    try:
        module, cls = table[name].split(":")
    except KeyError:
        raise ConfigError(f"{key} must be one of {', '.join(table)}, got '{name}'") from None
    return getattr(importlib.import_module(module), cls)
