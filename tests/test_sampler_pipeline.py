"""SDXL sampling on a tiny random SDXL-architecture model: parity with diffusers, seeds, grids."""

import pytest
import torch
from PIL import Image

from zxl.cli import main
from zxl.config import ConfigError
from zxl.sampler.guidance import DynamicThresholding
from zxl.sampler.pipeline import SDXL, Sampling, generate
from zxl.sampler.prompts import Prompt, parse_infotext


@pytest.fixture(scope="module")
def model(tiny_sdxl):
    return SDXL.load(tiny_sdxl, device="cpu")


def test_euler_matches_diffusers_sdxl_pipeline(tiny_sdxl, model):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl))
    pipe.set_progress_bar_config(disable=True)
    p = Prompt("score_9, 1girl, smile", negative="score_1", width=64, height=48, seed=3, cfg=4.0, steps=6)
    noise = torch.randn((1, 4, 24, 32), generator=torch.Generator("cpu").manual_seed(3))
    ref = pipe(p.prompt, negative_prompt=p.negative, num_inference_steps=p.steps, guidance_scale=p.cfg,
               height=p.height, width=p.width, latents=noise.clone(), output_type="latent").images  # fmt: skip
    ours = generate(model, p, Sampling(terminal="diffusers"), latents_only=True)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_seeds_and_every_sampler(model):
    p = Prompt("score_9, a cat", width=32, height=32, seed=5, steps=4)
    a, b = generate(model, p, latents_only=True), generate(model, p, latents_only=True)
    torch.testing.assert_close(a, b)  # a seed is a picture
    assert not torch.allclose(a, generate(model, p.with_(seed=6), latents_only=True))
    for sampler in ("euler_ancestral", "dpmpp_2m", "ddim"):
        x = generate(model, p.with_(sampler=sampler), latents_only=True)
        assert torch.isfinite(x).all() and x.shape == a.shape
    dyn = generate(model, p.with_(cfg=9.0), dynamic=DynamicThresholding.recipe(9.0), latents_only=True)
    assert torch.isfinite(dyn).all()
    assert isinstance(generate(model, p), Image.Image)
    with pytest.raises(ConfigError, match="multiples of 8"):
        generate(model, p.with_(width=30))


