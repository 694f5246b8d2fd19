"""The VAE latent cache: each trainable image encoded once, reused by every step and every run.

A stage like the curation stages (docs/design.md "Stage contract"): one file per catalog shard,
``<run>/latents/<cache id>/<shard>.safetensors``, written to a temporary name and renamed. The
cache id hashes the VAE's weights, the bucket resolution and the flip option, and each file
records a hash of its rows (key, sha256, bucket), so a file is reused exactly while the images
and the VAE are unchanged, and a changed catalog re-encodes only the shards it touches.

Images are resized to cover their bucket and centre-cropped (the crop offset is stored for SDXL's
size conditioning), encoded in fp32 (the SDXL VAE overflows in fp16: docs/recipe.md), and the latent
mean times the VAE's scaling factor is stored in fp16.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from safetensors import safe_open
from safetensors.torch import save_file

from zxl.catalog.images import ImageStore
from zxl.files import replacing
from zxl.images import decode


def tensor_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def rows_hash(rows: pd.DataFrame) -> str:
    blob = "\n".join(f"{k}\t{s}\t{b}" for k, s, b in zip(rows.key, rows.sha256, rows.bucket_index, strict=True))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cover_crop(image: Image.Image, width: int, height: int) -> tuple[Image.Image, int, int]:
    """Resize to cover width × height (Lanczos), centre-crop; returns the crop's (top, left)."""
    scale = max(width / image.width, height / image.height)
    w, h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    image = image.resize((w, h), Image.Resampling.LANCZOS)
    top, left = (h - height) // 2, (w - width) // 2
    return image.crop((left, top, left + width, top + height)), top, left


def load_rgb(data: bytes) -> Image.Image:
    image = ImageOps.exif_transpose(decode(data))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    a = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return a / 127.5 - 1.0


class LatentCache:
    def __init__(self, run_dir: Path, vae_hash: str, resolution: int, flip: bool, buckets: list[tuple[int, int]]):
        self.id = hashlib.sha256(f"{vae_hash}|{resolution}|{flip}".encode()).hexdigest()[:12]
        self.folder = Path(run_dir) / "latents" / self.id
        self.flip, self.buckets = flip, buckets
        self._open: OrderedDict[str, tuple[Any, dict[str, list[int]]]] = OrderedDict()  # (safe_open handle, crops)

    def _path(self, shard: str) -> Path:
        return self.folder / (Path(shard).stem + ".safetensors")

    def _fresh(self, shard: str, rows: pd.DataFrame) -> bool:
        path = self._path(shard)
        if not path.is_file():
            return False
        with safe_open(path, "pt") as f:
            return (f.metadata() or {}).get("rows") == rows_hash(rows)

    def missing(self, rows: pd.DataFrame) -> list[str]:
        return [str(s) for s, g in rows.groupby("shard", sort=True) if not self._fresh(str(s), g)]  # str: a shard

    @torch.no_grad()
    def build(self, rows: pd.DataFrame, vae, catalog_dir: Path, device: torch.device, batch_size: int = 8,
              rank: int = 0, world: int = 1, log=print) -> dict:  # fmt: skip
        """Encode the shards this process owns (every world-th missing one); returns counts."""
        store = ImageStore(catalog_dir)
        todo = self.missing(rows)
        mine = todo[rank::world]
        self.folder.mkdir(parents=True, exist_ok=True)
        encoded = 0
        for n, shard in enumerate(mine):
            group = rows[rows.shard == shard]
            assert isinstance(group, pd.DataFrame)  # pandas infers df[mask] as DataFrame | Series
            tensors, crops = {}, {}
            for b, sub in group.groupby("bucket_index"):
                w, h = self.buckets[b]  # pyright: ignore[reportCallIssue, reportArgumentType] - a group key: an int
                keys = sub.key.tolist()
                for i in range(0, len(keys), batch_size):
                    pixels, names = [], []
                    for _, row in sub.iloc[i : i + batch_size].iterrows():
                        data, _ = store.get(row.shard, row.shard_key)
                        image, top, left = cover_crop(load_rgb(data), w, h)
                        crops[row.key] = [top, left]
                        pixels.append(to_tensor(image))
                        names.append(row.key)
                    x = torch.stack(pixels).to(device, torch.float32)
                    variants = [(x, "")] + ([(x.flip(-1), "/flip")] if self.flip else [])
                    for xs, suffix in variants:
                        z = vae.encode(xs).latent_dist.mean * vae.config.scaling_factor
                        for name, latent in zip(names, z.to(torch.float16).cpu(), strict=True):
                            tensors[name + suffix] = latent.contiguous()
                    encoded += len(names)
            path = self._path(shard)
            with replacing(path) as tmp:
                save_file(tensors, tmp, metadata={"rows": rows_hash(group), "crops": json.dumps(crops)})
            log(f"latents: {shard} ({len(group)} images) [{n + 1}/{len(mine)}]")
        return {"shards": len(rows.shard.unique()), "encoded_shards": len(mine), "encoded_images": encoded,
                "reused_shards": len(rows.shard.unique()) - len(todo)}  # fmt: skip

    def _handle(self, shard: str):
        if shard not in self._open:
            if len(self._open) >= 64:
                self._open.popitem(last=False)
            f = safe_open(self._path(shard), "pt")
            self._open[shard] = (f, json.loads((f.metadata() or {}).get("crops", "{}")))
        self._open.move_to_end(shard)
        return self._open[shard]

    def get(self, shard: str, key: str, flip: bool = False) -> tuple[torch.Tensor, tuple[int, int]]:
        """(fp16 latent, crop (top, left)) of one image (or its flipped copy, which keeps the crop offsets)."""
        f, crops = self._handle(shard)
        latent = f.get_tensor(key + ("/flip" if flip else ""))
        top, left = crops[key]
        return latent, (top, left)
