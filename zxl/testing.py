"""Tiny models of the real architectures, built from config with random weights, for tests and
benchmarks (nothing is downloaded): an open_clip ViT config, a WD tagger with the real ONNX
signature, and a LLaVA (CLIP vision tower + Llama) with its processor. Each is saved in the same
layout as the real thing, so the real loading code is what reads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


WD_LABELS = [  # (name, category): the real selected_tags.csv layout, a handful of rows
    ("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
    ("1girl", 0), ("solo", 0), ("long_hair", 0), ("outdoors", 0), ("blue_sky", 0),
    ("aoi_(zxl)", 4), ("midori_(zxl)", 4),
]  # fmt: skip


def build_wd_model(folder, size: int = 32, seed: int = 0):
    """A tiny WD tagger with the real signature: NHWC float32 BGR 0..255 in, one sigmoid per label out.

    The graph is sigmoid(mean over H, W of the input · W + b), so a test can compute it by hand.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    n = len(WD_LABELS)
    w = (rng.standard_normal((3, n)) / 60).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["output"]),
        ],
        "wd-tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", n])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    lines = ["tag_id,name,category,count"] + [f"{i},{name},{cat},{1000 - i}" for i, (name, cat) in enumerate(WD_LABELS)]
    (folder / "selected_tags.csv").write_text("\n".join(lines) + "\n")
    return w, b


def build_tiny_llava(folder):
    """A tiny random LLaVA (CLIP vision tower + Llama) and its processor, saved like a real one."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = [
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
        "<image>",
        "USER:",
        "ASSISTANT:",
        "a",
        "girl",
        "with",
        "long",
        "hair",
        "the",
        "image",
        "shows",
        "Write",
        "long",
        "descriptive",
        "caption",
        "for",
        "this",
        "in",
        "formal",
        "tone.",
        "blue",
        "sky",
        "smiling",
        "red",
        "dress",
        "and",
        "standing",
        "outdoors",
        ".",
    ]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=template,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=vocab["<image>"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = vocab["<pad>"]
    model.generation_config.eos_token_id = vocab["</s>"]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_sdxl(folder, seed: int = 0):
    """A tiny random SDXL-architecture model (U-Net with text_time conditioning, VAE, CLIP-L- and
    bigG-shaped text encoders with the real 49,408-token CLIP tokenizer), saved as a diffusers
    folder with a v-prediction ZTSNR scheduler config."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel  # pyright: ignore[reportPrivateImportUsage] - diffusers exports lazily
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from zxl.sampler.tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",  # pyright: ignore[reportArgumentType] - diffusers hints tuple[int] for any length
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),  # pyright: ignore[reportArgumentType] - diffusers hints tuple[int] for any length
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=8,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,  # pyright: ignore[reportArgumentType] - diffusers hints tuple[int] for any length
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, sample_size=64,  # pyright: ignore[reportArgumentType] - diffusers hints tuple[int] for any length
        scaling_factor=0.13025,
    )  # fmt: skip
    text = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 3,
            "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 32}  # fmt: skip
    text_encoder = CLIPTextModel(CLIPTextConfig(**text))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text))
    tok_dir = folder.parent / (folder.name + "-tokenizer")
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True,
        timestep_spacing="trailing", prediction_type="v_prediction",
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=clip_tokenizer(tok_dir),
        tokenizer_2=clip_tokenizer(tok_dir, pad_token="!"), unet=unet, scheduler=scheduler,  # pyright: ignore[reportArgumentType] - diffusers hints an enum of names
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def build_demo_model(folder: Path, catalog: Path, size: int = 128, steps: int = 1200, limit: int = 0,
                     log=print) -> Path:  # fmt: skip
    """What ``make train`` trains the demo from: the tiny SDXL-architecture model above with an
    autoencoder trained on the catalog's images (zxl.trainer.autoencoder) in place of its random
    VAE, written as a diffusers folder with ``autoencoder.json`` (the reconstruction figures) and
    renamed into place. ``limit``: train on the first that many images only (tests)."""
    import os
    import shutil

    import torch
    from diffusers import StableDiffusionXLPipeline  # pyright: ignore[reportPrivateImportUsage] - diffusers exports lazily

    from zxl.files import replacing
    from zxl.trainer.autoencoder import catalog_images, train_autoencoder

    folder = Path(folder)
    with replacing(folder, folder=True) as tmp:
        build_tiny_sdxl(tmp)
        shutil.rmtree(tmp.parent / (tmp.name + "-tokenizer"), ignore_errors=True)
        images = catalog_images(Path(catalog), size, limit)
        log(f"autoencoder: {len(images)} images of {catalog}, short side {size} px")
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        try:
            vae, figures = train_autoencoder(images, steps=steps, log=log)
        finally:
            torch.set_num_threads(threads)
        pipe = StableDiffusionXLPipeline.from_pretrained(tmp)
        pipe.register_modules(vae=vae)
        pipe.save_pretrained(tmp)
        (tmp / "autoencoder.json").write_text(json.dumps(figures, indent=1))
    log(f"autoencoder: reconstruction PSNR {figures['psnr_db']} dB on {figures['test_images']} held-back images")
    return folder
