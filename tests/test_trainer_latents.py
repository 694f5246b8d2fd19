"""The VAE latent cache: encoded once, reused while images and VAE are unchanged, flips on demand."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from zxl.trainer.data import buckets_for, load_rows
from zxl.trainer.latents import LatentCache, cover_crop, tensor_hash


@pytest.fixture(scope="module")
def setup(sync_run, tiny_sdxl):
    from diffusers import AutoencoderKL

    cfg, _ = sync_run
    catalog = Path(cfg.run.runs_dir) / cfg.run.name / "catalog"
    rows = load_rows(catalog, 64)
    vae = AutoencoderKL.from_pretrained(tiny_sdxl / "vae").eval()
    return catalog, rows, vae


def test_cover_crop_covers_and_centres():
    image = Image.new("RGB", (300, 100))
    out, top, left = cover_crop(image, 96, 96)
    assert out.size == (96, 96) and top == 0 and left == (288 - 96) // 2
    out, top, left = cover_crop(Image.new("RGB", (100, 300)), 96, 168)
    assert out.size == (96, 168) and left == 0 and top == (288 - 168) // 2


def test_cache_is_built_once_reused_and_redone_per_changed_shard(setup, tmp_path):
    catalog, rows, vae = setup
    buckets = buckets_for(64)
    cache = LatentCache(tmp_path, tensor_hash(vae.state_dict()), 64, True, buckets)
    first = cache.build(rows, vae, catalog, torch.device("cpu"), log=lambda *a: None)
    assert first["encoded_images"] == len(rows) and first["reused_shards"] == 0
    again = LatentCache(tmp_path, tensor_hash(vae.state_dict()), 64, True, buckets)
    second = again.build(rows, vae, catalog, torch.device("cpu"), log=lambda *a: None)
    assert second["encoded_images"] == 0 and second["reused_shards"] == first["shards"]
    changed = rows.copy()
    changed.loc[0, "sha256"] = "0" * 64  # one image changed: only its shard is encoded again
    third = again.build(changed, vae, catalog, torch.device("cpu"), log=lambda *a: None)
    assert third["encoded_shards"] == 1 and third["encoded_images"] == int((rows.shard == rows.shard[0]).sum())

    row = rows.iloc[0]
    z, (top, left) = again.get(row.shard, row.key)
    zf, _ = again.get(row.shard, row.key, flip=True)
    w, h = buckets[row.bucket_index]
    assert z.dtype == torch.float16 and tuple(z.shape) == (4, h // 2, w // 2)
    assert not torch.equal(z, zf)
    # the stored latent is the VAE mean of the cover-cropped image times the scaling factor
    from zxl.catalog.images import ImageStore
    from zxl.trainer.latents import load_rgb, to_tensor

    data, _ = ImageStore(catalog).get(row.shard, row.shard_key)
    image, t2, l2 = cover_crop(load_rgb(data), w, h)
    with torch.no_grad():
        ref = vae.encode(to_tensor(image)[None]).latent_dist.mean[0] * vae.config.scaling_factor
        ref_flip = vae.encode(to_tensor(image)[None].flip(-1)).latent_dist.mean[0] * vae.config.scaling_factor
    assert (top, left) == (t2, l2)
    assert torch.allclose(z.float(), ref, atol=2e-3) and torch.allclose(zf.float(), ref_flip, atol=2e-3)


def test_another_vae_is_another_cache(setup, tmp_path):
    _, _, vae = setup
    a = LatentCache(tmp_path, tensor_hash(vae.state_dict()), 64, False, buckets_for(64))
    state = {k: v.clone() for k, v in vae.state_dict().items()}
    next(iter(state.values())).add_(1)
    b = LatentCache(tmp_path, tensor_hash(state), 64, False, buckets_for(64))
    c = LatentCache(tmp_path, tensor_hash(vae.state_dict()), 128, False, buckets_for(128))
    assert len({a.folder, b.folder, c.folder}) == 3
