"""The trainer's config: presets load, bad keys and values name the key."""

from pathlib import Path

import pytest

from zxl.config import ConfigError, load_config
from zxl.trainer.config import TrainConfig, validate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", ["demo", "zero-xl"])
def test_presets_load_and_validate(preset):
    cfg = load_config(TrainConfig, [ROOT / "configs" / "train" / f"{preset}.yaml"])
    validate(cfg)


def test_zero_xl_is_the_recipe():
    cfg = load_config(TrainConfig, [ROOT / "configs" / "train" / "zero-xl.yaml"])
    assert (cfg.optim.optimizer, cfg.optim.unet_lr, cfg.optim.text_encoder_lr, cfg.optim.warmup_steps) == (
        "adafactor", 2e-5, 1e-5, 250)  # fmt: skip
    assert (cfg.optim.batch_size, cfg.optim.grad_accum, cfg.optim.precision) == (4, 8, "fp16")
    assert (cfg.loss.loss, cfg.loss.huber_schedule, cfg.loss.huber_c, cfg.loss.ip_noise_gamma) == (
        "huber",
        "snr",
        0.1,
        0.1,
    )
    assert cfg.loss.adaptive_weighting and cfg.model.v_pred and cfg.model.ztsnr
    assert cfg.data.resolution == 1024 and cfg.data.caption_dropout == 0.05


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=1", "unknown config key 'optim.lr'; did you mean 'optim.unet_lr'"),
        ("optim.batchsize=2", "did you mean 'optim.batch_size'"),
        ("loss.huber_schedule=cosine", "loss.huber_schedule: 'cosine' is not one of snr, exponential, constant"),
        ("optim.precision=fp8", "optim.precision"),
        ("data.resolution=1000", "data.resolution: 1000 is not a multiple of 64"),
        ("data.caption_dropout=1.5", "data.caption_dropout"),
        ("loss.min_timestep=900", "loss.min_timestep"),
        ("optim.unet_lr=fast", "config key 'optim.unet_lr' wants a number"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        extra = ["loss.max_timestep=800"] if override.startswith("loss.min") else []
        validate(load_config(TrainConfig, [], [override, *extra]))


def test_yaml_exponent_without_a_dot_is_a_number():
    assert load_config(TrainConfig, [], ["optim.unet_lr=1e-5"]).optim.unet_lr == 1e-5


def test_max_token_length_takes_kohyas_steps():
    for ok in (75, 150, 225):
        validate(load_config(TrainConfig, overrides=[f"data.max_token_length={ok}"]))
    with pytest.raises(ConfigError, match="data.max_token_length must be 75, 150 or 225"):
        validate(load_config(TrainConfig, overrides=["data.max_token_length=100"]))
    recipe = load_config(TrainConfig, [Path(__file__).resolve().parents[1] / "configs/train/zero-xl.yaml"])
    assert recipe.data.max_token_length == 225
