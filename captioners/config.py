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
    # Training captions (catalog/captions.py; the trainer and the kohya/json exports read these from the
    # catalog's manifest): the tag categories that enter a caption, in order, after the score, rating and
    # year tags; and those whose tags are shuffled (a contiguous run of tag_order: what comes before stays
    # first, what comes after stays last, as kohya's keep_tokens_separator allows). meta is left out.
    tag_order: list[str] = dataclasses.field(default_factory=lambda: ["characters", "copyrights", "artists", "general"])
    shuffle: list[str] = dataclasses.field(default_factory=lambda: ["general"])


# Read downstream from the manifest: not part of the caption stage's hash.
LAYOUT_KEYS = frozenset({"tag_order", "shuffle"})
