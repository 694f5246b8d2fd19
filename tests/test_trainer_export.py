"""trainer/export.py on its own: the single file with its markers, the diffusers folder with its
scheduler, and merging single files, each read back by the code that loads it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from zxl.sampler.pipeline import SDXL
from zxl.trainer.export import merge_and_write, write_model


@pytest.fixture(scope="module")
def model(tiny_sdxl):
    return SDXL.load(tiny_sdxl, device="cpu", precision="fp32")


def test_single_file_carries_the_markers_and_the_given_unet(model, tiny_sdxl, tmp_path):
    name, ref = next((k, v) for k, v in model.unet.state_dict().items() if v.ndim == 4)
    out = write_model(model, tmp_path / "m.safetensors", unet_state={name: torch.zeros_like(ref)})
    sd = load_file(out)
    assert sd["v_pred"].numel() == 0 and sd["ztsnr"].numel() == 0 and out.with_suffix(".yaml").is_file()
    back = SDXL.load(out, device="cpu", precision="fp32", config=tiny_sdxl)
    assert back.v_pred and back.ztsnr
    assert torch.equal(back.unet.state_dict()[name], torch.zeros_like(ref))  # the EMA-style override went in
    plain = write_model(model, tmp_path / "eps.safetensors", v_pred=False, ztsnr=False)
    assert "v_pred" not in load_file(plain) and not list(tmp_path.glob(".*"))


def test_diffusers_folder_says_v_prediction_zero_snr_trailing(model, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    folder = write_model(model, tmp_path / "folder")
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction" and sched["rescale_betas_zero_snr"] is True
    assert sched["timestep_spacing"] == "trailing"
    pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, model.unet.state_dict()[k]), k
    # transformers 4.x's CLIPTokenizer reads vocab.json and merges.txt alone: both folders have them, and
    # a tokenizer built from those two files alone tokenizes as the saved tokenizer.json does
    import shutil

    from transformers import CLIPTokenizer

    prompt = "score_9, 1girl, long hair, (smile:1.2), fate_(series), 日本語 text"
    for sub in ("tokenizer", "tokenizer_2"):
        only = tmp_path / f"slow-{sub}"
        only.mkdir()
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(folder / sub / name, only / name)
        slow = CLIPTokenizer(str(only / "vocab.json"), str(only / "merges.txt"))
        saved = getattr(pipe, sub)
        assert slow(prompt).input_ids == saved(prompt).input_ids, sub
        assert (folder / sub / "merges.txt").read_text().startswith("#version: 0.2\n")


def test_merging_single_files_keeps_layout_markers_and_yaml(model, tiny_sdxl, tmp_path):
    a = write_model(model, tmp_path / "a.safetensors")
    merged = merge_and_write([a, a], tmp_path / "merged.safetensors")
    sa, sm = load_file(a), load_file(merged)
    assert set(sa) == set(sm) and merged.with_suffix(".yaml").is_file()
    for k in sa:
        torch.testing.assert_close(sm[k], sa[k], rtol=0, atol=1e-6)
    folder = merge_and_write([a], tmp_path / "as-diffusers", config=str(tiny_sdxl))
    assert SDXL.load(folder, device="cpu").v_pred


def test_zxl_merge_names_a_meta_json_without_config(tmp_path, capsys):
    """Before any weights are read: the first checkpoint's meta.json, then the base model it names."""
    from tests.test_trainer_checkpoint import _save
    from zxl.cli import main

    ckpt = _save(tmp_path / "checkpoints", 1, 1.0)  # meta.json: step and base, no config
    out = tmp_path / "merged.safetensors"
    assert main(["merge", str(ckpt), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"zxl merge: error: {ckpt / 'meta.json'} has no 'config' (the resolved config that zxl train writes into "
        "every checkpoint); not a checkpoint of zxl train\n"
    )
    (ckpt / "meta.json").write_text('{"config": {"model": {"v_pred": true, "ztsnr": true}}, "base": "gone"}')
    assert main(["merge", str(ckpt), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"zxl merge: error: --base: the base model 'gone' that {ckpt} was ")
    assert not out.exists()


@pytest.mark.parametrize(("args", "err"), [
    (["--weights", "1,x"], "--weights 1,x: 'x' is not a number (comma-separated weights, one per checkpoint)"),
    (["--weights", "nan,1"], "--weights must be a number >= 0, got nan"),
    (["--weights", "1,-2"], "--weights must be a number >= 0, got -2.0"),
    (["--best", "0"], "--best must be an integer >= 1 (checkpoints to merge), got 0"),
])  # fmt: skip
def test_zxl_merge_refuses_bad_numbers_in_one_line(tmp_path, capsys, args, err):
    from zxl.cli import main

    assert main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m"), *args]) == 2
    assert capsys.readouterr().err == f"zxl merge: error: {err}\n"


def test_best_checkpoints_ignore_a_row_a_kill_cut_short(tmp_path):
    """eval.csv is an append-only log: a kill mid-write leaves a last line without its newline, which
    is not a row (here it would have made step 30 the best)."""
    from zxl.trainer.export import best_checkpoints

    for step in (10, 20, 30):
        (tmp_path / "checkpoints" / f"step-{step:08d}").mkdir(parents=True)
    (tmp_path / "eval.csv").write_text("step,val_loss\n10,0.5\n20,0.4\n30,0.0")
    assert [(p.name, v) for p, v in best_checkpoints(tmp_path, 1)] == [("step-00000020", 0.4)]
    (tmp_path / "eval.csv").write_text("step,val_loss\n10,0.5\n20,0.4\n30,0.0\n")
    assert [p.name for p, _ in best_checkpoints(tmp_path, 1)] == ["step-00000030"]
