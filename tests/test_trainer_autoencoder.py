"""The demo's autoencoder: it trains (the loss falls on a few images), records its figures, and the
demo model it goes into loads as an SDXL model with an 8× latent."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from zxl.demo_corpus import draw_picture
from zxl.testing import build_demo_model
from zxl.trainer.autoencoder import CONFIG, psnr, train_autoencoder


def test_training_raises_the_reconstruction_psnr_and_sets_the_scaling_factor():
    from diffusers import AutoencoderKL

    images = [draw_picture(i, 0, 96, 64) for i in range(6)]
    torch.manual_seed(0)
    untrained = psnr(AutoencoderKL(**CONFIG).eval(), images[:1])
    vae, figures = train_autoencoder(images, steps=40, batch=8, crop=32, lr=2e-3, log=lambda *a: None)
    assert figures["psnr_db"] == pytest.approx(psnr(vae, images[:1]), abs=0.01)
    assert figures["psnr_db"] > untrained + 1
    assert figures["test_images"] == 1 and figures["train_images"] == 5 and figures["steps"] == 40
    assert vae.config.scaling_factor == pytest.approx(1 / figures["latent_std"], rel=1e-3)


def test_demo_model_loads_with_an_8x_latent(sync_run, tmp_path):
    from zxl.sampler.pipeline import SDXL

    cfg, _ = sync_run
    catalog = Path(cfg.run.runs_dir) / cfg.run.name / "catalog"
    folder = build_demo_model(tmp_path / "demo-sdxl", catalog, size=64, steps=2, limit=24, log=lambda *a: None)
    assert json.loads((folder / "autoencoder.json").read_text())["steps"] == 2
    assert not list(tmp_path.glob(".*"))  # no temporary folder left
    model = SDXL.load(folder, device="cpu", precision="fp32")
    assert model.latent_scale == 8 and model.v_pred and model.ztsnr
    with torch.no_grad():
        z = model.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean * model.vae.config.scaling_factor
        assert z.shape == (1, 4, 8, 8) and isinstance(model.decode(z)[0], Image.Image)
