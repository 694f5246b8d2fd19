"""pipeline/taste.py: a simulated rater's choices → ``zxl taste fit`` → ``zxl taste apply``, on a demo run."""

import csv
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from zxl.catalog.embeddings import read_embeddings
from zxl.catalog.images import ImageStore
from zxl.catalog.schema import read_catalog, read_manifest
from zxl.cli import main
from zxl.config import ConfigError
from zxl.images import decode
from zxl.pipeline.taste import HEAD_FILE, apply_taste, fit_taste, taste_dir


def warmth(data: bytes) -> float:
    """The simulated rater's taste, a known function of the image: warm (red over blue) pictures."""
    with decode(data) as im:
        a = np.asarray(im.convert("RGB").resize((64, 64)), np.float32) / 255
    return float((a[..., 0] - a[..., 2]).mean())


@pytest.fixture(scope="module")
def run(sync_run, tmp_path_factory):
    """A copy of the demo run (its own folder: apply rewrites the catalog), and each ok row's warmth."""
    src = sync_run[1].run_dir
    dst = tmp_path_factory.mktemp("taste") / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    cat = read_catalog(dst / "catalog").to_pandas()
    ok = cat[cat.status == "ok"].reset_index(drop=True)
    store = ImageStore(dst / "catalog")
    ok["warmth"] = [warmth(store.get(r.shard, r.shard_key)[0]) for r in ok.itertuples()]
    return dst, ok


def simulate(ok, n, path, seed=0, temperature=0.01):
    """n choices between random pairs of ok rows, the warmer one winning with Bradley–Terry noise."""
    rng = np.random.default_rng(seed)
    u = ok.warmth.to_numpy()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["winner", "loser", "rater"])
        for _ in range(n):
            a, b = rng.choice(len(ok), 2, replace=False)
            a_wins = rng.random() < 1 / (1 + np.exp(-(u[a] - u[b]) / temperature))
            w.writerow([ok.key[a if a_wins else b], ok.key[b if a_wins else a], "simulated"])
    return path


def test_a_simulated_rater_is_learned_from_a_few_hundred_choices(run, tmp_path, capsys):
    run_dir, ok = run
    choices = simulate(ok, 300, tmp_path / "choices.csv")
    assert main(["taste", "fit", str(run_dir), "--choices", str(choices)]) == 0
    out = capsys.readouterr().out
    assert "held-out pairwise accuracy (5-fold)" in out and "agrees with" in out
    report = json.loads((taste_dir(run_dir) / "fit.json").read_text())
    assert report["choices"] == 300 and report["embedding"] == "pixels-v1" and report["raters"] == ["simulated"]
    assert report["heldout_accuracy"] >= 0.85, report
    assert report["heldout_accuracy"] > report["scorer_agreement"] + 0.2  # the technical scorer is not this taste
    curve = report["learning_curve"]
    assert curve[0]["choices"] == 10 and curve[-1]["choices"] == 240
    assert curve[-1]["accuracy"] > curve[0]["accuracy"]
    assert (taste_dir(run_dir) / "learning-curve.png").stat().st_size > 10_000
    # the head is what score.head_weights reads: scorers/heads.py builds it, and it ranks by warmth
    import torch

    from zxl.models import load_state_dict
    from zxl.scorers.heads import build_head

    head = build_head(load_state_dict(taste_dir(run_dir) / HEAD_FILE, "score.head_weights"))
    keys, emb = read_embeddings(run_dir)
    u = dict(zip(ok.key, ok.warmth, strict=True))
    with torch.no_grad():
        raw = head(torch.from_numpy(emb)).squeeze(-1).numpy()
    rows = [i for i, k in enumerate(keys) if k in u]
    from scipy.stats import spearmanr

    assert spearmanr(raw[rows], [u[keys[i]] for i in rows]).statistic > 0.8


