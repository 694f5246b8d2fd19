"""Tagging and captioning benchmarks: the metadata tagger and the template captioner at 950k
synthetic rows, and the WD adapter (tiny ONNX model, CPU) against its preprocessing alone."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from zxl.demo_corpus import CHARACTERS, GENERAL_TAGS
from zxl.taggers.config import TagConfig


def synthetic_source(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tags = np.array(GENERAL_TAGS)
    years = rng.integers(2005, 2026, n)
    return pd.DataFrame(
        {
            "rating": rng.choice(["g", "s", "q", "e"], n),
            "created_at": [
                f"{y}-0{m}-1{d}T0{h}:30:00.000+09:00"
                for y, m, d, h in zip(
                    years, rng.integers(1, 10, n), rng.integers(0, 10, n), rng.integers(0, 10, n), strict=True
                )
            ],  # fmt: skip
            "tag_string_general": [" ".join(rng.choice(tags, 8, replace=False)) for _ in range(n)],
            "tag_string_character": rng.choice(["", *CHARACTERS], n),
        }
    )


def _pandas_baseline(rows: pd.DataFrame) -> float:
    """What a pandas user writes for the same fields, vectorized: a rating map, the year as the
    first four characters (no offset handling, no validation), tags split on spaces."""
    t0 = time.perf_counter()
    rows["rating"].str.lower().map({"g": "general", "s": "sensitive", "q": "questionable", "e": "explicit"})
    rows["created_at"].str.slice(0, 4).astype(int)
    rows["tag_string_general"].str.split()
    rows["tag_string_character"].str.split()
    return time.perf_counter() - t0


def _join_baseline(tagged: pd.DataFrame) -> float:
    """The cheapest caption there is: the tags joined with commas."""
    t0 = time.perf_counter()
    [", ".join(t) for t in tagged["tags"]]
    return time.perf_counter() - t0


def metadata_and_template(quick: bool = False) -> list[dict]:
    from zxl.captioners.template import TemplateCaptioner
    from zxl.taggers.metadata import MetadataTagger

    n = 95_000 if quick else 950_000
    rows = synthetic_source(n)
    t0 = time.perf_counter()
    tagged = MetadataTagger(TagConfig()).tag(None, rows)
    t_meta = time.perf_counter() - t0
    t_pandas = _pandas_baseline(rows)
    t0 = time.perf_counter()
    captions = TemplateCaptioner().caption(None, tagged)
    t_caption = time.perf_counter() - t0
    assert len(captions) == n
    t_join = _join_baseline(tagged)
    return [
        {
            "name": f"metadata tagger, {n:,} rows (vs pandas string ops without validation)",
            "ours": n / t_meta,
            "baseline": n / t_pandas,
            "baseline_name": "pandas: rating map, year = first 4 chars, str.split",
            "unit": "rows/s",
            "ratio": t_pandas / t_meta,
            "target": "-",
        },
        {
            "name": f"template captioner, {n:,} rows (vs tags joined by commas)",
            "ours": n / t_caption,
            "baseline": n / t_join,
            "baseline_name": "', '.join(tags) per row",
            "unit": "rows/s",
            "ratio": t_join / t_caption,
            "target": "-",
        },
    ]


def wd(quick: bool = False) -> dict:
    from zxl.taggers.wd import WDTagger, prepare
    from zxl.testing import build_wd_model

    images = [Image.new("RGB", (768 + i, 1024), (i * 3 % 255, 90, 160)) for i in range(32 if quick else 128)]
    with tempfile.TemporaryDirectory() as d:
        build_wd_model(Path(d) / "wd", size=448)
        tagger = WDTagger(TagConfig(taggers=["wd"], wd_model=str(Path(d) / "wd"), batch_size=32))
        rows = pd.DataFrame(index=range(len(images)))
        tagger.tag(images[:2], rows.iloc[:2])  # warm-up
        t0 = time.perf_counter()
        tagger.tag(images, rows)
        t_all = time.perf_counter() - t0
        t0 = time.perf_counter()
        for im in images:
            prepare(im, 448)
        t_prep = time.perf_counter() - t0
    return {
        "name": f"wd tagger, tiny ONNX model, 448 px input, CPU ({len(images)} images)",
        "ours": len(images) / t_all,
        "baseline": len(images) / t_prep,
        "baseline_name": "the WD preprocessing alone",
        "unit": "images/s",
        "ratio": t_prep / t_all,
        "target": "share of the preprocessing limit",
    }
