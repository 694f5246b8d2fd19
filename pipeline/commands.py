"""The pipeline's subcommands: ``zxl curate``, ``zxl score|tag|caption FOLDER`` and ``zxl demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from zxl.commands import add_config_args
from zxl.config import ConfigError, load_config
from zxl.pipeline.config import CurateConfig, DemoConfig

EPILOG_CURATE = """\
examples:
  zxl curate --demo --config configs/curate/demo.yaml
  zxl curate --urls posts.parquet --url-column file_url --id-column id --name danbooru
  zxl curate --urls urls.csv --scheduler tcp://10.0.0.5:8786 --set fetch.thread_count=64

Every stage writes one file per shard under runs/<name>/stages/; rerunning the same command skips
finished shards, so a killed run resumes where it stopped.
"""


def _add_folder_args(p: argparse.ArgumentParser) -> None:
    """What zxl score, tag and caption share: config, the paths, --json."""
    add_config_args(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, or folders searched recursively")
    p.add_argument("--json", action="store_true", help="one JSON list on stdout, for machines")


def add_commands(sub) -> None:
    """curate, score, tag, caption and demo, on the top-level subparsers ``sub``."""
    cur = sub.add_parser(
        "curate",
        help="run the curation pipeline over a URL list (or the demo corpus)",
        description="Fetch, inspect and catalog every URL of a list, one Dask task per shard and stage "
        "(inspect, score and tag share one, one pass over the shard's images).",
        epilog=EPILOG_CURATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(cur)
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
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="on a finished run: refetch only its transient failures (timeouts, resets, 429, 5xx), redo the "
        "stages of their shards and the global steps; nothing else is fetched again",
    )
    cur.add_argument(
        "--score-edges-from",
        metavar="CATALOG",
        help="reuse an earlier catalog's score edges, so score_N means the same (calibrate.edges_from)",
    )

    cur.set_defaults(run=cmd_curate)

    sc = sub.add_parser(
        "score",
        help="score image files or folders with a scorer",
        description="Print one raw aesthetic score per image (and score 1..9 given a catalog's edges).",
    )
    _add_folder_args(sc)
    sc.add_argument("--scorer", help="technical | clip-mlp (score.scorer)")
    sc.add_argument("--score-edges-from", metavar="CATALOG", help="also print score 1..9 by this catalog's edges")

    sc.set_defaults(run=cmd_score)

    tg = sub.add_parser(
        "tag",
        help="tag image files or folders (rating, general and character tags, EXIF year)",
        description="Run the image taggers of the config (tag.taggers; metadata needs a source table, so it "
        "is skipped here) over images.",
    )
    _add_folder_args(tg)
    tg.add_argument("--wd-model", help="a WD tagger folder or hub repo (tag.wd_model); implies --tagger wd")

    tg.set_defaults(run=cmd_tag)

    cp = sub.add_parser(
        "caption",
        help="caption image files or folders",
        description="Caption images with caption.captioner. The template captioner writes from tags: those of "
        "a kohya-style sidecar (image.txt, comma-separated) or, with tag.wd_model set, the WD tagger's.",
    )
    _add_folder_args(cp)
    cp.add_argument("--captioner", help="template (caption.captioner)")
    cp.add_argument("--wd-model", help="tag the images with this WD tagger first (tag.wd_model)")

    cp.set_defaults(run=cmd_caption)

    taste = sub.add_parser(
        "taste",
        help="a scorer of your own taste: fit it on your choices, apply it to a run",
        description="Fit a preference head on the choices made in `zxl catalog browse` (its rate view) or a "
        "CSV, and re-score a run with it (no refetch, no re-embedding).",
    )
    taste.set_defaults(run=lambda a: (taste.print_help(), 2)[1])
    actions = taste.add_subparsers(dest="taste_command", metavar="ACTION")
    fit = actions.add_parser(
        "fit",
        help="fit the head on RUN_DIR's choices (or --choices FILE.csv); report held-out accuracy",
        description="Bradley-Terry head over the run's stored embeddings, from runs/<name>/taste/choices.sqlite "
        "(or a CSV with columns winner,loser), stars as extra evidence. Writes taste/head.safetensors, "
        "taste/fit.json and taste/learning-curve.png.",
    )
    fit.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. runs/demo")
    fit.add_argument(
        "--choices", metavar="FILE.csv", help="choices made elsewhere: columns winner,loser (catalog keys)"
    )
    fit.add_argument("--folds", type=int, default=5, help="k of the k-fold held-out accuracy (default 5)")
    fit.add_argument("--c", type=float, help="the L2 strength 1/C (default: chosen by cross-validation)")
    fit.set_defaults(run=cmd_taste_fit)
    ap = actions.add_parser(
        "apply",
        help="re-score RUN_DIR with the head; redo dedup's keep choice, calibration, repeats, captions",
        description="Sets taste.head and reruns the global step and what follows from the stored stage outputs "
        "and embeddings. --set weigh.diversity=1 and the like apply too.",
    )
    ap.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. runs/demo")
    ap.add_argument("--head", metavar="FILE", help="a head file (default RUN_DIR/taste/head.safetensors)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides, e.g. weigh.diversity=1")  # fmt: skip
    ap.set_defaults(run=cmd_taste_apply)

    top = sub.add_parser("demo", help="the bundled demo corpus")
    top.set_defaults(run=cmd_demo)
    demo = top.add_subparsers(dest="demo_command", metavar="ACTION")
    for name, text in (
        ("build", "generate the demo corpus (cached by size and seed)"),
        ("serve", "serve the demo corpus on 127.0.0.1 until interrupted"),
    ):
        p = demo.add_parser(name, help=text, description=text)
        add_config_args(p)
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
    from zxl.pipeline.curate import curate, retry_failed, summary

    cfg: CurateConfig = load_config(CurateConfig, args.config, args.overrides, _flags_to_config(args))
    if not args.demo:
        result = retry_failed(cfg) if args.retry_failed else curate(cfg)
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
        # the export's own rule tables, as a Danbooru dump comes with them (unless the config names others)
        cfg.tag.aliases = cfg.tag.aliases or str(corpus / "tag_aliases.csv")
        cfg.tag.implications = cfg.tag.implications or str(corpus / "tag_implications.parquet")
        if cfg.demo.host not in cfg.fetch.allowed_hosts:  # the demo server, and nothing else private
            cfg.fetch.allowed_hosts = [*cfg.fetch.allowed_hosts, cfg.demo.host]
        with DemoServer(corpus, cfg.demo.host, cfg.demo.port, cfg.demo.slow_seconds) as server:
            moved = f" (its URLs name {server.url_base}: demo.port is taken)" if server.connect_to else ""
            print(f"demo corpus {corpus} served on {server.base_url}{moved}", flush=True)
            cfg.fetch.connect_to = [*cfg.fetch.connect_to, *server.connect_to]
            result = retry_failed(cfg) if args.retry_failed else curate(cfg, urls=server.url_table())
    print(summary(result), flush=True)
    return 0


def cmd_taste_fit(args: argparse.Namespace) -> int:
    from zxl.pipeline.taste import fit_taste

    if not 2 <= args.folds <= 100:
        raise ConfigError(f"--folds must be between 2 and 100, got {args.folds}")
    if args.c is not None and not 1e-6 <= args.c <= 1e6:  # (NaN fails too)
        raise ConfigError(f"--c must be between 1e-06 and 1e+06 (the inverse L2 strength), got {args.c}")
    r = fit_taste(args.run_dir, args.choices, args.folds, c=args.c)
    print(f"{r['choices']} choices on {r['distinct_pairs']} distinct pairs by {', '.join(r['raters'])} "
          f"({r['stars']} stars) on {r['embedding']} embeddings")  # fmt: skip
    acc, sd = r["heldout_accuracy"], r["heldout_accuracy_std"]
    print(f"held-out pairwise accuracy ({r['folds']}-fold): {acc:.3f} ± {sd:.3f}"
          f"  (C {r['c']}; train {r['train_accuracy']:.3f})")  # fmt: skip
    if r["heldout_accuracy_probes"] is not None:
        print(f"  on the {r['probe_choices']} random probe pairs of the rate view: {r['heldout_accuracy_probes']:.3f} "
              "(the other pairs are the ones the head was least sure of)")  # fmt: skip
    if r["scorer_agreement"] is not None:
        print(f"the run's scorer ({r['scorer']}) agrees with {r['scorer_agreement']:.3f} of the same choices")
    print("learning curve: " + ", ".join(f"{p['choices']}: {p['accuracy']:.3f}" for p in r["learning_curve"]))
    head = Path(r["head"])
    print(f"head: {head}\nreport: {head.parent / 'fit.json'}, {head.parent / 'learning-curve.png'}")
    print(f"next: zxl taste apply {args.run_dir}")
    return 0


def cmd_taste_apply(args: argparse.Namespace) -> int:
    from zxl.pipeline.curate import summary
    from zxl.pipeline.taste import apply_taste

    result = apply_taste(args.run_dir, args.head, args.overrides)
    print(summary(result), flush=True)
    t = result.manifest.get("taste", {})
    print(f"scores now from {t.get('head')} (sha256 {t.get('sha256', '')[:12]}, {t.get('choices')} choices)")
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
    from zxl.pipeline.score import score_blobs
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
        scores, errors, _ = score_blobs(scorer, blobs, cfg.score)
        for i, value in enumerate(scores):
            results.setdefault(
                i, {"error": errors.get(i)} if value is None else {"aesthetic": round(value, 4), "error": None}
            )
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
    from zxl.images import ImageDecodeError, decode

    images, errors = [], {}
    for i, f in enumerate(files):
        try:
            images.append(decode(f.read_bytes()))
        except (OSError, ImageDecodeError) as e:  # one unreadable file is that row's error
            images.append(None)
            errors[i] = f"cannot read the image: {e}"
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
    merged, _ = tag_rows(cfg.tag, rows, lambda side: images)  # whole: the folder's EXIF years come from them too
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

    assert merged is not None  # the config has an image tagger (checked above)
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
    from zxl.pipeline.caption import caption_rows

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
    texts, problems = caption_rows(captioner, [images[i] for i in ok] if captioner.needs_images else None, rows_df)
    rows = [{"path": str(f), "caption": None, "error": errors.get(i)} for i, f in enumerate(files)]
    for n, i in enumerate(ok):
        rows[i]["caption"] = texts[n]
        if texts[n] is None:
            rows[i]["error"] = (
                "no caption: no tags to write from (add image.txt or --wd-model)" if not tags[i] else problems[n]
            )
    _print_rows(rows, args.json, ["caption"])
    return 0 if all(r["caption"] for r in rows) else 1


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
