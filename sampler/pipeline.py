"""SDXL conditioning and sampling: the pieces of sampler/ put together around a loaded model.

Conditioning (docs/recipe.md "Sampling"): both text encoders' penultimate hidden states concatenated
(768 + 1280 = 2048 on the real model), the second encoder's pooled projection, and six size ids
(original h, w; crop top, left; target h, w). Cond and uncond go through the U-Net in one
batched forward. Noise is drawn on the CPU from the seed, so a seed gives the same picture on
any device. v-prediction and ZTSNR come from the model (its scheduler config), the recipe's
default when it says nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from zxl.config import ConfigError
from zxl.models import unreadable
from zxl.sampler.chunks import (
    a1111_chunks,
    comfyui_chunks,
    comfyui_tokens,
    kohya_input_ids,
    kohya_join,
    repeat_to_lcm,
)
from zxl.sampler.guidance import DynamicThresholding
from zxl.sampler.prompts import Prompt
from zxl.sampler.samplers import SAMPLERS, VDenoiser, cfg
from zxl.sampler.schedule import get_sigmas, sigmas_table

if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


@dataclass
class SDXL:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    v_pred: bool
    ztsnr: bool
    name: str
    hash: str
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def load(cls, ref: str | Path, device: str = "auto", precision: str = "auto", compile: bool = False,  # noqa: A002
             config: str | Path | None = None, option: str = "--model") -> SDXL:  # fmt: skip
        """A diffusers SDXL folder (model_index.json, unet/, vae/, text_encoder(_2)/, tokenizer(_2)/), or a
        single-file ``.safetensors`` (A1111/ComfyUI layout, sampler/single_file.py) whose configs come from
        ``config`` (a diffusers folder) or the shipped SDXL base skeleton. A single file is v-prediction
        (and ZTSNR) when it carries the empty ``v_pred`` (``ztsnr``) key, else when ``config``'s scheduler
        says so; otherwise it is taken for epsilon, which generate() refuses. ``option`` is what a load
        error names as the source of ``ref`` (``--model`` here, ``model.base`` for the trainer)."""
        from zxl.devices import pick_device, pick_dtype

        path = Path(ref)
        dev = pick_device(device, "--device")
        dtype = pick_dtype(precision, dev, "--precision")
        if path.is_file():
            parts, v_pred, ztsnr, name_hash = cls._file_parts(path, config, dtype, option)
        else:
            parts, v_pred, ztsnr, name_hash = cls._folder_parts(path, dtype, option)
        parts: dict[str, Any] = {k: m.to(dev).eval() if isinstance(m, torch.nn.Module) else m for k, m in parts.items()}
        model = cls(**parts, v_pred=v_pred, ztsnr=ztsnr, name=name_hash[0], hash=name_hash[1], device=dev, dtype=dtype)
        if dev.type == "cuda":  # diffusers' attention is SDPA already; channels-last helps the convolutions
            model.unet.to(memory_format=torch.channels_last)  # pyright: ignore[reportCallIssue] - @wraps(Module.to)
        if compile:
            model.unet = torch.compile(model.unet)  # pyright: ignore[reportAttributeAccessIssue] - gives a module
        return model

    @staticmethod
    def _folder_parts(folder: Path, dtype: torch.dtype, option: str):
        from diffusers import (
            AutoencoderKL,  # pyright: ignore[reportPrivateImportUsage] - diffusers exports lazily
            UNet2DConditionModel,  # pyright: ignore[reportPrivateImportUsage] - diffusers exports lazily
        )
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        from zxl.sampler.tokenizer import load_tokenizer

        index = folder / "model_index.json"
        if not index.is_file():
            raise ConfigError(
                f"{option} {folder}: not a diffusers SDXL folder (no model_index.json) nor a single-file "
                ".safetensors checkpoint"
            )
        if "StableDiffusionXL" not in json.loads(index.read_text()).get("_class_name", ""):
            raise ConfigError(f"{option} {folder}: model_index.json is not an SDXL pipeline")
        sched = _scheduler_config(folder)
        try:
            parts = {
                "unet": UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype),
                # the SDXL VAE overflows in fp16: it always decodes in fp32
                "vae": AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32),
                "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype),
                "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(
                    folder / "text_encoder_2", torch_dtype=dtype
                ),
                "tokenizer": load_tokenizer(folder / "tokenizer"),
                "tokenizer_2": load_tokenizer(folder / "tokenizer_2"),
            }
        except Exception as e:  # noqa: BLE001 - a missing, truncated or foreign part: one line naming the folder
            raise unreadable(option, folder, e) from None
        v_pred = sched.get("prediction_type", "v_prediction") == "v_prediction"
        ztsnr = bool(sched.get("rescale_betas_zero_snr", True))
        digest = hashlib.sha256((folder / "unet" / "config.json").read_bytes()).hexdigest()[:10]
        return parts, v_pred, ztsnr, (folder.name, digest)

    @staticmethod
    def _file_parts(path: Path, config: str | Path | None, dtype: torch.dtype, option: str):
        from zxl.sampler.single_file import file_hash, load_single_file

        if path.suffix != ".safetensors":
            raise ConfigError(f"{option} {path}: a single-file checkpoint must be .safetensors")
        parts, flags = load_single_file(path, config, dtype, option)
        v_pred, ztsnr = flags["v_pred"], flags["ztsnr"]
        if not v_pred and config is not None:  # no markers: the config folder's scheduler may say v-prediction
            sched = _scheduler_config(Path(config))
            v_pred = sched.get("prediction_type") == "v_prediction"
            ztsnr = v_pred and bool(sched.get("rescale_betas_zero_snr", False))
        return parts, v_pred, ztsnr, (path.stem, file_hash(path))

    def encode_with_grad(self, texts: list[str], max_token_length: int = 75) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL conditioning of training captions: both encoders' penultimate hidden states concatenated,
        and the second encoder's pooled projection (docs/recipe.md "SDXL conditioning"), over
        ``max_token_length`` tokens (75, 150, 225) cut into chunks as kohya does (sampler/chunks.py):
        [b, max_token_length + 2, 2048]. The trainer calls this directly; captions are never parsed
        for weights (``fate_(series)`` stays literal, as kohya keeps it)."""
        hidden, pooled = [], None
        for tok, enc in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = torch.stack([kohya_input_ids(t, tok, max_token_length) for t in texts])  # [b, chunks, 77]
            b, n = ids.shape[:2]
            out = enc(ids.reshape(b * n, -1).to(self.device), output_hidden_states=True)
            states = out.hidden_states[-2]
            hidden.append(kohya_join(states.reshape(b, n * states.shape[1], -1), max_token_length))
            if enc is self.text_encoder_2:
                pooled = out.text_embeds[::n]  # the first chunk's, as kohya
        assert pooled is not None  # the loop always reaches text_encoder_2
        return torch.cat(hidden, dim=-1), pooled

    @torch.no_grad()
    def encode(self, texts: list[str], max_token_length: int = 75) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_with_grad(texts, max_token_length)

    @torch.no_grad()
    def encode_prompt(self, text: str, weights: str = "comfyui") -> tuple[torch.Tensor, torch.Tensor]:
        """A prompt as ComfyUI's CLIPTextEncode encodes it (sampler/chunks.py): weights parsed, 75-token
        chunks cut as ComfyUI cuts them, every chunk encoded, the hidden states side by side ([1,
        77·chunks, 2048]), the first chunk's pooled output, each token moved from the empty prompt's
        by its weight; with ``weights`` "a1111" as A1111 reads a prompt (its parser, its chunks with
        the comma back-off and BREAK, multipliers with the mean restored); "none": literal text."""
        from zxl.sampler import weights as prompt_weights

        segments = prompt_weights.parse(text, weights) if weights != "none" else [(text, 1.0)]
        hidden, pooled = [], None
        for tok, enc in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            start, end, pad = (int(tok.bos_token_id), int(tok.eos_token_id), int(tok.pad_token_id))  # pyright: ignore[reportArgumentType] - a CLIP tokenizer's ids are ints
            if weights == "a1111":  # A1111's chunks: whole segments, comma back-off, BREAK, pad after the end token
                pieces = [(None if (t, w) == prompt_weights.BREAK else tok(t, add_special_tokens=False)["input_ids"],
                           w) for t, w in segments]  # fmt: skip
                comma = tok.convert_tokens_to_ids(",</w>")
                made = a1111_chunks(pieces, start, end, comma if isinstance(comma, int) else None)
                rows = [ids if end == pad else ids[: ids.index(end) + 1] + [pad] * (len(ids) - ids.index(end) - 1)
                        for ids, _ in made]  # fmt: skip
                weights_of = [m for _, m in made]
            else:
                made_c = comfyui_chunks([(comfyui_tokens(t, tok), w) for t, w in segments], start, end, pad)
                rows, weights_of = [[t for t, _ in c] for c in made_c], [[x for _, x in c] for c in made_c]
            ids = torch.tensor(rows, device=self.device)
            w = torch.tensor(weights_of, dtype=torch.float32, device=self.device)
            out = enc(ids, output_hidden_states=True)
            z = out.hidden_states[-2].float()
            if weights == "a1111":  # z × multipliers, the chunk's mean restored (also when all are 1: a no-op)
                z = torch.stack([prompt_weights.apply_a1111(z[k], w[k]) for k in range(len(rows))])
            elif bool((w != 1).any()):
                empty = comfyui_chunks([], start, end, pad)[0]
                z_empty = enc(torch.tensor([[t for t, _ in empty]], device=self.device),
                              output_hidden_states=True).hidden_states[-2].float()[0]  # fmt: skip
                z = torch.stack([prompt_weights.apply_comfyui(z[k], w[k], z_empty) for k in range(len(rows))])
            hidden.append(z.reshape(1, -1, z.shape[-1]).to(self.dtype))
            if enc is self.text_encoder_2:
                pooled = out.text_embeds[0:1]
        assert pooled is not None
        cut = min(h.shape[1] for h in hidden)
        return torch.cat([h[:, :cut] for h in hidden], dim=-1), pooled

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, png_rounding: str = "round") -> list[Image.Image]:
        """The images of latents, 8-bit by ``png_rounding`` (sampler/grid.py ``to_pixels``): ``round``
        to the nearest level, or ``comfyui``, truncated as ComfyUI's SaveImage does."""
        from zxl.sampler.grid import to_pixels

        decoded = self.vae.decode(latents.float() / self.vae.config["scaling_factor"])
        images = decoded.sample  # pyright: ignore[reportAttributeAccessIssue] - return_dict=True: a DecoderOutput
        return [Image.fromarray(a) for a in to_pixels(images, png_rounding)]

    @property
    def latent_scale(self) -> int:
        return 2 ** (len(self.vae.config["block_out_channels"]) - 1)


