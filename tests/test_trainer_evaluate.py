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
from zxl.trainer.data import held_out
from zxl.trainer.evaluate import EvalConfig, EvalSet, clip_adherence, score_samples, validation_loss

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
        folder = out / c["name"]
        assert (folder / "grid.png").is_file() and len(list(folder.glob("p*-*.png"))) == 10 * 2
        info = parse_infotext(Image.open(folder / "p0-score9-s1.png").text["parameters"])
        assert info["prompt"].startswith("score_9, ") and info["Steps"] == "2" and info["Size"]
        none = parse_infotext(Image.open(folder / "p0-none-s0.png").text["parameters"])
        assert not none["prompt"].startswith("score_")
    md = (out / "report.md").read_text()
    for plot in ("steering", "variety", "tone", "val_loss"):
        assert f"]({plot}.png)" in md and (out / f"{plot}.png").stat().st_size > 1000
    assert "Prompt adherence skipped" in md


def test_validation_loss_is_bit_identical_across_runs(catalog, tiny_sdxl):
    from zxl.sampler.pipeline import SDXL

    first = validation_loss(SDXL.load(tiny_sdxl, "cpu", "fp32"), EvalSet.build(catalog, SMALL))
    again = validation_loss(SDXL.load(tiny_sdxl, "cpu", "fp32"), EvalSet.build(catalog, SMALL))
    assert first == again and first["rows"] == 2
    assert list(first["bands"]) == [f"{100 * i}-{100 * i + 99}" for i in range(10)]


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


@pytest.mark.parametrize(("field", "value", "match"), [("seeds", 1, "--seeds"), ("holdout", 0.0, "--holdout"),
                                                        ("resolution", 100, "--resolution")])  # fmt: skip
def test_bad_options_name_the_flag(field, value, match):
    with pytest.raises(ConfigError, match=match):
        EvalConfig(**{field: value})


def test_no_held_out_rows_is_a_clear_error(catalog):
    with pytest.raises(ConfigError, match="no held-out rows"):
        EvalSet.build(catalog, EvalConfig(holdout=1e-9, resolution=64))
