"""The one mechanism behind every family's name → class table (scorers, taggers, captioners).

Tables map a config name to ``"module:Class"``, imported on first use, so naming one member
never imports the others' heavy dependencies (torch, open_clip, onnxruntime, transformers).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, ClassVar

from zxl.config import ConfigError, config_hash

_LOADED: dict[tuple[str, str], Any] = {}


class Member:
    """What every family member (scorer, tagger, captioner) shares besides its own method."""

    # A member that runs a neural network: its stage's tasks ask for run.model_resources (a GPU worker).
    runs_model: ClassVar[bool] = False
    # The libraries it imports to run: a LocalCluster's workers start with them imported (see
    # pipeline/executor.py), instead of each worker importing them again (open_clip: ~12 s of CPU).
    imports: ClassVar[tuple[str, ...]] = ()
    # What it computes from the same input, versioned: in its stage's hash, so a change in how a member
    # reads or measures images redoes that stage (and what reads it) on the next run.
    version: ClassVar[str] = "1"
    # The smallest side its input needs (CLIP: 224, a WD tagger: 448): its stage decodes each image
    # reduced to that (zxl.images.decode_reduced: a JPEG at 1/2..1/8 scale). None: the stored image whole.
    input_side: int | None = None
    # True: input_side bounds only the long side (the member pads the image to a square first, as the WD
    # taggers do), so a 2:3 image may be reduced further.
    input_long: ClassVar[bool] = False

    def __init__(self, cfg: Any = None) -> None:
        """Every member is built from its family's config (``score``, ``tag``, ``caption``); the registries
        call ``cls(cfg)``, and members with more to set up define their own ``__init__``."""
        self.cfg = cfg

    @classmethod
    def check(cls, cfg) -> None:
        """Raise ConfigError for a config this member cannot run, before any work starts."""
        return None  # nothing to check unless a member needs files or devices

    @classmethod
    def references(cls, cfg) -> dict[str, str]:
        """The models this member loads for ``cfg``, by config key, for the manifest."""
        return {}


def per_process(family: str, cfg, build: Callable[[], Any]) -> Any:
    """``build()`` once per process (so once per Dask worker) for each family and config; one
    config per family stays resident, so a new one frees the model of the last."""
    key = config_hash(cfg)
    if (family, key) not in _LOADED:
        for k in [k for k in _LOADED if k[0] == family]:
            del _LOADED[k]
        _LOADED[(family, key)] = build()
    return _LOADED[(family, key)]


def load_class(table: dict[str, str], name: str, key: str) -> type:
    """The class for ``name``; a ConfigError naming ``key`` and the choices otherwise."""
    try:
        module, cls = table[name].split(":")
    except KeyError:
        raise ConfigError(f"{key} must be one of {', '.join(table)}, got '{name}'") from None
    return getattr(importlib.import_module(module), cls)
