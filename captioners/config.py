"""The caption stage's settings (``caption.*``): which captioner, for which rows, its model."""

from __future__ import annotations

import dataclasses

from zxl.config import num


@dataclasses.dataclass
class CaptionConfig:
    """Natural-language captions for the best-scored images (captioners/)."""

    captioner: str = "template"  # template | hf | none
    min_score: int = num(8, "[1, 9]")  # only ok rows with score >= this are captioned
    model: str = ""  # hf: a local folder or a hub repo id
    family: str = "auto"  # hf: auto | florence2 | blip2 | llava | qwen2-vl
    prompt: str = ""  # hf: empty = the family's own prompt
    max_new_tokens: int = num(128, "[1, 8192]")
    batch_size: int = num(8, "[1, 65536]")
    device: str = "auto"
    precision: str = "auto"  # auto (fp16 on cuda) | fp32 | fp16 | bf16
