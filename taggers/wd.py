"""``wd``: SmilingWolf's WD tagger family through onnxruntime (docs/recipe.md "Source metadata and taggers").

A model is a folder (or hub repo) with ``model.onnx`` and ``selected_tags.csv``
(tag_id, name, category, count). Preprocessing, as the models were trained: composite alpha on
white, pad to a white square (centred), resize to the model's input side (448) with bicubic
filtering, RGB → BGR, float32 0–255, NHWC. The outputs are per-row probabilities of
``selected_tags.csv``: category 9 is the four ratings (the argmax wins), 0 general tags
(``tag.wd_general_threshold``: 0.35 for v2 models, each v3 model's P=R threshold), 4 characters
(``tag.wd_character_threshold``, 0.85). With ``tag.wd_mcut`` the thresholds come from Maximum Cut
Thresholding (Largeron et al. 2012) per image instead (at least 0.15 for characters). Tags keep
their booru spelling (underscores), like the metadata tagger's. CUDA execution when onnxruntime
has it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from zxl.config import ConfigError
from zxl.models import resolve
from zxl.taggers.base import RATINGS, Tagger, empty
from zxl.taggers.config import TagConfig

HOW = (
    "Download model.onnx and selected_tags.csv from a SmilingWolf WD tagger repository "
    "(e.g. huggingface.co/SmilingWolf/wd-eva02-large-tagger-v3) into one folder and set tag.wd_model to it."
)


def model_files(ref: str) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) for a folder or a hub repo id."""
    if not ref:
        raise ConfigError(f"tag.wd_model is empty: the wd tagger needs a model. {HOW}")
    folder = Path(ref).expanduser()
    if folder.is_dir():
        files = folder / "model.onnx", folder / "selected_tags.csv"
        for f in files:
            if not f.is_file():
                raise ConfigError(f"tag.wd_model: {f} is missing. {HOW}")
        return files
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        return (
            resolve(f"{ref}/model.onnx", "tag.wd_model", "WD tagger model", HOW),
            resolve(f"{ref}/selected_tags.csv", "tag.wd_model", "WD tagger labels", HOW),
        )
    raise ConfigError(f"tag.wd_model: no folder at {folder.resolve()}. {HOW}")


def load_labels(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise ConfigError(f"tag.wd_model: {path} has no name and category columns")
    return [r["name"] for r in rows], np.array([int(r["category"]) for r in rows])


def prepare(image: Image.Image, size: int) -> np.ndarray:
    """One image → float32 [size, size, 3], BGR, 0..255: the preprocessing of kohya's
    ``tag_images_by_wd14_tagger.py``, which is how our users tag today (padded to a square with white,
    centred; OpenCV's INTER_AREA down to ``size``, LANCZOS4 up), with transparency composited onto
    white first as SmilingWolf's own tagger does (kohya's drops the alpha channel)."""
    return np.ascontiguousarray(square(image, size)[:, :, ::-1], dtype=np.float32)


def batch(images: list[Image.Image], size: int) -> np.ndarray:
    """``np.stack([prepare(im, size) for im in images])``: each square turned to BGR by OpenCV and
    written into one float32 array (the same values; numpy's strided copy cost 6× as much)."""
    out = np.empty((len(images), size, size, 3), np.float32)
    for n, im in enumerate(images):
        out[n] = cv2.cvtColor(square(im, size), cv2.COLOR_RGB2BGR)
    return out


def square(image: Image.Image, size: int) -> np.ndarray:
    """The uint8 RGB square ``prepare`` converts."""
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        image = canvas
    pixels = np.asarray(image.convert("RGB"))
    h, w = pixels.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    if (h, w) != (side, side):  # white borders, as np.pad(constant_values=255) makes them
        pixels = cv2.copyMakeBorder(
            pixels, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=(255, 255, 255)
        )
    if side != size:
        pixels = cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LANCZOS4)
    return pixels


def mcut(probs: np.ndarray) -> float:
    """Maximum Cut Thresholding: the midpoint of the largest gap between sorted probabilities."""
    if probs.size < 2:
        return 0.5
    p = np.sort(probs)[::-1]
    t = int(np.argmax(p[:-1] - p[1:]))
    return float((p[t] + p[t + 1]) / 2)


