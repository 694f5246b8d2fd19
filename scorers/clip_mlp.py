"""``clip-mlp``: open_clip image embeddings, L2-normalized, into an aesthetic MLP head.

The recipe's scorer is CLIP ViT-L/14 (OpenAI weights) with LAION's improved aesthetic predictor
(``configs/curate/zero-xl.yaml``); any open_clip architecture and any head of the two published
layouts (``scorers/heads.py``) work the same way. This is a thin adapter: open_clip builds the
model and its preprocessing, the head is a plain ``nn.Sequential``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zxl.config import ConfigError
from zxl.devices import pick_device, pick_dtype
from zxl.models import load_state_dict, resolve
from zxl.scorers.base import EmbeddingScorer
from zxl.scorers.config import ScoreConfig
from zxl.scorers.heads import build_head, input_dim

HOW_CLIP = (
    "For the recipe: download open_clip's ViT-L-14 'openai' weights (open_clip_pytorch_model.bin from "
    "huggingface.co/timm/vit_large_patch14_clip_224.openai) and set score.clip_weights to that file."
)
HOW_HEAD = (
    "For the recipe: download sac+logos+ava1-l14-linearMSE.pth from github.com/christophschuhmann/"
    "improved-aesthetic-predictor and set score.head_weights to that file."
)


def model_name(cfg: ScoreConfig) -> str:
    """open_clip's name for ``score.clip_model``: a built-in name, or a model-config JSON file
    (open_clip's own format), which is registered under its file stem."""
    import open_clip

    ref = cfg.clip_model
    if ref.endswith(".json"):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ConfigError(f"score.clip_model: model config not found at {path.resolve()}")
        open_clip.add_model_config(path)
        return path.stem
    if ref not in open_clip.list_models():
        raise ConfigError(
            f"score.clip_model: '{ref}' is not an open_clip architecture (see open_clip.list_models()) "
            "nor a model-config .json file"
        )
    return ref


def _clip_pretrained(cfg: ScoreConfig) -> str | None:
    """What to pass open_clip as ``pretrained``: a local file, or a tag it knows how to fetch."""
    import open_clip

    ref = cfg.clip_weights
    if not ref:
        raise ConfigError(f"score.clip_weights is empty: the clip-mlp scorer needs CLIP weights. {HOW_CLIP}")
    if Path(ref).expanduser().exists():
        return str(Path(ref).expanduser())
    tags = open_clip.list_pretrained_tags_by_model(model_name(cfg))
    if ref in tags or ref.startswith("hf-hub:"):
        return ref
    raise ConfigError(
        f"score.clip_weights: '{ref}' is neither a file (tried {Path(ref).expanduser().resolve()}) nor one of "
        f"open_clip's pretrained tags for {cfg.clip_model} ({', '.join(tags) or 'none'}). {HOW_CLIP}"
    )


class ClipMlpScorer(EmbeddingScorer):
    name = "clip-mlp"
    runs_model = True
    imports = ("open_clip",)
    # 3: its view (224 px) box-reduced from the image's 448 view (zxl.images.BASE_SIDE), not decoded apart;
    # 2: images decoded reduced to the model's input side (JPEG DCT scaling), not whole
    version = "3"

    def __init__(self, cfg: ScoreConfig, load_weights: bool = True, head_state: dict | None = None):
        import open_clip
        from torchvision.transforms import Compose

        name = model_name(cfg)
        self.cfg = cfg
        self.device = pick_device(cfg.device, "score.device")
        self.dtype = pick_dtype(cfg.precision, self.device, "score.precision")
        pretrained = _clip_pretrained(cfg) if load_weights else None
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=self.device, weights_only=True
            )
        except Exception as e:  # noqa: BLE001 - a download or load failure names the key
            raise ConfigError(f"score.clip_weights: open_clip cannot load '{pretrained}': {e}. {HOW_CLIP}") from None
        self.model = model.eval().to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.preprocess = preprocess
        # open_clip's transforms end in Normalize: prepare stops before it and collate applies it to the
        # whole batch at once (the same values; one tensor op a batch instead of one an image).
        steps = list(getattr(preprocess, "transforms", []))
        self._normalize = steps[-1] if steps and type(steps[-1]).__name__ == "Normalize" else None
        self._per_image = Compose(steps[:-1]) if self._normalize is not None else preprocess
        side: int | tuple[int, int] = self.model.visual.image_size  # pyright: ignore[reportAssignmentType, reportAttributeAccessIssue] - untyped open_clip model
        self.input_side = int(min(side)) if isinstance(side, tuple) else int(side)
        if head_state is None:
            path = resolve(cfg.head_weights, "score.head_weights", "aesthetic head", HOW_HEAD)
            head_state = load_state_dict(path, "score.head_weights")
        self.head = build_head(head_state, cfg.head_layout).to(self.device)
        dim = self.model.visual.output_dim  # pyright: ignore[reportAttributeAccessIssue] - untyped open_clip model
        if input_dim(self.head) != dim:
            raise ConfigError(
                f"score.head_weights: the head takes {input_dim(self.head)}-d embeddings but {cfg.clip_model} "
                f"gives {dim}-d ones; use a head trained on {cfg.clip_model} or the CLIP the head was trained on"
            )

    @property
    def embedding_kind(self) -> str:
        return f"open_clip {self.cfg.clip_model}"

    @classmethod
    def check(cls, cfg: ScoreConfig) -> None:
        _clip_pretrained(cfg)
        resolve(cfg.head_weights, "score.head_weights", "aesthetic head", HOW_HEAD)
        pick_dtype(cfg.precision, pick_device(cfg.device, "score.device"), "score.precision")

    def prepare(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGBA").convert("RGB") if "A" in image.getbands() else image.convert("RGB")
        return self._per_image(image)  # pyright: ignore[reportCallIssue, reportReturnType] - open_clip's transforms are untyped

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        batch = torch.stack(items)
        return self._normalize(batch) if self._normalize is not None else batch

    def _autocast(self):
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def embed(self, batch: torch.Tensor) -> np.ndarray:
        x = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.to(memory_format=torch.channels_last)
        with self._autocast():
            emb = self.model.encode_image(x).float()  # pyright: ignore[reportCallIssue] - untyped open_clip model
        return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()

    @torch.inference_mode()
    def embed_text(self, texts: list[str]) -> np.ndarray:
        """L2-normalised text embeddings from the same CLIP (``zxl eval``'s prompt adherence)."""
        import open_clip

        tokens = open_clip.get_tokenizer(model_name(self.cfg))(texts).to(self.device)
        with self._autocast():
            emb = self.model.encode_text(tokens).float()  # pyright: ignore[reportCallIssue] - untyped open_clip model
        return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()

    @torch.inference_mode()
    def score_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        e = torch.as_tensor(np.asarray(embeddings, np.float32), device=self.device)
        return self.head(e).squeeze(-1).float().cpu().numpy()

    @classmethod
    def references(cls, cfg: ScoreConfig) -> dict[str, str]:
        return {
            "score.clip_model": cfg.clip_model,
            "score.clip_weights": cfg.clip_weights,
            "score.head_weights": cfg.head_weights,
        }
