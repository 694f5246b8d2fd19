"""The trainer's subcommands: ``zxl train``, ``zxl merge`` and ``zxl eval``."""

from __future__ import annotations

import argparse
from pathlib import Path

from zxl.commands import add_config_args
from zxl.config import ConfigError, check_value, load_config


def add_commands(sub) -> None:
    """train, merge and eval, on the top-level subparsers ``sub``."""
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
        "(docs/recipe.md). Inputs: zxl checkpoint folders or single-file .safetensors. Output: a .safetensors path "
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
    mg.add_argument("--best", type=int, metavar="K",
                    help="merge the K checkpoints of a run (give its output or checkpoints folder) with the best "
                    "eval figure, from the eval.csv that loop.eval_every writes")  # fmt: skip
    mg.add_argument("--by", default="val_loss", metavar="METRIC",
                    help="--best: val_loss or cluster_kl (lowest), or spearman, steering_gap, score_9, "
                    "vendi_with_tags, vendi_without_tags, clip, coverage, coverage_none, coverage_score_9, "
                    "conditional_vendi (highest); default val_loss")  # fmt: skip

    mg.set_defaults(run=cmd_merge)

    ev = sub.add_parser(
        "eval",
        help="measure checkpoints: score-tag steering, variety, tone, prompt adherence, validation loss",
        description="Render a fixed set of samples from held-out rows' captions with score_1 … score_9 (and none) "
        "and several seeds, score them with the catalog's scorer, and compute the validation loss on held-out rows "
        "at fixed timesteps and noise. Writes report.json, report.md, plots and a grid per checkpoint.",
        epilog="examples:\n  zxl eval --model runs/demo/train/checkpoints --catalog runs/demo/catalog "
        "--out runs/demo/eval"
        "\n  zxl eval --model a.safetensors --model b.safetensors --catalog runs/zero-xl/catalog --out eval/ "
        "--resolution 1024 --steps 28",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("--model", action="append", required=True, metavar="MODEL",
                    help="a single file, a diffusers folder, a zxl checkpoint folder or a run's checkpoints folder "
                    "(every step in it); repeat for several")  # fmt: skip
    ev.add_argument("--catalog", required=True, help="the catalog the models were trained on")
    ev.add_argument("--out", required=True, help="the report folder")
    for name, default, kind, what in (
        ("prompts", 3, int, "held-out rows whose captions become prompts"),
        ("seeds", 3, int, "samples per prompt and score tag (the variety set)"),
        ("steps", 20, int, "sampling steps"),
        ("cfg", 4.0, float, "CFG scale"),
        ("resolution", 1024, int, "the training resolution (bucket area resolution²)"),
        ("holdout", 0.1, float, "held-out fraction of the catalog's trainable rows (the runs' data.holdout)"),
        ("val-rows", 16, int, "held-out rows in the validation loss"),
        ("seed", 0, int, "seed of the prompt choice and the samples"),
    ):
        ev.add_argument(f"--{name}", type=kind, default=default, help=f"{what} (default {default})")
    ev.add_argument("--timesteps", default="comfyui", metavar="RULE",
                    help="the U-Net's t between table entries: comfyui (nearest whole, the default) or "
                    "continuous")  # fmt: skip
    ev.add_argument("--base", help="checkpoint folders: the base model (default: the one recorded in the checkpoint)")
    ev.add_argument("--model-config", help="a diffusers folder with the component configs of a single file")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(run=cmd_eval)


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

    weights = _weights(args.weights) if args.weights else None
    paths = [Path(p) for p in args.checkpoints]
    if args.best is not None:
        check_value("--best", args.best, "[1, inf)", integer=True, note=" (checkpoints to merge)")
        from zxl.trainer.export import best_checkpoints

        if len(paths) != 1:
            raise ConfigError("--best: give one run folder (or its checkpoints folder), not several checkpoints")
        chosen = best_checkpoints(paths[0], args.best, args.by)
        for path, value in chosen:
            print(f"{path.name}: {args.by} {value:.5g}")
        paths = [p for p, _ in chosen]
    out = merge_and_write(paths, Path(args.out), weights, args.base, args.ema)
    print(out)
    return 0


def _weights(text: str) -> list[float]:
    """``--weights 3,1``: one finite weight >= 0 per checkpoint."""
    out = []
    for w in text.split(","):
        try:
            value = float(w)
        except ValueError:
            raise ConfigError(f"--weights {text}: '{w.strip()}' is not a number (comma-separated weights, one per "
                              "checkpoint)") from None  # fmt: skip
        check_value("--weights", value, "[0, inf)")
        out.append(value)
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from zxl.trainer.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(prompts=args.prompts, seeds=args.seeds, steps=args.steps, cfg=args.cfg, resolution=args.resolution,
                     holdout=args.holdout, val_rows=args.val_rows, seed=args.seed,
                     timesteps=args.timesteps)  # fmt: skip
    report = evaluate(args.model, args.catalog, args.out, cfg, args.device, args.model_config, args.base)
    for c in report["checkpoints"]:
        m = c["steering"]["mean"]
        print(
            f"{c['name']}: score_1 {m['score_1']:.3f} → score_9 {m['score_9']:.3f} "
            f"(rho {c['steering']['spearman']:.2f}); "
            f"variety {c['variety']['vendi_with_score_tags']:.2f} with tags, "
            f"{c['variety']['vendi_without_score_tags']:.2f} without; tone flags {c['tone']['flags'] or 'none'}; "
            f"val loss {c['val_loss']['mean']:.4f}"
        )
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
