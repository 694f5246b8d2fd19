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
    # folds hold whole pairs (a pair drawn twice is in one fold): the last point is the smallest training fold
    assert curve[0]["choices"] == 10 and 230 <= curve[-1]["choices"] <= 240
    assert report["distinct_pairs"] <= 300 and "distinct pairs" in out
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
    from zxl.scorers.taste import head_scores

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
    from zxl.catalog.choices import ChoiceStore, choices_path

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


def _snapshot(run_dir):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}


def test_a_head_that_cannot_rank_the_rows_is_refused_and_changes_nothing(run, tmp_path, capsys):
    from zxl.pipeline.taste import write_head

    run_dir, _ = run
    keys, emb = read_embeddings(run_dir)
    dim = emb.shape[1]
    rng = np.random.default_rng(0)
    heads = {
        "nan": (np.full(dim, np.nan), {}, "not finite numbers"),
        "inf": (np.r_[np.inf, np.zeros(dim - 1)], {}, "not finite numbers"),
        "huge": (np.full(dim, 3e38), {}, "not a finite number"),
        "zero": (np.zeros(dim), {}, "the same score"),
        "dim": (rng.normal(size=dim + 1), {}, f"this run's are {dim}-d"),
        "kind": (rng.normal(size=dim), {"embedding": "open_clip ViT-L-14"}, "fitted on 'open_clip ViT-L-14'"),
    }
    before = _snapshot(run_dir)
    for name, (w, meta, reason) in heads.items():
        path = tmp_path / f"{name}.safetensors"
        write_head(w, path, meta)
        with pytest.raises(ConfigError, match=reason.replace("(", r"\(")):
            apply_taste(run_dir, head=path, overrides=["run.scheduler=sync", "run.progress=false"])
        assert main(["taste", "apply", str(run_dir), "--head", str(path)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err and reason in err, err
    assert _snapshot(run_dir) == before  # not a file written, renamed or touched


def test_the_manifest_describes_the_head_that_was_applied(run, tmp_path):
    """A head whose weights were changed after the fit keeps its sha256 but not the fit's claims; eval
    refuses a head file that is not the one the catalog's scores came from, naming both files."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    from zxl.files import file_sha256
    from zxl.scorers.taste import head_info, verify_applied
    from zxl.trainer.evaluate import EvalConfig, EvalSet

    run_dir, ok = run
    head = taste_dir(run_dir) / HEAD_FILE
    if "taste" not in read_manifest(run_dir / "catalog"):
        simulate(ok, 100, tmp_path / "c.csv")
        fit_taste(run_dir, tmp_path / "c.csv", log=lambda *_: None)
        apply_taste(run_dir, overrides=["run.scheduler=sync", "run.progress=false"], log=lambda *_: None)
    m = read_manifest(run_dir / "catalog")
    assert m["taste"]["sha256"] == file_sha256(head) and m["taste"]["choices"] >= 100
    assert "fit" not in m["taste"] and m["taste"]["weights_sha256"]
    # the sign flipped, the fit's metadata copied: the file no longer backs the claims
    with safe_open(str(head), "np") as f:
        meta = f.metadata()
    flipped = {k: -v for k, v in load_file(str(head)).items()}
    other = tmp_path / "flipped.safetensors"
    save_file(flipped, str(other), metadata=meta)
    info = head_info(other)
    assert "choices" not in info and "heldout_accuracy" not in info and info["fit"].startswith("unknown")
    assert info["embedding"] == m["taste"]["embedding"]
    # swapped in at the applied path: zxl eval refuses, naming the manifest and the head
    original = head.read_bytes()
    try:
        head.write_bytes(other.read_bytes())
        with pytest.raises(ConfigError, match="now has sha256") as e:
            EvalSet.build(run_dir / "catalog", EvalConfig(holdout=0.3, resolution=128))
        assert str(head) in str(e.value) and "_manifest.json" in str(e.value)
        with pytest.raises(ConfigError):
            verify_applied(m, run_dir / "catalog" / "_manifest.json")
    finally:
        head.write_bytes(original)
    assert verify_applied(m, "x").sha256 == file_sha256(head)


def test_copies_of_one_pair_are_never_in_two_folds():
    from zxl import preference

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    a, b = rng.choice(60, 20), rng.choice(60, 20)
    keep = a != b
    a, b = a[keep], b[keep]
    flip = rng.random(len(a)) < 0.5  # random winners: nothing to learn, chance is the honest answer
    win, lose = np.where(flip, a, b), np.where(flip, b, a)
    pairs = preference.Pairs.of(np.repeat(win, 50), np.repeat(lose, 50))  # every choice made 50 times
    parts = preference.folds(len(pairs), 5, 0, pairs.groups())
    groups = pairs.groups()
    assert all(len(set(groups[p]) & set(groups[q])) == 0 for i, p in enumerate(parts) for q in parts[i + 1 :])
    acc = np.mean(preference.kfold_accuracy(emb, pairs, None, 5, 1000.0, 0))
    assert acc < 0.8  # ungrouped, the copies of each held-out pair were trained on: accuracy near 1.0
    merged = pairs.merged()
    assert len(merged) == len(win) and merged.weight.sum() == len(pairs)


def test_a_hundred_thousand_copies_of_one_pair_are_refused_at_once(run, tmp_path):
    run_dir, ok = run
    path = tmp_path / "same.csv"
    path.write_text("winner,loser\n" + f"{ok.key[0]},{ok.key[1]}\n" * 100_000)
    with pytest.raises(ConfigError, match="on 1$|at least 10 different pairs"):
        fit_taste(run_dir, path, log=lambda *_: None)


def test_a_degenerate_fit_is_not_written(run, tmp_path, capsys):
    run_dir, ok = run
    choices = simulate(ok, 60, tmp_path / "c.csv", seed=3)
    head = taste_dir(run_dir) / HEAD_FILE
    stamp = head.stat().st_mtime_ns if head.exists() else None
    with pytest.raises(ConfigError, match="degenerate"):
        fit_taste(run_dir, choices, c=1e-300, log=lambda *_: None)
    assert (head.stat().st_mtime_ns if head.exists() else None) == stamp
    for c in ("1e-300", "nan", "-5", "1e9"):
        assert main(["taste", "fit", str(run_dir), "--choices", str(choices), "--c", c]) == 2
        assert "--c must be between" in capsys.readouterr().err


@pytest.mark.parametrize("style", ["utf-8-sig", "utf-16", "latin-1", "semicolon"])
def test_choice_csvs_as_spreadsheets_save_them(run, tmp_path, style):
    """Excel's "CSV UTF-8" (a BOM), "Unicode text" (UTF-16, tabs), a latin-1 file, a European CSV."""
    from zxl.pipeline.taste import read_choices_csv

    _, ok = run
    rows = [("winner", "loser", "rater")] + [(ok.key[i], ok.key[i + 1], "Zoë") for i in range(12)]
    sep = {"utf-16": "\t", "semicolon": ";"}.get(style, ",")
    text = "\r\n".join(sep.join(r) for r in rows) + "\r\n"
    path = tmp_path / f"{style}.csv"
    path.write_bytes(text.encode("utf-8" if style == "semicolon" else style))
    said = []
    got = read_choices_csv(path, log=said.append)
    assert [(w, lo, r) for w, lo, r, *_ in got] == rows[1:]
    assert bool(said) == (style == "latin-1") and (not said or "latin-1" in said[0])


def test_unreadable_choices_are_one_line(run, tmp_path, capsys):
    run_dir, ok = run
    cases = {
        "nul.csv": "winner,loser\n".encode("utf-16-le"),  # UTF-16 without its BOM
        "huge.csv": ("winner,loser\n" + "a" * 200_000 + ",b\n").encode(),
        "quote.csv": b'winner,loser\n"' + b"x" * 200_000 + b"\n",
        "nocols.csv": "\ufeffwin,lose\n1,2\n".encode(),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert main(["taste", "fit", str(run_dir), "--choices", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and name in err, err
    # a damaged choice database in a run: named, one line
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "embeddings", copy / "embeddings")
    (copy / "taste").mkdir()
    (copy / "taste" / "choices.sqlite").write_bytes(b"SQLite format 3\x00" + b"\x00" * 50 + b"junk" * 1000)
    assert main(["taste", "fit", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choices.sqlite" in err and "move it aside" in err, err


def test_heads_in_bfloat16_and_heads_from_before_digests(tmp_path):
    import torch
    from safetensors.torch import save_file

    from zxl.scorers.taste import check_head, head_info

    w = torch.randn(1, 8)
    bf16 = tmp_path / "bf16.safetensors"
    save_file({"layers.0.weight": w.to(torch.bfloat16), "layers.0.bias": torch.zeros(1, dtype=torch.bfloat16)},
              str(bf16))  # fmt: skip
    assert head_info(bf16)["sha256"] and check_head(bf16, 8) is not None
    old = tmp_path / "old.safetensors"  # what zxl taste fit wrote before it recorded the weights' digest
    save_file({"layers.0.weight": w, "layers.0.bias": torch.zeros(1)}, str(old),
              metadata={"zxl.choices": "300", "zxl.embedding": '"pixels-v1"'})  # fmt: skip
    info = head_info(old)
    assert info["choices"] == 300 and info["fit"].startswith("unverified")
    pth = tmp_path / "laion.pth"
    torch.save({"layers.0.weight": w, "layers.0.bias": torch.full((1,), float("nan"))}, pth)
    with pytest.raises(ConfigError, match="not finite"):
        check_head(pth, 8)


def test_the_delimiter_is_the_one_that_finds_both_columns(run, tmp_path):
    from zxl.pipeline.taste import read_choices_csv

    _, ok = run
    path = tmp_path / "notes.csv"
    path.write_text('winner;loser;"note, with, commas"\n' + "".join(f"{ok.key[i]};{ok.key[i + 1]};x, y\n"
                                                                    for i in range(3)))  # fmt: skip
    assert [w for w, *_ in read_choices_csv(path, log=lambda *_: None)] == list(ok.key[:3])
