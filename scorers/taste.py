"""A taste head file (``zxl taste fit`` writes one; ``taste.head`` applies it): what a catalog's
manifest records of it, and the checks it must pass wherever it is used.

A head is ``layers.0.weight`` [1, D] and ``layers.0.bias`` [1] in a safetensors file (scorers/heads.py
builds it), with ``zxl.*`` metadata from the fit: the embedding it reads, its choices, raters and
held-out accuracy, and ``weights_sha256`` — the digest of the weights that metadata describes.

- ``head_info``: the file, its sha256 and the fit's metadata, the latter only while the weights are
  still those the fit wrote (a head edited afterwards keeps no claim to the fit's accuracy);
- ``check_head``: every weight finite, the embedding kind and dimension the run stores;
- ``check_scores``: scores that can rank rows (finite, not all the same);
- ``verify_applied``: the head a catalog's scores came from is still the file at its path (same
  sha256); ``zxl eval`` refuses otherwise, naming both files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from zxl.config import ConfigError

META_PREFIX = "zxl."


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(tensors: dict[str, np.ndarray]) -> str:
    """The sha256 of a head's tensors (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        h.update(f"{name}\t{t.dtype.str}\t{t.shape}\n".encode())
        h.update(t.tobytes())
    return h.hexdigest()


def head_info(path: str | Path) -> dict:
    """What the manifest records of a head: its file, sha256 and the metadata ``fit`` wrote — the
    latter only when the file's weights are still the ones that fit wrote (``weights_sha256``)."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"taste.head: no head at {path.resolve()}; make one with `zxl taste fit RUN_DIR`")
    meta, tensors = {}, {}
    if path.suffix == ".safetensors":  # a .pth head (LAION's) loads too, without metadata
        try:
            with safe_open(str(path), "np") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
            raise ConfigError(f"taste.head: {path} is not a safetensors file: {e}") from None
    info = {"head": str(path), "sha256": file_sha256(path)}
    fitted = {}
    for k, v in meta.items():
        if k.startswith(META_PREFIX):
            name = k[len(META_PREFIX) :]
            try:
                fitted[name] = json.loads(v)
            except ValueError:
                fitted[name] = v
    if fitted and fitted.get("weights_sha256") != weights_sha256(tensors):
        info["fit"] = ("unknown: the file's weights are not those `zxl taste fit` wrote, so its record of "
                       "choices and accuracy does not describe them")  # fmt: skip
        fitted = {k: v for k, v in fitted.items() if k == "embedding"}  # still what it reads
    return {**info, **fitted}


def head_scores(path: str | Path, embeddings: np.ndarray, kind: str | None) -> np.ndarray:
    """The head's raw score of every row of ``embeddings`` (any float dtype, [N, D]) as float64,
    after ``check_head``'s checks."""
    from zxl.scorers.heads import run_head

    head = check_head(path, embeddings.shape[1], kind)
    return check_scores(path, run_head(head, embeddings))


def check_head(path: str | Path, dim: int | None = None, kind: str | None = None):
    """The head as a module, once it is known to be usable: finite weights, fitted on ``kind``
    embeddings of ``dim`` values (when given). Raises ConfigError naming the file and the problem."""
    import torch

    from zxl.scorers.heads import input_dim, load_head

    info = head_info(path)
    made_on = info.get("embedding")
    if made_on and kind and made_on != kind:
        raise ConfigError(
            f"taste.head: {path} was fitted on '{made_on}' embeddings but this run stores '{kind}' ones; "
            "fit a head on this run (`zxl taste fit RUN_DIR`)"
        )
    head = load_head(Path(path).expanduser(), "taste.head")
    bad = [name for name, t in head.state_dict().items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise ConfigError(f"taste.head: {path} has weights that are not finite numbers (NaN or inf in {bad}); "
                          "it cannot score anything — fit it again")  # fmt: skip
    if dim is not None and input_dim(head) != dim:
        raise ConfigError(f"taste.head: {path} takes {input_dim(head)}-d embeddings but this run's are {dim}-d")
    return head


def check_scores(path: str | Path, scores: np.ndarray) -> np.ndarray:
    """``scores`` when they can rank rows: all finite, not all the same; else ConfigError."""
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise ConfigError(f"taste.head: {path} gives {bad} of {len(scores)} rows a score that is not a finite number "
                          "(its weights are too large for float32); fit it again")  # fmt: skip
    if len(scores) > 1 and float(np.ptp(scores)) <= 1e-9 * max(1.0, float(np.abs(scores).max())):
        raise ConfigError(f"taste.head: {path} gives all {len(scores)} rows the same score ({scores[0]:.6g}): it "
                          "cannot rank them (an all-zero head, or a fit with too small a --c)")  # fmt: skip
    return scores


def verify_applied(manifest: dict, where: str | Path) -> dict | None:
    """The manifest's ``taste`` block when its head file is still the one that was applied (same
    sha256); ConfigError naming both files otherwise. None for a catalog scored without a head."""
    taste = manifest.get("taste")
    if not taste:
        return None
    head = Path(taste["head"])
    if not head.is_file():
        raise ConfigError(f"{where}: its scores come from the taste head {head}, which is gone; put it back or "
                          "apply a head again (`zxl taste apply RUN_DIR`)")  # fmt: skip
    now = file_sha256(head)
    if now != taste.get("sha256"):
        raise ConfigError(
            f"{where}: its scores come from the taste head {head} with sha256 {str(taste.get('sha256'))[:12]}…, "
            f"but that file now has sha256 {now[:12]}… (refitted or replaced after it was applied); run "
            f"`zxl taste apply` with it, or restore the head that was applied"
        )
    return taste


def head_hash(path: str) -> str | None:
    """What the global step's hash covers of ``taste.head``: the file's content, not its name."""
    return head_info(path)["sha256"] if path else None
