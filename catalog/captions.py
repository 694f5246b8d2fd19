"""Training captions from catalog rows (docs/recipe.md "Captions for training").

- the score tag always first: ``score_N``;
- the rating tag (``rating:general`` … by default, the format is configurable) and the year tag
  (``year 2021``);
- then the tag categories in ``caption.tag_order`` (default characters, copyrights, artists,
  general; ``meta`` is left out unless listed). The categories in ``caption.shuffle`` (a contiguous
  run of the order; default general) are shuffled together every time; the categories before them
  stay first and those after them last, in their order — what kohya's ``--keep_tokens_separator``
  allows (a fixed head, the shuffled tags, a fixed tail);
- tag soup: ``score_N, <rating>, <year>, chara, series, artist, tag1, tag2, …``;
- natural language: ``score_N, <caption>``; mixed: ``score_N, <caption>, chara, …, tags…``.
The layout is the curate run's (``caption.tag_order``, ``caption.shuffle``), read from the
catalog's manifest by the trainer and the exports (``layout_of``), so all three write the same.
Rows with a caption draw one of the three styles per sample with the given probabilities; rows
without one always get tag soup. Tags are written with spaces for underscores, as SDXL anime
fine-tunes are prompted (``long hair``), except kaomoji-like tags such as ``^_^``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from zxl.catalog.schema import TAG_CATEGORIES
from zxl.config import ConfigError

STYLES = ("tags", "natural", "mixed")


@dataclass(frozen=True)
class TagLayout:
    """Which tag categories enter a caption, in order, and which of them are shuffled."""

    order: tuple[str, ...] = ("characters", "copyrights", "artists", "general")
    shuffle: tuple[str, ...] = ("general",)

    def __post_init__(self):
        check_layout(list(self.order), list(self.shuffle))

    def parts(self, row: dict, rng: random.Random) -> tuple[list[str], list[str], list[str]]:
        """(fixed head, shuffled, fixed tail) tags of a row, written as captions spell them."""
        head: list[str] = []
        flex: list[str] = []
        tail: list[str] = []
        passed = False  # past the shuffled run
        for category in self.order:
            tags = [tag_text(t) for t in (row.get(TAG_CATEGORIES[category]) or [])]
            if category in self.shuffle:
                flex.extend(tags)
                passed = True
            else:
                (tail if passed else head).extend(tags)
        rng.shuffle(flex)
        return head, flex, tail


def check_layout(order: list[str], shuffle: list[str]) -> None:
    """caption.tag_order and caption.shuffle: known categories, once each, shuffled ones a contiguous run."""
    for key, names in (("caption.tag_order", order), ("caption.shuffle", shuffle)):
        for name in names:
            if name not in TAG_CATEGORIES:
                raise ConfigError(f"{key} names the categories {', '.join(TAG_CATEGORIES)}; got '{name}'")
        if len(set(names)) != len(names):
            raise ConfigError(f"{key} names each category once, got {names}")
    if missing := [n for n in shuffle if n not in order]:
        raise ConfigError(f"caption.shuffle names {missing}, which caption.tag_order leaves out of captions")
    at = sorted(order.index(n) for n in shuffle)
    if at and at[-1] - at[0] != len(at) - 1:
        raise ConfigError(
            f"caption.shuffle must be a contiguous run of caption.tag_order {order} (kohya shuffles one span "
            f"between a fixed head and a fixed tail), got {shuffle}"
        )


DEFAULT_LAYOUT = TagLayout()


def layout_of(manifest: dict) -> TagLayout:
    """The layout a catalog was curated with (its manifest's caption settings); a catalog from before
    the settings existed (v1) had characters then general tags, all shuffled."""
    caption = (manifest.get("config") or {}).get("caption") or {}
    if "tag_order" not in caption:
        return TagLayout(("characters", "general"), ("characters", "general"))
    return TagLayout(tuple(caption["tag_order"]), tuple(caption.get("shuffle") or ()))


def tag_text(tag: str) -> str:
    return tag if len(tag) <= 3 and not tag.isalnum() else tag.replace("_", " ")


def caption_parts(
    row: dict,
    rng: random.Random,
    style_weights: Sequence[float] = (0.5, 0.25, 0.25),
    rating_format: str = "rating:{}",
    year_format: str = "year {}",
    layout: TagLayout = DEFAULT_LAYOUT,
) -> tuple[str, list[str], list[str], str, tuple[list[str], list[str], list[str]]]:
    """(style, score tag, rating and year tags, the sentence or "", the tags as (fixed head, shuffled,
    fixed tail)): the pieces ``build_caption`` joins, drawn from ``rng`` in the same order."""
    head = [f"score_{row['score']}"] if row.get("score") else []
    meta = []
    if row.get("rating"):
        meta.append(rating_format.format(row["rating"]))
    if row.get("year"):
        meta.append(year_format.format(row["year"]))
    tags = layout.parts(row, rng)
    caption = (row.get("caption") or "").strip().rstrip(".")
    style = rng.choices(STYLES, weights=style_weights)[0] if caption else "tags"
    return style, head, meta, caption, tags


def build_caption(
    row: dict,
    rng: random.Random,
    style_weights: Sequence[float] = (0.5, 0.25, 0.25),
    rating_format: str = "rating:{}",
    year_format: str = "year {}",
    layout: TagLayout = DEFAULT_LAYOUT,
) -> str:
    """One training caption for a catalog row (a dict with score, rating, year, the tag columns, caption)."""
    style, head, meta, caption, tags = caption_parts(row, rng, style_weights, rating_format, year_format, layout)
    if style == "natural":
        parts = [*head, caption]
    elif style == "mixed":
        parts = [*head, caption, *tags[0], *tags[1], *tags[2]]
    else:
        parts = [*head, *meta, *tags[0], *tags[1], *tags[2]]
    return ", ".join(p for p in parts if p)


KEEP_SEPARATOR = "|||"


def kohya_caption(row: dict, rng: random.Random, layout: TagLayout = DEFAULT_LAYOUT) -> str:
    """A caption for kohya's ``--keep_tokens_separator "|||" --shuffle_caption``: everything before
    the first separator stays in place — the score, rating and year tags (whichever exist) for every
    style, a natural-language sentence, the layout's fixed head (characters, copyrights, artists) —
    the tags between the separators are shuffled, and those after a second separator (the layout's
    fixed tail, when it has one) stay last. The first separator is always written, since without it
    kohya shuffles every token."""
    style, head, meta, caption, (first, flex, last) = caption_parts(row, rng, layout=layout)
    with_tags = style in ("tags", "mixed")
    fixed = [*head, *meta] + ([caption] if style in ("natural", "mixed") else []) + (first if with_tags else [])
    text = f"{', '.join(p for p in fixed if p)} {KEEP_SEPARATOR} {', '.join(flex if with_tags else [])}"
    if with_tags and last:
        text = f"{text} {KEEP_SEPARATOR} {', '.join(last)}"
    return text.strip()
