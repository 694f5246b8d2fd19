"""Single-file SDXL checkpoints, the layout A1111 and ComfyUI load, both ways and offline.

The layout is that of Stability-AI/generative-models (``sgm``): ``DiffusionEngine`` keeps the U-Net
(``sgm/modules/diffusionmodules/openaimodel.py: UNetModel``) under ``model.diffusion_model.``, the
VAE (``sgm/modules/diffusionmodules/model.py: Encoder/Decoder``) under ``first_stage_model.``, and the
two text encoders of ``sgm/modules/encoders/modules.py`` under ``conditioner.embedders.N.``: CLIP-L
(``FrozenCLIPEmbedder``, a transformers ``CLIPTextModel``: ``transformer.text_model.…``) and bigG
(``FrozenOpenCLIPEmbedder2``, an open_clip text tower: ``model.transformer.resblocks.N.…`` with q, k,
v fused into ``in_proj``, and ``text_projection`` applied as ``x @ P``). The key correspondence is
the one diffusers' ``loaders/single_file_utils.py`` (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_open_clip_checkpoint``) and
``scripts/convert_diffusers_to_original_sdxl.py`` read and write; tests/test_sampler_single_file.py
checks it against them. Empty ``v_pred`` and ``ztsnr`` keys mark a v-prediction ZTSNR model for
ComfyUI and recent A1111 (docs/recipe.md "Formats the ecosystem reads"); older A1111 reads ``sdxl_v.yaml``
beside the file.

Block numbers come from the configs (levels, layers per block, which up blocks attend), so the
tiny test model and the real SDXL convert with the same code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

import torch

from zxl.config import ConfigError
from zxl.files import replacing, write_text_atomic

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_L = "conditioner.embedders.0.transformer."
CLIP_G = "conditioner.embedders.1.model."
MARKERS = ("v_pred", "ztsnr")
CONFIG_DIR = Path(__file__).parent / "configs" / "sdxl"
YAML_V = Path(__file__).parent / "configs" / "sdxl_v.yaml"
# present in released files, not in the models: CLIP's position ids, open_clip's logit scale
IGNORED_SUFFIXES = ("position_ids", "logit_scale")
PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")

# A rename maps one diffusers/transformers key to (single-file key without prefix, transform). The
# transforms: None, "conv1x1" (a linear weight stored as a 1×1 convolution), "T" (transposed), and
# ("qkv", i) (the i-th third of a fused in_proj).
Rename = Callable[[str], tuple[str, object]]

RESNET_UNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}  # fmt: skip
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
VAE_FIXED = {"conv_norm_out": "norm_out", "conv_shortcut": "nin_shortcut"}
OPEN_CLIP = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding",
             "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}  # fmt: skip
OPEN_CLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}  # fmt: skip


def _unknown(part: str, key: str) -> NoReturn:
    raise ConfigError(f"{part}: no single-file name for '{key}' (not an SDXL {part})")


def _swap(name: str, table: Mapping[str, str]) -> str:
    """Rename the longest leading dotted part of ``name`` found in ``table``."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in table:
            return ".".join([table[head], *parts[n:]])
    return name


def _cfg(config) -> dict:
    return dict(config.to_dict() if hasattr(config, "to_dict") else config)


