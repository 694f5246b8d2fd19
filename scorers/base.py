"""The scorer protocol: one family, one signature.

A scorer turns images into one raw aesthetic number each. It is split in two so that the stage
can overlap decoding with compute:

- ``prepare(image) -> item``: per image, on the CPU, thread-safe (runs in loader threads while
  the model works on the previous batch): resize, crop, normalize, or measure;
- ``score(batch) -> np.ndarray``: a stacked batch of items (``collate``) → float32 scores [N].

A scorer that computes image embeddings on the way is an ``EmbeddingScorer``: it offers
``embed(batch) -> np.ndarray [N, D]`` (L2-normalized, float32) and
``score_embeddings(emb) -> np.ndarray [N]``; ``score`` is their composition, and the stage keeps
the embeddings for dedup and later scorers. A scorer that is not a head over its embeddings may
still store some (``embeds`` and ``score_and_embed``): the technical scorer stores the weight-free
embedding of scorers/pixels.py, so a run without CLIP still has embeddings to fit a taste head on
and to cluster. ``embedding_kind`` names them in the stored files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol, runtime_checkable

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

    @property
    def embedding_kind(self) -> str:
        """What its embeddings are (the ``zxl.embedding`` of the stored files); "" when it makes none."""
        return ""

    def score_and_embed(self, batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores [N] and, for a scorer that ``embeds``, L2-normalised float32 embeddings [N, D]."""
        return self.score(batch), None

    def score_images(self, images: list[Image.Image]) -> np.ndarray:
        """Convenience for callers with PIL images in hand (``zxl score``, tests)."""
        if not images:
            return np.zeros(0, np.float32)
        return np.asarray(self.score(self.collate([self.prepare(im) for im in images])), np.float32)


@runtime_checkable
class TextEmbedder(Protocol):
    """A scorer whose embeddings have a text side (a CLIP): ``zxl eval``'s prompt adherence."""

    def embed_text(self, texts: list[str]) -> np.ndarray: ...


class EmbeddingScorer(Scorer):
    """A scorer whose score is a head over image embeddings it also hands to the stage."""

    embeds: ClassVar[bool] = True

    @abstractmethod
    def embed(self, batch: Any) -> np.ndarray: ...

    @abstractmethod
    def score_embeddings(self, embeddings: np.ndarray) -> np.ndarray: ...

    def score(self, batch: Any) -> np.ndarray:
        return self.score_embeddings(self.embed(batch))

    def score_and_embed(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        emb = self.embed(batch)
        return self.score_embeddings(emb), emb
