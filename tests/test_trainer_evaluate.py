"""zxl eval end to end on the curated test catalog and the tiny SDXL: the report and its plots,
samples with their parameters, held-out prompts, a reproducible validation loss; training holds
the same rows out."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zxl.cli import main
from zxl.config import ConfigError, load_config
from zxl.sampler.prompts import parse_infotext
from zxl.trainer.config import TrainConfig
from zxl.trainer.data import held_out, load_rows
from zxl.trainer.evaluate import (
    Clusters,
    EvalConfig,
    EvalSet,
    clip_adherence,
    coverage,
    score_samples,
    validation_loss,
)

SMALL = EvalConfig(prompts=2, seeds=2, steps=2, resolution=64, holdout=0.3, val_rows=2)


@pytest.fixture(scope="module")
def catalog(sync_run):
    cfg, _ = sync_run
    return Path(cfg.run.runs_dir) / cfg.run.name / "catalog"


def train_config(catalog, tiny_sdxl, out, *extra) -> TrainConfig:
    return load_config(TrainConfig, [], [
        f"model.base={tiny_sdxl}", f"data.catalog={catalog}", "data.resolution=64", "data.holdout=0.3",
        "optim.batch_size=2", "optim.grad_accum=1", "optim.precision=fp32", "optim.gradient_checkpointing=false",
        "loop.max_steps=2", "loop.save_every=1", "loop.keep_last=1", "loop.sample_every=0", "loop.log_every=1",
        f"loop.output={out}", "loop.progress=false", *extra,
    ])  # fmt: skip


def test_eval_of_a_run_and_a_model(catalog, tiny_sdxl, tmp_path):
    from zxl.trainer.train import Data, train

    cfg = train_config(catalog, tiny_sdxl, tmp_path / "run")
    trained_keys = set(Data.load(cfg).keys)
    assert trained_keys and not any(held_out(sorted(trained_keys), 0.3))  # training never sees held-out rows
    quiet = lambda *a, **k: None  # noqa: E731
    plain = train(cfg, log=quiet)
    # the same run evaluating as it goes: eval.csv, and the very same losses (eval leaves the RNG alone)
    logged = train(train_config(catalog, tiny_sdxl, tmp_path / "logged", "loop.eval_every=2", "loop.eval_prompts=1",
                                "loop.eval_rows=2", "loop.sample_steps=1", "loop.keep_last=2"), log=quiet)  # fmt: skip
    assert logged["losses"] == plain["losses"]
    rows = (tmp_path / "logged" / "eval.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["step", "val_loss", "spearman"] and len(rows) == 2 and rows[1].startswith("2,")
    assert (tmp_path / "logged" / "eval" / "step-00000002" / "grid.png").is_file()
    merged = tmp_path / "best.safetensors"
    assert main(["merge", str(tmp_path / "logged"), "--best", "1", "--by", "val_loss", "--out", str(merged)]) == 0
    assert merged.is_file()
    header = rows[0].split(",")
    assert {"coverage", "cluster_kl", "conditional_vendi"} <= set(header)
    merged.unlink()
    assert main(["merge", str(tmp_path / "logged"), "--best", "1", "--by", "coverage", "--out", str(merged)]) == 0
    assert merged.is_file()
    assert main(["merge", str(tmp_path / "run"), "--best", "1", "--out", str(merged)]) == 2  # no eval.csv there
    assert main(["merge", str(tmp_path / "logged"), "--best", "1", "--by", "beauty", "--out", str(merged)]) == 2
    with pytest.raises(ConfigError, match="loop.eval_every: needs data.holdout"):
        train(train_config(catalog, tiny_sdxl, tmp_path / "x", "loop.eval_every=1", "data.holdout=0"), log=quiet)
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tmp_path / "run" / "checkpoints"), "--model", str(tiny_sdxl), "--catalog",
            str(catalog), "--out", str(out), "--prompts", "1", "--seeds", "2", "--steps", "2", "--resolution", "64",
            "--holdout", "0.3", "--val-rows", "2"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    names = [c["name"] for c in report["checkpoints"]]
    assert [c["step"] for c in report["checkpoints"]] == [2, None] and len(set(names)) == 2
    assert all(held_out([p["key"]], 0.3)[0] for p in report["prompts"])
    for c in report["checkpoints"]:
        assert set(c["steering"]["mean"]) == {f"score_{t}" for t in range(1, 10)} | {"none"}
        assert -1 <= c["steering"]["spearman"] <= 1
        v = c["variety"]
        assert 1 - 1e-6 <= v["vendi_with_score_tags"] <= 2 + 1e-6 and 1 - 1e-6 <= v["vendi_without_score_tags"] <= 2
        assert set(c["tone"]["samples"]) == {"luminance", "contrast", "saturation"} and isinstance(
            c["tone"]["flags"], list
        )
        assert "no CLIP model configured" in c["clip"]["skipped"]
        assert len(c["val_loss"]["bands"]) == 10 and np.isfinite(c["val_loss"]["mean"])
        cov = c["coverage"]
        assert sum(cov["all"]["counts"]) == 10 * 2 and sum(cov["none"]["counts"]) == sum(cov["score_9"]["counts"]) == 2
        assert 1 - 1e-9 <= cov["all"]["effective_clusters"] <= cov["k"] + 1e-9 and cov["all"]["kl_from_catalog"] >= 0
        assert sum(cov["catalog"]) == pytest.approx(1) and cov["embedding"] == "pixels-v1"
        assert cov["conditional_vendi"] >= 1 - 1e-9 and cov["text_kernel"] == "bag of words"
        folder = out / c["name"]
        assert (folder / "grid.png").is_file() and len(list(folder.glob("p*-*.png"))) == 10 * 2
        info = parse_infotext(Image.open(folder / "p0-score9-s1.png").text["parameters"])
        assert info["prompt"].startswith("score_9, ") and info["Steps"] == "2" and info["Size"]
        none = parse_infotext(Image.open(folder / "p0-none-s0.png").text["parameters"])
        assert not none["prompt"].startswith("score_")
    md = (out / "report.md").read_text()
    assert "| conditional Vendi | clusters covered (KL from catalog) |" in md and "Clusters: the catalog's" in md
    for plot in ("steering", "variety", "tone", "val_loss", "coverage"):
        assert f"]({plot}.png)" in md and (out / f"{plot}.png").stat().st_size > 1000
    assert "Prompt adherence skipped" in md


def test_validation_loss_is_bit_identical_across_runs(catalog, tiny_sdxl):
    from zxl.sampler.pipeline import SDXL

    first = validation_loss(SDXL.load(tiny_sdxl, "cpu", "fp32"), EvalSet.build(catalog, SMALL))
    again = validation_loss(SDXL.load(tiny_sdxl, "cpu", "fp32"), EvalSet.build(catalog, SMALL))
    assert first == again and first["rows"] == 2
    assert list(first["bands"]) == [f"{100 * i}-{100 * i + 99}" for i in range(10)]


def test_samples_go_to_the_nearest_cluster_of_the_catalog(catalog):
    es = EvalSet.build(catalog, SMALL)
    c = es.clusters
    assert isinstance(c, Clusters) and len(c.centres) == len(c.catalog) == len(c.draws) >= 2
    rows = load_rows(catalog, 64)
    assert c.catalog == pytest.approx(np.bincount(rows.cluster.astype(int), minlength=len(c.catalog)) / len(rows))
    # a sample that looks like the centre of cluster j is counted in cluster j
    picks = [len(c.centres) - 1, 0, 0]
    samples = [{"prompt": 0, "tag": t, "seed": 0, "image": None} for t in (None, 9, 1)]
    got = coverage(es, samples, c.centres[picks])
    assert got["all"]["counts"][0] == 2 and got["all"]["counts"][-1] == 1 and got["none"]["counts"][-1] == 1
    assert got["score_9"]["effective_clusters"] == pytest.approx(1.0)
    # without clusters, or in another embedding, coverage says why it is skipped (the conditional Vendi stays)
    es.clusters = "the catalog has no clusters"
    skipped = coverage(es, samples, c.centres[picks])
    assert skipped["skipped"] == "the catalog has no clusters" and np.isfinite(skipped["conditional_vendi"])

    class OtherSpace:
        embedding_kind = "open_clip ViT-L-14"

    why = Clusters.of(catalog, rows, OtherSpace())  # pyright: ignore[reportArgumentType] - only embedding_kind is read
    assert isinstance(why, str) and "not one space" in why
    assert "no clusters" in Clusters.of(catalog, rows.assign(cluster=np.nan), es.scorer)


def test_clip_adherence_with_a_clip_scorer(catalog, tiny_clip):
    from tests.conftest import clip_cfg
    from zxl.scorers.clip_mlp import ClipMlpScorer

    es = EvalSet.build(catalog, SMALL)
    es.scorer, es.clip = ClipMlpScorer(clip_cfg(tiny_clip)), None
    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    samples = [{"prompt": 0, "tag": 9, "seed": 0, "image": images[0]}, {"prompt": 1, "tag": None, "seed": 0,
                                                                         "image": images[1]}]  # fmt: skip
    _, emb = score_samples(es, samples)  # the scorer's own image embeddings, as evaluate_model passes them
    got = clip_adherence(es, samples, emb)
    assert -100 <= got["mean"] <= 100 and np.isfinite(got["with_score_tags"])


@pytest.mark.parametrize(("field", "value", "match"), [
    ("seeds", 1, "--seeds must be an integer from 2 to 100, got 1"),
    ("holdout", 0.0, r"--holdout must be a number in \(0,1\), got 0.0"),
    ("holdout", float("nan"), r"--holdout must be a number in \(0,1\), got nan"),
    ("resolution", 100, "--resolution must be a multiple of 64 from 64 to 8192 .*, got 100"),
    ("resolution", 0, "--resolution must be a multiple of 64 from 64 to 8192 .*, got 0"),
    ("resolution", -64, "--resolution must be a multiple of 64 from 64 to 8192 .*, got -64"),
    ("resolution", 8256, "--resolution must be a multiple of 64 from 64 to 8192 .*, got 8256"),
    ("cfg", float("nan"), r"--cfg must be a number >= 0 \(0 is unconditional, 1 conditional .*\), got nan"),
    ("cfg", -5.0, "--cfg must be a number >= 0 .*, got -5.0"),
    ("cfg", float("inf"), "--cfg must be a number >= 0 .*, got inf"),
    ("steps", 0, "--steps must be an integer from 1 to 1000, got 0"),
    ("steps", 1001, "--steps must be an integer from 1 to 1000, got 1001"),
    ("prompts", 0, "--prompts must be an integer from 1 to 1000, got 0"),
    ("val_rows", 0, "--val-rows must be an integer from 1 to 100000, got 0"),
    ("seed", -1, "--seed must be an integer from 0 to 4294967295, got -1"),
])  # fmt: skip
def test_bad_options_name_the_flag(field, value, match):
    with pytest.raises(ConfigError, match=f"^{match}$"):
        EvalConfig(**{field: value})


def test_cfg_0_and_1_are_allowed():
    """0 samples the unconditional prediction, 1 the conditional one with no guidance: both mean something."""
    assert EvalConfig(cfg=0.0).cfg == 0.0 and EvalConfig(cfg=1.0).cfg == 1.0


@pytest.mark.parametrize(("flag", "value", "start"), [
    ("--resolution", "0", "--resolution must be a multiple of 64 from 64 to 8192 (the run's data.resolution), got 0"),
    ("--resolution", "-64", "--resolution must be a multiple of 64 from 64 to 8192"),
    ("--cfg", "nan", "--cfg must be a number >= 0 (0 is unconditional, 1 conditional without guidance), got nan"),
    ("--cfg", "-5", "--cfg must be a number >= 0 (0 is unconditional, 1 conditional without guidance), got -5.0"),
    ("--steps", "0", "--steps must be an integer from 1 to 1000, got 0"),
    ("--holdout", "1", "--holdout must be a number in (0,1), got 1.0"),
])  # fmt: skip
def test_zxl_eval_refuses_bad_numbers_in_one_line(capsys, tmp_path, flag, value, start):
    code = main(["eval", "--model", str(tmp_path), "--catalog", str(tmp_path), "--out", str(tmp_path / "out"), flag,
                 value])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"zxl eval: error: {start}"), err
    assert not (tmp_path / "out").exists()


def test_zxl_eval_names_a_damaged_catalog_part(capsys, tmp_path):
    from tests.test_trainer_data import _two_part_catalog

    cat = _two_part_catalog(tmp_path / "catalog")
    (cat / "part-00001.parquet").write_bytes(b"PAR1" + b"\xff" * 200)
    code = main(["eval", "--model", str(tmp_path), "--catalog", str(cat), "--out", str(tmp_path / "out"),
                 "--resolution", "64"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"zxl eval: error: --catalog: part {cat / 'part-00001.parquet'} cannot be read (ArrowInvalid")
    assert main(["eval", "--model", str(tmp_path), "--catalog", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                 "--resolution", "64"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err == f"zxl eval: error: --catalog: {tmp_path / 'none'} does not exist (a catalog folder that zxl curate " \
        "wrote)\n"  # fmt: skip


def test_zxl_eval_names_a_checkpoint_meta_without_config(capsys, tmp_path):
    """A checkpoint folder whose meta.json lacks the run's config: one line naming the file, before the
    catalog is read (the catalog here does not even exist)."""
    from tests.test_trainer_checkpoint import _save

    ckpt = _save(tmp_path / "checkpoints", 1, 1.0)  # meta.json: step and base, no config
    argv = ["eval", "--model", str(ckpt), "--catalog", str(tmp_path / "none"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"zxl eval: error: --model: {ckpt / 'meta.json'} has no 'config' (the resolved config that zxl "
                   "train writes into every checkpoint); not a checkpoint of zxl train\n")  # fmt: skip
    (ckpt / "meta.json").write_text('{"config": {"model": {"v_pred": true}}, "step": 1}')
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"zxl eval: error: --model: {ckpt / 'meta.json'} has no "
                                              "config.model.ztsnr (true or false")  # fmt: skip
    (ckpt / "meta.json").write_text('{"config": ')
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"zxl eval: error: --model: {ckpt / 'meta.json'} does not load "
                                              "(JSONDecodeError: ")  # fmt: skip
    (ckpt / "meta.json").write_text('{"config": {"model": {"v_pred": true, "ztsnr": true}}, "step": 1, "base": ""}')
    assert main(argv) == 2  # a good meta.json: now the base model it names is what is missing
    assert capsys.readouterr().err.startswith("zxl eval: error: --base: the base model '' that ")


def test_no_held_out_rows_is_a_clear_error(catalog):
    with pytest.raises(ConfigError, match="no held-out rows"):
        EvalSet.build(catalog, EvalConfig(holdout=1e-9, resolution=64))