class WDTagger(Tagger):
    name = "wd"
    runs_model = True
    imports = ("onnxruntime",)
    needs_images = True
    input_long = True  # it pads to a square: only the long side must reach the model's input
    # 4: a model input under 448 px is box-reduced from the image's 448 view (zxl.images.BASE_SIDE; a 448 px
    # model sees what it saw in 3); 3: kohya's preprocessing (INTER_AREA) on an image decoded reduced to the
    # model's long side (JPEG DCT scaling); 1: PIL bicubic on the whole image
    version = "4"

    def __init__(self, cfg: TagConfig):
        import onnxruntime as ort

        self.cfg = cfg
        model_path, labels_path = model_files(cfg.wd_model)
        self.names, categories = load_labels(labels_path)
        self.rating_idx = np.flatnonzero(categories == 9)
        self.general_idx = np.flatnonzero(categories == 0)
        self.character_idx = np.flatnonzero(categories == 4)
        rating_names = [self.names[i] for i in self.rating_idx]
        if sorted(rating_names) != sorted(RATINGS):
            raise ConfigError(f"tag.wd_model: the rating labels (category 9) are {rating_names}, not {list(RATINGS)}")
        available = ort.get_available_providers()
        want_cuda = cfg.device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        if cfg.device == "cuda" and not want_cuda:
            raise ConfigError("tag.device is cuda but onnxruntime has no CUDA execution provider here")
        providers = (["CUDAExecutionProvider"] if want_cuda else []) + ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        # Its threads sleep when a batch is done instead of spinning for the next: on a worker whose
        # other threads decode and preprocess the next images, spinning took ~5 ms of CPU an image.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as e:  # noqa: BLE001 - a corrupt model names the key
            raise ConfigError(f"tag.wd_model: onnxruntime cannot load {model_path}: {e}") from None
        inp = self.session.get_inputs()[0]
        self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name
        self.size = int(inp.shape[1]) if isinstance(inp.shape[1], int) else 448
        self.input_side = self.size
        n_out = self.session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.names):
            raise ConfigError(
                f"tag.wd_model: the model has {n_out} outputs but selected_tags.csv {len(self.names)} rows"
            )
        self.model_name = Path(cfg.wd_model).name or cfg.wd_model

    @property
    def source(self) -> str:
        return f"wd:{self.model_name}"

    @classmethod
    def check(cls, cfg: TagConfig) -> None:
        model_files(cfg.wd_model)

    @classmethod
    def references(cls, cfg: TagConfig) -> dict[str, str]:
        return {"tag.wd_model": cfg.wd_model}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]  # pyright: ignore[reportReturnType] - onnxruntime types any output kind; this model's is a dense array

    def _select(self, probs: np.ndarray, idx: np.ndarray, threshold: float) -> list[str]:
        p = probs[idx]
        order = np.argsort(-p, kind="stable")
        return [self.names[idx[i]] for i in order if p[i] > threshold]

    def tag(self, images, rows: pd.DataFrame) -> pd.DataFrame:
        assert images is not None, "needs_images: the stage hands this tagger the rows' images"
        out = empty(len(rows))
        present = [(i, im) for i, im in enumerate(images) if im is not None]
        ratings: list[str | None] = [None] * len(rows)
        tags: list[list[str] | None] = [None] * len(rows)
        characters: list[list[str] | None] = [None] * len(rows)
        for start in range(0, len(present), self.cfg.batch_size):
            chunk = present[start : start + self.cfg.batch_size]
            probs = self.predict(batch([im for _, im in chunk], self.size))
            for (i, _), p in zip(chunk, probs, strict=True):
                ratings[i] = self.names[self.rating_idx[int(np.argmax(p[self.rating_idx]))]]
                g_t, c_t = self.cfg.wd_general_threshold, self.cfg.wd_character_threshold
                if self.cfg.wd_mcut:
                    g_t, c_t = mcut(p[self.general_idx]), max(0.15, mcut(p[self.character_idx]))
                tags[i] = self._select(p, self.general_idx, g_t)
                characters[i] = self._select(p, self.character_idx, c_t)
        for name, values in (("rating", ratings), ("tags", tags), ("characters", characters)):
            out[name] = pd.Series(values, dtype=object)
        return out
