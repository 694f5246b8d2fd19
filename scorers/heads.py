"""Aesthetic MLP heads over CLIP image embeddings, built from their published state dicts.

Both published layouts are an ``nn.Sequential`` called ``layers``; the state dict fixes the
Linear and BatchNorm sizes, and the layout fixes what sits in the parameterless slots:

- ``laion``: LAION's improved aesthetic predictor (``sac+logos+ava1-l14-linearMSE.pth``): Linear
  768→1024, Dropout .2, 1024→128, Dropout .2, 128→64, Dropout .1, 64→16, 16→1 — keys
  ``layers.{0,2,4,6,7}``, no activations, output on AVA's ~1–10 scale, unclamped.
- ``waifu-v3``: Eugeoter's waifu-scorer v3: Linear 768→2048, ReLU, BatchNorm, Dropout, 2048→512,
  ReLU, BatchNorm, Dropout, 512→256, …, 128→32, ReLU, 32→1 — BatchNorm buffers at
  ``layers.{2,6,10,14}``.

``auto`` picks ``waifu-v3`` when the state dict has BatchNorm buffers, else ``laion``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from zxl.config import ConfigError
from zxl.scorers.base import Scorer, TextEmbedder

LAYOUTS = ("auto", "laion", "waifu-v3")
_PREFIXES = ("_orig_mod.", "module.", "model.", "mlp.")


def _strip(state: dict) -> dict:
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if state and all(k.startswith(p) for k in state):
                state = {k[len(p) :]: v for k, v in state.items()}
                changed = True
    return state


def build_head(state: dict, layout: str = "auto", key: str = "score.head_weights") -> nn.Sequential:
    """An ``nn.Sequential`` whose ``layers.*`` state dict is ``state`` (loaded, strict)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"score.head_layout must be one of {', '.join(LAYOUTS)}, got '{layout}'")
    state = _strip(state)
    if not state or not all(k.startswith("layers.") for k in state):
        raise ConfigError(f"{key}: not an MLP head: expected keys layers.N.weight, got {sorted(state)[:4]}")
    if layout == "auto":
        layout = "waifu-v3" if any(k.endswith("running_mean") for k in state) else "laion"
    last = max(int(k.split(".")[1]) for k in state)
    modules: list[nn.Module] = []
    previous_linear = False
    for i in range(last + 1):
        w = state.get(f"layers.{i}.weight")
        if f"layers.{i}.running_mean" in state:
            modules.append(nn.BatchNorm1d(state[f"layers.{i}.running_mean"].shape[0]))
            previous_linear = False
        elif w is not None and w.ndim == 2:
            modules.append(nn.Linear(w.shape[1], w.shape[0], bias=f"layers.{i}.bias" in state))
            previous_linear = True
        else:
            modules.append(nn.ReLU() if layout == "waifu-v3" and previous_linear else nn.Dropout(0.0))
            previous_linear = False
    layers = nn.Sequential(*modules)
    head = nn.Sequential()
    head.add_module("layers", layers)
    try:
        head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"{key}: the state dict does not fit a {layout} head: {e}") from None
    last_layer = layers[-1]
    if not isinstance(last_layer, nn.Linear) or last_layer.out_features != 1:
        raise ConfigError(f"{key}: the head's last layer must be a Linear with one output")
    return head.eval()


def input_dim(head: nn.Sequential) -> int:
    return next(m for m in head.get_submodule("layers").children() if isinstance(m, nn.Linear)).in_features


def laion_state_dict(dim: int = 768, seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised state dict with the LAION predictor's exact key names and shapes."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(0, dim, 1024), (2, 1024, 128), (4, 128, 64), (6, 64, 16), (7, 16, 1)]
    out = {}
    for i, n_in, n_out in sizes:
        out[f"layers.{i}.weight"] = torch.randn(n_out, n_in, generator=g) / n_in**0.5
        out[f"layers.{i}.bias"] = torch.randn(n_out, generator=g) * 0.01
    return out


def load_head(path, key: str = "taste.head") -> nn.Sequential:
    """A head file (``.safetensors`` or a ``.pth`` state dict) as an ``nn.Sequential`` on the CPU."""
    from zxl.models import load_state_dict

    return build_head(load_state_dict(path, key), key=key)


def run_head(head: nn.Module, embeddings: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """The head's output for every row of ``embeddings`` (any float dtype, [N, D]) as float64, in chunks."""
    out = np.empty(len(embeddings), np.float64)
    with torch.inference_mode():
        for a in range(0, len(embeddings), chunk):
            x = torch.from_numpy(np.asarray(embeddings[a : a + chunk], np.float32))
            out[a : a + len(x)] = head(x).squeeze(-1).double().numpy()
    return out


class WithHead(Scorer):
    """A scorer that stores embeddings, scored instead by another head over them: what a catalog made
    with ``zxl taste apply`` scores with (``zxl eval`` measures the samples the way the rows were)."""

    def __init__(self, inner: Scorer, head, key: str = "taste.head", name: str | None = None):
        """``head``: a head file, or the head already built (``nn.Sequential``) as ``name``."""
        if not inner.embeds:
            raise ConfigError(f"{key}: the scorer {inner.name} stores no embeddings for a head to read")
        built: nn.Module = head if isinstance(head, nn.Module) else load_head(head, key)
        self.inner, self.head, self.cfg = inner, built, inner.cfg
        self._name = f"{inner.name} + {name or head}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def embeds(self) -> bool:
        return True

    @property
    def embedding_kind(self) -> str:
        return self.inner.embedding_kind

    def prepare(self, image):
        return self.inner.prepare(image)

    def collate(self, items):
        return self.inner.collate(items)

    def score_and_embed(self, batch):
        _, emb = self.inner.score_and_embed(batch)
        assert emb is not None, "the inner scorer embeds (checked in __init__)"
        return run_head(self.head, emb).astype(np.float32), emb

    def score(self, batch) -> np.ndarray:
        return self.score_and_embed(batch)[0]

    def embed_text(self, texts: list[str]) -> np.ndarray:
        if not isinstance(self.inner, TextEmbedder):
            raise AttributeError(f"the scorer {self.inner.name} makes no text embeddings")
        return self.inner.embed_text(texts)