def test_zxl_sample_writes_a_grid_and_pngs_with_parameters(tiny_sdxl, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# tiny\nscore_9, 1girl --w 32 --h 32 --s 3\nscore_8, a dog --w 32 --h 40 --s 3 --ss ddim\n")
    out = tmp_path / "out"
    assert main(["sample", "--model", str(tiny_sdxl), "--prompts", str(prompts), "--x", "cfg=3,5", "--y", "prompt",
                 "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    grids = sorted(out.glob("grid-*.png"))
    singles = sorted(p for p in out.glob("*.png") if not p.name.startswith("grid"))
    assert len(grids) == 1 and len(singles) == 4
    infos = [parse_infotext(Image.open(f).text["parameters"]) for f in singles]
    params = next(i for i in infos if i["prompt"] == "score_9, 1girl")
    assert params["negative"] == "score_1" and {i["Sampler"] for i in infos} == {"Euler", "DDIM"}
    assert params["Steps"] == "3" and params["Size"] == "32x32" and params["Model"] == "tiny-sdxl"
    assert params["Schedule type"] == "Trailing" and "Dynamic thresholding enabled" not in params
    # a ComfyUI scheduler by its A1111 label, and the extension's repeating mode: A1111's own infotext keys
    again = tmp_path / "again"
    assert main(["sample", "--model", str(tiny_sdxl), "--prompts", str(prompts), "--out", str(again), "--device",
                 "cpu", "--schedule", "SGM Uniform", "--dynamic", "--dynamic-mode", "Sawtooth",
                 "--dynamic-value", "2"]) == 0  # fmt: skip
    info = parse_infotext(Image.open(next(again.glob("000-*.png"))).text["parameters"])
    assert info["Schedule type"] == "SGM Uniform" and info["Dynamic thresholding enabled"] == "True"
    assert info["CFG mode"] == "Sawtooth" and info["Scheduler value"] == "2"
    assert main(["sample", "--model", str(tiny_sdxl), "--prompts", str(prompts), "--schedule", "align"]) == 2
    assert "sgm_uniform" in capsys.readouterr().err
    with Image.open(grids[0]) as g:
        assert g.width > 2 * 32 and g.height > 2 * 32
    assert main(["sample", "--model", str(tmp_path), "--prompts", str(prompts)]) == 2
    assert "not a diffusers SDXL folder" in capsys.readouterr().err
    assert main(["sample", "--model", str(tiny_sdxl), "--prompts", str(prompts), "--x", "eta=1,2"]) == 2
    assert "choose from prompt, seed, cfg" in capsys.readouterr().err


def comfyui_save_image(decoded):
    """comfy/sd.py ``VAE.decode``'s ``process_output``, then nodes.py ``SaveImage.save_images``, as written."""
    import numpy as np

    images = torch.clamp((decoded + 1.0) / 2.0, min=0.0, max=1.0).movedim(1, -1)  # ComfyUI's IMAGE: [B, H, W, C]
    out = []
    for image in images:
        i = 255.0 * image.cpu().numpy()
        out.append(np.clip(i, 0, 255).astype(np.uint8))
    return np.stack(out)


def test_png_rounding_truncates_like_comfyui_and_rounds_by_default():
    import numpy as np

    from zxl.sampler.grid import to_pixels

    x = torch.tensor([-2.0, -1.0, -0.999, 0.0, 0.5, 0.999, 1.0, 1.5]).expand(1, 3, 1, 8)
    assert to_pixels(x, "comfyui")[0, 0, :, 0].tolist() == [0, 0, 0, 127, 191, 254, 255, 255]
    assert to_pixels(x)[0, 0, :, 0].tolist() == [0, 0, 0, 128, 191, 255, 255, 255]
    noisy = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.6
    ours, rounded = to_pixels(noisy, "comfyui"), to_pixels(noisy, "round")
    assert np.array_equal(ours, comfyui_save_image(noisy))
    diff = rounded.astype(int) - ours.astype(int)
    assert set(np.unique(diff).tolist()) == {0, 1} and 0.4 < diff.mean() < 0.6  # half a level darker on average


def test_decode_and_generate_take_the_png_rounding(model):
    import numpy as np

    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    rounded, truncated = (np.asarray(model.decode(latents, r)[0], dtype=int) for r in ("round", "comfyui"))
    assert np.array_equal(np.asarray(model.decode(latents)[0], dtype=int), rounded)
    assert set(np.unique(rounded - truncated).tolist()) <= {0, 1} and (rounded != truncated).any()
    p = Prompt("score_9, a cat", width=32, height=32, seed=5, steps=2)
    image = generate(model, p, Sampling(png_rounding="comfyui"))
    assert np.array_equal(np.asarray(image), np.asarray(model.decode(generate(model, p, latents_only=True),
                                                                      "comfyui")[0]))  # fmt: skip


def test_generate_gives_the_unet_the_timestep_by_the_rule(model):
    p = Prompt("score_9, a cat", width=32, height=32, seed=5, steps=4)
    for schedule in ("karras", "trailing"):  # karras at 4 steps: t = 994.37 (continuous) or 994 at step 1
        a = generate(model, p, Sampling(schedule=schedule), latents_only=True)
        b = generate(model, p, Sampling(schedule=schedule, timesteps="continuous"), latents_only=True)
        assert torch.equal(a, generate(model, p, Sampling(schedule=schedule, timesteps="comfyui"), latents_only=True))
        assert torch.equal(a, b) == (schedule == "trailing")  # the trailing σ are table entries: whole t either way


def test_sampling_names_its_options_and_choices():
    assert Sampling().timesteps == "comfyui" and Sampling().png_rounding == "round"
    with pytest.raises(ConfigError, match="--timesteps must be one of comfyui, continuous, got 'nearest'"):
        Sampling(timesteps="nearest")
    with pytest.raises(ConfigError, match="--png-rounding must be one of round, comfyui, got 'floor'"):
        Sampling(png_rounding="floor")
    from zxl.trainer.evaluate import EvalConfig  # zxl eval samples by the same rule, checked as early

    assert EvalConfig().timesteps == "comfyui" and EvalConfig(timesteps="continuous").timesteps == "continuous"
    with pytest.raises(ConfigError, match="--timesteps must be one of comfyui, continuous"):
        EvalConfig(timesteps="nearest")
    fields = Sampling().infotext_fields()
    assert fields["Timesteps"] == "comfyui" and "PNG rounding" not in fields
    fields = Sampling(timesteps="continuous", png_rounding="comfyui", cfg_rescale=0.7).infotext_fields()
    assert fields["Timesteps"] == "continuous" and fields["PNG rounding"] == "comfyui" and fields["CFG rescale"] == 0.7


def test_zxl_sample_passes_timesteps_and_png_rounding_into_the_infotext(tiny_sdxl, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("score_9, 1girl --w 32 --h 32 --s 2\n")
    runs = {"default": [], "set": ["--timesteps", "continuous", "--png-rounding", "comfyui"]}
    for name, flags in runs.items():
        assert main(["sample", "--model", str(tiny_sdxl), "--prompts", str(prompts), "--out", str(tmp_path / name),
                     "--device", "cpu", *flags]) == 0  # fmt: skip
    default = parse_infotext(Image.open(next((tmp_path / "default").glob("000-*.png"))).text["parameters"])
    assert default["Timesteps"] == "comfyui" and "PNG rounding" not in default
    info = parse_infotext(Image.open(next((tmp_path / "set").glob("000-*.png"))).text["parameters"])
    assert info["Timesteps"] == "continuous" and info["PNG rounding"] == "comfyui"
    capsys.readouterr()
    assert main(["sample", "--model", str(tiny_sdxl), "--prompts", str(prompts), "--timesteps", "nearest"]) == 2
    err = capsys.readouterr().err
    assert err == "zxl sample: error: --timesteps must be one of comfyui, continuous, got 'nearest'\n"
    assert main(["sample", "--print-sigmas", "--png-rounding", "floor"]) == 2
    assert capsys.readouterr().err == "zxl sample: error: --png-rounding must be one of round, comfyui, got 'floor'\n"


def test_the_unet_gets_its_timestep_in_float32_at_any_precision(model):
    """bf16 holds 999 as 1000 and 997 as 996, fp16 994.37 as 994.5: the U-Net's t stays float32 (diffusers
    embeds it in float32, as ComfyUI does), so its value is the rule's whatever the model's precision."""
    import dataclasses
    from types import SimpleNamespace

    from zxl.sampler.schedule import get_sigmas

    seen = []

    def unet(x_in, t, **kw):
        seen.append(t)
        return SimpleNamespace(sample=torch.zeros_like(x_in))

    p = Prompt("score_9, a cat", width=32, height=32, seed=5, steps=4)
    for dtype in (torch.bfloat16, torch.float16):
        for rule in ("comfyui", "continuous"):
            seen.clear()
            fake = dataclasses.replace(model, unet=unet, dtype=dtype)
            generate(fake, p, Sampling(schedule="karras", timesteps=rule), latents_only=True)
            _, ts = get_sigmas(4, "karras", timesteps=rule)
            assert all(t.dtype == torch.float32 for t in seen)
            torch.testing.assert_close(torch.stack([t[0] for t in seen]).double(), ts, rtol=0, atol=1e-4)