def unet_rename(config) -> Rename:
    """diffusers ``UNet2DConditionModel`` → sgm ``UNetModel`` keys. Input block 0 is conv_in; each
    level then has one block per layer (resnet ``.0``, attention ``.1``) and, but the last, one
    downsampler ``.0.op``. Output blocks run the levels in reverse with one layer more each, the
    upsampler after the last layer's resnet and attention (``.2.conv``, or ``.1.conv`` without)."""
    c = _cfg(config)
    levels = len(c["block_out_channels"])
    lpb = c["layers_per_block"]
    lpb = list(lpb) if isinstance(lpb, list | tuple) else [lpb] * levels
    up_lpb = lpb[::-1]
    up_attn = ["CrossAttn" in t for t in c["up_block_types"]]
    down_start = [1 + sum(n + 1 for n in lpb[:i]) for i in range(levels)]
    up_start = [sum(n + 1 for n in up_lpb[:i]) for i in range(levels)]

    def rename(key: str):
        p = key.split(".")
        if p[0] in ("down_blocks", "up_blocks"):
            i, kind, j, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
            down = p[0] == "down_blocks"
            n = (down_start if down else up_start)[i] + j
            blocks = "input_blocks" if down else "output_blocks"
            if kind == "resnets":
                return f"{blocks}.{n}.0.{_swap(rest, RESNET_UNET)}", None
            if kind == "attentions":
                return f"{blocks}.{n}.1.{rest}", None
            if kind == "downsamplers" and p[4] == "conv":
                return f"input_blocks.{down_start[i] + lpb[i]}.0.op.{'.'.join(p[5:])}", None
            if kind == "upsamplers" and p[4] == "conv":
                n, sub = up_start[i] + up_lpb[i], 2 if up_attn[i] else 1
                return f"output_blocks.{n}.{sub}.conv.{'.'.join(p[5:])}", None
        elif p[0] == "mid_block":  # resnet, attention, resnet
            k, rest = int(p[2]), ".".join(p[3:])
            if p[1] == "resnets":
                return f"middle_block.{2 * k}.{_swap(rest, RESNET_UNET)}", None
            if p[1] == "attentions":
                return f"middle_block.{2 * k + 1}.{rest}", None
        elif _swap(key, UNET_FIXED) != key:
            return _swap(key, UNET_FIXED), None
        _unknown("unet", key)

    return rename


def vae_rename(config) -> Rename:
    """diffusers ``AutoencoderKL`` → sgm ``Encoder``/``Decoder`` keys: ``down_blocks.i.resnets.j`` →
    ``down.i.block.j``; the decoder counts its levels the other way (``up_blocks.i`` →
    ``up.{L-1-i}``); mid-block resnets are ``block_1``/``block_2`` and its attention ``attn_1``
    with q, k, v, proj_out as 1×1 convolutions."""
    levels = len(_cfg(config)["block_out_channels"])

    def rename(key: str):
        p = key.split(".")
        if p[0] in ("encoder", "decoder") and len(p) > 3:
            side, kind = p[0], p[1]
            if kind in ("down_blocks", "up_blocks"):
                i = int(p[2]) if kind == "down_blocks" else levels - 1 - int(p[2])
                level = f"{side}.{'down' if kind == 'down_blocks' else 'up'}.{i}"
                if p[3] == "resnets":
                    return f"{level}.block.{p[4]}.{_swap('.'.join(p[5:]), VAE_FIXED)}", None
                if p[3] in ("downsamplers", "upsamplers") and p[5] == "conv":
                    return f"{level}.{p[3][:-2]}.conv.{'.'.join(p[6:])}", None
            elif kind == "mid_block" and p[2] == "resnets":
                return f"{side}.mid.block_{int(p[3]) + 1}.{_swap('.'.join(p[4:]), VAE_FIXED)}", None
            elif kind == "mid_block" and p[2] == "attentions" and p[3] == "0":
                new = _swap(".".join(p[4:]), VAE_ATTN)
                return f"{side}.mid.attn_1.{new}", "conv1x1" if new.endswith("weight") and new[0] != "n" else None
        elif p[0] in ("encoder", "decoder") and p[1] in ("conv_in", "conv_out", "conv_norm_out"):
            return f"{p[0]}.{_swap('.'.join(p[1:]), VAE_FIXED)}", None
        elif p[0] in ("quant_conv", "post_quant_conv"):
            return key, None
        _unknown("vae", key)

    return rename


def clip_l_rename() -> Rename:
    """transformers ``CLIPTextModel`` → ``FrozenCLIPEmbedder.transformer``: the HF layout itself,
    under ``text_model.`` (newer transformers flatten that level away; both forms are read)."""
    return lambda key: (f"text_model.{key.removeprefix('text_model.')}", None)


def clip_g_rename() -> Rename:
    """transformers ``CLIPTextModelWithProjection`` → open_clip's text tower (``FrozenOpenCLIPEmbedder2.model``)."""

    def rename(key: str):
        k = key.removeprefix("text_model.")
        if k == "text_projection.weight":
            return "text_projection", "T"
        if k in OPEN_CLIP:
            return OPEN_CLIP[k], None
        p = k.split(".")
        if p[:2] == ["encoder", "layers"]:
            block, rest = f"transformer.resblocks.{p[2]}", ".".join(p[3:])
            if p[3:5] in (["self_attn", "q_proj"], ["self_attn", "k_proj"], ["self_attn", "v_proj"]):
                return f"{block}.attn.in_proj_{p[-1]}", ("qkv", "qkv".index(p[4][0]))
            new = _swap(rest, OPEN_CLIP_LAYER)
            if new != rest:
                return f"{block}.{new}", None
        _unknown("text_encoder_2", key)

    return rename


