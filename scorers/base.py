"""The scorer protocol: one family, one signature.

A scorer turns images into one raw aesthetic number each. It is split in two so that the stage
can overlap decoding with compute:

- ``prepare(image) -> item``: per image, on the CPU, thread-safe (runs in loader threads while
  the model works on the previous batch): resize, crop, normalize, or measure;
- ``score(batch) -> np.ndarray``: a stacked batch of items (``collate``) → float32 scores [N].

A scorer that computes image embeddings on the way (``embeds = True``) also offers
``embed(batch) -> np.ndarray [N, D]`` (L2-normalized, float32) and
``score_embeddings(emb) -> np.ndarray [N]``; ``score`` is their composition, and the stage keeps
the embeddings for dedup and later scorers.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from PIL import Image


class Scorer:
    name: ClassVar[str]
    embeds: ClassVar[bool] = False

    def prepare(self, image: Image.Image) -> Any:
        raise NotImplementedError  # every member defines it; the base only states the contract

    def collate(self, items: list[Any]) -> Any:
        return np.stack(items)

    def score(self, batch: Any) -> np.ndarray:
        if self.embeds:
            return self.score_embeddings(self.embed(batch))
        raise NotImplementedError

    def embed(self, batch: Any) -> np.ndarray:
        raise TypeError(f"scorer {self.name!r} makes no embeddings")

    def score_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        raise TypeError(f"scorer {self.name!r} makes no embeddings")

    @classmethod
    def check(cls, cfg) -> None:
        """Raise ConfigError for a config this scorer cannot run, before any work starts."""

    @classmethod
    def references(cls, cfg) -> dict[str, str]:
        """The models this scorer loads for ``cfg``, by config key, for the manifest."""
        return {}

    def score_images(self, images: list[Image.Image]) -> np.ndarray:
        """Convenience for callers with PIL images in hand (``zxl score``, tests)."""
        if not images:
            return np.zeros(0, np.float32)
        return np.asarray(self.score(self.collate([self.prepare(im) for im in images])), np.float32)
