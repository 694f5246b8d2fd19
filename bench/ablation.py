"""``make ablation``: does diversity-aware weighting keep variety in a trained model?

The model card's one criticism is that training "prioritized learning from images with higher
scores, which might have been overkill and sacrificed diversity". This runs the controlled
experiment on the demo:

1. **A catalog where the problem exists.** A copy of the curated demo run (runs/demo) is rated by a
   simulated rater who loves one look: the pictures of one of the catalog's clusters (of those the
   models' autoencoder keeps, the one of median size; its centre in the stored pixel embedding is
   the rater's ideal), answering the
   browser's rate view through its HTTP API (bench/rater.py). ``zxl taste fit`` learns the taste and
   ``zxl taste apply`` re-scores the rows with it, once at ``weigh.diversity`` 0 and once at 1 (one
   run folder each): the same scores and clusters, different draws. How concentrated the top
   scores and the draws are is measured, not assumed (``concentration``).
2. **Trained models.** The demo's tiny SDXL (``make train``'s model and config) trained on each
   catalog from the same base, steps and settings, at two training seeds each (``--seeds``), so the
   seed-to-seed spread is visible beside the effect.
3. **One evaluation.** ``zxl eval`` of each model on the same held-out prompts, seeds and the d = 1
   catalog's clusters (those of both catalogs: the clustering does not depend on d), then one
   side-by-side report: runs/ablation/report.md, report.json, plots and a grid of samples.
4. **A control** (``control``): the catalog's rows through the models' own autoencoder, assigned to
   the clusters as samples are: what a model that learned its draws perfectly would show, and how
   much of the clustering the autoencoder lets through at all.

A killed run resumes: each finished step (the rated and applied catalogs, each trained
checkpoint, the eval) is kept and skipped the next time. ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Plan:
    source: Path = ROOT / "runs/demo"  # the curated demo run (make curate)
    out: Path = ROOT / "runs/ablation"
    train_config: Path = ROOT / "configs/train/demo.yaml"
    base: Path = ROOT / ".cache/demo-sdxl"  # the base model every run trains from (make ablation builds it)
    settings: tuple[float, ...] = (0.0, 1.0)  # weigh.diversity of each catalog
    seeds: tuple[int, ...] = (0, 1)  # training seeds (data.seed) of each setting
    steps: int = 1200  # optimizer steps of every model
    choices: int = 300  # pairs the simulated rater answers
    temperature: float = 0.02  # its Bradley–Terry noise, in units of cosine similarity
    prompts: int = 8  # zxl eval --prompts
    eval_seeds: int = 3  # zxl eval --seeds
    sample_steps: int = 20
    resolution: int = 128
    val_rows: int = 16
    extra: tuple[str, ...] = ()  # more --set KEY=VALUE for every training (tests: smaller settings)

    def run_dir(self, d: float) -> Path:
        return self.out / f"d{d:g}"

    def train_dir(self, d: float, seed: int) -> Path:
        return self.out / "train" / f"d{d:g}-seed{seed}"


def log(msg: str) -> None:
    print(f"ablation: {msg}", flush=True)


def zxl(*args: str) -> None:
    from zxl.cli import main

    log("$ zxl " + " ".join(args))
    if main(list(args)) != 0:
        raise SystemExit(f"ablation: zxl {args[0]} failed")


# ----------------------------------------------------------------------------- 1. the catalogs


def _trainable(catalog: Path):
    from zxl.catalog.schema import read_catalog

    t = read_catalog(catalog).to_pandas()
    return t[(t.status == "ok") & (t.repeats > 0)].reset_index(drop=True)


def reconstructions(plan: Plan, catalog: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every trainable row of ``catalog`` as the models see it: cropped to its bucket at the training
    resolution, then through the base's autoencoder (frozen: training caches its latents); the pixel
    embedding of the crop and of the reconstruction, by key. Cached in ``reconstructions.npz``
    (the rows and images are the same in every copy of the run)."""
    import torch
    from PIL import Image

    from zxl.catalog.images import ImageStore
    from zxl.sampler.pipeline import SDXL
    from zxl.scorers.pixels import pixel_embedding
    from zxl.trainer.data import buckets_for, load_rows
    from zxl.trainer.latents import cover_crop, load_rgb, to_tensor

    path = plan.out / "reconstructions.npz"
    rows = load_rows(catalog, plan.resolution)
    if path.is_file():
        z = np.load(path)
        have = dict(zip(z["keys"].tolist(), zip(z["crops"], z["recon"], strict=True), strict=True))
        if set(rows.key) <= set(have):
            return have
    vae = SDXL.load(plan.base, "cpu", "fp32").vae
    store, buckets = ImageStore(catalog), buckets_for(plan.resolution)
    out = {}
    with torch.no_grad():
        for r in rows.itertuples():
            w, h = buckets[int(r.bucket_index)]  # pyright: ignore[reportArgumentType] - a namedtuple field
            image = cover_crop(load_rgb(store.get(str(r.shard), str(r.shard_key))[0]), max(8, w // 8 * 8),
                               max(8, h // 8 * 8))[0]  # fmt: skip
            x = vae.decode(vae.encode(to_tensor(image)[None]).latent_dist.mean).sample[0].clamp(-1, 1)
            back = Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))
            out[str(r.key)] = (pixel_embedding(image), pixel_embedding(back))
    plan.out.mkdir(parents=True, exist_ok=True)
    keys = sorted(out)
    np.savez(path, keys=np.array(keys), crops=np.stack([out[k][0] for k in keys]),
             recon=np.stack([out[k][1] for k in keys]))  # fmt: skip
    return out


def _clusters(catalog: Path, resolution: int):
    """(trainable rows, the catalog's Clusters in the pixel embedding the technical scorer stores)."""
    from zxl.trainer.data import load_rows
    from zxl.trainer.evaluate import Clusters

    class Pixels:  # the embedding the technical scorer stores and scores samples in
        embedding_kind = "pixels-v1"

    rows = load_rows(catalog, resolution)
    clusters = Clusters.of(catalog, rows, Pixels())  # pyright: ignore[reportArgumentType] - only embedding_kind is read
    if isinstance(clusters, str):
        raise SystemExit(f"ablation: {catalog}: {clusters}")
    return rows, clusters


KEEP = 0.5  # a cluster the models can draw: at least this share of its rows survive the autoencoder


def favourite(plan: Plan) -> tuple[int, np.ndarray, dict]:
    """The rater's favourite look: a cluster of the source catalog the models can draw. Of the
    clusters whose rows mostly (≥ ``KEEP``) stay in their own cluster through the autoencoder, the
    one of median size (ties: the lower label); its centre, the mean of its rows' stored embeddings.
    (The first run of this experiment took the median of all clusters and landed on one the demo's
    autoencoder erases: 4% of its rows stayed, so no model could have drawn it, at any setting.)"""
    catalog = plan.source / "catalog"
    rows, clusters = _clusters(catalog, plan.resolution)
    rec = reconstructions(plan, catalog)
    own = rows.cluster.to_numpy(int)
    through = clusters.assign(np.stack([rec[k][1] for k in rows.key]))
    stay = {int(c): float((through[own == c] == c).mean()) for c in np.unique(own)}
    sizes = {c: int((own == c).sum()) for c in stay}
    drawable = [c for c in stay if stay[c] >= KEEP] or list(stay)
    order = sorted(drawable, key=lambda c: (sizes[c], c))
    fav = order[(len(order) - 1) // 2]
    return fav, clusters.centres[fav] / np.linalg.norm(clusters.centres[fav]), {"stay": stay, "sizes": sizes}


def look_utility(centre: np.ndarray):
    """How much the rater likes an image: cosine similarity of its pixel embedding to ``centre``."""
    from zxl.images import decode
    from zxl.scorers.pixels import pixel_embedding

    def utility(data: bytes) -> float:
        with decode(data) as im:
            return float(pixel_embedding(im) @ centre)

    return utility


def catalogs(plan: Plan) -> dict:
    """The rated, taste-applied run folders, one per setting; their favourite cluster and centre."""
    from bench.rater import rate

    marker = plan.out / "catalogs.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    if not (plan.source / "catalog/_manifest.json").is_file():
        raise SystemExit(f"ablation: no curated run at {plan.source}; run make curate first")
    fav, centre, why = favourite(plan)
    ignore = shutil.ignore_patterns(".lock", "taste", "train*", "eval*", "latents")
    first = plan.run_dir(plan.settings[0])
    for d in plan.settings:
        shutil.rmtree(plan.run_dir(d), ignore_errors=True)
        shutil.copytree(plan.source, plan.run_dir(d), ignore=ignore)
    log(f"the rater loves cluster {fav} of {plan.source / 'catalog'}; {plan.choices} pairs through the rate view")
    answered = rate(first / "catalog", plan.choices, look_utility(centre), seed=0, temperature=plan.temperature)
    zxl("taste", "fit", str(first))
    for d in plan.settings:
        if plan.run_dir(d) != first:
            shutil.copytree(first / "taste", plan.run_dir(d) / "taste")
        zxl("taste", "apply", str(plan.run_dir(d)), "--set", f"weigh.diversity={d:g}", "--set", "run.progress=false")
    info = {"favourite_source_cluster": fav, "choices": answered, "settings": list(plan.settings), **why}
    plan.out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(info, indent=1))
    return info


def concentration(plan: Plan) -> dict:
    """How concentrated the taste-applied catalogs are: the favoured cluster (most score-9 rows) and
    its share of the rows, of the score 8–9 rows and of the draws per epoch at each setting."""
    from zxl.diversity import effective_clusters

    frames = {d: _trainable(plan.run_dir(d) / "catalog").sort_values("key").reset_index(drop=True)
              for d in plan.settings}  # fmt: skip
    base = frames[plan.settings[0]]
    for d, f in frames.items():  # the clustering is the same at every d: one set of clusters to report
        if not (
            f.key.tolist() == base.key.tolist() and (f.cluster == base.cluster).all() and (f.score == base.score).all()
        ):
            raise SystemExit(f"ablation: the catalog at weigh.diversity {d:g} has other rows, scores or clusters")
    k = int(base.cluster.max()) + 1
    top9 = np.bincount(base.cluster[base.score == 9].astype(int), minlength=k)
    fav = int(np.argmax(top9))
    in_fav = base.cluster == fav
    top = base.score >= 8
    out = {"k": k, "favoured_cluster": fav, "rows": len(base), "favoured_rows": int(in_fav.sum()),
           "share_of_rows": float(in_fav.mean()),
           "share_of_score_8_9": float(in_fav[top].mean()) if top.any() else 0.0,
           "share_of_score_9": float(in_fav[base.score == 9].mean()) if (base.score == 9).any() else 0.0,
           "draws": {}}  # fmt: skip
    for d, f in frames.items():
        w = f.weight.fillna(f.repeats).to_numpy(float)
        out["draws"][f"{d:g}"] = {
            "share": float(w[in_fav.to_numpy()].sum() / w.sum()),
            "effective_clusters": effective_clusters(f.cluster.to_numpy(int), w),
            "shares": (np.bincount(f.cluster.astype(int), weights=w, minlength=k) / w.sum()).tolist(),
        }
    out["catalog_shares"] = (np.bincount(base.cluster.astype(int), minlength=k) / len(base)).tolist()
    out["catalog_effective_clusters"] = effective_clusters(base.cluster.to_numpy(int), np.ones(len(base)))
    return out


# ----------------------------------------------------------------------------- 2. training, 3. eval


def final_checkpoint(plan: Plan, d: float, seed: int) -> Path:
    return plan.train_dir(d, seed) / "checkpoints" / f"step-{plan.steps:08d}"


def train_all(plan: Plan) -> dict[str, float]:
    """Every (setting, seed) model, skipping those already trained; wall seconds of each."""
    seconds = {}
    for d in plan.settings:
        for seed in plan.seeds:
            name = f"d{d:g}-seed{seed}"
            if (final_checkpoint(plan, d, seed) / "meta.json").is_file():
                log(f"{name}: trained already")
                continue
            shutil.rmtree(plan.train_dir(d, seed), ignore_errors=True)
            t0 = time.perf_counter()
            zxl("train", "-c", str(plan.train_config), "--catalog", str(plan.run_dir(d) / "catalog"),
                "--set", f"model.base={plan.base}", "--set", f"data.seed={seed}",
                "--set", f"data.resolution={plan.resolution}",
                "--set", f"loop.output={plan.train_dir(d, seed)}", "--set", f"loop.max_steps={plan.steps}",
                "--set", f"loop.save_every={plan.steps}", "--set", "loop.keep_last=1", "--set", "loop.sample_every=0",
                "--set", "loop.eval_every=0", "--set", "loop.export=single-file", "--set", "loop.progress=false",
                *(a for kv in plan.extra for a in ("--set", kv)))  # fmt: skip
            seconds[name] = time.perf_counter() - t0
    return seconds


def evaluate_all(plan: Plan) -> dict:
    """``zxl eval`` of each model into eval/<model>/ (skipped when its report is there), then one
    report of them all in eval/. Every model is measured on the same EvalSet: the held-out prompts,
    seeds, rows and clusters depend only on the catalog and the eval settings, so models evaluated
    one at a time compare as in one call, and adding seeds evaluates only the new models."""
    from zxl.trainer.evaluate import write_report

    checkpoints, first = [], None
    for d in plan.settings:
        for seed in plan.seeds:
            name, folder = f"d{d:g}-seed{seed}", plan.out / "eval" / f"d{d:g}-seed{seed}"
            if (folder / "report.json").is_file():
                log(f"eval {name}: done already")
            else:
                zxl("eval", "--model", str(final_checkpoint(plan, d, seed)), "--catalog",
                    str(plan.run_dir(plan.settings[-1]) / "catalog"), "--out", str(folder), "--resolution",
                    str(plan.resolution), "--prompts", str(plan.prompts), "--seeds", str(plan.eval_seeds),
                    "--steps", str(plan.sample_steps), "--val-rows", str(plan.val_rows))  # fmt: skip
            one = json.loads((folder / "report.json").read_text())
            if first is not None and (one["prompts"], one["config"]) != (first["prompts"], first["config"]):
                raise SystemExit(f"ablation: {folder} was evaluated on other prompts or settings; remove it")
            first = first or one
            (c,) = one["checkpoints"]
            checkpoints.append({**c, "name": f"{name}/{c['name']}"})  # report.md links name/grid.png
    assert first is not None  # at least one setting and one seed
    report = {**first, "checkpoints": checkpoints}
    write_report(report, plan.out / "eval")
    return report


def control(plan: Plan) -> dict:
    """What the samples can show at best: every trainable row of the eval catalog as the models see
    it (``reconstructions``), assigned to the catalog's clusters as a sample is. Its shares, weighted
    by each catalog's draws, are the samples' distribution a model that learned its draws perfectly
    would give; the share of rows whose reconstruction stays in its own cluster says how much of the
    clustering survives the autoencoder at all."""
    from zxl.diversity import effective_clusters

    catalog = plan.run_dir(plan.settings[-1]) / "catalog"
    rows, clusters = _clusters(catalog, plan.resolution)
    rec = reconstructions(plan, catalog)
    own = rows.cluster.to_numpy(int)
    k = len(clusters.centres)
    at = clusters.assign(np.stack([rec[key][0] for key in rows.key]))
    through = clusters.assign(np.stack([rec[key][1] for key in rows.key]))
    result = {"rows": len(rows), "crops_in_own_cluster": float((at == own).mean()),
              "reconstructions_in_own_cluster": float((through == own).mean()),
              "stay_by_cluster": [float((through[own == c] == c).mean()) if (own == c).any() else 0.0
                                  for c in range(k)],
              "reconstruction_shares": (np.bincount(through, minlength=k) / len(rows)).tolist(),
              "reconstruction_effective_clusters": effective_clusters(through, np.ones(len(rows))),
              "expected": {}}  # fmt: skip
    for d in plan.settings:
        f = _trainable(plan.run_dir(d) / "catalog").set_index("key").reindex(rows.key)
        w = f.weight.fillna(f.repeats).to_numpy(float)
        shares = np.bincount(through, weights=w, minlength=k) / w.sum()
        result["expected"][f"{d:g}"] = {"shares": shares.tolist(),
                                        "effective_clusters": effective_clusters(through, w)}  # fmt: skip
    return result


# ----------------------------------------------------------------------------- the report

FIGURES = {  # name: (what, which way is better)
    "coverage_none": ("clusters covered, no score tag (effective number)", "high"),
    "coverage_score_9": ("clusters covered, score_9", "high"),
    "coverage_all": ("clusters covered, all samples", "high"),
    "kl_none": ("KL from the catalog, no score tag", "low"),
    "kl_score_9": ("KL from the catalog, score_9", "low"),
    "kl_all": ("KL from the catalog, all samples", "low"),
    "kl_none_expected": ("KL of the no-tag samples from its draws through the autoencoder (control)", "low"),
    "favoured_share": ("share of samples in the favoured cluster", "low"),
    "vendi_none": ("Vendi per prompt over seeds, no score tag", "high"),
    "vendi_tags": ("Vendi per prompt over seeds, with score tags", "high"),
    "conditional_vendi": ("Conditional Vendi, all samples given their prompts", "high"),
    "spearman": ("steering: Spearman ρ of score tag vs measured score", "high"),
    "steering_gap": ("steering: score_9 − score_1 (raw taste score)", "high"),
    "val_loss": ("validation loss", "low"),
}


def figures_of(c: dict, favoured: int, expected: list[float]) -> dict[str, float]:
    """The FIGURES of one checkpoint of the eval report; ``expected``: its draws' shares through the
    autoencoder (``control``)."""
    from zxl.diversity import kl_divergence

    cov, steer = c["coverage"], c["steering"]
    counts = np.asarray(cov["all"]["counts"], float)
    out = {f"coverage_{g}": cov[g]["effective_clusters"] for g in ("none", "score_9", "all")}
    out |= {f"kl_{g}": cov[g]["kl_from_catalog"] for g in ("none", "score_9", "all")}
    out["kl_none_expected"] = kl_divergence(np.asarray(cov["none"]["counts"]), np.asarray(expected))
    out |= {"favoured_share": counts[favoured] / counts.sum(), "vendi_none": c["variety"]["vendi_without_score_tags"],
            "vendi_tags": c["variety"]["vendi_with_score_tags"], "conditional_vendi": cov["conditional_vendi"],
            "spearman": steer["spearman"], "steering_gap": steer["mean"]["score_9"] - steer["mean"]["score_1"],
            "val_loss": c["val_loss"]["mean"]}  # fmt: skip
    return {k: float(v) for k, v in out.items()}


def summarise(plan: Plan, report: dict, conc: dict, ctrl: dict) -> dict:
    """Per model its figures; per setting their mean and the seed-to-seed spread (max − min)."""
    fav = conc["favoured_cluster"]
    models, by_setting = [], {}
    for c in report["checkpoints"]:
        ckpt = Path(c["model"])
        d, seed = ckpt.parent.parent.name.removeprefix("d").split("-seed")
        counts = np.asarray(c["coverage"]["all"]["counts"], float)
        expected = ctrl["expected"][f"{float(d):g}"]["shares"]
        row = {"name": ckpt.parent.parent.name, "diversity": float(d), "seed": int(seed),
               **figures_of(c, fav, expected),
               "shares": (counts / counts.sum()).tolist()}  # fmt: skip
        models.append(row)
        by_setting.setdefault(f"{float(d):g}", []).append(row)
    settings = {}
    for d, rows in by_setting.items():
        settings[d] = {}
        for key in FIGURES:
            v = np.array([r[key] for r in rows])
            settings[d][key] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                                "min": float(v.min()), "max": float(v.max()), "spread": float(np.ptp(v)),
                                "seeds": len(v)}  # fmt: skip
        settings[d]["shares"] = np.mean([r["shares"] for r in rows], axis=0).tolist()
    return {"models": models, "settings": settings}