def _parts(unet_config, vae_config) -> dict[str, tuple[str, Rename]]:
    return {"unet": (UNET, unet_rename(unet_config)), "vae": (VAE, vae_rename(vae_config)),
            "text_encoder": (CLIP_L, clip_l_rename()), "text_encoder_2": (CLIP_G, clip_g_rename())}  # fmt: skip


def _layout_from_keys(keys) -> dict:
    """The config facts the renames need, read off a U-Net state dict's keys (for bare state dicts)."""
    resnets: dict[int, set[str]] = {}
    attn: set[int] = set()
    for k in keys:
        p = k.split(".")
        if p[0] == "down_blocks" and p[2] == "resnets":
            resnets.setdefault(int(p[1]), set()).add(p[3])
        if p[0] == "up_blocks" and p[2] == "attentions":
            attn.add(int(p[1]))
    levels = len(resnets)
    return {"block_out_channels": [0] * levels, "layers_per_block": [len(resnets[i]) for i in range(levels)],
            "up_block_types": ["CrossAttnUpBlock2D" if i in attn else "UpBlock2D" for i in range(levels)]}  # fmt: skip


def _state_and_config(m, part: str):
    if isinstance(m, torch.nn.Module):
        return m.state_dict(), getattr(m, "config", None)
    sd = dict(m)
    if part == "unet":
        return sd, _layout_from_keys(sd)
    if part == "vae":
        return sd, {
            "block_out_channels": [0] * len({k.split(".")[2] for k in sd if k.startswith("decoder.up_blocks.")})
        }
    return sd, None


def to_single_file(
    unet, vae, text_encoder, text_encoder_2, v_pred: bool = True, ztsnr: bool = True
) -> dict[str, torch.Tensor]:
    """The four SDXL parts (modules, whose configs give the layout, or their state dicts) as one
    single-file state dict, with the empty ``v_pred``/``ztsnr`` marker keys when set."""
    (u_sd, u_cfg), (v_sd, v_cfg) = _state_and_config(unet, "unet"), _state_and_config(vae, "vae")
    sds = {"unet": u_sd, "vae": v_sd, "text_encoder": _state_and_config(text_encoder, "")[0],
           "text_encoder_2": _state_and_config(text_encoder_2, "")[0]}  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[int, torch.Tensor]] = {}
    for part, (prefix, rename) in _parts(u_cfg, v_cfg).items():
        for key, t in sds[part].items():
            new, how = rename(key)
            new = prefix + new
            if isinstance(how, tuple):
                fused.setdefault(new, {})[how[1]] = t
            elif how == "conv1x1":
                out[new] = t.reshape(*t.shape, 1, 1)
            elif how == "T":
                out[new] = t.T.contiguous()
            else:
                out[new] = t
    for key, thirds in fused.items():
        if sorted(thirds) != [0, 1, 2]:
            raise ConfigError(f"text_encoder_2: {key} needs q, k and v; got {len(thirds)} of them")
        out[key] = torch.cat([thirds[0], thirds[1], thirds[2]])
    for name, on in zip(MARKERS, (v_pred, ztsnr), strict=True):
        if on:
            out[name] = torch.tensor([])
    return out