def _scheduler_config(folder: Path) -> dict:
    f = folder / "scheduler" / "scheduler_config.json"
    return json.loads(f.read_text()) if f.is_file() else {}


@dataclass(frozen=True)
class Sampling:
    """How every image of a run is sampled, beyond what its prompt line says: the terminal sigma
    convention, the step schedule, CFG rescale φ, and whether dynamic thresholding runs (the card's
    advice: mimic = the prompt's CFG, both minimums one lower, ``dynamic_mode`` Half Cosine Up for
    both scales; ``dynamic_value`` is the extension's Scheduler value), the U-Net's timestep rule
    (``timesteps``: ComfyUI's nearest whole t, or k-diffusion's fractional one) and how the decoded
    image becomes 8-bit (``png_rounding``: round, or ComfyUI's truncation). Names are checked here."""

    terminal: str = "comfyui"
    schedule: str = "trailing"
    cfg_rescale: float = 0.0
    dynamic: bool = False
    dynamic_mode: str = "Half Cosine Up"
    dynamic_value: float = 4.0
    weights: str = "comfyui"  # prompt weights: comfyui | a1111 | none (sampler/weights.py)
    # the U-Net's t at a σ between table entries: comfyui (nearest whole t) | continuous (k-diffusion, A1111)
    timesteps: str = "comfyui"
    png_rounding: str = "round"  # 8-bit pixels: round (nearest) | comfyui (SaveImage's truncation)

    def __post_init__(self):
        from zxl.sampler.grid import png_rounding
        from zxl.sampler.schedule import timestep_rule

        timestep_rule(self.timesteps)
        png_rounding(self.png_rounding)

    def infotext_fields(self) -> dict[str, object]:
        """What the A1111 infotext says of these settings: the schedule's A1111 label, the terminal
        convention, the timestep rule always; CFG rescale and the PNG rounding when not the default."""
        from zxl.sampler.schedule import A1111_LABELS

        fields: dict[str, object] = {"Schedule type": A1111_LABELS[self.schedule], "Sigma max": self.terminal,
                                     "Timesteps": self.timesteps}  # fmt: skip
        if self.cfg_rescale:
            fields["CFG rescale"] = self.cfg_rescale
        if self.png_rounding != "round":
            fields["PNG rounding"] = self.png_rounding
        if self.weights != "comfyui":
            fields["Prompt weights"] = self.weights
        return fields


