"""A small SDXL-architecture autoencoder (diffusers ``AutoencoderKL``, 8× down like SDXL's, 4 latent
channels) trained on a catalog's images, so that a demo model trained on its latents can show
pictures rather than texture. SDXL's own VAE cannot be downloaded here and a random one only
scrambles; this one learns the demo corpus's flat shapes and gradients in a few CPU minutes.

Training: random 64×64 crops of the catalog's ok images resized so the short side is ``size``
(the demo trains at 128 px), L1 + MSE reconstruction and a KL term of weight 1e-6 (the Stable
Diffusion autoencoders' order of magnitude), AdamW. ``scaling_factor`` is set to 1/std of the
latents, as Stable Diffusion's was chosen. Every random draw comes from ``seed``. The
reconstruction error (PSNR on whole held-back images) is written beside the weights.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

CONFIG = {
    "block_out_channels": [16, 32, 64, 64], "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "norm_num_groups": 4, "layers_per_block": 1, "sample_size": 128,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}  # fmt: skip


def catalog_images(catalog: Path, size: int, limit: int = 0) -> list:
    """The ok images of a catalog (duplicates included: more to learn from), short side ``size``."""
    import pyarrow.parquet as pq
    from PIL import Image

    from zxl.catalog.images import ImageStore
    from zxl.trainer.latents import load_rgb

    t = pq.read_table(catalog, columns=["key", "status", "shard", "shard_key", "width"]).to_pandas()
    t = t[t.status.isin(["ok", "duplicate"]) & t.width.notna()].sort_values("key")
    if limit:
        t = t.iloc[:limit]
    store = ImageStore(catalog)
    out = []
    for r in t.itertuples():
        im = load_rgb(store.get(r.shard, r.shard_key)[0])
        k = size / min(im.size)
        out.append(
            im.resize((max(size, round(im.width * k)), max(size, round(im.height * k))), Image.Resampling.LANCZOS)
        )
    return out


def _tensor(im) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def train_autoencoder(images: list, steps: int = 1200, batch: int = 32, crop: int = 32, lr: float = 2e-3,
                      seed: int = 0, log=print):  # fmt: skip
    """(the trained AutoencoderKL in eval mode, figures) on ``images`` (PIL, RGB)."""
    from diffusers import AutoencoderKL  # pyright: ignore[reportPrivateImportUsage] - diffusers exports lazily

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_test = max(1, len(images) // 20)
    test, train = images[:n_test], images[n_test:]
    tensors = [_tensor(im) for im in train]
    vae = AutoencoderKL(**CONFIG, scaling_factor=1.0)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    start = time.time()
    vae.train()
    for step in range(steps):
        xs = []
        for i in rng.integers(len(tensors), size=batch):
            x = tensors[i]
            top, left = rng.integers(x.shape[1] - crop + 1), rng.integers(x.shape[2] - crop + 1)
            x = x[:, top : top + crop, left : left + crop]
            xs.append(x.flip(-1) if rng.random() < 0.5 else x)
        x = torch.stack(xs)
        # the mean: what the trainer caches and the sampler decodes (diffusers types both calls' results
        # as an output object or a tuple/tensor; return_dict=True, the default, gives the output object)
        post = vae.encode(x).latent_dist  # pyright: ignore[reportAttributeAccessIssue] - an output object
        rec = vae.decode(post.mean).sample  # pyright: ignore[reportAttributeAccessIssue] - an output object
        kl = post.kl().mean() / x[0].numel()
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"autoencoder: step {step + 1}/{steps}, loss {loss.item():.4f} ({time.time() - start:.0f} s)")
    vae.eval()
    with torch.no_grad():
        lat = [
            vae.encode(_tensor(im)[None]).latent_dist.mean  # pyright: ignore[reportAttributeAccessIssue] - as above
            for im in test + train[:64]
        ]
        std = float(torch.cat([z.flatten() for z in lat]).std())
    vae.register_to_config(scaling_factor=round(1 / std, 5))
    figures = {"steps": steps, "batch": batch, "crop": crop, "train_images": len(train), "test_images": len(test),
               "psnr_db": round(psnr(vae, test), 2), "latent_std": round(std, 4),
               "scaling_factor": vae.config["scaling_factor"], "seconds": round(time.time() - start, 1)}  # fmt: skip
    return vae, figures


@torch.no_grad()
def psnr(vae, images: list) -> float:
    """Mean reconstruction PSNR (dB, pixels in [0, 1]) of whole images through the latent mean."""
    out = []
    for im in images:
        x = _tensor(im)[None]
        x = x[:, :, : x.shape[2] // 8 * 8, : x.shape[3] // 8 * 8]
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        out.append(10 * math.log10(1 / max(float(((rec - x) / 2).pow(2).mean()), 1e-10)))
    return float(np.mean(out))
