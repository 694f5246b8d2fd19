"""Validation grids: images in rows and columns with axis labels, PNGs that carry their
A1111 ``parameters`` text (so ComfyUI, A1111 and Civitai read the settings back), and the
decoder's [-1, 1] output as 8-bit pixels by one of two rules (``PNG_ROUNDINGS``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from zxl.config import ConfigError
from zxl.files import replacing

PAD = 8
# "round": the nearest level, ((x.clamp(-1, 1) + 1)·127.5).round() (diffusers' and A1111's);
# "comfyui": ComfyUI's VAE decode then SaveImage, which truncates
PNG_ROUNDINGS = ("round", "comfyui")


def png_rounding(rule: str, option: str = "--png-rounding") -> str:
    """``rule`` when it is one of PNG_ROUNDINGS, else a ConfigError naming ``option`` and the choices."""
    if rule not in PNG_ROUNDINGS:
        raise ConfigError(f"{option} must be one of {', '.join(PNG_ROUNDINGS)}, got '{rule}'")
    return rule


def to_pixels(images: torch.Tensor, rule: str = "round") -> np.ndarray:
    """Decoded images [B, 3, H, W] in [-1, 1] as uint8 [B, H, W, 3]. ``round``: the nearest level.
    ``comfyui``: ComfyUI's own steps, in their order and float32: ``VAE.process_output``
    clamp((x + 1)/2, 0, 1) (comfy/sd.py), then SaveImage's ``np.clip(255. * i, 0, 255).astype(np.uint8)``
    (nodes.py), which truncates: on average half a level darker than ``round``."""
    if png_rounding(rule) == "comfyui":
        unit = torch.clamp((images.float() + 1.0) / 2.0, min=0.0, max=1.0)
        return np.clip(255.0 * unit.permute(0, 2, 3, 1).cpu().numpy(), 0, 255).astype(np.uint8)
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_png(image: Image.Image, path: str | Path, parameters: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    path = Path(path)
    with replacing(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # an older Pillow without scalable default font
        return ImageFont.load_default()


def make_grid(
    images: list[list[Image.Image]], x_labels: list[str], y_labels: list[str], title: str = ""
) -> Image.Image:
    """``images[row][col]``; every cell is as large as the largest image; labels above and left."""
    rows, cols = len(images), max(len(r) for r in images)
    if len(x_labels) != cols or len(y_labels) != rows:
        raise ValueError(f"{cols} columns and {rows} rows need as many labels, got {len(x_labels)} and {len(y_labels)}")
    cw = max(im.width for r in images for im in r)
    ch = max(im.height for r in images for im in r)
    font = _font(max(14, cw // 24))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = int(probe.textbbox((0, 0), "Ag", font=font)[3]) + PAD  # Pillow types the box as floats
    left = int(max([probe.textbbox((0, 0), s, font=font)[2] for s in y_labels] + [0])) + 2 * PAD if any(y_labels) else 0
    top = text_h * (2 if title else 1) + PAD
    grid = Image.new("RGB", (left + cols * (cw + PAD) + PAD, top + rows * (ch + PAD) + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((PAD, PAD), title, fill=(0, 0, 0), font=font)
    for c, label in enumerate(x_labels):
        draw.text((left + PAD + c * (cw + PAD), top - text_h), label, fill=(0, 0, 0), font=font)
    for r, label in enumerate(y_labels):
        draw.text((PAD, top + r * (ch + PAD) + ch // 2 - text_h // 2), label, fill=(0, 0, 0), font=font)
        for c, im in enumerate(images[r]):
            x = left + PAD + c * (cw + PAD) + (cw - im.width) // 2
            y = top + r * (ch + PAD) + (ch - im.height) // 2
            grid.paste(im.convert("RGB"), (x, y))
    return grid
