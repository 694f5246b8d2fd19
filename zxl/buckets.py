"""The recipe's aspect buckets (docs/recipe.md "Aspect buckets").

For w from 768 to 1344 in steps of 64: h = min(1344, floor(1024² / w / 64) · 64), plus each
transpose — exactly the eleven sizes 768×1344 … 1344×768. An image goes to the bucket nearest in
aspect ratio, measured as |log(w/h) − log(bw/bh)| so that a shape and its transpose are equally
far from the square bucket.
"""

from __future__ import annotations

import math

import numpy as np


def recipe_buckets(area: int = 1024 * 1024, lo: int = 768, hi: int = 1344, step: int = 64) -> list[tuple[int, int]]:
    """(width, height) pairs, sorted by width."""
    sizes = set()
    for w in range(lo, hi + 1, step):
        h = min(hi, (area // w // step) * step)
        sizes.add((w, h))
        sizes.add((h, w))
    return sorted(sizes)


BUCKETS = recipe_buckets()
_LOG_ASPECTS = np.array([math.log(w / h) for w, h in BUCKETS])


def nearest_bucket(width: int, height: int) -> tuple[int, int]:
    """The bucket nearest in aspect ratio to a width × height image."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    i = int(np.argmin(np.abs(_LOG_ASPECTS - math.log(width / height))))
    return BUCKETS[i]


def bucket_name(width: int, height: int) -> str:
    w, h = nearest_bucket(width, height)
    return f"{w}x{h}"
