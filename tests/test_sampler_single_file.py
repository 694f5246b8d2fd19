"""Single-file SDXL (sampler/single_file.py): exact round trip, diffusers' own loader as the oracle,
the real-size key map against diffusers' converters (meta tensors, no weights), and loading."""

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from zxl.cli import main
from zxl.config import ConfigError
from zxl.sampler.pipeline import SDXL, generate
from zxl.sampler.prompts import Prompt, parse_infotext
from zxl.sampler.single_file import (
    CLIP_G,
    CLIP_L,
    CONFIG_DIR,
    file_hash,
    from_single_file,
    to_single_file,
    write_single_file,
)

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def pipe(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl))


@pytest.fixture(scope="module")
def single(pipe, tmp_path_factory):
    return write_single_file(tmp_path_factory.mktemp("single") / "tiny-v", *(getattr(pipe, n) for n in PARTS))


def assert_same(a: dict, b: dict, name: str):
    assert a.keys() == b.keys(), f"{name}: {sorted(set(a) ^ set(b))[:5]}"
    different = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    assert not different, f"{name}: {different[:5]}"


def test_round_trip_is_exact(pipe):
    models = [getattr(pipe, n) for n in PARTS]
    sd = to_single_file(*models)
    assert sd["v_pred"].numel() == 0 and sd["ztsnr"].numel() == 0
    assert sum(k.startswith(CLIP_G + "transformer.resblocks.0.attn.in_proj_") for k in sd) == 2  # q, k, v fused
    *parts, flags = from_single_file(sd, *(m.config for m in models))
    assert flags == {"v_pred": True, "ztsnr": True}
    for name, model, back in zip(PARTS, models, parts, strict=True):
        assert_same(model.state_dict(), back, name)
    # bare state dicts convert the same (the layout read off the keys), and without markers
    bare = to_single_file(*(m.state_dict() for m in models), v_pred=False, ztsnr=False)
    assert_same(bare, {k: v for k, v in sd.items() if k not in ("v_pred", "ztsnr")}, "bare")
    assert from_single_file(bare, *(m.config for m in models))[4] == {"v_pred": False, "ztsnr": False}
    # what released files carry besides the weights is read and dropped
    extra = {**sd, CLIP_L + "text_model.embeddings.position_ids": torch.arange(77)[None]}
    extra[CLIP_G + "logit_scale"] = torch.ones(())
    assert_same(from_single_file(extra, *(m.config for m in models))[0], parts[0], "unet")


def test_diffusers_loads_our_file_as_the_same_model(pipe, single, tiny_sdxl):
    """The oracle: diffusers' own single-file loader (offline, configs from the tiny folder)."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModelWithProjection

    ref = StableDiffusionXLPipeline.from_single_file(str(single), config=str(tiny_sdxl), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        assert_same(getattr(pipe, name).state_dict(), getattr(ref, name).state_dict(), name)
    # diffusers chooses a text encoder's converter by the CLIP-L key and its width alone; at tiny size both
    # encoders are 32 wide, so its pipeline fills text_encoder_2 with CLIP-L. Without the CLIP-L keys it
    # takes the open_clip path, the one a real SDXL file (768 vs 1280) takes.
    sd = {k: v for k, v in load_file(single).items() if not k.startswith(CLIP_L)}
    te2 = create_diffusers_clip_model_from_ldm(
        CLIPTextModelWithProjection, sd, config=str(tiny_sdxl), subfolder="text_encoder_2", local_files_only=True
    )
    assert_same(pipe.text_encoder_2.state_dict(), te2.state_dict(), "text_encoder_2")
    with safe_open(str(single), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.prediction_type"] == "v" and meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    yaml_text = single.with_suffix(".yaml").read_text()
    assert "denoiser_scaling.VScaling" in yaml_text and "EpsScaling" not in yaml_text
    assert not list(single.parent.glob("*.tmp"))


def test_real_sdxl_key_map_matches_diffusers_converters():
    """Real SDXL base at full size on the meta device: our file is what diffusers' converters read back
    to exactly the diffusers key set and shapes, and what its model-type detection calls xl_base."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
        infer_diffusers_model_type,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = [json.loads((CONFIG_DIR / p / "config.json").read_text()) for p in PARTS]
    with init_empty_weights():
        unet, vae = UNet2DConditionModel.from_config(cfg[0]), AutoencoderKL.from_config(cfg[1])
        te = CLIPTextModel(CLIPTextConfig.from_dict(cfg[2]))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(cfg[3]))
    sd = to_single_file(unet, vae, te, te2)

    def shapes(d):
        return {k: tuple(v.shape) for k, v in d.items()}

    assert len(sd) == 2513 + 2 and infer_diffusers_model_type(sd) == "xl_base"
    assert shapes(convert_ldm_unet_checkpoint(sd, dict(unet.config))) == shapes(unet.state_dict())
    assert shapes(convert_ldm_vae_checkpoint(sd, dict(vae.config))) == shapes(vae.state_dict())
    clip_l = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(sd).items()}
    assert shapes(clip_l) == shapes(te.state_dict())
    assert shapes(convert_open_clip_checkpoint(te2, sd, prefix=CLIP_G)) == shapes(te2.state_dict())
    known = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        CLIP_L + "text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        CLIP_G + "transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        CLIP_G + "text_projection": (1280, 1280),
        CLIP_G + "positional_embedding": (77, 1280),
    }
    assert {k: tuple(sd[k].shape) for k in known} == known
    parts = from_single_file(sd, *cfg)[:4]
    for model, back in zip((unet, vae, te, te2), parts, strict=True):
        assert shapes(back) == shapes(model.state_dict())


