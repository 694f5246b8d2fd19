"""``metadata``: rating, year and tags from the source's own columns (docs/recipe.md "Source metadata").

- rating: booru letters g/s/q/e and the spelled-out words (general, sensitive, questionable,
  explicit; the pre-2022 Danbooru "safe" is today's general) → the four classes;
- year: from ``created_at`` in the source's own offset (2011-01-01T00:30+09:00 is 2011; a timestamp
  column arrives as ISO text in its own offset, pipeline/sources.py), a date, or a Unix timestamp
  (UTC); years outside 1990 … next year are rejected as clock errors;
- tags: the general, character, copyright, artist and meta tag strings split on ``tag.separator``. A string that uses
  another separator (commas, semicolons, pipes where spaces were configured) is not guessed at:
  its tags stay null and the row's problem says why.

Columns are named in config (``tag.rating_column`` …), so any source shape works; a column the
source lacks simply gives nulls. Nothing here raises on bad data.
"""

from __future__ import annotations

import datetime as dt
import re

import pandas as pd

from zxl.taggers.base import Tagger, empty

RATING_WORDS = {
    "g": "general", "general": "general", "safe": "general", "sfw": "general",
    "s": "sensitive", "sensitive": "sensitive",
    "q": "questionable", "questionable": "questionable",
    "e": "explicit", "explicit": "explicit", "nsfw": "explicit",
}  # fmt: skip
ODD_SEPARATORS = (",", ";", "|", "\t")
_NEXT_YEAR = dt.date.today().year + 1


def parse_rating(value) -> tuple[str | None, str | None]:
    if value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == "":
        return None, None
    word = RATING_WORDS.get(str(value).strip().lower())
    return (word, None) if word else (None, f"unknown rating {str(value)[:40]!r}")


def parse_year(value) -> tuple[int | None, str | None]:
    """The year in the timestamp's own offset."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == "":
        return None, None
    try:
        if isinstance(value, (int, float)) or str(value).strip().isdigit():
            when = dt.datetime.fromtimestamp(float(value), dt.UTC)
        elif isinstance(value, (dt.datetime, dt.date, pd.Timestamp)):  # a timestamp or date column read as such
            when = value
        else:
            text = str(value).strip().replace("Z", "+00:00")
            when = dt.datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        return None, f"unparseable date {str(value)[:40]!r}"
    if not 1990 <= when.year <= _NEXT_YEAR:
        return None, f"implausible year {when.year}"
    return when.year, None


def split_tags(value, separator: str) -> tuple[list[str] | None, str | None]:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None, None
    text = str(value).strip()
    if not text:
        return [], None
    for odd in ODD_SEPARATORS:
        if odd != separator.strip() and odd in text and (separator.strip() or odd != "\t"):
            return None, f"tag string uses {odd!r} between tags, expected {separator!r} (tag.separator)"
    parts = text.split(separator) if separator.strip() else re.split(r"\s+", text)
    return [t.strip() for t in parts if t.strip()], None


class MetadataTagger(Tagger):
    name = "metadata"

    def __init__(self, cfg):
        self.cfg = cfg

    def tag(self, images, rows: pd.DataFrame) -> pd.DataFrame:
        cfg = self.cfg
        out = empty(len(rows))
        problems: list[list[str]] = [[] for _ in range(len(rows))]

        def column(name):
            return rows[name].tolist() if name and name in rows.columns else [None] * len(rows)

        for field, col, parse in (
            ("rating", cfg.rating_column, parse_rating),
            ("year", cfg.created_at_column, parse_year),
            ("tags", cfg.general_column, lambda v: split_tags(v, cfg.separator)),
            ("characters", cfg.character_column, lambda v: split_tags(v, cfg.separator)),
            ("copyrights", cfg.copyright_column, lambda v: split_tags(v, cfg.separator)),
            ("artists", cfg.artist_column, lambda v: split_tags(v, cfg.separator)),
            ("meta", cfg.meta_column, lambda v: split_tags(v, cfg.separator)),
        ):
            values = []
            for i, raw in enumerate(column(col)):
                value, problem = parse(raw)
                values.append(value)
                if problem:
                    problems[i].append(f"{field}: {problem}")
            out[field] = pd.Series(values, dtype=object)  # ints stay ints beside None
        out["problem"] = ["; ".join(p) if p else None for p in problems]
        return out
