"""Model references: a local path, or a hub id used only when the hub is reachable.

Every model a config names goes through ``resolve``. A local file wins. A hub reference
(``org/name/path/in/repo.ext``) is looked up in the local Hugging Face cache first and downloaded
only when the hub answers. Anything else is a ``ConfigError`` that names the config key, what
was tried, and how to supply the file. Weights are read with ``load_state_dict``: safetensors
directly, anything else through ``torch.load(weights_only=True)`` — never an unrestricted pickle.
"""

from __future__ import annotations

import os
from pathlib import Path

from zxl.config import ConfigError


def resolve(ref: str, key: str, what: str, how: str = "") -> Path:
    """The local file for a model reference (see the module docstring)."""
    if not ref:
        raise ConfigError(f"{key} is empty: set it to the {what} (a local file or a hub reference). {how}".strip())
    path = Path(ref).expanduser()
    if path.exists():
        return path
    parts = ref.split("/")
    looks_local = ref.startswith((".", "/", "~")) or len(parts) < 3
    if not looks_local:
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
        try:
            from huggingface_hub import hf_hub_download

            try:
                return Path(hf_hub_download(repo_id, filename, local_files_only=True))
            except Exception:  # noqa: BLE001 - not cached: try the hub itself below
                if os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "True"):
                    return Path(hf_hub_download(repo_id, filename))
        except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
            raise ConfigError(
                f"{key}: cannot get {what} '{ref}' from the hub ({type(e).__name__}: {e}); "
                f"download {filename} from huggingface.co/{repo_id} and set {key} to its local path. {how}".strip()
            ) from None
        raise ConfigError(
            f"{key}: {what} '{ref}' is not in the local hub cache and the hub is offline (HF_HUB_OFFLINE); "
            f"download {filename} from huggingface.co/{repo_id} and set {key} to its local path. {how}".strip()
        )
    raise ConfigError(f"{key}: {what} not found at {path.resolve()}. {how}".strip())


def load_state_dict(path: Path, key: str) -> dict:
    """Tensors from a .safetensors file, or from a .pt/.pth/.bin/.ckpt with weights_only=True."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt or hostile file is a clear error
        raise unreadable(key, path, e) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # a Lightning checkpoint
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{key}: {path} holds no state dict of tensors")
    return obj


def unreadable(option: str, path, error: BaseException) -> ConfigError:
    """The one-line error for a model file that does not load: the option, the file and why."""
    why = " ".join(f"{type(error).__name__}: {error}".split())
    if len(why) > 300:
        why = why[:297] + "..."
    return ConfigError(
        f"{option} {path}: cannot load weights from it ({why}); is the file whole (a finished download)?"
    )


def read_safetensors(path, option: str) -> dict:
    """All tensors of a .safetensors file; a truncated or malformed file is ``unreadable``."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors' own errors, OSError, a bad header: one clear line
        raise unreadable(option, path, e) from None