def _few(keys, n: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def check_sdxl(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise ConfigError unless the keys look like an SDXL base single file."""
    keys = list(state_dict)
    if any(k.startswith("cond_stage_model.") for k in keys):
        raise ConfigError("not an SDXL checkpoint: it has cond_stage_model.* (an SD 1.x/2.x file)")
    if not any(k.startswith(CLIP_G) for k in keys):
        refiner = any(k.startswith("conditioner.embedders.0.model.") for k in keys)
        raise ConfigError(
            f"not an SDXL base checkpoint: no {CLIP_G}* (the bigG text encoder)"
            + (" — it is an SDXL refiner" if refiner else "")
            + f". Keys seen: {_few(keys)}"
        )
    missing = [p for p in (UNET, VAE, CLIP_L) if not any(k.startswith(p) for k in keys)]
    if missing:
        raise ConfigError(f"not a complete SDXL checkpoint: nothing under {', '.join(missing)}")


def _expected(unet_config, vae_config, te_config, te2_config) -> dict[str, dict[str, torch.Size]]:
    """Each part's parameter names and shapes, from its config, on the meta device (no memory, no init)."""
    from diffusers import (
        AutoencoderKL,  # pyright: ignore[reportPrivateImportUsage] - diffusers exports lazily
        UNet2DConditionModel,  # pyright: ignore[reportPrivateImportUsage] - diffusers exports lazily
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text(cfg):
        return cfg if hasattr(cfg, "to_dict") and not isinstance(cfg, dict) else CLIPTextConfig.from_dict(dict(cfg))

    with torch.device("meta"):
        models = {"unet": UNet2DConditionModel.from_config(_cfg(unet_config)),
                  "vae": AutoencoderKL.from_config(_cfg(vae_config)),
                  "text_encoder": CLIPTextModel(text(te_config)),
                  "text_encoder_2": CLIPTextModelWithProjection(text(te2_config))}  # fmt: skip
    return {name: {k: v.shape for k, v in m.state_dict().items()} for name, m in models.items()}


def from_single_file(state_dict, unet_config, vae_config, te_config, te2_config):
    """The inverse of ``to_single_file``: ``(unet_sd, vae_sd, te_sd, te2_sd, flags)`` with flags
    ``{"v_pred": bool, "ztsnr": bool}`` from the marker keys. Keys and shapes are checked against
    the parts the configs describe; ConfigError names the keys that are missing, unexpected or of
    the wrong shape."""
    check_sdxl(state_dict)
    expected = _expected(unet_config, vae_config, te_config, te2_config)
    used, missing, wrong, out = set(), [], [], {}
    for part, (prefix, rename) in _parts(unet_config, vae_config).items():
        sd = out[part] = {}
        for key, shape in expected[part].items():
            new, how = rename(key)
            new = prefix + new
            if new not in state_dict:
                missing.append(new)
                continue
            used.add(new)
            t = state_dict[new]
            if isinstance(how, tuple):
                t = t.chunk(3)[how[1]] if t.shape[0] % 3 == 0 else t
            elif how == "T":
                t = t.T.contiguous()
            elif how == "conv1x1" and t.dim() == 4 and t.shape[2:] == (1, 1):
                t = t[:, :, 0, 0]
            if t.shape != shape:
                wrong.append(f"{new} {tuple(state_dict[new].shape)} (the config wants {tuple(shape)})")
            sd[key] = t
    extra = [k for k in state_dict if k not in used and k not in MARKERS and not k.endswith(IGNORED_SUFFIXES)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_few(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected: {_few(extra)}")
    if wrong:
        problems.append(f"{len(wrong)} of another shape: {_few(wrong, 2)}")
    if problems:
        raise ConfigError(
            "the checkpoint does not match the SDXL configs (another architecture or size? pass the model's "
            "diffusers config folder): " + "; ".join(problems)
        )
    flags = {name: name in state_dict for name in MARKERS}
    return out["unet"], out["vae"], out["text_encoder"], out["text_encoder_2"], flags


def write_single_file(path, unet, vae, text_encoder, text_encoder_2, v_pred: bool = True, ztsnr: bool = True,
                      yaml: bool = True, dtype: torch.dtype | None = None,
                      metadata: Mapping[str, str] | None = None) -> Path:  # fmt: skip
    """Write ``<name>.safetensors`` (atomically: a temporary name, then ``os.replace``) with modelspec
    metadata, and for a v-prediction model ``<name>.yaml`` beside it (sdxl_v.yaml, for older A1111).
    ``dtype`` casts the floating-point weights (fp16 is what the ecosystem ships)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    sd = to_single_file(unet, vae, text_encoder, text_encoder_2, v_pred=v_pred, ztsnr=ztsnr)
    sd = {k: (t.to(dtype) if dtype is not None and t.is_floating_point() and k not in MARKERS else t).contiguous()
          for k, t in sd.items()}  # fmt: skip
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": path.stem,
        "modelspec.prediction_type": "v" if v_pred else "epsilon",
        "modelspec.resolution": "1024x1024",
        "ztsnr": "true" if ztsnr else "false",
        **(metadata or {}),
    }
    with replacing(path, umask=True) as tmp:
        save_file(sd, str(tmp), metadata=meta)
    if yaml and v_pred:
        shutil.copyfile(YAML_V, path.with_suffix(".yaml"))
    return path


def _read_configs(folder: Path) -> list[dict]:
    out = []
    for part in PARTS:
        f = folder / part / "config.json"
        if not f.is_file():
            raise ConfigError(f"--model-config {folder}: no {part}/config.json (a diffusers SDXL folder is needed)")
        out.append(json.loads(f.read_text()))
    return out


def hash_cache_path() -> Path:
    """Where file hashes are remembered: ``$ZXL_CACHE/hashes.json`` (default ``~/.cache/zxl``)."""
    return Path(os.environ.get("ZXL_CACHE") or Path.home() / ".cache" / "zxl") / "hashes.json"


def file_hash(path) -> str:
    """A1111's short model hash: the first 10 hex digits of the file's sha256. Hashing a 7 GB
    checkpoint takes 10–20 s, so the result is remembered by (absolute path, size, mtime), as A1111
    remembers its own; an unreadable or unwritable cache only costs the time."""
    path = Path(path).resolve()
    st = path.stat()
    key, stamp = str(path), [st.st_size, st.st_mtime_ns]
    cache_file = hash_cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key) if isinstance(cache, dict) else None
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return hit["sha256"][:10]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = {"stamp": stamp, "sha256": h.hexdigest()}
    try:
        write_text_atomic(json.dumps(cache), cache_file)
    except OSError:
        pass
    return h.hexdigest()[:10]


def load_single_file(path, config=None, dtype: torch.dtype = torch.float32, option: str = "--model"):
    """Modules from a single file: ``(parts, flags)`` with parts unet, vae (fp32), text_encoder(_2),
    tokenizer(_2). The configs come from ``config`` (a diffusers folder) or the shipped SDXL base
    skeleton; the tokenizers from that folder or, when it has none, sampler/tokenizer.py."""
    from accelerate import init_empty_weights
    from diffusers import (
        AutoencoderKL,  # pyright: ignore[reportPrivateImportUsage] - diffusers exports lazily
        UNet2DConditionModel,  # pyright: ignore[reportPrivateImportUsage] - diffusers exports lazily
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from zxl.models import read_safetensors, unreadable
    from zxl.sampler.tokenizer import derived_tokenizers, load_tokenizer

    path, folder = Path(path), Path(config) if config else CONFIG_DIR
    configs = _read_configs(folder)
    sd = read_safetensors(path, option)
    conv_in = sd.get(UNET + "input_blocks.0.0.weight")
    want = (configs[0]["block_out_channels"][0], configs[0]["in_channels"])
    if conv_in is not None and tuple(conv_in.shape[:2]) != want:
        where = "the SDXL base configs" if config is None else str(folder)
        raise ConfigError(
            f"{option} {path}: the U-Net's input_blocks.0.0.weight is {tuple(conv_in.shape)}, {where} want "
            f"{want[0]}×{want[1]} channels: pass the model's diffusers config folder with --model-config DIR"
        )
    try:
        unet_sd, vae_sd, te_sd, te2_sd, flags = from_single_file(sd, *configs)
    except ConfigError as e:
        raise ConfigError(f"{option} {path}: {e}") from None
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(configs[0])
        vae = AutoencoderKL.from_config(configs[1])
        te = CLIPTextModel(CLIPTextConfig.from_dict(configs[2]))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(configs[3]))
    # from_config returns a (model, unused kwargs) pair only when asked to (return_unused_kwargs=True)
    assert isinstance(unet, UNet2DConditionModel) and isinstance(vae, AutoencoderKL)
    for model, weights, dt in ((unet, unet_sd, dtype), (vae, vae_sd, torch.float32), (te, te_sd, dtype),
                               (te2, te2_sd, dtype)):  # fmt: skip
        try:
            model.load_state_dict({k: v.to(dt) for k, v in weights.items()}, strict=True, assign=True)
        except RuntimeError as e:  # shapes or names that do not fit the configs
            raise unreadable(option, path, e) from None
        model.eval()
    if (folder / "tokenizer").is_dir() and (folder / "tokenizer_2").is_dir():
        tok, tok2 = load_tokenizer(folder / "tokenizer"), load_tokenizer(folder / "tokenizer_2")
    else:
        tok, tok2 = derived_tokenizers()
    parts = {"unet": unet, "vae": vae, "text_encoder": te, "text_encoder_2": te2, "tokenizer": tok, "tokenizer_2": tok2}
    return parts, flags
