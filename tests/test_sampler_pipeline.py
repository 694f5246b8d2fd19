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