DEFAULT_SAMPLING = Sampling()


@torch.inference_mode()
def generate(model: SDXL, p: Prompt, sampling: Sampling = DEFAULT_SAMPLING, dynamic: DynamicThresholding | None = None,
             latents_only: bool = False):  # fmt: skip
    """One image (or its latents) for a prompt: seeded CPU noise, batched cond/uncond through the
    sampler module's ``VDenoiser``, CFG (and rescale) on v̂ or dynamic thresholding on D, then the
    prompt's sampler with the one signature. ``dynamic`` overrides the recipe's thresholding."""
    if not model.v_pred:
        raise ConfigError(
            f"{model.name} is an epsilon-prediction model; zxl samples the recipe's v-prediction models (a single "
            "file says v-prediction with an empty v_pred key, a diffusers folder in its scheduler config)"
        )
    if p.width % 8 or p.height % 8:
        raise ConfigError(f"size {p.width}x{p.height}: both sides must be multiples of 8")
    if dynamic is None and sampling.dynamic:
        dynamic = DynamicThresholding.recipe(p.cfg, sampling.dynamic_mode, sampling.dynamic_value)
    sigmas, _ = get_sigmas(p.steps, sampling.schedule, ztsnr=model.ztsnr, terminal=sampling.terminal)
    if torch.isinf(sigmas[0]) and p.sampler != "ddim":
        raise ConfigError(f"terminal zero (sigma max infinite) works with ddim only, not {p.sampler}")
    (neg, neg_pooled), (pos, pos_pooled) = (model.encode_prompt(t, sampling.weights) for t in (p.negative, p.prompt))
    emb, pooled = repeat_to_lcm([neg, pos]), torch.cat([neg_pooled, pos_pooled])  # ComfyUI's cond concat
    time_ids = torch.tensor([[p.height, p.width, 0, 0, p.height, p.width]] * 2, dtype=emb.dtype, device=model.device)
    cond = {"encoder_hidden_states": emb, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
    h, w = p.height // model.latent_scale, p.width // model.latent_scale
    noise = torch.randn((1, 4, h, w), generator=torch.Generator("cpu").manual_seed(p.seed), dtype=torch.float32)
    den = VDenoiser(None, sigmas_table(model.ztsnr, sampling.terminal), sampling.timesteps)
    step = {"i": 0}

    def guided(x, sigma):
        """D(x, σ) guided: CFG (and rescale) on v̂, or dynamic thresholding on the two D."""
        x_in, t = den.inputs(x, sigma)  # t stays float32, as ComfyUI and diffusers pass it: bf16 holds 999 as 1000
        both = model.unet(torch.cat([x_in, x_in]).to(model.dtype), torch.cat([t, t]).float(), **cond).sample
        vu, vc = both.float().chunk(2)
        if dynamic is not None:
            out = dynamic(den.denoised(x, vu, sigma), den.denoised(x, vc, sigma), p.cfg, step["i"], len(sigmas) - 1)
        else:
            out = den.denoised(x, cfg(vu, vc, p.cfg, sampling.cfg_rescale), sigma)
        step["i"] += 1
        return out

    scale = 1.0 if torch.isinf(sigmas[0]) else float((1 + sigmas[0] ** 2).sqrt())  # σ = ∞: x is ε (samplers.py)
    x0 = (noise * scale).to(model.device)
    generator = torch.Generator("cpu").manual_seed(p.seed + 1)  # the stochastic samplers' fresh noise
    x = SAMPLERS[p.sampler](guided, x0, sigmas.float().to(model.device), generator=generator)
    return x if latents_only else model.decode(x, sampling.png_rounding)[0]