def _plots(plan: Plan, conc: dict, summary: dict, ctrl: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    k = conc["k"]
    x = np.arange(k)
    bars = [("catalog rows", conc["catalog_shares"], "grey")]
    bars += [
        (f"draws at d={d}", v["shares"], c)
        for (d, v), c in zip(conc["draws"].items(), ("#c9a227", "#7fb3d5"), strict=False)
    ]
    bars += [
        (f"draws at d={d} through the autoencoder", v["shares"], c)
        for (d, v), c in zip(ctrl["expected"].items(), ("#f0d98c", "#aed6f1"), strict=False)
    ]
    bars += [(f"samples, d={d} models (mean of {summary['settings'][d]['coverage_all']['seeds']} seeds)",
              summary["settings"][d]["shares"], c)
             for d, c in zip(summary["settings"], ("#b8860b", "#1f618d"), strict=False)]  # fmt: skip
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * k + 3), 4), dpi=110)
    width = 0.8 / len(bars)
    for i, (label, shares, colour) in enumerate(bars):
        ax.bar(x - 0.4 + width / 2 + i * width, shares, width, label=label, color=colour)
    ax.axvspan(conc["favoured_cluster"] - 0.45, conc["favoured_cluster"] + 0.45, color="#f5b7b1", alpha=0.3, zorder=0)
    ax.set_xticks(x, [f"{i}{' ♥' if i == conc['favoured_cluster'] else ''}" for i in x])
    ax.set_xlabel("cluster of the catalog (♥ the favoured one: most score_9 rows)")
    ax.set_ylabel("share")
    ax.set_title("Where the draws and the samples fall among the catalog's clusters")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(plan.out / "clusters.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    keys = ["coverage_none", "coverage_score_9", "conditional_vendi", "vendi_none", "spearman", "val_loss"]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.3 * len(keys), 3.2), dpi=110)
    settings = list(summary["settings"])
    for ax, key in zip(axes, keys, strict=True):
        for j, d in enumerate(settings):
            vals = [m[key] for m in summary["models"] if f"{m['diversity']:g}" == d]
            ax.scatter([j] * len(vals), vals, color=("#b8860b", "#1f618d", "#196f3d")[j % 3], zorder=3)
            ax.hlines(np.mean(vals), j - 0.25, j + 0.25, color="black", linewidth=1)
        ax.set_xticks(range(len(settings)), [f"d={d}" for d in settings])
        ax.set_xlim(-0.6, len(settings) - 0.4)
        ax.set_title(key.replace("_", " "), fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Each dot one training seed; bar: their mean", fontsize=8)
    fig.tight_layout()
    paths.append(plan.out / "figures.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


def _grid(plan: Plan, report: dict) -> Path:
    """Rows: the models; columns: each prompt's first two seeds without a score tag, then with score_9."""
    from PIL import Image

    from zxl.sampler.grid import make_grid, save_png

    prompts = min(len(report["prompts"]), 4)
    rows, labels = [], []
    cols = [(p, tag, s) for tag in ("none", "score9") for p in range(prompts) for s in range(min(2, plan.eval_seeds))]
    for c in report["checkpoints"]:
        folder = plan.out / "eval" / c["name"]  # d0-seed0/00-step-…
        rows.append([Image.open(folder / f"p{p}-{tag}-s{s}.png").convert("RGB") for p, tag, s in cols])
        labels.append(Path(c["model"]).parent.parent.name)
    grid = make_grid(rows, [f"p{p} {'no tag' if t == 'none' else 'score_9'} s{s}" for p, t, s in cols], labels)
    path = plan.out / "grid.png"
    save_png(grid, path, "")
    return path


def write_report(plan: Plan, info: dict, conc: dict, report: dict, ctrl: dict, seconds: dict,
                 started: float) -> Path:  # fmt: skip
    from zxl.files import write_text_atomic

    summary = summarise(plan, report, conc, ctrl)
    plots = _plots(plan, conc, summary, ctrl)
    grid = _grid(plan, report)
    plan_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(plan).items()}
    out = {"plan": plan_json, "catalogs": info, "concentration": conc, "control": ctrl, "train_seconds": seconds,
           "wall_seconds": time.time() - started, **summary}  # fmt: skip
    write_text_atomic(json.dumps(out, indent=1), plan.out / "report.json")
    fav = conc["favoured_cluster"]
    lines = [
        "# Diversity-aware weighting in trained models (`make ablation`)", "",
        f"{len(plan.seeds)} training seeds × `weigh.diversity` {', '.join(f'{d:g}' for d in plan.settings)}; "
        f"{plan.steps} steps each of the demo's tiny SDXL at {plan.resolution} px (configs/train/demo.yaml); "
        f"`zxl eval` of all of them on {len(report['prompts'])} held-out prompts × (no tag, score_1 … score_9) × "
        f"{plan.eval_seeds} seeds, {plan.sample_steps} steps.", "",
        "## The catalog", "",
        f"A simulated rater who loves one look ({info['choices']} choices in the rate view), fitted and applied: "
        f"{conc['rows']} trainable rows in {conc['k']} clusters (effective {conc['catalog_effective_clusters']:.2f}). "
        f"The favoured cluster {fav} holds {conc['share_of_rows']:.1%} of the rows, {conc['share_of_score_8_9']:.1%} "
        f"of those scored 8–9 and {conc['share_of_score_9']:.1%} of those scored 9.", "",
        "| draws per epoch at | favoured cluster's share | effective clusters drawn |", "| --- | ---: | ---: |",
        *(f"| `weigh.diversity` {d} | {v['share']:.1%} | {v['effective_clusters']:.2f} |"
          for d, v in conc["draws"].items()),
        "", f"**The control.** Through the models' own autoencoder (the base's VAE, at {plan.resolution} px) "
        f"{ctrl['reconstructions_in_own_cluster']:.0%} of the {ctrl['rows']} rows stay in their cluster (their "
        f"crops at that size without the autoencoder: {ctrl['crops_in_own_cluster']:.0%}; the favoured cluster's: "
        f"{ctrl['stay_by_cluster'][fav]:.0%}); the reconstructions cover "
        f"{ctrl['reconstruction_effective_clusters']:.2f} clusters effectively. A model that learned its draws "
        "perfectly would show them as: " + "; ".join(
            f"d = {d}: {v['effective_clusters']:.2f} effective clusters, favoured cluster {v['shares'][fav]:.1%}"
            for d, v in ctrl["expected"].items()) + ".",
        "", "## The models", "",
        "| figure | better | " + " | ".join(f"d = {d}: mean ± sd [seeds' range]" for d in summary["settings"]) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in summary["settings"]) + " |",
    ]  # fmt: skip
    for key, (what, better) in FIGURES.items():
        cells = [
            f"{v[key]['mean']:.3f} ± {v[key]['sd']:.3f} [{v[key]['min']:.3f}, {v[key]['max']:.3f}]"
            for v in summary["settings"].values()
        ]
        lines.append(f"| {what} | {better} | " + " | ".join(cells) + " |")
    n = len(plan.seeds)
    lines += ["", f"sd: the standard deviation over the {n} training seeds of a setting (one model each); the "
              "range: the lowest and highest of them.", "",
              "| model | " + " | ".join(FIGURES) + " |",
              "| --- | " + " | ".join("---:" for _ in FIGURES) + " |"]  # fmt: skip
    for m in summary["models"]:
        lines.append(f"| {m['name']} | " + " | ".join(f"{m[k]:.3f}" for k in FIGURES) + " |")
    lines += ["", *(f"![{p.stem}]({p.name})" for p in plots), "", f"![samples]({grid.name})", "",
              "Each model's eval (samples with their parameters, plots): "
              "[eval/report.md](eval/report.md)."]  # fmt: skip
    path = plan.out / "report.md"
    write_text_atomic("\n".join(lines) + "\n", path)
    return path


def run(plan: Plan) -> Path:
    started = time.time()
    plan.out.mkdir(parents=True, exist_ok=True)
    info = catalogs(plan)
    conc = concentration(plan)
    log(f"favoured cluster {conc['favoured_cluster']}: {conc['share_of_rows']:.1%} of rows, "
        f"{conc['share_of_score_8_9']:.1%} of score 8–9; draws " +
        ", ".join(f"d={d} {v['share']:.1%}" for d, v in conc["draws"].items()))  # fmt: skip
    seconds = train_all(plan)
    report = evaluate_all(plan)
    ctrl = control(plan)
    path = write_report(plan, info, conc, report, ctrl, seconds, started)
    log(f"report: {path} ({time.time() - started:.0f} s)")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Plan()
    p.add_argument("--source", default=str(d.source), help="the curated run to start from (default runs/demo)")
    p.add_argument("--out", default=str(d.out), help="where everything goes (default runs/ablation)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps of every model (default {d.steps})")
    p.add_argument("--seeds", type=int, default=len(d.seeds), help="training seeds per setting (default 2)")
    p.add_argument("--settings", default=",".join(f"{s:g}" for s in d.settings),
                   help="weigh.diversity values, comma-separated (default 0,1)")  # fmt: skip
    p.add_argument("--prompts", type=int, default=d.prompts, help=f"zxl eval --prompts (default {d.prompts})")
    p.add_argument("--eval-seeds", type=int, default=d.eval_seeds, help=f"zxl eval --seeds (default {d.eval_seeds})")
    p.add_argument("--fresh", action="store_true", help="start over: remove --out first")
    a = p.parse_args(argv)
    settings = tuple(float(s) for s in a.settings.split(","))
    plan = Plan(source=Path(a.source), out=Path(a.out), steps=a.steps, seeds=tuple(range(a.seeds)),
                settings=settings, prompts=a.prompts, eval_seeds=a.eval_seeds)  # fmt: skip
    if a.fresh:
        shutil.rmtree(plan.out, ignore_errors=True)
    run(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
