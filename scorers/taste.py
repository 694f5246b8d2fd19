"""A taste head file (``zxl taste fit`` writes one; ``taste.head`` applies it): what a catalog's
manifest records of it, and the checks it must pass wherever it is used.

A head is ``layers.0.weight`` [1, D] and ``layers.0.bias`` [1] in a safetensors file (scorers/heads.py
builds it), with ``zxl.*`` metadata from the fit: the embedding it reads, its choices, raters and
held-out accuracy, and ``weights_sha256`` — the digest of the weights that metadata describes.

- ``read_head``: the file read once (``HeadFile``): its sha256, tensors and metadata all come from the
  same bytes, so the manifest cannot record one head while the rows were scored by another;
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zxl.config import ConfigError

META_PREFIX = "zxl."


def weights_sha256(tensors: dict) -> str:
    """The sha256 of a head's tensors (torch or NumPy: names, dtypes, shapes and bytes, in name order)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        t = (torch.from_numpy(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t).detach().cpu().contiguous()
        h.update(f"{name}\t{str(t.dtype).removeprefix('torch.')}\t{tuple(t.shape)}\n".encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class HeadFile:
    """A head file read once: its path, sha256, tensors and the fit's ``zxl.*`` metadata — everything
    later steps use comes from these bytes, so a file replaced meanwhile cannot mix two heads."""

    path: Path
    sha256: str
    tensors: dict
    meta: dict


def read_head(path: str | Path | HeadFile) -> HeadFile:
    """``path`` read once (a ``HeadFile`` is returned as it is). A .safetensors head carries metadata;
    a .pth state dict (LAION's) loads too, without (``torch.load(weights_only=True)``)."""
    import io

    import torch

    if isinstance(path, HeadFile):
        return path
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"taste.head: no head at {path.resolve()}; make one with `zxl taste fit RUN_DIR`")
    data = path.read_bytes()
    meta: dict = {}
    try:
        if data[8:9] == b"{":  # a safetensors header: 8 bytes of length, then JSON
            from safetensors.torch import load

            size = int.from_bytes(data[:8], "little")
            meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
            tensors = load(data)
        else:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            tensors = obj.get("state_dict", obj) if isinstance(obj, dict) else None
            if not isinstance(tensors, dict):
                raise ValueError("not a state dict")
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
        raise ConfigError(f"taste.head: {path} is not a safetensors file or a state dict: {e}") from None
    fitted = {}
    for k, v in meta.items():
        if k.startswith(META_PREFIX):
            try:
                fitted[k[len(META_PREFIX) :]] = json.loads(v)
            except ValueError:
                fitted[k[len(META_PREFIX) :]] = v
    return HeadFile(path, hashlib.sha256(data).hexdigest(), tensors, fitted)


def head_info(path: str | Path | HeadFile) -> dict:
    """What the manifest records of a head: its file, sha256 and the metadata ``fit`` wrote — the
    latter only when the file's weights are still the ones that fit wrote (``weights_sha256``)."""
    hf = read_head(path)
    info: dict = {"head": str(hf.path), "sha256": hf.sha256}
    fitted = hf.meta
    if fitted and "weights_sha256" not in fitted:
        info["fit"] = "unverified: fitted before zxl recorded the digest of a head's weights"
    elif fitted and fitted["weights_sha256"] != weights_sha256(hf.tensors):
        info["fit"] = ("unknown: the file's weights are not those `zxl taste fit` wrote, so its record of "
                       "choices and accuracy does not describe them")  # fmt: skip
        fitted = {k: v for k, v in fitted.items() if k == "embedding"}  # still what it reads
    return {**info, **fitted}


def head_scores(path: str | Path | HeadFile, embeddings: np.ndarray, kind: str | None) -> np.ndarray:
    """The head's raw score of every row of ``embeddings`` (any float dtype, [N, D]) as float64,
    after ``check_head``'s checks."""
    from zxl.scorers.heads import run_head

    hf = read_head(path)
    head = check_head(hf, embeddings.shape[1], kind)
    return check_scores(hf.path, run_head(head, embeddings))


def check_head(path: str | Path | HeadFile, dim: int | None = None, kind: str | None = None):
    """The head as a module, once it is known to be usable: finite weights, fitted on ``kind``
    embeddings (when the head says what it was fitted on: a head without zxl's metadata, LAION's
    say, is checked by dimension alone) of ``dim`` values (when given). Raises ConfigError naming
    the file and the problem."""
    import torch

    from zxl.scorers.heads import build_head, input_dim

    hf = read_head(path)
    made_on = hf.meta.get("embedding")
    if made_on and kind and made_on != kind:
        raise ConfigError(
            f"taste.head: {hf.path} was fitted on '{made_on}' embeddings but this run stores '{kind}' ones; "
            "fit a head on this run (`zxl taste fit RUN_DIR`)"
        )
    bad = [name for name, t in hf.tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ConfigError(f"taste.head: {hf.path} has weights that are not finite numbers (NaN or inf in "
                          f"{sorted(bad)}); it cannot score anything — fit it again")  # fmt: skip
    head = build_head(dict(hf.tensors), key="taste.head")
    if dim is not None and input_dim(head) != dim:
        raise ConfigError(f"taste.head: {hf.path} takes {input_dim(head)}-d embeddings but this run's are {dim}-d")
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


def verify_applied(manifest: dict, where: str | Path) -> HeadFile | None:
    """The head file a catalog's scores came from, read once, when it is still the one that was applied
    (the manifest's sha256); ConfigError naming both files otherwise. None for a catalog scored without
    a head."""
    taste = manifest.get("taste")
    if not taste:
        return None
    head = Path(taste["head"])
    if not head.is_file():
        raise ConfigError(f"{where}: its scores come from the taste head {head}, which is gone; put it back or "
                          "apply a head again (`zxl taste apply RUN_DIR`)")  # fmt: skip
    hf = read_head(head)
    if hf.sha256 != taste.get("sha256"):
        raise ConfigError(
            f"{where}: its scores come from the taste head {head} with sha256 {str(taste.get('sha256'))[:12]}…, "
            f"but that file now has sha256 {hf.sha256[:12]}… (refitted or replaced after it was applied); run "
            f"`zxl taste apply` with it, or restore the head that was applied"
        )
    return hf


def head_hash(path: str) -> str | None:
    """What the global step's hash covers of ``taste.head``: the file's content, not its name."""
    return read_head(path).sha256 if path else None