def test_zxl_sample_renders_the_same_from_the_file(tiny_sdxl, single, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("score_9, 1girl --w 32 --h 32 --s 3 --d 4\n")
    runs = {}
    for name, extra in (("folder", ["--model", str(tiny_sdxl)]),
                        ("file", ["--model", str(single), "--model-config", str(tiny_sdxl)])):  # fmt: skip
        out = tmp_path / name
        assert main(["sample", *extra, "--prompts", str(prompts), "--out", str(out), "--device", "cpu"]) == 0
        (png,) = [p for p in out.glob("*.png") if not p.name.startswith("grid")]
        runs[name] = Image.open(png)
    assert list(runs["folder"].getdata()) == list(runs["file"].getdata())
    params = parse_infotext(runs["file"].text["parameters"])
    assert params["Model"] == "tiny-v" and params["Model hash"] == file_hash(single)
    # the shipped configs are the real SDXL's: a tiny file needs its own
    assert main(["sample", "--model", str(single), "--prompts", str(prompts), "--out", str(tmp_path / "x")]) == 2
    assert "--model-config" in capsys.readouterr().err


def test_markers_decide_v_prediction(pipe, tiny_sdxl, tmp_path):
    configs = tmp_path / "configs"  # the tiny configs without a scheduler: nothing says v-prediction but the file
    for part in PARTS:
        (configs / part).mkdir(parents=True)
        shutil.copy(tiny_sdxl / part / "config.json", configs / part / "config.json")
    models = [getattr(pipe, n) for n in PARTS]
    eps = write_single_file(tmp_path / "eps.safetensors", *models, v_pred=False, ztsnr=False)
    assert not eps.with_suffix(".yaml").exists()
    model = SDXL.load(eps, device="cpu", config=configs)
    assert (model.v_pred, model.ztsnr) == (False, False)
    with pytest.raises(ConfigError, match="epsilon-prediction.*v_pred key"):
        generate(model, Prompt("a cat", width=32, height=32, steps=2))
    v_only = write_single_file(tmp_path / "v.safetensors", *models, ztsnr=False, yaml=False)
    model = SDXL.load(v_only, device="cpu", config=configs)
    assert (model.v_pred, model.ztsnr) == (True, False)
    # no markers, but the config folder given says v-prediction with ZTSNR in its scheduler config
    model = SDXL.load(eps, device="cpu", config=tiny_sdxl)
    assert (model.v_pred, model.ztsnr) == (True, True)


def test_not_sdxl_files_are_config_errors(pipe, single, tmp_path):
    configs = [getattr(pipe, n).config for n in PARTS]
    with pytest.raises(ConfigError, match=r"no conditioner\.embedders\.1\.model\..*Keys seen: a\.weight"):
        from_single_file({"a.weight": torch.zeros(2), "b.bias": torch.zeros(2)}, *configs)
    sd15 = {"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(2),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}  # fmt: skip
    with pytest.raises(ConfigError, match=r"SD 1\.x/2\.x"):
        from_single_file(sd15, *configs)
    sd = load_file(single)
    sd.pop("model.diffusion_model.out.2.bias")
    sd["model.diffusion_model.lora_up.weight"] = torch.zeros(2)
    with pytest.raises(ConfigError, match=r"1 missing: model\.diffusion_model\.out\.2\.bias; 1 unexpected: .*lora_up"):
        from_single_file(sd, *configs)
    real = [json.loads((CONFIG_DIR / p / "config.json").read_text()) for p in PARTS]
    with pytest.raises(ConfigError, match="of another shape"):
        from_single_file(load_file(single), real[0], *configs[1:])
    other = tmp_path / "model.ckpt"
    other.write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="must be .safetensors"):
        SDXL.load(other, device="cpu")


def test_file_hash_is_remembered_by_path_size_and_mtime(tmp_path, monkeypatch):
    import hashlib
    import os

    from zxl.sampler.single_file import hash_cache_path

    monkeypatch.setenv("ZXL_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"a" * 1000)
    first = file_hash(f)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()[:10]
    assert hash_cache_path().is_file()
    st = f.stat()
    f.write_bytes(b"b" * 1000)  # same size; put the old mtime back: the remembered hash answers
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_hash(f) == first
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime: hashed again
    assert file_hash(f) == hashlib.sha256(b"b" * 1000).hexdigest()[:10]
    hash_cache_path().write_text("not json")  # a broken cache costs only the time
    assert file_hash(f) == hashlib.sha256(b"b" * 1000).hexdigest()[:10]
