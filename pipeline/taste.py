"""``zxl taste``: a personal scorer learned from the user's own choices, and putting it to work.

**fit** (``zxl taste fit RUN_DIR [--choices FILE.csv]``): the choices made in the browser's rate
view (every tenth of them a random pair, a probe, so accuracy is also measured on pairs the head did
not pick) (``runs/<name>/taste/choices.sqlite``, catalog/choices.py) or a CSV of ``winner,loser`` keys,
plus any 1–9 stars as extra evidence (a higher-starred image beats a lower-starred one, at half
weight), fitted as a Bradley–Terry model over the run's cached embeddings (zxl/preference.py):
P(a beats b) = σ(wᵀ(x_a − x_b)). Reported: k-fold held-out pairwise accuracy, the agreement of
the run's own scorer (stages/score) with the same choices, and a learning curve (held-out accuracy
by number of choices) as ``taste/fit.json`` and ``taste/learning-curve.png``. The head is written as
``taste/head.safetensors`` — ``layers.0.weight`` [1, D], ``layers.0.bias`` [1], the layout
``score.head_weights`` reads (scorers/heads.py) — with what made it in its metadata.

**apply** (``zxl taste apply RUN_DIR``): ``taste.head`` set to that head, then the global step
(dedup's keep choice, calibration, repeats) and the stages after it (captions, catalog) run again
from the stored stage outputs and embeddings; fetch, inspect, score and tag are not redone (their
stage hashes do not change, and apply refuses to run if they would). The manifest's ``taste``
records the head's sha256, its choices and raters.

**Checks** (docs/reliability.md). A head is checked before it is applied and wherever it is used
(``check_head``): every weight finite, fitted on this run's kind of embedding and dimension, and
scores over the run's rows that are finite and not all the same; otherwise apply refuses with the
reason before anything is written. ``fit`` refuses a degenerate fit (a head that scores every row
alike: what a vanishing C gives) and warns when held-out accuracy is at chance. The metadata ``fit``
writes carries the sha256 of the weights it describes (``weights_sha256``): a file whose weights were
changed afterwards keeps its sha256 in the manifest but not the choices and accuracy of a fit that
did not make it. ``zxl eval`` compares the head file's sha256 with the manifest's
(``verify_applied``). Cross-validation folds never split copies of one pair (grouped by the
unordered pair), and the report counts the distinct pairs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from zxl.config import ConfigError
from zxl.files import replacing
from zxl.scorers.taste import META_PREFIX, check_scores, head_scores, weights_sha256

HEAD_FILE = "head.safetensors"


def taste_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "taste"


def check_on_run(path: str | Path, run_dir: str | Path) -> np.ndarray:
    """``check_head`` and ``check_scores`` over the embeddings of the rows the global step scores (the
    catalog's ``ok`` and ``duplicate`` rows: those that were ok before dedup); the scores."""
    import pyarrow.parquet as pq

    from zxl.catalog.embeddings import embedding_kind, read_embeddings

    run_dir = Path(run_dir)
    scored = set()
    for part in sorted((run_dir / "catalog").glob("part-*.parquet")):
        t = pq.read_table(part, columns=["key", "status"])
        scored.update(k for k, st in zip(t["key"].to_pylist(), t["status"].to_pylist(), strict=True)
                      if st in ("ok", "duplicate"))  # fmt: skip
    keys, emb = read_embeddings(run_dir, dtype=np.float16)
    if emb is not None:
        keep = np.array([k in scored for k in keys], bool)
        emb = emb[keep] if not keep.all() else emb
    if emb is None or not len(emb):
        raise ConfigError(f"taste.head needs the run's stored embeddings ({run_dir / 'embeddings'}), and "
                          "there are none for its rows: rerun `zxl curate`")  # fmt: skip
    return head_scores(path, emb, embedding_kind(run_dir))


# ---- fit ----

MIN_CHOICES = 10
CHANCE = 0.55  # held-out accuracy at or below this: the fit is reported with a warning
CURVE_SIZES = (10, 20, 50, 100, 200, 300, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000)


MAX_CSV_BYTES = 1 << 30
MAX_FIELD = 4096  # a catalog key or a rater's name; a longer field is not one


def decode_csv(path: Path, log=print) -> str:
    """The text of a CSV as spreadsheets save it: UTF-8 with or without a BOM (Excel's "CSV UTF-8"),
    UTF-16 with a BOM (Excel's "Unicode text"), else latin-1 (said in the output)."""
    if path.stat().st_size > MAX_CSV_BYTES:
        raise ConfigError(f"--choices: {path} is over {MAX_CSV_BYTES >> 20} MB; that is not a list of choices")
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise ConfigError(f"--choices: {path} starts with a UTF-16 BOM but is not UTF-16 ({e.reason} at byte "
                              f"{e.start}); save it as CSV UTF-8") from None  # fmt: skip
    if b"\x00" in data[:4096]:
        raise ConfigError(f"--choices: {path} holds NUL bytes: UTF-16 or UTF-32 without a BOM, or not text; "
                          "save it as CSV UTF-8")  # fmt: skip
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        log(f"taste fit: {path} is not UTF-8 (byte {e.start}); read as latin-1 (Windows' Western encoding)")
        return data.decode("latin-1")


def read_choices_csv(path: str | Path, log=print) -> list[tuple[str, str, str, str, bool]]:
    """(winner, loser, rater, time, probe) from a CSV with columns ``winner,loser`` (and optionally
    ``rater``), separated by commas, semicolons or tabs, in any encoding ``decode_csv`` reads;
    choices made elsewhere are not probes."""
    import csv
    import io

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"--choices: no file at {path.resolve()}")
    text = decode_csv(path, log)
    header = text.split("\n", 1)[0]
    delimiter = next(
        (
            d
            for d in ",;\t"
            if {"winner", "loser"} <= {f.strip().lower() for f in next(csv.reader([header], delimiter=d), [])}
        ),
        ",",
    )  # the one that finds both columns
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        fields = [(f or "").strip().lower() for f in (reader.fieldnames or [])]
        reader.fieldnames = fields
        missing = {"winner", "loser"} - set(fields)
        if missing:
            raise ConfigError(
                f"--choices: {path} needs the columns winner,loser (catalog keys); its first line has "
                f"{[f[:40] for f in fields][:8]}, lacking {sorted(missing)}"
            )
        out = []
        for row in reader:
            n = reader.line_num
            w, lo = (row["winner"] or "").strip(), (row["loser"] or "").strip()
            rater = (row.get("rater") or path.name).strip()
            if max(len(w), len(lo), len(rater)) > MAX_FIELD:
                raise ConfigError(f"--choices: {path} line {n}: a field is over {MAX_FIELD} characters; "
                                  "it is not a catalog key")  # fmt: skip
            if not w or not lo or w == lo:
                raise ConfigError(f"--choices: {path} line {n}: winner and loser must be two different keys")
            out.append((w, lo, rater, "", False))
    except csv.Error as e:
        raise ConfigError(f"--choices: {path} line {reader.line_num}: not a readable CSV ({e})") from None
    return out


