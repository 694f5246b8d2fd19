"""Tagger names → classes, in one place; the merge policy; one loaded tagger set per worker.

Policy: ``tag.taggers`` lists taggers in priority order. For each row and field the first tagger
with a value wins (metadata first: it is what the uploaders said; a model fills the gaps), and
``rating_source`` names the tagger the rating came from.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from zxl.config import ConfigError
from zxl.registry import load_class, per_process
from zxl.taggers.base import COLUMNS, TAG_FIELDS, Tagger
from zxl.taggers.config import TagConfig

TAGGERS = {"metadata": "zxl.taggers.metadata:MetadataTagger", "wd": "zxl.taggers.wd:WDTagger"}


def tagger_class(name: str) -> type[Tagger]:
    return load_class(TAGGERS, name, "tag.taggers")


def check(cfg: TagConfig) -> None:
    if not cfg.taggers:
        raise ConfigError("tag.taggers is empty: name at least one of " + ", ".join(TAGGERS))
    for name in cfg.taggers:
        tagger_class(name).check(cfg)


def get_taggers(cfg: TagConfig) -> list[Tagger]:
    """The taggers for ``cfg``, built once per process (so once per Dask worker)."""
    return per_process("taggers", cfg, lambda: [tagger_class(n)(cfg) for n in cfg.taggers])


def merge(results: list[tuple[str, pd.DataFrame]], n: int) -> pd.DataFrame:
    """Combine (source, columns) per tagger, first value wins; adds ``rating_source``."""
    out: dict[str, list[Any]] = {c: [None] * n for c in (*COLUMNS, "rating_source")}
    problems: list[list[str]] = [[] for _ in range(n)]
    for source, df in results:
        for field in ("rating", "year", *TAG_FIELDS):
            if field not in df.columns:  # a tagger that has nothing of a category may leave its column out
                continue
            values = df[field].tolist()
            for i in range(n):
                if out[field][i] is None and values[i] is not None:
                    out[field][i] = values[i]
                    if field == "rating":
                        out["rating_source"][i] = source
        for i, p in enumerate(df["problem"].tolist()):
            if p:
                problems[i].append(f"{source}: {p}")
    out["problem"] = ["; ".join(p) if p else None for p in problems]
    return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in out.items()})
