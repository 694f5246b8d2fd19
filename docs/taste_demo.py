"""The taste loop on the demo, with a simulated rater in place of you: ``make taste-demo``.

1. serves runs/demo/catalog (``zxl catalog browse``) and, through the rate view's own HTTP API, asks
   for the next pair and answers it N times, as the page does when you press ← or → (bench/rater.py).
   The simulated rater likes warm pictures: the one with more red than blue wins, with Bradley–Terry noise;
2. ``zxl taste fit runs/demo`` on the choices it made (runs/demo/taste/choices.sqlite);
3. ``zxl taste apply runs/demo`` at ``weigh.diversity`` 0 and then 1, printing what the manifest
   reports (effective clusters, Vendi score of the draws, mean score) and how well the new scores
   follow the rater's taste (Spearman ρ between score and warmth over the trainable rows).

Run ``make curate`` first. The choices stay in the database; delete runs/demo/taste to start over.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench.rater, run as a script from docs/
RUN = ROOT / "runs/demo"


def warmth(data: bytes) -> float:
    from zxl.images import decode

    with decode(data) as im:
        a = np.asarray(im.convert("RGB").resize((64, 64)), np.float32) / 255
    return float((a[..., 0] - a[..., 2]).mean())


def rate(n: int, seed: int = 0, temperature: float = 0.02) -> None:
    from bench.rater import rate as answer

    answer(RUN / "catalog", n, warmth, seed, temperature)


def follows(run: Path, technical: bool = False) -> float:
    """Spearman ρ between the rows' warmth and their score (or the technical scorer's raw score)."""
    from scipy.stats import spearmanr

    from zxl.catalog.images import ImageStore
    from zxl.catalog.schema import read_catalog
    from zxl.pipeline.taste import _scorer_aesthetic

    t = read_catalog(run / "catalog").to_pandas()
    ok = t[t.status == "ok"]
    store = ImageStore(run / "catalog")
    w = [warmth(store.get(r.shard, r.shard_key)[0]) for r in ok.itertuples()]
    if technical:
        raw = _scorer_aesthetic(run)
        return float(spearmanr([raw[k] for k in ok.key], w).statistic)
    return float(spearmanr(ok.score, w).statistic)


def zxl(*args: str) -> None:
    print("$ zxl " + " ".join(args), flush=True)
    subprocess.run([str(ROOT / ".venv/bin/zxl"), *args], check=True, cwd=ROOT)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--choices", type=int, default=300, help="pairs the simulated rater answers (default 300)")
    args = p.parse_args()
    if not (RUN / "catalog/_manifest.json").exists():
        sys.exit("run `make curate` first")
    rate(args.choices)
    zxl("taste", "fit", str(RUN))
    before = follows(RUN, technical=True)
    out = {}
    for d in (0, 1):
        zxl("taste", "apply", str(RUN), "--set", f"weigh.diversity={d}", "--set", "run.progress=false")
        m = json.loads((RUN / "catalog/_manifest.json").read_text())
        out[d] = m["diversity"]
    print(f"\nscores vs the rater's taste (Spearman ρ, trainable rows): technical scorer {before:.2f}, "
          f"taste head {follows(RUN):.2f}")  # fmt: skip
    z, one = out[0]["zero"], out[1]["chosen"]
    print(f"{out[1]['clusters']['k']} clusters; draws per epoch     effective clusters   Vendi   mean score")
    ec, vendi, mean = z["effective_clusters"], z["vendi"], z["mean_score"]
    print(f"  weigh.diversity 0 (by score)    {ec:>18.2f} {vendi:>7.2f} {mean:>12.2f}")
    for name in ("weights", "repeats"):
        r = one[name]
        print(f"  weigh.diversity 1 ({name:<7})    {r['effective_clusters']:>18.2f} {r['vendi']:>7.2f} "
              f"{r['mean_score']:>12.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