def _scorer_aesthetic(run_dir: Path) -> dict[str, float]:
    """The run's own scorer's raw score per key (stages/score), whatever the catalog now holds."""
    import pyarrow.parquet as pq

    out = {}
    for p in sorted((run_dir / "stages" / "score").glob("*.parquet")):
        t = pq.read_table(p, columns=["key", "aesthetic"])
        out.update(zip(t["key"].to_pylist(), t["aesthetic"].to_pylist(), strict=True))
    return {k: v for k, v in out.items() if v is not None}


def learning_curve(emb: np.ndarray, pairs, extra, c: float, k: int, seed: int) -> list[dict]:
    from zxl import preference

    parts = preference.folds(len(pairs), k, seed, pairs.groups())
    n_train = len(pairs) - max(len(part) for part in parts)  # the smallest training fold
    sizes = [s for s in CURVE_SIZES if s < n_train] + [n_train]
    out = []
    for size in sizes:
        acc = preference.kfold_accuracy(emb, pairs, extra, k, c, seed, size=size)
        mean, sd = round(float(np.mean(acc)), 4), round(float(np.std(acc)), 4)
        out.append({"choices": int(size), "accuracy": mean, "std": sd})
    return out


def plot_curve(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = report["learning_curve"]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    x = [p["choices"] for p in curve]
    y = np.array([p["accuracy"] for p in curve])
    sd = np.array([p["std"] for p in curve])
    ax.plot(x, y, "o-", label="your head (held out)")
    ax.fill_between(x, y - sd, y + sd, alpha=0.2)
    if report.get("scorer_agreement") is not None:
        ax.axhline(report["scorer_agreement"], color="grey", ls="--", label=f"scorer ({report['scorer']})")
    ax.axhline(0.5, color="black", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("choices trained on")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.set_ylim(0.4, 1.0)
    ax.legend(loc="lower right")
    ax.set_title(f"taste head on {report['embedding']} embeddings, {report['choices']} choices")
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_head(w: np.ndarray, path: Path, meta: dict) -> None:
    """``layers.0.weight`` [1, D] and ``layers.0.bias`` [1]: a one-Linear head scorers/heads.py builds."""
    from safetensors.numpy import save_file

    tensors = {"layers.0.weight": np.asarray(w, np.float32)[None, :], "layers.0.bias": np.zeros(1, np.float32)}
    meta = {**meta, "weights_sha256": weights_sha256(tensors)}  # what the rest of the metadata describes
    text = {META_PREFIX + k: json.dumps(v) for k, v in meta.items()}
    with replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata=text)


def fit_taste(run_dir: str | Path, choices_csv: str | Path | None = None, folds: int = 5, seed: int = 0,
              c: float | None = None, log=print) -> dict:  # fmt: skip
    """Fit, measure and write the head (module docstring); returns the report written to fit.json."""
    import datetime as dt

    from zxl import preference
    from zxl.catalog.choices import ChoiceStore, choices_path, star_pairs
    from zxl.catalog.embeddings import embedding_kind, read_embeddings
    from zxl.files import write_json_atomic

    run_dir = Path(run_dir)
    keys, emb = read_embeddings(run_dir, dtype=np.float16)
    if emb is None:
        raise ConfigError(f"{run_dir}: the run has no stored embeddings (runs/<name>/embeddings); rerun `zxl curate`")
    kind = embedding_kind(run_dir)
    index = {k: i for i, k in enumerate(keys)}
    db = choices_path(run_dir)
    stars = []
    if choices_csv:
        raw = read_choices_csv(choices_csv, log)
        source = str(choices_csv)
    else:
        if not db.exists():
            raise ConfigError(
                f"{db}: no choices yet; rate pairs in `zxl catalog browse` (its rate view) or pass --choices FILE.csv"
            )
        store = ChoiceStore(db)
        raw, stars = store.choices(), store.stars()
        store.close()
        source = str(db)
    known = [(w, lo, r) for w, lo, r, *_ in raw if w in index and lo in index]
    is_probe = np.array([p for w, lo, _, _, p in raw if w in index and lo in index], bool)
    if len(known) < len(raw):
        log(f"taste fit: {len(raw) - len(known)} of {len(raw)} choices name keys without a stored embedding: left out")
    if len(known) < MIN_CHOICES:
        raise ConfigError(
            f"taste fit needs at least {MIN_CHOICES} choices between rows of this run; it has {len(known)}"
        )
    pairs = preference.Pairs.of([index[w] for w, _, _ in known], [index[lo] for _, lo, _ in known])
    distinct = int(pairs.groups().max()) + 1
    if distinct < MIN_CHOICES:
        raise ConfigError(
            f"taste fit needs choices on at least {MIN_CHOICES} different pairs; these {len(known)} choices are on "
            f"{distinct} (copies of one choice teach nothing new, and would be tested on what trained)"
        )
    extra = star_pairs(stars, index, seed)
    k = max(2, min(folds, distinct))
    t0 = dt.datetime.now(dt.UTC)
    by_c = preference.choose_c(emb, pairs, extra, k, seed) if c is None else {c: float("nan")}
    best_c = max(by_c, key=lambda v: (by_c[v], -v)) if c is None else c
    correct, parts = preference.kfold_correct(emb, pairs, extra, k, best_c, seed + 1)  # not the folds C was chosen on
    held = [float(correct[p].mean()) for p in parts]
    probes = int(is_probe.sum())
    aesthetic = _scorer_aesthetic(run_dir)
    judged = [(aesthetic[w], aesthetic[lo]) for w, lo, _ in known if w in aesthetic and lo in aesthetic]
    agreement = float(np.mean([(a > b) + 0.5 * (a == b) for a, b in judged])) if judged else None
    curve = learning_curve(emb, pairs, extra, best_c, k, seed)
    both = preference.Pairs(np.r_[pairs.winner, extra.winner], np.r_[pairs.loser, extra.loser],
                            np.r_[pairs.weight, extra.weight])  # fmt: skip
    w = preference.fit(emb, both, best_c)
    w32 = np.asarray(w, np.float32)
    try:  # the scores the head will give this run's rows, in the float32 it is stored in (in chunks: 950k rows)
        check_scores("the fitted head", np.concatenate(
            [np.asarray(emb[a : a + 65536], np.float32) @ w32 for a in range(0, len(emb), 65536)]))  # fmt: skip
    except ConfigError as e:
        raise ConfigError(f"taste fit: the fit is degenerate (C {best_c:g}) and was not written: {e}") from None
    raters = sorted({r for _, _, r in known})
    digest = hashlib.sha256("\n".join(f"{w_}\t{lo}" for w_, lo, _ in known).encode()).hexdigest()
    out_dir = taste_dir(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "run": str(run_dir),
        "source": source,
        "embedding": kind,
        "dim": int(emb.shape[1]),
        "choices": len(known),
        "distinct_pairs": distinct,
        "choices_left_out": len(raw) - len(known),
        "choices_sha256": digest,
        "stars": len(stars),
        "star_pairs": len(extra),
        "raters": raters,
        "folds": k,
        "c": best_c,
        "accuracy_by_c": {str(v): round(a, 4) for v, a in by_c.items()},
        "heldout_accuracy": round(float(np.mean(held)), 4),
        "heldout_accuracy_std": round(float(np.std(held)), 4),
        "probe_choices": probes,  # the rate view's random pairs: held-out accuracy on them is not biased to hard pairs
        "heldout_accuracy_probes": round(float(correct[is_probe].mean()), 4) if probes >= MIN_CHOICES else None,
        "scorer": _scorer_name(run_dir),
        "scorer_agreement": None if agreement is None else round(agreement, 4),
        "learning_curve": curve,
        "train_accuracy": round(preference.accuracy(w, emb, pairs), 4),
        "fitted_at": t0.isoformat(timespec="seconds"),
        "head": str(out_dir / HEAD_FILE),
    }
    if report["heldout_accuracy"] <= CHANCE:
        report["warning"] = (f"held-out accuracy {report['heldout_accuracy']:.3f} is at chance: the head has not "
                             "learned these choices; more (or more consistent) choices, or another --c")  # fmt: skip
        log(f"taste fit: warning: {report['warning']}")
    meta_keys = ("embedding", "choices", "distinct_pairs", "choices_sha256", "stars", "raters", "heldout_accuracy",
                 "fitted_at", "source")  # fmt: skip
    write_head(w, out_dir / HEAD_FILE, {m: report[m] for m in meta_keys})
    write_json_atomic(report, out_dir / "fit.json")
    plot_curve(report, out_dir / "learning-curve.png")
    return report


def _scorer_name(run_dir: Path) -> str:
    try:
        from zxl.catalog.schema import read_manifest

        return read_manifest(run_dir / "catalog")["config"]["score"]["scorer"]
    except (FileNotFoundError, KeyError):
        return "scorer"


def apply_taste(
    run_dir: str | Path, head: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), log=print
):
    """Rerun the global step and what follows with ``taste.head`` (module docstring)."""
    from zxl.config import load_config
    from zxl.pipeline.config import CurateConfig
    from zxl.pipeline.curate import rerun_from_reduce

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "catalog" / "_manifest.json").is_file():
        raise ConfigError(f"{run_dir} is not a finished zxl run (it needs config.yaml and catalog/)")
    head = Path(head or taste_dir(run_dir) / HEAD_FILE).expanduser().absolute()
    if not head.is_file():
        raise ConfigError(f"no taste head at {head}: fit one first (`zxl taste fit {run_dir}`)")
    check_on_run(head, run_dir)  # before anything is written: a head that cannot rank the rows changes nothing
    where = [f"run.runs_dir={run_dir.absolute().parent}", f"run.name={run_dir.name}", f"taste.head={head}"]
    cfg = load_config(CurateConfig, [run_dir / "config.yaml"], overrides=[*where, *overrides])
    return rerun_from_reduce(cfg, log)
