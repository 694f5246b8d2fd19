"""The scorer protocol: one family, one signature.

A scorer turns images into one raw aesthetic number each. It is split in two so that the stage
can overlap decoding with compute:

- ``prepare(image) -> item``: per image, on the CPU, thread-safe (runs in loader threads while
  the model works on the previous batch): resize, crop, normalize, or measure;
- ``score(batch) -> np.ndarray``: a stacked batch of items (``collate``) → float32 scores [N].

A scorer that computes image embeddings on the way is an ``EmbeddingScorer``: it offers
``embed(batch) -> np.ndarray [N, D]`` (L2-normalized, float32) and
``score_embeddings(emb) -> np.ndarray [N]``; ``score`` is their composition, and the stage keeps
the embeddings for dedup and later scorers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from zxl.registry import Member


class Scorer(Member, ABC):
    name: ClassVar[str]
    embeds: ClassVar[bool] = False

    @abstractmethod
    def prepare(self, image: Image.Image) -> Any: ...

    def collate(self, items: list[Any]) -> Any:
        return np.stack(items)

    @abstractmethod
    def score(self, batch: Any) -> np.ndarray: ...

    def score_images(self, images: list[Image.Image]) -> np.ndarray:
        """Convenience for callers with PIL images in hand (``zxl score``, tests)."""
        if not images:
            return np.zeros(0, np.float32)
        return np.asarray(self.score(self.collate([self.prepare(im) for im in images])), np.float32)


class EmbeddingScorer(Scorer):
    """A scorer whose score is a head over image embeddings it also hands to the stage."""

    embeds: ClassVar[bool] = True

    @abstractmethod
    def embed(self, batch: Any) -> np.ndarray: ...

    @abstractmethod
    def score_embeddings(self, embeddings: np.ndarray) -> np.ndarray: ...

    def score(self, batch: Any) -> np.ndarray:
        return self.score_embeddings(self.embed(batch))
