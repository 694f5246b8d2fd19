"""The catalog's subcommands: ``zxl catalog stats|query|show|browse|export``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zxl.config import ConfigError


def add_commands(sub) -> None:
    """catalog and its actions, on the top-level subparsers ``sub``."""
    top = sub.add_parser("catalog", help="stats, queries, rows and exports of a catalog")
    top.set_defaults(run=cmd_catalog)
    cat = top.add_subparsers(dest="catalog_command", metavar="ACTION")
    st = cat.add_parser("stats", help="rows per status, score, rating, year, bucket; tags per category; "
                        "caption token lengths; score-year rho; tag rules")  # fmt: skip
    st.add_argument("catalog", metavar="CATALOG", help="a catalog folder (runs/<name>/catalog)")
    st.add_argument("--top-tags", type=int, default=20, help="general tags over the ok rows (default 20)")
    st.add_argument("--per-category", type=int, default=15,
                    help="top tags of each category over the trainable rows (default 15)")  # fmt: skip
    st.add_argument("--no-tokens", action="store_true",
                    help="skip the captions' CLIP token lengths (loading the tokenizer takes seconds)")  # fmt: skip
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
    br.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                    help="a further name requests may give in their Host header (this machine's name or LAN "
                    "address when serving beyond it); requests naming any other host are refused (421)")  # fmt: skip
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
    from zxl.catalog.tagstats import category_lines, score_year_line, tag_rules_lines, token_lines

    st = stats(cat, args.top_tags, args.per_category, tokens=not args.no_tokens)
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
    print("\n" + "\n".join(category_lines(st["tag_categories"])))
    cov = st["caption_coverage"]
    print(f"\ncaptions: {cov['captioned']} of {cov['ok_rows']} ok rows ({100 * cov['share']:.1f}%)")
    if "token_lengths" in st:
        print("\n".join(token_lines(st["token_lengths"])))
    if st["score_edges"]:
        print("score edges: " + " ".join(f"{e:.4g}" for e in st["score_edges"]))
    print(score_year_line(st["score_year"]))
    for line in tag_rules_lines(cat.manifest):
        print(line)
    if st["taste"]:
        t = st["taste"]
        raters = ", ".join(t.get("raters") or ["?"])
        print(f"scores from the taste head {t['head']} ({t.get('choices', '?')} choices by {raters}; "
              f"held-out accuracy {t.get('heldout_accuracy', '?')})")  # fmt: skip
    print(diversity_text(st["diversity"]))
    return 0


def diversity_text(d: dict | None) -> str:
    """The draws per epoch over the embedding's clusters, at the chosen weigh.diversity and at 0."""
    if not d or not d.get("clusters"):
        return "diversity: no clusters (the run stored no embeddings, or the catalog predates them)"
    c = d["clusters"]
    lines = [f"diversity: weigh.diversity {d['setting']}, {c['k']} clusters ({c['chosen']})",
             f"  {'draws':<28} {'effective clusters':>18} {'Vendi (1000 draws)':>19} {'mean score':>11} "
             f"{'per epoch':>10}"]  # fmt: skip
    rows = [("at diversity 0 (by score)", d["zero"])]
    if d["setting"] > 0:
        rows += [(f"at {d['setting']}: weights (zxl train)", d["chosen"]["weights"]),
                 (f"at {d['setting']}: repeats (kohya)", d["chosen"]["repeats"])]  # fmt: skip
    for name, r in rows:
        lines.append(f"  {name:<28} {r['effective_clusters']:>18.2f} {r['vendi']:>19.2f} {r['mean_score']:>11.2f} "
                     f"{r['draws_per_epoch']:>10.0f}")  # fmt: skip
    return "\n".join(lines)


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
    from zxl.catalog.captions import layout_of
    from zxl.catalog.export import exporter
    from zxl.catalog.images import ImageStore
    from zxl.catalog.query import query

    con, rel = query(cat, args.where, limit=None, order="key")
    rows = (r for batch in rel.to_arrow_reader(batch_size=2048) for r in batch.to_pylist())
    layout = layout_of(cat.manifest)  # the captions the curate run chose, as the trainer writes them
    summary = exporter(args.format, seed=args.seed, folder_name=args.name, layout=layout).export(
        rows, ImageStore(cat.path), Path(args.out)
    )
    missing = summary.pop("missing")
    print(json.dumps({"format": args.format, "out": args.out, **summary, "missing": len(missing)}, indent=1))
    for m in missing[:10]:
        print(f"missing image: {m}", file=sys.stderr)
    if "kohya_args" in summary:
        print(f"kohya sd-scripts arguments (also in {Path(args.out) / 'kohya_args.txt'}):", file=sys.stderr)
        print(f"  {summary['kohya_args']}", file=sys.stderr)
    return 0


def _catalog_browse(cat, args, json) -> int:
    from zxl.catalog.browse import serve

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach it can read the catalog", file=sys.stderr)
        if args.host in ("0.0.0.0", "::") and not args.allow_host:
            print("warning: requests must name this machine in their Host header: add --allow-host NAME for each "
                  "name or address you will open it by", file=sys.stderr)  # fmt: skip
    try:
        server = serve(cat.path, args.host, args.port, args.allow_host)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    print(f"browsing {cat.path} on http://{args.host}:{server.server_port}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