def test_apply_rescores_without_refetching_or_re_embedding(run, tmp_path, capsys):
    run_dir, ok = run
    simulate(ok, 300, tmp_path / "choices.csv", seed=1)
    fit_taste(run_dir, tmp_path / "choices.csv", log=lambda *_: None)
    before = read_catalog(run_dir / "catalog").to_pandas().set_index("key")
    upstream = sorted(p for d in ("shards", "embeddings", "stages/fetch", "stages/inspect", "stages/score",
                                  "stages/tag", "stages/source") for p in (run_dir / d).iterdir())  # fmt: skip
    stamps = {p: p.stat().st_mtime_ns for p in upstream}
    assert main(["taste", "apply", str(run_dir), "--set", "run.scheduler=sync", "--set", "run.progress=false"]) == 0
    assert "scores now from" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in upstream} == stamps  # nothing fetched, inspected, embedded, tagged
    after = read_catalog(run_dir / "catalog").to_pandas().set_index("key")
    m = read_manifest(run_dir / "catalog")
    assert m["taste"]["choices"] == 300 and m["taste"]["raters"] == ["simulated"]
    assert m["taste"]["sha256"] and m["config"]["taste"]["head"].endswith(HEAD_FILE)
    trained = after.index[after.status == "ok"]
    assert (after.loc[trained, "aesthetic"] != before.reindex(trained)["aesthetic"]).mean() > 0.9  # re-scored
    from scipy.stats import spearmanr

    u = dict(zip(ok.key, ok.warmth, strict=True))
    both = [k for k in trained if k in u]
    assert spearmanr(after.loc[both, "score"], [u[k] for k in both]).statistic > 0.7  # scores follow the taste
    assert after.loc[trained, "score"].value_counts().size == 9  # recalibrated into ninths again
    assert (after.loc[trained, "repeats"] > 0).all() and after.caption.notna().sum() > 0
    # the stored aesthetic is the head's output on the stored embedding
    from zxl.pipeline.taste import head_scores

    keys, emb = read_embeddings(run_dir)
    idx = {k: i for i, k in enumerate(keys)}
    expect = head_scores(taste_dir(run_dir) / HEAD_FILE, emb[[idx[k] for k in trained]], "pixels-v1")
    np.testing.assert_allclose(after.loc[trained, "aesthetic"].to_numpy(), expect, rtol=1e-4, atol=1e-4)
    assert pq.read_schema(next((run_dir / "catalog").glob("part-*.parquet"))).field("weight").type == "float"
    # stats name the head and the draws over clusters at the setting and at 0
    assert main(["catalog", "stats", str(run_dir / "catalog")]) == 0
    out = capsys.readouterr().out
    assert "scores from the taste head" in out and "300 choices by simulated" in out
    assert "effective clusters" in out and "at diversity 0 (by score)" in out


def test_fit_from_the_rate_views_database_reports_the_probes_apart(run, tmp_path):
    """Choices in runs/<name>/taste/choices.sqlite (as the rate view writes them), a third of them probes;
    stars count as extra evidence."""
    from zxl.catalog.rating import ChoiceStore, choices_path

    src, ok = run
    run_dir = tmp_path / "run"  # what fit reads, in a folder of its own (the module's run keeps its head)
    shutil.copytree(src / "embeddings", run_dir / "embeddings")
    shutil.copytree(src / "stages" / "score", run_dir / "stages" / "score")
    (run_dir / "catalog").mkdir()
    shutil.copy(src / "catalog" / "_manifest.json", run_dir / "catalog")
    db = choices_path(run_dir)
    store = ChoiceStore(db)
    rows = list(csv.reader(open(simulate(ok, 240, tmp_path / "c.csv", seed=4))))[1:]
    for n, (w, lo, _) in enumerate(rows):
        left, right = (w, lo) if n % 2 else (lo, w)
        store.add_choice("ann", left, right, w, probe=n % 3 == 0)
    hottest = ok.sort_values("warmth").key.tolist()
    store.set_stars("ann", hottest[-1], 9)
    store.set_stars("ann", hottest[0], 1)
    store.close()
    report = fit_taste(run_dir, log=lambda *_: None)
    assert report["choices"] == 240 and report["probe_choices"] == 80 and report["stars"] == 2
    assert report["star_pairs"] == 1 and report["raters"] == ["ann"] and report["source"] == str(db)
    assert report["heldout_accuracy_probes"] >= 0.8  # these probes are random pairs: the same as the rest


def test_clear_errors(run, tmp_path):
    run_dir, ok = run
    few = simulate(ok, 5, tmp_path / "few.csv")
    with pytest.raises(ConfigError, match="at least 10 choices"):
        fit_taste(run_dir, few, log=lambda *_: None)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="winner,loser"):
        fit_taste(run_dir, bad)
    with pytest.raises(ConfigError, match="zxl taste fit"):
        apply_taste(run_dir, head=tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="do not match this config"):  # it would refetch: refused
        apply_taste(run_dir, overrides=["fetch.encode_quality=80", "run.scheduler=sync"])


def test_eval_scores_samples_with_the_taste_head(run, tmp_path):
    """A catalog made by `zxl taste apply` is measured by its head: zxl eval's scorer is the head."""
    from zxl.scorers.heads import WithHead
    from zxl.trainer.evaluate import EvalConfig, EvalSet

    run_dir, ok = run
    if "taste" not in read_manifest(run_dir / "catalog"):
        simulate(ok, 100, tmp_path / "c.csv")
        fit_taste(run_dir, tmp_path / "c.csv", log=lambda *_: None)
        apply_taste(run_dir, overrides=["run.scheduler=sync", "run.progress=false"], log=lambda *_: None)
    es = EvalSet.build(run_dir / "catalog", EvalConfig(holdout=0.3, resolution=128))
    assert isinstance(es.scorer, WithHead)
    store = ImageStore(run_dir / "catalog")
    images = [decode(store.get(r.shard, r.shard_key)[0]) for r in ok.head(4).itertuples()]
    raw, emb = es.scorer.score_and_embed(es.scorer.collate([es.scorer.prepare(im) for im in images]))
    cat = read_catalog(run_dir / "catalog").to_pandas().set_index("key")
    np.testing.assert_allclose(raw, cat.loc[ok.key.head(4), "aesthetic"].to_numpy(), rtol=1e-3, atol=1e-3)
