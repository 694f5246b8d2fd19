"""``python -m bench``: run every CPU benchmark, print a markdown table, write JSON.

Each entry measures zxl and its baseline alternately in the same process tree and reports the
best of each, and their ratio: this machine is noisy, absolute figures are not comparable across
runs, ratios are. ``BENCH_QUICK=1`` runs a smaller version of everything.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from bench import browse, catalog, evaluation, fetch, polite, sampling, scoring, stages, tagging, taste, training

ENTRIES = {
    "fetch": fetch.run,
    "polite": polite.run,
    "stages": stages.run,
    "technical": scoring.technical,
    "clip": scoring.clip_batched,
    "dedup": scoring.dedup_growth,
    "metadata": tagging.metadata_and_template,
    "wd": tagging.wd,
    "catalog": catalog.run,
    "sampling": sampling.run,
    "training": training.run,
    "eval": evaluation.run,
    "clustering": taste.clustering,
    "taste-fit": taste.taste_fit,
    "rating": taste.rating_latency,
    "hostile-body": browse.hostile_body,
}
RESULTS = Path(__file__).resolve().parent / "results"


def _versions() -> dict:
    names = ("img2dataset", "dask", "distributed", "pyarrow", "torch", "pillow", "opencv-python-headless")
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    from zxl import __version__

    out["zxl"] = __version__
    return out


def table(entries: list[dict]) -> str:
    lines = [
        "| benchmark | zxl | baseline | unit | ratio | target |",
        "| --- | ---: | ---: | --- | ---: | --- |",
    ]
    for e in entries:
        lines.append(
            f"| {e['name']} | {e['ours']:.1f} | {e['baseline']:.1f} | {e['unit']} | {e['ratio']:.2f}× | {e['target']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(ENTRIES)})")
    p.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in ENTRIES]
    if unknown:
        p.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(ENTRIES)}")
    entries = []
    for name in args.names or ENTRIES:
        print(f"== {name}", flush=True)
        result = ENTRIES[name](quick=args.quick)
        entries.extend(result if isinstance(result, list) else [result])
    now = dt.datetime.now(dt.UTC)
    report = {
        "date": now.isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine()},
        "versions": _versions(),
        "entries": entries,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=2)
    (args.out / f"bench-{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    md = table(entries)
    (args.out / "latest.md").write_text(md + "\n")
    print(md)
    print(f"\nJSON: {args.out / f'bench-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
