"""``hf``: vision-language captioners through transformers — a thin adapter over ``generate``.

Supported families (``caption.family``, or read from the model's config): Florence-2 (the native
``Florence2ForConditionalGeneration``), BLIP-2, LLaVA-style models such as JoyCaption, and
Qwen2-VL. Each has its own prompt (``caption.prompt`` overrides it): Florence-2 takes a task
token, BLIP-2 captions unprompted, the chat models get one user turn with the image and an
instruction through the processor's chat template. Generation is batched (left padding for the
decoder-only families), greedy, limited to ``caption.max_new_tokens``, in fp16 on a GPU
(``caption.precision``). Stock openings ("The image shows …", "This is an illustration of …")
are removed, so captions start with the subject, as training captions should.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from zxl.captioners.base import Captioner
from zxl.captioners.config import CaptionConfig
from zxl.config import ConfigError
from zxl.devices import pick_device, pick_dtype

FAMILIES = {"florence2": "florence2", "blip-2": "blip2", "llava": "llava", "qwen2_vl": "qwen2-vl"}
PROMPTS = {
    "florence2": "<MORE_DETAILED_CAPTION>",
    "blip2": "",
    "llava": "Write a long descriptive caption for this image in a formal tone.",
    "qwen2-vl": "Describe this image in detail in one paragraph.",
}
CHAT = {"llava", "qwen2-vl"}
STOCK = [
    r"^(?:the|this) (?:image|picture|photo(?:graph)?|illustration|artwork|drawing|scene|digital art(?:work)?)"
    r"(?: is)? (?:shows|depicts|features|presents|displays|portrays|captures|illustrates|contains|of)\s+",
    r"^in (?:this|the) (?:image|picture|illustration|scene),?\s+",
    r"^(?:this is |it is )?(?:an? )?(?:anime[- ]style |digital |colorful )?(?:image|picture|illustration|drawing|"
    r"artwork|photo) (?:of|showing|depicting)\s+",
]
HOW = "Set caption.model to a local folder saved with save_pretrained, or a hub id such as microsoft/Florence-2-large."


def clean(text: str) -> str:
    """Remove stock openings and tidy whitespace; the caption starts with a capital, ends with a stop."""
    text = " ".join(text.replace("</s>", " ").split())
    changed = True
    while changed and text:
        changed = False
        for pattern in STOCK:
            new = re.sub(pattern, "", text, count=1, flags=re.IGNORECASE)
            if new != text:
                text, changed = new, True
    text = text.strip(" ,")
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def _model_path(ref: str) -> str:
    if not ref:
        raise ConfigError(f"caption.model is empty: the hf captioner needs a model. {HOW}")
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path)
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        return ref  # a hub id: transformers looks in its cache, then the hub when reachable
    raise ConfigError(f"caption.model: no model folder at {path.resolve()}. {HOW}")


class HFCaptioner(Captioner):
    name = "hf"
    runs_model = True
    imports = ("transformers",)
    needs_images = True

    def __init__(self, cfg: CaptionConfig):
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        self.cfg = cfg
        ref = _model_path(cfg.model)
        try:
            config = AutoConfig.from_pretrained(ref)
            self.processor = AutoProcessor.from_pretrained(ref)
        except Exception as e:  # noqa: BLE001 - offline, missing or broken: one clear message
            raise ConfigError(f"caption.model: cannot load '{cfg.model}': {type(e).__name__}: {e}. {HOW}") from None
        family = FAMILIES.get(config.model_type) if cfg.family == "auto" else cfg.family
        if family not in PROMPTS:
            raise ConfigError(
                f"caption.family: '{config.model_type}' models are not supported; "
                f"use one of {', '.join(PROMPTS)} (caption.family)"
            )
        self.family = family
        self.prompt = cfg.prompt or PROMPTS[family]
        self.device = pick_device(cfg.device, "caption.device")
        self.dtype = pick_dtype(cfg.precision, self.device, "caption.precision")
        self.model = AutoModelForImageTextToText.from_pretrained(ref, dtype=self.dtype).to(self.device).eval()  # pyright: ignore[reportArgumentType] - transformers' auto-class hints mistype .to
        tok = getattr(self.processor, "tokenizer", None)
        if tok is not None and family in CHAT:
            tok.padding_side = "left"  # decoder-only batches generate from aligned ends

    @classmethod
    def check(cls, cfg: CaptionConfig) -> None:
        _model_path(cfg.model)

    @classmethod
    def references(cls, cfg: CaptionConfig) -> dict[str, str]:
        return {"caption.model": cfg.model}

    def _inputs(self, images: list[Image.Image]):
        images = [im.convert("RGB") for im in images]
        if self.family in CHAT:
            turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            text = self.processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
            return self.processor(text=[text] * len(images), images=images, return_tensors="pt", padding=True)
        if self.prompt:
            return self.processor(text=[self.prompt] * len(images), images=images, return_tensors="pt", padding=True)
        return self.processor(images=images, return_tensors="pt")

    @torch.inference_mode()
    def generate(self, images: list[Image.Image]) -> list[str]:
        inputs = self._inputs(images).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        out = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False)  # pyright: ignore[reportAttributeAccessIssue] - transformers mistypes generate's self
        if not self.model.config.is_encoder_decoder and "input_ids" in inputs:
            out = out[:, inputs["input_ids"].shape[1] :]  # decoder-only: drop the prompt
        return self.processor.batch_decode(out, skip_special_tokens=True)

    def caption(self, images, rows: pd.DataFrame) -> list[str]:
        assert images is not None, "needs_images: the stage hands this captioner the rows' images"
        texts: list[str] = [""] * len(images)
        present = [(i, im) for i, im in enumerate(images) if im is not None]
        for start in range(0, len(present), self.cfg.batch_size):
            chunk = present[start : start + self.cfg.batch_size]
            for (i, _), text in zip(chunk, self.generate([im for _, im in chunk]), strict=True):
                texts[i] = clean(text)
        return texts
