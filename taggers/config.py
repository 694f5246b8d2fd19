"""The tag stage's settings (``tag.*``): which taggers, the source columns they read, the WD model."""

from __future__ import annotations

import dataclasses

from zxl.config import num


@dataclasses.dataclass
class TagConfig:
    """Rating, year, general and character tags (taggers/)."""

    taggers: list[str] = dataclasses.field(default_factory=lambda: ["metadata"])  # first with a value wins
    # metadata: the source columns holding each field (a booru export by default)
    rating_column: str = "rating"
    created_at_column: str = "created_at"
    general_column: str = "tag_string_general"
    character_column: str = "tag_string_character"
    separator: str = " "  # between tags in a tag string (booru: a space; many CSVs: ", ")
    exif_year: bool = True  # no date in the source: take the year of EXIF DateTimeOriginal
    # wd: a SmilingWolf WD tagger (a folder or hub repo with model.onnx and selected_tags.csv)
    wd_model: str = ""
    wd_general_threshold: float = num(0.35, "[0, 1]")  # v2 models; each v3 model publishes its own P=R threshold
    wd_character_threshold: float = num(0.85, "[0, 1]")
    wd_mcut: bool = False  # Maximum Cut Thresholding instead of the fixed thresholds
    batch_size: int = num(32, "[1, 65536]")
    device: str = "auto"  # auto (CUDA execution provider when there is one) | cpu | cuda
