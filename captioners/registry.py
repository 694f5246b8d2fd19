"""Captioner names → classes, in one place; one loaded captioner per worker process."""

from __future__ import annotations

from zxl.captioners.base import Captioner
from zxl.captioners.config import CaptionConfig
from zxl.config import ConfigError
from zxl.registry import load_class, per_process

CAPTIONERS = {"template": "zxl.captioners.template:TemplateCaptioner", "hf": "zxl.captioners.hf:HFCaptioner"}
OFF = "none"


def captioner_class(name: str) -> type[Captioner] | None:
    return None if name == OFF else load_class({**CAPTIONERS, OFF: ""}, name, "caption.captioner")


def check(cfg: CaptionConfig) -> None:
    cls = captioner_class(cfg.captioner)
    if not 1 <= cfg.min_score <= 10:
        raise ConfigError(f"caption.min_score must be 1..9 (10 captions nothing), got {cfg.min_score}")
    if cls is not None:
        cls.check(cfg)


def get_captioner(cfg: CaptionConfig) -> Captioner | None:
    cls = captioner_class(cfg.captioner)
    return per_process("captioner", cfg, lambda: cls(cfg) if cls is not None else None)
