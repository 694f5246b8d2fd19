"""trainer/checkpoint.py on its own: the folder layout, keeping the last K, splitting, merging."""

import json

import pytest
import torch
from safetensors.torch import save_file

from zxl.config import ConfigError
from zxl.trainer import checkpoint


def _save(folder, step, value, keep=2, ema=False):
    weights = {"unet.w": torch.full((2, 2), float(value)), "text_encoder.b": torch.tensor([value], dtype=torch.float16)}
    if ema:
        weights["ema.unet.w"] = torch.full((2, 2), value + 0.5)
    return checkpoint.save(folder, step, weights, {"position": {"step": step}}, {"step": step, "base": ""}, keep)


def test_save_keeps_the_last_k_whole_folders(tmp_path):
    for step in (1, 2, 3):
        path = _save(tmp_path, step, step)
    assert [p.name for p in checkpoint.step_dirs(tmp_path)] == ["step-00000002", "step-00000003"]
    assert checkpoint.latest(tmp_path) == path and not list(tmp_path.glob(".*"))  # no temporary left
    weights, state, meta = checkpoint.load(path)
    assert torch.equal(weights["unet.w"], torch.full((2, 2), 3.0)) and weights["text_encoder.b"].dtype == torch.float16
    assert state["position"] == {"step": 3} and meta["step"] == 3
    assert checkpoint.latest(tmp_path / "none") is None and checkpoint.step_dirs(tmp_path / "none") == []


def test_load_names_what_is_missing(tmp_path):
    path = _save(tmp_path, 1, 1)
    (path / "state.pt").unlink()
    with pytest.raises(checkpoint.CheckpointError, match=r"is not a zxl checkpoint \(no state.pt\)"):
        checkpoint.load(path)


def test_split_takes_the_ema_unet_when_asked(tmp_path):
    weights, _, _ = checkpoint.load(_save(tmp_path, 1, 1.0, ema=True))
    plain, ema = checkpoint.split(weights), checkpoint.split(weights, ema=True)
    assert set(plain) == {"unet", "text_encoder"} and torch.equal(plain["unet"]["w"], torch.full((2, 2), 1.0))
    assert torch.equal(ema["unet"]["w"], torch.full((2, 2), 1.5))


def test_merge_is_the_weighted_mean_in_fp32_cast_back(tmp_path):
    a, b = _save(tmp_path, 1, 1.0, keep=5), _save(tmp_path, 2, 4.0, keep=5)
    merged, kind, _ = checkpoint.merge([a, b])
    assert kind == "checkpoint" and torch.equal(merged["unet.w"], torch.full((2, 2), 2.5))
    merged, _, _ = checkpoint.merge([a, b], [3, 1])
    assert torch.equal(merged["unet.w"], torch.full((2, 2), 1.75)) and merged["text_encoder.b"].dtype == torch.float16
    for weights, why in (([1], "1 weights for 2 checkpoints"), ([1, -1], "non-negative weights"),
                         ([1, float("nan")], "all finite; got 1, nan"),
                         ([float("inf"), 1], "all finite; got inf, 1")):  # fmt: skip
        with pytest.raises(ConfigError, match=why):
            checkpoint.merge([a, b], weights)
    with pytest.raises(ConfigError, match="give at least one checkpoint"):
        checkpoint.merge([])


def test_merge_refuses_checkpoints_of_different_models(tmp_path):
    a = _save(tmp_path, 1, 1.0, keep=5)
    other = tmp_path / "other.safetensors"
    save_file({"model.diffusion_model.w": torch.zeros(2), "v_pred": torch.zeros(0)}, str(other))
    with pytest.raises(ConfigError, match="its tensors differ"):
        checkpoint.merge([a, other])
    with pytest.raises(ConfigError, match="neither a zxl checkpoint folder nor a .safetensors file"):
        checkpoint.merge([tmp_path / "missing.ckpt"])
    merged, kind, _ = checkpoint.merge([other, other])
    assert kind == "single-file" and merged["v_pred"].numel() == 0  # markers carried over, not averaged
    assert json.loads((a / "meta.json").read_text())["step"] == 1


def test_read_meta_names_the_file_and_what_it_lacks(tmp_path):
    """What zxl merge and zxl eval read of a checkpoint's meta.json, checked: one ConfigError naming the file."""
    path = _save(tmp_path, 1, 1.0)  # step and base, no config
    meta = path / "meta.json"
    with pytest.raises(ConfigError, match=f"^{meta} has no 'config' \\(the resolved config that zxl train writes"):
        checkpoint.read_meta(path)
    with pytest.raises(ConfigError, match=f"^--model: {meta} has no 'config'"):
        checkpoint.read_meta(path, "--model")
    for text, why in (('{"config": {}}', "has no config.model.v_pred or config.model.ztsnr"),
                      ('{"config": {"model": {"v_pred": true, "ztsnr": "yes"}}}', "has no config.model.ztsnr"),
                      ('{"config": {"model": {"v_pred": true, "ztsnr": true, "config": 3}}}',
                       "config.model.config must"),
                      ("[1, 2]", "has no 'config'"), ("{", "does not load \\(JSONDecodeError: ")):  # fmt: skip
        meta.write_text(text)
        with pytest.raises(ConfigError, match=f"^{meta}:? {why}"):
            checkpoint.read_meta(path)
    meta.write_text('{"config": {"model": {"v_pred": true, "ztsnr": false, "config": ""}}, "step": 1}')
    assert checkpoint.read_meta(path)["config"]["model"]["ztsnr"] is False
    meta.unlink()
    with pytest.raises(ConfigError, match=f"^{meta} is missing"):
        checkpoint.read_meta(path)
