"""The plots of an eval report (matplotlib, Agg: no screen needed), one PNG a measure:
score tag → mean score, variety by tag, tone against the training images, validation loss by
step and by timestep band, the samples over the catalog's clusters. Each takes the report dict
``zxl eval`` writes as report.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zxl.files import replacing

TAGS = tuple(range(1, 10))


def _figure(width=6.4, height=3.8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    return plt, fig, ax


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def steering(report: dict, path: Path) -> Path:
    plt, fig, ax = _figure()
    for c in report["checkpoints"]:
        m = c["steering"]["mean"]
        ax.plot(
            TAGS, [m[f"score_{t}"] for t in TAGS], marker="o", label=f"{c['name']} (ρ {c['steering']['spearman']:.2f})"
        )
        ax.axhline(m["none"], linestyle=":", linewidth=1, color=ax.lines[-1].get_color())
    ax.set_xlabel("score tag in the prompt (dotted: no score tag)")
    ax.set_ylabel("mean score of the samples (catalog scorer, raw)")
    ax.set_xticks(TAGS, [f"score_{t}" for t in TAGS], rotation=30, fontsize=8)
    ax.set_title("Score-tag steering")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def variety(report: dict, path: Path) -> Path:
    plt, fig, ax = _figure()
    n = len(report["checkpoints"])
    x = np.arange(len(TAGS) + 1)
    width = 0.8 / n
    for i, c in enumerate(report["checkpoints"]):
        v = c["variety"]
        values = [v["vendi_without_score_tags"], *(v["vendi_by_tag"][f"score_{t}"] for t in TAGS)]
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=c["name"])
    ax.set_xticks(x, ["none", *(f"score_{t}" for t in TAGS)], rotation=30, fontsize=8)
    ax.axhline(report["config"]["seeds"], linestyle=":", color="grey", linewidth=1)
    ax.set_ylabel(f"Vendi score over {report['config']['seeds']} seeds (max: dotted)")
    ax.set_title("Variety by score tag")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def tone(report: dict, path: Path) -> Path:
    plt, fig, ax = _figure()
    keys = ("luminance", "contrast", "saturation")
    x = np.arange(len(keys))
    n = len(report["checkpoints"]) + 1
    width = 0.8 / n
    train = report["checkpoints"][0]["tone"]["training"]
    ax.bar(x - 0.4 + width / 2, [train[k] for k in keys], width, label="training images", color="grey")
    for i, c in enumerate(report["checkpoints"], start=1):
        flags = ", ".join(c["tone"]["flags"])
        ax.bar(x - 0.4 + width / 2 + i * width, [c["tone"]["samples"][k] for k in keys], width,
               label=c["name"] + (f" ({flags})" if flags else ""))  # fmt: skip
    ax.set_xticks(x, keys)
    ax.set_ylim(0, 1)
    ax.set_title("Tone of the samples against the training images")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def val_loss(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9.6, 3.8), dpi=110)
    cks = report["checkpoints"]
    steps = [c["step"] for c in cks]
    if all(s is not None for s in steps) and len(cks) > 1:
        a.plot(steps, [c["val_loss"]["mean"] for c in cks], marker="o")
        a.set_xlabel("training step")
    else:
        a.bar(range(len(cks)), [c["val_loss"]["mean"] for c in cks])
        a.set_xticks(range(len(cks)), [c["name"] for c in cks], rotation=30, fontsize=7)
    a.set_ylabel("validation loss (v MSE)")
    a.set_title("Validation loss")
    for c in cks:
        bands = c["val_loss"]["bands"]
        b.plot(range(len(bands)), list(bands.values()), marker=".", label=c["name"])
        b.set_xticks(range(len(bands)), list(bands), rotation=45, fontsize=7)
    b.set_xlabel("timestep band")
    b.set_title("by timestep band")
    b.legend(fontsize=7)
    return _save(plt, fig, path)


def coverage(report: dict, path: Path) -> Path | None:
    """Each cluster's share of the catalog's rows, of the training draws and of each checkpoint's
    samples (all tags); None when the report has no cluster coverage."""
    cks = [c for c in report["checkpoints"] if "all" in c.get("coverage", {})]
    if not cks:
        return None
    plt, fig, ax = _figure(width=max(6.4, 0.45 * cks[0]["coverage"]["k"] * (len(cks) + 2) / 2))
    first = cks[0]["coverage"]
    k = first["k"]
    x = np.arange(k)
    n = len(cks) + 2
    width = 0.8 / n
    ax.bar(x - 0.4 + width / 2, first["catalog"], width, color="grey",
           label=f"catalog rows (effective {first['catalog_effective_clusters']:.2f})")  # fmt: skip
    ax.bar(x - 0.4 + 1.5 * width, first["draws"], width, color="silver",
           label=f"training draws (effective {first['draws_effective_clusters']:.2f})")  # fmt: skip
    for i, c in enumerate(cks, start=2):
        counts = np.asarray(c["coverage"]["all"]["counts"], float)
        ax.bar(x - 0.4 + width / 2 + i * width, counts / max(counts.sum(), 1), width,
               label=f"{c['name']} samples (effective {c['coverage']['all']['effective_clusters']:.2f})")  # fmt: skip
    ax.set_xticks(x, [str(i) for i in x])
    ax.set_xlabel(f"cluster of the catalog ({first['embedding']} embedding; samples: nearest centre)")
    ax.set_ylabel("share")
    ax.set_title("Cluster coverage")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_report(report: dict, out: Path) -> list[Path]:
    made = [f(report, out / f"{f.__name__}.png") for f in (steering, variety, tone, val_loss, coverage)]
    return [p for p in made if p is not None]
