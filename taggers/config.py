"""The tag settings (``tag.*``): which taggers, the source columns they read, the WD model, and the
rules a curator applies to the tags (docs/tagging.md).

The tag stage reads the source's tags as they are; the rules (``RULE_KEYS``) are applied by the
global ``tagrules`` step after dedup, so changing a rule redoes that step, the captions and the
catalog, and nothing is fetched, scored or tagged again."""

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
    copyright_column: str = "tag_string_copyright"
    artist_column: str = "tag_string_artist"
    meta_column: str = "tag_string_meta"  # highres, commentary_request, bad_id …: their own column, out of captions
    separator: str = " "  # between tags in a tag string (booru: a space; many CSVs: ", ")
    exif_year: bool = True  # no date in the source: take the year of EXIF DateTimeOriginal
    # wd: a SmilingWolf WD tagger (a folder or hub repo with model.onnx and selected_tags.csv)
    wd_model: str = ""
    wd_general_threshold: float = num(0.35, "[0, 1]")  # v2 models; each v3 model publishes its own P=R threshold
    wd_character_threshold: float = num(0.85, "[0, 1]")
    wd_mcut: bool = False  # Maximum Cut Thresholding instead of the fixed thresholds
    batch_size: int = num(32, "[1, 65536]")
    device: str = "auto"  # auto (CUDA execution provider when there is one) | cpu | cuda
    # The rules (taggers/rules.py), in the order they apply. Tables in Danbooru's export shape
    # (antecedent_name, consequent_name, status; only active rows), Parquet or CSV; "" = none.
    aliases: str = ""  # every spelling -> its consequent, transitively (kohya: --tag_replacement, by hand)
    implications: str = ""  # child -> parent (witch_hat -> hat), for drop_implied
    replace: dict[str, str] = dataclasses.field(default_factory=dict)  # old: new, after aliases ("" drops)
    exclude: list[str] = dataclasses.field(default_factory=list)  # names and * wildcards (kohya: --undesired_tags)
    drop_implied: bool = False  # drop every tag another tag of the same row implies (hat beside witch_hat)
    min_count: int = num(1, "[1, inf)")  # drop tags carried by fewer trainable rows than this (1 = keep all)
    move_meta: bool = True  # a tag the meta column holds anywhere moves there from a string that folds it in


# What the global tagrules step applies: not part of the tag stage's hash.
RULE_KEYS = frozenset({"aliases", "implications", "replace", "exclude", "drop_implied", "min_count", "move_meta"})
