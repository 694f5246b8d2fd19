"""The score stage's settings (``score.*``): which scorer, its weights, batching and device."""

from __future__ import annotations

import dataclasses

from zxl.config import num


@dataclasses.dataclass
class ScoreConfig:
    """The embed + score stage (scorers/)."""

    scorer: str = "technical"  # a name from scorers.registry: technical | clip-mlp
    batch_size: int = num(32, "[1, 65536]")  # images per model call
    loader_threads: int = num(4, "[1, 256]")  # decode + prepare threads per worker, overlapping the model
    device: str = "auto"  # auto (cuda when there is one) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (fp16 on cuda, fp32 on cpu) | fp32 | fp16 | bf16
    clip_model: str = "ViT-L-14"  # an open_clip architecture name
    clip_weights: str = ""  # open_clip checkpoint: a local file, or a pretrained tag / hf-hub: id
    head_weights: str = ""  # aesthetic head: a local .pth/.safetensors, or org/name/file on the hub
    head_layout: str = "auto"  # auto | laion (improved-aesthetic-predictor) | waifu-v3
