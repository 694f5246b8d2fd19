"""The sampler's subcommand: ``zxl sample``."""

from __future__ import annotations

import argparse
from pathlib import Path

from zxl.config import ConfigError, check_value


def add_commands(sub) -> None:
    """sample, on the top-level subparsers ``sub``."""
    sa = sub.add_parser(
        "sample",
        help="validation grids from an SDXL v-prediction model and a kohya prompt file",
        description="Render a validation grid (and each image, with its A1111 parameters) from a diffusers SDXL "
        "folder and a kohya prompt file, or print the sampling schedule with --print-sigmas.",
        epilog="examples:\n  zxl sample --model models/zero-xl --prompts configs/sample/validation.txt --x cfg=3,4,5 "
        "--y seed=1,2\n  zxl sample --print-sigmas --steps 28 --terminal diffusers"
        "\n  zxl sample --print-sigmas --steps 28 --schedule karras --timesteps continuous",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sa.add_argument("--model", help="a diffusers SDXL folder (model_index.json, unet/, vae/, text encoders) or a "
                    "single-file .safetensors (A1111/ComfyUI layout)")  # fmt: skip
    sa.add_argument("--model-config", metavar="DIR",
                    help="single file: the diffusers folder whose configs describe it (default: the SDXL base "
                    "configs zxl ships)")  # fmt: skip
    sa.add_argument("--prompts", help="a kohya prompt file (--n --w --h --d --l --s --ss per line)")
    sa.add_argument("--out", default="runs/samples", help="where the PNGs go (default runs/samples)")
    sa.add_argument("--x", help="column axis: prompt | seed=… | cfg=… | steps=… | sampler=… | mimic=… | checkpoint=…")
    sa.add_argument("--y", help="row axis, the same choices")
    sa.add_argument("--negative", choices=["minimal", "light", "heavy"], default="minimal",
                    help="the card's negative preset for lines without --n (default minimal: score_1)")  # fmt: skip
    sa.add_argument("--cfg-rescale", type=float, default=0.0, help="CFG rescale phi (0.7 is common; 0 = off)")
    sa.add_argument("--dynamic", action="store_true",
                    help="dynamic thresholding as the card advises (mimic = CFG, Half Cosine Up)")  # fmt: skip
    sa.add_argument("--device", default="auto")
    sa.add_argument("--precision", default="auto", help="auto (fp16 on a GPU) | fp32 | fp16 | bf16")
    sa.add_argument("--compile", action="store_true", help="torch.compile the U-Net (GPU; slow first image)")
    sa.add_argument("--print-sigmas", action="store_true", help="print the sigma/timestep table and exit")
    sa.add_argument("--steps", type=int, default=28, help="--print-sigmas: steps")
    sa.add_argument(
        "--schedule",
        default="trailing",
        help="trailing (the default: diffusers' trailing timesteps), or a ComfyUI scheduler by its name: "
        "simple, normal, sgm_uniform, karras, exponential, beta, ddim_uniform (A1111 labels work too)",
    )
    sa.add_argument(
        "--dynamic-mode",
        default="Half Cosine Up",
        metavar="MODE",
        help="--dynamic: the extension's mode for both scales (Constant, Linear Up/Down, Cosine Up/Down, "
        "Half Cosine Up/Down, Power Up/Down, Linear Repeating, Cosine Repeating, Sawtooth)",
    )
    sa.add_argument(
        "--dynamic-value",
        type=float,
        default=4.0,
        help="--dynamic: the extension's Scheduler value (the power, or the repeating modes' cycles)",
    )
    sa.add_argument("--terminal", default="comfyui",
                    help="sigma at t=999 where ZTSNR makes it infinite: comfyui (ComfyUI/A1111, 4518.76; the default) "
                    "diffusers (4096) or zero (infinite: ddim only)")  # fmt: skip
    sa.add_argument("--no-ztsnr", action="store_true", help="--print-sigmas: the plain SDXL schedule instead")
    sa.add_argument("--timesteps", default="comfyui", metavar="RULE",
                    help="the U-Net's timestep at a sigma between table entries (normal, sgm_uniform, karras, "
                    "exponential): comfyui, the nearest whole one as ComfyUI (the default), or continuous, the "
                    "interpolated fractional one as k-diffusion and A1111")  # fmt: skip
    sa.add_argument("--prompt-weights", default="comfyui", metavar="STYLE",
                    help="(tag), (tag:1.3), [tag], \\( \\) in prompts: comfyui (the default: each token "
                    "moved from the empty prompt's by its weight), a1111 (multiplied, the mean restored) or "
                    "none (literal)")  # fmt: skip
    sa.add_argument("--png-rounding", default="round", metavar="RULE",
                    help="8-bit pixels from the decoder: round to the nearest level (the default; diffusers, "
                    "A1111) or comfyui, truncated as ComfyUI's SaveImage")  # fmt: skip

    sa.set_defaults(run=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    from zxl.sampler.grid import png_rounding
    from zxl.sampler.schedule import format_table, get_sigmas, schedule_name, timestep_rule

    args.schedule = schedule_name(args.schedule)
    timestep_rule(args.timesteps)
    png_rounding(args.png_rounding)
    if args.prompt_weights not in ("comfyui", "a1111", "none"):
        raise ConfigError(f"--prompt-weights must be one of comfyui, a1111, none, got '{args.prompt_weights}'")
    check_value("--steps", args.steps, "[1, 1000]", integer=True, note=" (the schedule has 1000 timesteps)")
    check_value("--cfg-rescale", args.cfg_rescale, "[0, 1]", note=" (phi: 0 is off, 1 rescales fully)")
    check_value("--dynamic-value", args.dynamic_value, "[0, inf)")
    if args.print_sigmas:
        sigmas, timesteps = get_sigmas(args.steps, args.schedule, ztsnr=not args.no_ztsnr, terminal=args.terminal,
                                       timesteps=args.timesteps)  # fmt: skip
        what = "plain SDXL" if args.no_ztsnr else f"ZTSNR, terminal convention {args.terminal}"
        print(f"# {args.steps} steps, {args.schedule} schedule, {what}, {args.timesteps} timesteps (the U-Net's t)")
        print(format_table(sigmas, timesteps))
        return 0
    if not args.model or not args.prompts:
        raise ConfigError("zxl sample needs --model and --prompts (or --print-sigmas)")
    from zxl.sampler.grids import Loading, parse_axis, render
    from zxl.sampler.guidance import DynamicThresholding
    from zxl.sampler.pipeline import Sampling
    from zxl.sampler.prompts import NEGATIVE_PRESETS, Prompt, read_prompt_file

    get_sigmas(1, args.schedule, terminal=args.terminal)  # bad names fail before any model loads
    prompts = read_prompt_file(args.prompts, Prompt(prompt="", negative=NEGATIVE_PRESETS[args.negative]))
    DynamicThresholding.recipe(4.0, args.dynamic_mode, args.dynamic_value)  # a bad mode fails here too
    sampling = Sampling(terminal=args.terminal, schedule=args.schedule, cfg_rescale=args.cfg_rescale,
                        dynamic=args.dynamic, dynamic_mode=args.dynamic_mode, dynamic_value=args.dynamic_value,
                        timesteps=args.timesteps, png_rounding=args.png_rounding,
                        weights=args.prompt_weights)  # fmt: skip
    loading = Loading(args.device, args.precision, args.compile, args.model_config)
    x, y = parse_axis(args.x, "--x", len(prompts)), parse_axis(args.y, "--y", len(prompts))
    grids = render(args.model, prompts, Path(args.out), x, y, sampling, loading)
    for g in grids:
        print(f"grid: {g}")
    return 0
