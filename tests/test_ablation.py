"""bench/ablation.py (``make ablation``) at toy scale: a copy of a curated run rated by the simulated
rater through the rate view, fitted and applied at weigh.diversity 0 and 1, a tiny model trained
and evaluated for each (one seed: the suite stays short), one report; a second run resumes from what the first left."""

import json
import shutil

import numpy as np
import pytest

from bench import ablation


@pytest.fixture(scope="module")
def source(sync_run, tmp_path_factory):
    src = sync_run[1].run_dir
    dst = tmp_path_factory.mktemp("ablation-source") / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def test_the_ablation_end_to_end_at_toy_scale(source, tiny_sdxl, tmp_path):
    plan = ablation.Plan(source=source, out=tmp_path / "ablation", steps=2, seeds=(0,), choices=40, prompts=1,
                         eval_seeds=2, sample_steps=2, resolution=64, val_rows=2, base=tiny_sdxl,
                         extra=("optim.batch_size=2",))  # fmt: skip
    report_md = ablation.run(plan)
    report = json.loads((plan.out / "report.json").read_text())
    conc = report["concentration"]
    k = conc["k"]
    assert sum(conc["catalog_shares"]) == pytest.approx(1) and set(conc["draws"]) == {"0", "1"}
    # d = 1 draws every cluster equally often; d = 0 gives the favoured cluster (most 9s) more than its share
    assert conc["draws"]["1"]["effective_clusters"] == pytest.approx(k, rel=1e-6)
    assert conc["draws"]["0"]["share"] >= conc["share_of_rows"]
    assert report["catalogs"]["choices"] == 40
    models = report["models"]
    assert sorted(m["name"] for m in models) == ["d0-seed0", "d1-seed0"]  # one seed a setting keeps the suite short
    for m in models:
        assert 1 - 1e-9 <= m["coverage_all"] <= k + 1e-9 and 0 <= m["favoured_share"] <= 1
        assert m["conditional_vendi"] >= 1 - 1e-9 and np.isfinite(m["val_loss"])
    for d in ("0", "1"):
        one = report["settings"][d]["val_loss"]
        assert one["seeds"] == 1 and one["sd"] == one["spread"] == 0 and one["min"] == one["mean"] == one["max"]
    text = report_md.read_text()
    assert "| `weigh.diversity` 0 |" in text and "mean ± sd [seeds' range]" in text and "![samples](grid.png)" in text
    ctrl = report["control"]
    assert ctrl["rows"] == conc["rows"] and 0 <= ctrl["reconstructions_in_own_cluster"] <= 1
    for d in ("0", "1"):
        assert sum(ctrl["expected"][d]["shares"]) == pytest.approx(1)
    assert all(np.isfinite(m["kl_none_expected"]) and m["kl_none_expected"] >= 0 for m in models)
    for name in ("clusters.png", "figures.png", "grid.png", "eval/report.md"):
        assert (plan.out / name).stat().st_size > 1000
    # a second run keeps every finished step: same checkpoints, same eval, the report written again
    ckpt = ablation.final_checkpoint(plan, 0.0, 0) / "model.safetensors"
    one = plan.out / "eval/d1-seed0/report.json"
    before = ckpt.stat().st_mtime_ns, one.stat().st_mtime_ns
    ablation.run(plan)
    assert (ckpt.stat().st_mtime_ns, one.stat().st_mtime_ns) == before
    assert json.loads((plan.out / "report.json").read_text())["models"] == models
