"""Dynamic thresholding against RECIPE.md's formulas, written out here in NumPy, for every mode."""

import itertools
import math

import numpy as np
import pytest
import torch

from zxl.config import ConfigError
from zxl.sampler.guidance import SCHEDULES, DynamicThresholding, scheduled


def reference(du, dc, s, m, p, measure, start, per_channel, phi):
    rel = dc - du
    mim = (du + m * rel).reshape(du.shape[0], du.shape[1], -1)
    cfg = (du + s * rel).reshape(du.shape[0], du.shape[1], -1)
    mim_c = mim - mim.mean(axis=2, keepdims=True)
    mean = cfg.mean(axis=2, keepdims=True)
    cfg_c = cfg - mean
    axis = 2 if per_channel else None
    keep = per_channel
    if measure == "AD":
        mim_ref = np.abs(mim_c).max(axis=axis, keepdims=keep)
        cfg_ref = np.quantile(np.abs(cfg_c), p, axis=axis, keepdims=keep)
    else:
        mim_ref = mim_c.std(axis=axis, ddof=1, keepdims=keep)
        cfg_ref = cfg_c.std(axis=axis, ddof=1, keepdims=keep)
    if start == "ZERO":
        out = cfg * mim_ref / cfg_ref
    elif measure == "AD":
        top = np.maximum(mim_ref, cfg_ref)
        out = np.clip(cfg_c, -top, top) / top * mim_ref + mean
    else:
        out = cfg_c / cfg_ref * mim_ref + mean
    out = out * phi + cfg * (1 - phi)
    return out.reshape(du.shape)


@pytest.mark.parametrize(
    ("measure", "start", "per_channel", "p", "phi"),
    [(m, s, c, p, phi) for m, s, c in itertools.product(["AD", "STD"], ["MEAN", "ZERO"], [True, False])
     for p, phi in ((1.0, 1.0), (0.95, 0.7))],
)  # fmt: skip
def test_modes_against_the_formulas(measure, start, per_channel, p, phi):
    rng = np.random.default_rng(0)
    du, dc = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((2, 4, 6, 5)) * 1.5
    dt = DynamicThresholding(mimic_scale=3.0, threshold_percentile=p, measure=measure, start=start,
                             per_channel=per_channel, interpolate_phi=phi)  # fmt: skip
    got = dt(torch.tensor(du), torch.tensor(dc), cfg_scale=9.0, step=0, steps=10).numpy()
    np.testing.assert_allclose(
        got, reference(du, dc, 9.0, 3.0, p, measure, start, per_channel, phi), rtol=1e-6, atol=1e-8
    )


@pytest.mark.parametrize("mode", sorted(SCHEDULES))
def test_scale_schedules(mode):
    expected = {
        "Constant": lambda f: 1.0, "Linear Up": lambda f: f, "Linear Down": lambda f: 1 - f,
        "Half Cosine Up": lambda f: 1 - math.cos(f), "Half Cosine Down": lambda f: math.cos(f),
        "Cosine Up": lambda f: 1 - math.cos(math.pi / 2 * f), "Cosine Down": lambda f: math.cos(math.pi / 2 * f),
        "Power Up": lambda f: f**4, "Power Down": lambda f: 1 - f**4,
    }[mode]  # fmt: skip
    for step in range(28):
        frac = step / 27
        assert scheduled(7.0, 6.0, mode, step, 28) == pytest.approx((7.0 - 6.0) * expected(frac) + 6.0)


def test_scheduled_scales_reach_the_thresholding():
    rng = np.random.default_rng(1)
    du, dc = rng.standard_normal((1, 4, 8, 8)), rng.standard_normal((1, 4, 8, 8))
    dt = DynamicThresholding.recipe(4.0)
    assert (dt.mimic_scale, dt.mimic_scale_min, dt.mimic_mode) == (4.0, 3.0, "Half Cosine Up")
    for step in (0, 13, 27):
        s = scheduled(4.0, 3.0, "Half Cosine Up", step, 28)
        got = dt(torch.tensor(du), torch.tensor(dc), 4.0, step, 28).numpy()
        np.testing.assert_allclose(got, reference(du, dc, s, s, 1.0, "AD", "MEAN", True, 1.0), rtol=1e-6, atol=1e-8)


def test_bad_options_name_the_choices():
    with pytest.raises(ConfigError, match="AD or STD"):
        DynamicThresholding(measure="MAD")
    with pytest.raises(ConfigError, match="Half Cosine Up"):
        DynamicThresholding(cfg_mode="Sawtooth")
