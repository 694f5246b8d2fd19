"""The ``zxl`` command: the one composition root. Library code never parses argv.

``main(argv)`` takes a list so tests call every subcommand in-process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zxl import __version__
from zxl.config import ConfigError, CurateConfig, DemoConfig, load_config

EPILOG_CURATE = """\
examples:
  zxl curate --demo --config configs/curate/demo.yaml
  zxl curate --urls posts.parquet --url-column file_url --id-column id --name danbooru
  zxl curate --urls urls.csv --scheduler tcp://10.0.0.5:8786 --set fetch.thread_count=64

Every stage writes one file per shard under runs/<name>/stages/; rerunning the same command skips
finished shards, so a killed run resumes where it stopped.
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        action="append",
        default=[],
        metavar="YAML",
        help="a preset from configs/ (repeatable; later files win)",
    )
    p.add_argument(
        "--set",
        "-s",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="override one key, e.g. --set fetch.timeout=5 (repeatable; wins over --config)",
    )


def _add_folder_args(p: argparse.ArgumentParser) -> None:
    """What zxl score, tag and caption share: config, the paths, --json."""
    _add_config_args(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, or folders searched recursively")
    p.add_argument("--json", action="store_true", help="one JSON list on stdout, for machines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zxl",
        description="Curate image URLs into a scored, tagged, captioned Parquet catalog for a ZTSNR "
        "v-prediction SDXL fine-tune, and look at it, query it and export it for training.",
    )
    parser.add_argument("--version", action="version", version=f"zxl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    cur = sub.add_parser(
        "curate",
        help="run the curation pipeline over a URL list (or the demo corpus)",
        description="Fetch, inspect and catalog every URL of a list, one Dask task per shard and stage.",
        epilog=EPILOG_CURATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(cur)
    src = cur.add_argument_group("input")
    src.add_argument("--urls", metavar="PATH", help="URL list: .parquet, .csv/.tsv or .jsonl (source.path)")
    src.add_argument("--url-column", metavar="COL", help="the column holding URLs (source.url_column, default url)")
    src.add_argument(
        "--id-column", metavar="COL", help="the source's own id column, used as the row key (source.id_column)"
    )
    src.add_argument("--demo", action="store_true", help="build the demo corpus, serve it on 127.0.0.1 and curate it")
    run = cur.add_argument_group("run")
    run.add_argument("--name", help="run name: output goes to <runs-dir>/<name>/ (run.name)")
    run.add_argument("--runs-dir", help="where run folders live (run.runs_dir, default runs)")
    run.add_argument("--workers", type=int, help="LocalCluster worker processes (run.workers; 0 = one per core)")
    run.add_argument(
        "--scheduler",
        metavar="S",
        help="local (default), sync (in-process, for debugging) or tcp://host:8786 (run.scheduler)",
    )
    run.add_argument("--shard-size", type=int, help="URLs per shard (run.shard_size)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    cur.add_argument(
        "--score-edges-from",
        metavar="CATALOG",
        help="reuse an earlier catalog's score edges, so score_N means the same (calibrate.edges_from)",
    )

    sc = sub.add_parser(
        "score",
        help="score image files or folders with a scorer",
        description="Print one raw aesthetic score per image (and score 1..9 given a catalog's edges).",
    )
    _add_folder_args(sc)
    sc.add_argument("--scorer", help="technical | clip-mlp (score.scorer)")
    sc.add_argument("--score-edges-from", metavar="CATALOG", help="also print score 1..9 by this catalog's edges")

    tg = sub.add_parser(
        "tag",
        help="tag image files or folders (rating, general and character tags, EXIF year)",
        description="Run the image taggers of the config (tag.taggers; metadata needs a source table, so it "
        "is skipped here) over images.",
    )
    _add_folder_args(tg)
    tg.add_argument("--wd-model", help="a WD tagger folder or hub repo (tag.wd_model); implies --tagger wd")

    cp = sub.add_parser(
        "caption",
        help="caption image files or folders",
        description="Caption images with caption.captioner. The template captioner writes from tags: those of "
        "a kohya-style sidecar (image.txt, comma-separated) or, with tag.wd_model set, the WD tagger's.",
    )
    _add_folder_args(cp)
    cp.add_argument("--captioner", help="template (caption.captioner)")
    cp.add_argument("--wd-model", help="tag the images with this WD tagger first (tag.wd_model)")

    sa = sub.add_parser(
        "sample",
        help="validation grids from an SDXL v-prediction model and a kohya prompt file",
        description="Render a validation grid (and each image, with its A1111 parameters) from a diffusers SDXL "
        "folder and a kohya prompt file, or print the sampling schedule with --print-sigmas.",
        epilog="examples:\n  zxl sample --model models/zero-xl --prompts configs/sample/validation.txt --x cfg=3,4,5 "
        "--y seed=1,2\n  zxl sample --print-sigmas --steps 28 --terminal diffusers",
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
    sa.add_argument("--schedule", default="trailing", help="trailing (= simple), karras or exponential")
    sa.add_argument("--terminal", default="comfyui",
                    help="sigma at t=999 where ZTSNR makes it infinite: comfyui (ComfyUI/A1111, 4518.76; the default) "
                    "or diffusers (4096)")  # fmt: skip
    sa.add_argument("--no-ztsnr", action="store_true", help="--print-sigmas: the plain SDXL schedule instead")

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
    _add_config_args(tr)
    tr.add_argument("--base", help="the base model: single-file .safetensors or diffusers folder (model.base)")
    tr.add_argument("--catalog", help="the catalog to train on (data.catalog)")
    tr.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                    help="continue from the latest checkpoint of the output folder (or the one given)")  # fmt: skip

    mg = sub.add_parser(
        "merge",
        help="average checkpoints (weights optional) into one model, or export one checkpoint",
        description="The weighted average (uniform by default) of checkpoints of one run, in fp32 then cast "
        "(RECIPE.md). Inputs: zxl checkpoint folders or single-file .safetensors. Output: a .safetensors path "
        "writes a single-file SDXL model (A1111/ComfyUI layout, v_pred/ztsnr markers, .yaml beside it); a "
        "folder path writes a diffusers folder. With one input this is an export.",
    )
    mg.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    mg.add_argument("--out", required=True, help="output .safetensors file or diffusers folder")
    mg.add_argument("--weights", help="comma-separated weights, one per checkpoint (default uniform)")
    mg.add_argument("--base", help="checkpoint folders only: the base model supplying the VAE and frozen parts "
                    "(default: the base recorded in the checkpoint)")  # fmt: skip
    mg.add_argument("--ema", action="store_true", help="take the U-Net from the EMA weights when present")

    cat = sub.add_parser("catalog", help="stats, queries, rows and exports of a catalog").add_subparsers(
        dest="catalog_command", metavar="ACTION"
    )
    st = cat.add_parser("stats", help="rows per status, score, rating, year, bucket; top tags; captions")
    st.add_argument("catalog", metavar="CATALOG", help="a catalog folder (runs/<name>/catalog)")
    st.add_argument("--top-tags", type=int, default=20)
    st.add_argument("--json", action="store_true", help="one JSON object on stdout, for machines")
    qu = cat.add_parser(
        "query",
        help="SQL over the catalog with DuckDB",
        description="SELECT COLUMNS FROM catalog WHERE WHERE ORDER BY ORDER LIMIT N, on DuckDB over the Parquet parts.",
        epilog="example: zxl catalog query runs/demo/catalog --where \"score >= 8 and rating = 'general'\" "
        '--columns key,score,caption --order "aesthetic desc" --limit 5',
    )
    qu.add_argument("catalog", metavar="CATALOG")
    qu.add_argument("--where", default="", help="a SQL condition over the catalog's columns")
    qu.add_argument("--columns", default="", help="comma-separated columns or SQL expressions (default all)")
    qu.add_argument("--order", default="", help="a SQL ORDER BY, e.g. 'aesthetic desc'")
    qu.add_argument("--limit", type=int, default=20, help="rows (default 20; 0 = all)")
    qu.add_argument("--format", choices=["table", "json", "csv", "parquet"], default="table")
    qu.add_argument("--out", help="write to this file instead of stdout (needed for parquet)")
    sh = cat.add_parser("show", help="print one row and write its image out")
    sh.add_argument("catalog", metavar="CATALOG")
    sh.add_argument("key", metavar="KEY")
    sh.add_argument("--out", default=".", help="folder to write the image to (default: here)")
    br = cat.add_parser("browse", help="a web page over the catalog on http://127.0.0.1:8765")
    br.add_argument("catalog", metavar="CATALOG")
    br.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    br.add_argument("--port", type=int, default=8765)
    ex = cat.add_parser(
        "export",
        help="export to a kohya folder, kohya metadata JSON, webdataset tars or a datasets-ready Parquet",
    )
    ex.add_argument("catalog", metavar="CATALOG")
    ex.add_argument("--format", required=True, choices=["kohya", "kohya-json", "webdataset", "hf-parquet"])
    ex.add_argument("--out", required=True, help="the folder to write")
    ex.add_argument("--where", default="status = 'ok' AND repeats > 0",
                    help="which rows (SQL; default: the rows a trainer uses)")  # fmt: skip
    ex.add_argument("--name", default="zxl", help="kohya: the folder name after the repeats (3_zxl)")
    ex.add_argument("--seed", type=int, default=0, help="seed for tag shuffling and caption styles")

    demo = sub.add_parser("demo", help="the bundled demo corpus").add_subparsers(dest="demo_command", metavar="ACTION")
    for name, text in (
        ("build", "generate the demo corpus (cached by size and seed)"),
        ("serve", "serve the demo corpus on 127.0.0.1 until interrupted"),
    ):
        p = demo.add_parser(name, help=text, description=text)
        _add_config_args(p)
        p.add_argument("--size", type=int, help="rows, bad ones included (demo.size, default 600)")
        p.add_argument("--seed", type=int, help="demo.seed")
        p.add_argument("--dir", help="cache folder (demo.dir)")
        if name == "serve":
            p.add_argument("--port", type=int, help="preferred port (demo.port); 0 = any free port")
            p.add_argument(
                "--urls-out",
                default=None,
                metavar="PATH",
                help="where to write the URL list (default <corpus>/urls.parquet)",
            )
    return parser


def _flags_to_config(args: argparse.Namespace) -> dict:
    """The typed flags as a config mapping (they sit between presets and --set)."""
    extra: dict = {}

    def put(section: str, key: str, value) -> None:
        if value is not None:
            extra.setdefault(section, {})[key] = value

    put("source", "path", getattr(args, "urls", None))
    put("source", "url_column", getattr(args, "url_column", None))
    put("source", "id_column", getattr(args, "id_column", None))
    put("run", "name", getattr(args, "name", None))
    put("run", "runs_dir", getattr(args, "runs_dir", None))
    put("run", "workers", getattr(args, "workers", None))
    put("run", "scheduler", getattr(args, "scheduler", None))
    put("run", "shard_size", getattr(args, "shard_size", None))
    if getattr(args, "no_progress", False):
        put("run", "progress", False)
    put("demo", "size", getattr(args, "size", None))
    put("demo", "seed", getattr(args, "seed", None))
    put("demo", "dir", getattr(args, "dir", None))
    put("demo", "port", getattr(args, "port", None))
    put("score", "scorer", getattr(args, "scorer", None))
    put("caption", "captioner", getattr(args, "captioner", None))
    if getattr(args, "wd_model", None):
        put("tag", "wd_model", args.wd_model)
        put("tag", "taggers", ["wd"])
    put("calibrate", "edges_from", getattr(args, "score_edges_from", None))
    return extra


def _build_demo(cfg: DemoConfig) -> Path:
    from zxl.demo_corpus import build_corpus

    return build_corpus(cfg.dir, size=cfg.size, seed=cfg.seed, bad_fraction=cfg.bad_fraction)


def cmd_curate(args: argparse.Namespace) -> int:
    from zxl.pipeline.curate import curate, summary

    cfg: CurateConfig = load_config(CurateConfig, args.config, args.overrides, _flags_to_config(args))
    if not args.demo:
        result = curate(cfg)
    else:
        from zxl.demo_server import DemoServer

        if args.urls:
            raise ConfigError("--demo curates the bundled corpus: leave out --urls")
        if cfg.demo.slow_seconds <= cfg.fetch.timeout:
            raise ConfigError(
                f"demo.slow_seconds ({cfg.demo.slow_seconds}) must exceed fetch.timeout ({cfg.fetch.timeout}) "
                "so the slow rows time out"
            )
        corpus = _build_demo(cfg.demo)
        cfg.source.url_column, cfg.source.id_column, cfg.source.path = "file_url", "id", str(corpus / "source.parquet")
        if cfg.demo.host not in cfg.fetch.allowed_hosts:  # the demo server, and nothing else private
            cfg.fetch.allowed_hosts = [*cfg.fetch.allowed_hosts, cfg.demo.host]
        with DemoServer(corpus, cfg.demo.host, cfg.demo.port, cfg.demo.slow_seconds) as server:
            moved = f" (its URLs name {server.url_base}: demo.port is taken)" if server.connect_to else ""
            print(f"demo corpus {corpus} served on {server.base_url}{moved}", flush=True)
            cfg.fetch.connect_to = [*cfg.fetch.connect_to, *server.connect_to]
            result = curate(cfg, urls=server.url_table())
    print(summary(result), flush=True)
    return 0


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _image_files(paths: list[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"no such file or folder: {p}")
    return files


def cmd_score(args: argparse.Namespace) -> int:
    import json

    from zxl.pipeline.calibrate import apply_edges, edges_from_catalog
    from zxl.pipeline.score import score_stream
    from zxl.scorers.registry import build_scorer

    cfg: CurateConfig = load_config(CurateConfig, args.config, args.overrides, _flags_to_config(args))
    files = _image_files(args.paths)
    edges = edges_from_catalog(cfg.calibrate.edges_from) if cfg.calibrate.edges_from else None
    scorer = build_scorer(cfg.score)
    rows = []
    chunk = max(cfg.score.batch_size * 8, 64)
    for start in range(0, len(files), chunk):
        part = files[start : start + chunk]
        results: dict[int, dict] = {}
        blobs = []
        for i, f in enumerate(part):
            try:
                blobs.append(f.read_bytes())
            except OSError as e:
                blobs.append(b"")
                results[i] = {"error": f"cannot read the file: {e}"}
        for idx, scores, _, errors in score_stream(scorer, blobs, cfg.score.batch_size, cfg.score.loader_threads):
            for i, err in errors.items():
                results.setdefault(i, {"error": err})
            for n, i in enumerate(idx):
                results[i] = {"aesthetic": round(float(scores[n]), 4), "error": None}
        for i, f in enumerate(part):
            row = {"path": str(f), "aesthetic": None, **results[i]}
            if edges is not None and row["aesthetic"] is not None:
                row["score"] = int(apply_edges([row["aesthetic"]], edges)[0])
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            value = f"{r['aesthetic']:9.4f}" if r["aesthetic"] is not None else "   failed"
            tag = f"  score_{r['score']}" if "score" in r else ""
            why = f"  ({r['error']})" if r["error"] else ""
            print(f"{value}{tag}  {r['path']}{why}")
    return 0 if all(r["aesthetic"] is not None for r in rows) else 1


def _open_images(files: list[Path]) -> tuple[list, dict[int, str]]:
    from PIL import Image

    images, errors = [], {}
    for i, f in enumerate(files):
        try:
            im = Image.open(f)
            im.load()
            images.append(im)
        except Exception as e:  # noqa: BLE001 - one unreadable file is that row's error
            images.append(None)
            errors[i] = f"cannot read the image: {type(e).__name__}: {e}"
    return images, errors


def _image_tags(cfg: CurateConfig, files: list[Path], images: list):
    """The configured image taggers' merged output, or None when none is configured."""
    import pandas as pd

    from zxl.pipeline.tag import tag_rows

    taggers = [t for t in cfg.tag.taggers if t != "metadata"]
    if not taggers:
        return None
    cfg.tag.taggers = taggers
    rows = pd.DataFrame({"key": [str(f) for f in files]})
    merged, _ = tag_rows(cfg.tag, rows, lambda: images)
    return merged


def _print_rows(rows: list[dict], as_json: bool, fields: list[str]) -> None:
    import json

    if as_json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
        return
    for r in rows:
        if r.get("error"):
            print(f"{r['path']}: failed ({r['error']})")
            continue
        shown = "; ".join(
            f"{k}: {', '.join(v) if isinstance(v, list) else v}" for k in fields if (v := r.get(k)) not in (None, [])
        )
        print(f"{r['path']}: {shown}")


def cmd_tag(args: argparse.Namespace) -> int:
    from zxl.taggers.registry import check

    cfg: CurateConfig = load_config(CurateConfig, args.config, args.overrides, _flags_to_config(args))
    if [t for t in cfg.tag.taggers if t != "metadata"] == []:
        raise ConfigError("zxl tag needs an image tagger: pass --wd-model FOLDER (or set tag.taggers: [wd])")
    check(cfg.tag)
    files = _image_files(args.paths)
    images, errors = _open_images(files)
    merged = _image_tags(cfg, files, images)
    from zxl.pipeline.tag import exif_year_of

    rows = []
    for i, f in enumerate(files):
        row = {"path": str(f), "error": errors.get(i)}
        if i not in errors:
            m = merged.iloc[i]
            row.update(rating=m["rating"], tags=m["tags"], characters=m["characters"],
                       year=exif_year_of(images[i]))  # fmt: skip
        rows.append(row)
    _print_rows(rows, args.json, ["rating", "year", "characters", "tags"])
    return 0 if not errors else 1


def _sidecar_tags(image: Path) -> list[str] | None:
    txt = image.with_suffix(".txt")
    if not txt.is_file():
        return None
    return [
        t.strip().replace(" ", "_") for t in txt.read_text(errors="replace").replace("\n", ",").split(",") if t.strip()
    ]


def cmd_caption(args: argparse.Namespace) -> int:
    import pandas as pd

    from zxl.captioners.registry import check, get_captioner

    cfg: CurateConfig = load_config(CurateConfig, args.config, args.overrides, _flags_to_config(args))
    check(cfg.caption)
    captioner = get_captioner(cfg.caption)
    if captioner is None:
        raise ConfigError("caption.captioner is none: choose a captioner, e.g. --captioner template")
    files = _image_files(args.paths)
    images, errors = _open_images(files)
    tagged = _image_tags(cfg, files, images) if cfg.tag.wd_model else None
    tags = [(_sidecar_tags(f) if tagged is None else tagged["tags"].iloc[i]) for i, f in enumerate(files)]
    chars = [None if tagged is None else tagged["characters"].iloc[i] for i in range(len(files))]
    ok = [i for i in range(len(files)) if i not in errors]
    rows_df = pd.DataFrame({"tags": [tags[i] for i in ok], "characters": [chars[i] for i in ok]})
    texts = captioner.caption([images[i] for i in ok] if captioner.needs_images else None, rows_df) if ok else []
    rows = [{"path": str(f), "caption": None, "error": errors.get(i)} for i, f in enumerate(files)]
    for i, text in zip(ok, texts, strict=True):
        rows[i]["caption"] = text or None
        if not text:
            rows[i]["error"] = (
                "no caption: no tags to write from (add image.txt or --wd-model)"
                if not tags[i]
                else (f"captioner {captioner.name} returned nothing")
            )
    _print_rows(rows, args.json, ["caption"])
    return 0 if all(r["caption"] for r in rows) else 1


def cmd_catalog(args: argparse.Namespace) -> int:
    import json

    from zxl.catalog.query import CatalogError, open_catalog

    try:
        cat = open_catalog(args.catalog)
        for problem in cat.problems:
            print(f"warning: {problem}; the rest of the catalog is used", file=sys.stderr)
        actions = {"stats": _catalog_stats, "query": _catalog_query, "show": _catalog_show,
                   "export": _catalog_export, "browse": _catalog_browse}  # fmt: skip
        return actions[args.catalog_command](cat, args, json)
    except CatalogError as e:
        print(f"zxl catalog {args.catalog_command}: error: {e}", file=sys.stderr)
        return 2


def _catalog_stats(cat, args, json) -> int:
    from zxl.catalog.query import stats

    st = stats(cat, args.top_tags)
    if args.json:
        print(json.dumps(st, indent=1))
        return 0
    print(f"catalog {st['catalog']}: {st['rows']} rows, {st['ok_rows']} ok, {st['images_per_epoch']} images per epoch")
    for section in ("status", "score", "rating", "year", "bucket"):
        total = sum(st[section].values()) or 1
        print(f"\n{section}" + ("" if section == "status" else " (ok rows)"))
        for k, n in st[section].items():
            print(f"  {k:<16} {n:>9}  {100 * n / total:5.1f}%  {'#' * round(30 * n / total)}")
    print("\ntop tags: " + ", ".join(f"{t} ({n})" for t, n in st["top_tags"].items()))
    cov = st["caption_coverage"]
    print(f"captions: {cov['captioned']} of {cov['ok_rows']} ok rows ({100 * cov['share']:.1f}%)")
    if st["score_edges"]:
        print("score edges: " + " ".join(f"{e:.4g}" for e in st["score_edges"]))
    return 0


def _catalog_query(cat, args, json) -> int:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from zxl.catalog.query import query

    con, rel = query(cat, args.where, args.columns, args.order, args.limit or None)
    if args.format == "table":
        text = str(rel)
    else:
        table = rel.to_arrow_table()
        if args.format == "parquet":
            if not args.out:
                raise ConfigError("--format parquet needs --out FILE")
            pq.write_table(table, args.out)
            print(f"{table.num_rows} rows written to {args.out}")
            return 0
        if args.format == "json":
            text = json.dumps(table.to_pylist(), indent=1, default=str, ensure_ascii=False)
        else:
            buf = pa.BufferOutputStream()
            pacsv.write_csv(table, buf)
            text = buf.getvalue().to_pybytes().decode()
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text.rstrip("\n"))
    return 0


def _catalog_show(cat, args, json) -> int:
    from zxl.catalog.images import ImageStore

    con = cat.connect()
    table = con.sql("SELECT * FROM catalog WHERE key = ?", params=[args.key]).to_arrow_table()
    if table.num_rows == 0:
        print(f"zxl catalog show: no row with key {args.key!r}", file=sys.stderr)
        return 1
    row = table.to_pylist()[0]
    print(json.dumps(row, indent=1, default=str, ensure_ascii=False))
    if row["status"] in ("ok", "duplicate") and row.get("shard_key"):
        try:
            data, ext = ImageStore(cat.path).get(row["shard"], row["shard_key"])
        except (KeyError, FileNotFoundError) as e:
            print(f"no image: {e}", file=sys.stderr)
            return 1
        out = Path(args.out) / f"{row['key'].replace('/', '_')}.{ext}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        print(f"image written to {out}", file=sys.stderr)
    return 0


def _catalog_export(cat, args, json) -> int:
    from zxl.catalog.export import exporter
    from zxl.catalog.images import ImageStore
    from zxl.catalog.query import query

    con, rel = query(cat, args.where, limit=None, order="key")
    rows = (r for batch in rel.to_arrow_reader(batch_size=2048) for r in batch.to_pylist())
    summary = exporter(args.format, seed=args.seed, folder_name=args.name).export(
        rows, ImageStore(cat.path), Path(args.out)
    )
    missing = summary.pop("missing")
    print(json.dumps({"format": args.format, "out": args.out, **summary, "missing": len(missing)}, indent=1))
    for m in missing[:10]:
        print(f"missing image: {m}", file=sys.stderr)
    if args.format == "kohya":
        print(
            "train with kohya's --keep_tokens 3 --shuffle_caption: score, rating and year stay first", file=sys.stderr
        )
    return 0


def _catalog_browse(cat, args, json) -> int:
    from zxl.catalog.browse import serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach it can read the catalog", file=sys.stderr)
    server = serve(cat.path, args.host, args.port)
    print(f"browsing {cat.path} on http://{args.host}:{server.server_port}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from zxl.sampler.schedule import format_table, get_sigmas

    if args.print_sigmas:
        sigmas, timesteps = get_sigmas(args.steps, args.schedule, ztsnr=not args.no_ztsnr, terminal=args.terminal)
        what = "plain SDXL" if args.no_ztsnr else f"ZTSNR, terminal convention {args.terminal}"
        print(f"# {args.steps} steps, {args.schedule} schedule, {what}")
        print(format_table(sigmas, timesteps))
        return 0
    if not args.model or not args.prompts:
        raise ConfigError("zxl sample needs --model and --prompts (or --print-sigmas)")
    from zxl.sampler.grids import parse_axis, render
    from zxl.sampler.prompts import NEGATIVE_PRESETS, Prompt, read_prompt_file

    get_sigmas(1, args.schedule, terminal=args.terminal)  # bad names fail before any model loads
    prompts = read_prompt_file(args.prompts, Prompt(prompt="", negative=NEGATIVE_PRESETS[args.negative]))
    grids = render(args.model, prompts, Path(args.out), parse_axis(args.x), parse_axis(args.y), args.terminal,
                   args.schedule, args.cfg_rescale, args.dynamic, args.device, precision=args.precision,
                   compile=args.compile, model_config=args.model_config)  # fmt: skip
    for g in grids:
        print(f"grid: {g}")
    return 0


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
    print(f"trained {result['steps']} steps; checkpoint {result['checkpoint']}; export {result.get('export')}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from zxl.trainer.export import merge_and_write

    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    out = merge_and_write([Path(p) for p in args.checkpoints], Path(args.out), weights, args.base, args.ema)
    print(out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = load_config(CurateConfig, args.config, args.overrides, _flags_to_config(args)).demo
    corpus = _build_demo(cfg)
    if args.demo_command == "build":
        print(corpus)
        return 0
    from zxl.demo_server import DemoServer, serve_forever

    urls = Path(args.urls_out) if args.urls_out else corpus / "urls.parquet"
    serve_forever(DemoServer(corpus, cfg.host, cfg.port, cfg.slow_seconds), urls)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (
        args.command is None
        or (args.command == "demo" and args.demo_command is None)
        or (args.command == "catalog" and args.catalog_command is None)
    ):
        parser.print_help() if args.command is None else parser.parse_args([args.command, "--help"])
        return 2
    try:
        commands = {"curate": cmd_curate, "demo": cmd_demo, "score": cmd_score, "tag": cmd_tag,
                    "caption": cmd_caption, "catalog": cmd_catalog, "sample": cmd_sample,
                    "train": cmd_train, "merge": cmd_merge}  # fmt: skip
        return commands[args.command](args)
    except ConfigError as e:
        print(f"zxl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a failed shard, checkpoint or loss: say so without a traceback
        from zxl.pipeline.executor import ShardFailedError
        from zxl.pipeline.stages import RunFolderBusyError
        from zxl.trainer.checkpoint import CheckpointError

        if not isinstance(e, ShardFailedError | CheckpointError | FloatingPointError | RunFolderBusyError):
            raise
        print(f"zxl {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
