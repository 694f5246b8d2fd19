"""The trainer's subcommands: ``zxl train`` and ``zxl merge``."""

from __future__ import annotations

import argparse
from pathlib import Path

from zxl.commands import add_config_args
from zxl.config import load_config


def add_commands(sub) -> None:
    """train and merge, on the top-level subparsers ``sub``."""
    tr = sub.add_parser(
        "train",
        help="fine-tune SDXL on a catalog with the ZTSNR v-prediction recipe",
        description="Train on a catalog's trainable rows (status ok, repeats > 0): latents cached once, the "
        "recipe's loss and optimizer, checkpoints, validation grids, a single-file export at the end. Many GPUs: "
        "accelerate launch --num_processes N -m zxl train …",
        epilog="examples:\n  zxl train -c configs/train/demo.yaml\n  zxl train -c configs/train/zero-xl.yaml "
        "--set model.base=ponyDiffusionV6XL.safetensors\n  zxl train -c configs/train/demo.yaml --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(tr)
    tr.add_argument("--base", help="the base model: single-file .safetensors or diffusers folder (model.base)")
    tr.add_argument("--catalog", help="the catalog to train on (data.catalog)")
    tr.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                    help="continue from the latest checkpoint of the output folder (or the one given)")  # fmt: skip

    tr.set_defaults(run=cmd_train)

    mg = sub.add_parser(
        "merge",
        help="average checkpoints (weights optional) into one model, or export one checkpoint",
        description="The weighted average (uniform by default) of checkpoints of one run, in fp32 then cast "
        "(RECIPE.md). Inputs: zxl checkpoint folders or single-file .safetensors. Output: a .safetensors path "
        "writes a single-file SDXL model (A1111/ComfyUI layout, v_pred/ztsnr markers, .yaml beside it); a "
        "folder path writes a diffusers folder whose scheduler config says v-prediction, zero terminal SNR and "
        "trailing timesteps (diffusers loads it with no settings). With one input this is an export.",
    )
    mg.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    mg.add_argument("--out", required=True, help="output .safetensors file or diffusers folder")
    mg.add_argument("--weights", help="comma-separated weights, one per checkpoint (default uniform)")
    mg.add_argument("--base", help="checkpoint folders only: the base model supplying the VAE and frozen parts "
                    "(default: the base recorded in the checkpoint)")  # fmt: skip
    mg.add_argument("--ema", action="store_true", help="take the U-Net from the EMA weights when present")

    mg.set_defaults(run=cmd_merge)


def cmd_train(args: argparse.Namespace) -> int:
    from zxl.trainer.config import TrainConfig
    from zxl.trainer.train import train

    extra = {}
    if args.base:
        extra.setdefault("model", {})["base"] = args.base
    if args.catalog:
        extra.setdefault("data", {})["catalog"] = args.catalog
    cfg = load_config(TrainConfig, args.config, args.overrides, extra)
    result = train(cfg, resume=args.resume)
    exports = [e for e in (result.get("export"), result.get("export_diffusers")) if e]
    print(f"trained {result['steps']} steps; checkpoint {result['checkpoint']}; export {', '.join(exports) or None}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from zxl.trainer.export import merge_and_write

    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    out = merge_and_write([Path(p) for p in args.checkpoints], Path(args.out), weights, args.base, args.ema)
    print(out)
    return 0
