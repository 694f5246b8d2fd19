"""Training captions from catalog rows (docs/recipe.md "Captions for training").

- the score tag always first: ``score_N``;
- the rating tag (``rating:general`` … by default, the format is configurable) and the year tag
  (``year 2021``);
- tag soup: ``score_N, <rating>, <year>, tag1, tag2, …`` with the tags shuffled every time;
- natural language: ``score_N, <caption>``; mixed: ``score_N, <caption>, tags…``.
Rows with a caption draw one of the three styles per sample with the given probabilities; rows
without one always get tag soup. Tags are written with spaces for underscores, as SDXL anime
fine-tunes are prompted (``long hair``), except kaomoji-like tags such as ``^_^``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

STYLES = ("tags", "natural", "mixed")


def tag_text(tag: str) -> str:
    return tag if len(tag) <= 3 and not tag.isalnum() else tag.replace("_", " ")


def caption_parts(
    row: dict,
    rng: random.Random,
    style_weights: Sequence[float] = (0.5, 0.25, 0.25),
    rating_format: str = "rating:{}",
    year_format: str = "year {}",
) -> tuple[str, list[str], list[str], str, list[str]]:
    """(style, score tag, rating and year tags, the sentence or "", the tags shuffled): the pieces
    ``build_caption`` joins, drawn from ``rng`` in the same order."""
    head = [f"score_{row['score']}"] if row.get("score") else []
    meta = []
    if row.get("rating"):
        meta.append(rating_format.format(row["rating"]))
    if row.get("year"):
        meta.append(year_format.format(row["year"]))
    tags = [tag_text(t) for t in (row.get("characters") or [])] + [tag_text(t) for t in (row.get("tags") or [])]
    rng.shuffle(tags)
    caption = (row.get("caption") or "").strip().rstrip(".")
    style = rng.choices(STYLES, weights=style_weights)[0] if caption else "tags"
    return style, head, meta, caption, tags


def build_caption(
    row: dict,
    rng: random.Random,
    style_weights: Sequence[float] = (0.5, 0.25, 0.25),
    rating_format: str = "rating:{}",
    year_format: str = "year {}",
) -> str:
    """One training caption for a catalog row (a dict with score, rating, year, tags, characters, caption)."""
    style, head, meta, caption, tags = caption_parts(row, rng, style_weights, rating_format, year_format)
    if style == "natural":
        parts = [*head, caption]
    elif style == "mixed":
        parts = [*head, caption, *tags]
    else:
        parts = [*head, *meta, *tags]
    return ", ".join(p for p in parts if p)


KEEP_SEPARATOR = "|||"


def kohya_caption(row: dict, rng: random.Random) -> str:
    """A caption for kohya's ``--keep_tokens_separator "|||" --shuffle_caption``: everything before
    the separator stays in place — the score, rating and year tags (whichever exist) for every style,
    and a natural-language sentence — and only the tags after it are shuffled; the separator is
    always written, since without it kohya shuffles every token."""
    style, head, meta, caption, tags = caption_parts(row, rng)
    fixed = [*head, *meta] + ([caption] if style in ("natural", "mixed") else [])
    flex = tags if style in ("tags", "mixed") else []
    return f"{', '.join(p for p in fixed if p)} {KEEP_SEPARATOR} {', '.join(flex)}".strip()
