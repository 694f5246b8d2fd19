"""``zxl taste``: a personal scorer learned from the user's own choices, and putting it to work.

**fit** (``zxl taste fit RUN_DIR [--choices FILE.csv]``): the choices made in the browser's rate
view (``runs/<name>/taste/choices.sqlite``, catalog/rating.py) or a CSV of ``winner,loser`` keys,
plus any 1–9 stars as extra evidence (a higher-starred image beats a lower-starred one, at half
weight), fitted as a Bradley–Terry model over the run's cached embeddings (zxl/preference.py):
P(a beats b) = σ(wᵀ(x_a − x_b)). Reported: k-fold held-out pairwise accuracy, the agreement of
the run's own scorer (stages/score) with the same choices, and a learning curve (held-out accuracy
by number of choices) as ``taste/fit.json`` and ``taste/learning-curve.png``. The head is written as
``taste/head.safetensors`` — ``layers.0.weight`` [1, D], ``layers.0.bias`` [1], the layout
``score.head_weights`` reads (scorers/heads.py) — with what made it in its metadata.

**apply** (``zxl taste apply RUN_DIR``): ``taste.head`` set to that head, then the global step
(dedup's keep choice, calibration, repeats) and the stages after it (captions, catalog) run again
from the stored stage outputs and embeddings; fetch, inspect, score and tag are not redone (their
stage hashes do not change, and apply refuses to run if they would). The manifest's ``taste``
records the head's sha256, its choices and raters.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from zxl.config import ConfigError

HEAD_FILE = "head.safetensors"
META_PREFIX = "zxl."


def taste_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "taste"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def head_info(path: str | Path) -> dict:
    """What the manifest records of a head: its file, sha256 and the metadata ``fit`` wrote."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"taste.head: no head at {path.resolve()}; make one with `zxl taste fit RUN_DIR`")
    meta = {}
    if path.suffix == ".safetensors":  # a .pth head (LAION's) loads too, without metadata
        try:
            with safe_open(str(path), "np") as f:
                meta = f.metadata() or {}
        except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
            raise ConfigError(f"taste.head: {path} is not a safetensors file: {e}") from None
    info = {"head": str(path), "sha256": file_sha256(path)}
    for k, v in meta.items():
        if k.startswith(META_PREFIX):
            name = k[len(META_PREFIX) :]
            info[name] = json.loads(v) if v[:1] in "[{" else v
    return info


def head_scores(path: str | Path, embeddings: np.ndarray, kind: str | None) -> np.ndarray:
    """The head's raw score of every row of ``embeddings`` (any float dtype, [N, D]) as float64."""
    import torch

    from zxl.models import load_state_dict
    from zxl.scorers.heads import build_head, input_dim

    info = head_info(path)
    made_on = info.get("embedding")
    if made_on and kind and made_on != kind:
        raise ConfigError(
            f"taste.head: {path} was fitted on '{made_on}' embeddings but this run stores '{kind}' ones; "
            "fit a head on this run (`zxl taste fit RUN_DIR`)"
        )
    head = build_head(load_state_dict(str(path), "taste.head"), key="taste.head")
    if input_dim(head) != embeddings.shape[1]:
        raise ConfigError(
            f"taste.head: the head takes {input_dim(head)}-d embeddings but this run's are {embeddings.shape[1]}-d"
        )
    out = np.empty(len(embeddings), np.float64)
    with torch.inference_mode():
        for a in range(0, len(embeddings), 65536):
            x = torch.from_numpy(np.asarray(embeddings[a : a + 65536], np.float32))
            out[a : a + len(x)] = head(x).squeeze(-1).double().numpy()
    return out


def head_hash(path: str) -> str | None:
    """What the global step's hash covers of ``taste.head``: the file's content, not its name."""
    return head_info(path)["sha256"] if path else None
