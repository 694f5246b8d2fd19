"""Dynamic thresholding against docs/recipe.md's formulas, written out here in NumPy, for every mode."""

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


def extension_scale(scale, mode, minimum, step, max_steps, k):
    """sd-dynamic-thresholding's ``DynThresh.interpret_scale``, rule for rule (its constants included)."""
    scale -= minimum
    frac = step / (max_steps - 1)
    if mode == "Linear Down":
        scale *= 1.0 - frac
    elif mode == "Half Cosine Down":
        scale *= math.cos(frac)
    elif mode == "Cosine Down":
        scale *= math.cos(frac * 1.5707)
    elif mode == "Linear Up":
        scale *= frac
    elif mode == "Half Cosine Up":
        scale *= 1.0 - math.cos(frac)
    elif mode == "Cosine Up":
        scale *= 1.0 - math.cos(frac * 1.5707)
    elif mode == "Power Up":
        scale *= math.pow(frac, k)
    elif mode == "Power Down":
        scale *= 1.0 - math.pow(frac, k)
    elif mode == "Linear Repeating":
        portion = (frac * k) % 1.0
        scale *= (0.5 - portion) * 2 if portion < 0.5 else (portion - 0.5) * 2
    elif mode == "Cosine Repeating":
        scale *= math.cos(frac * 6.28318 * k) * 0.5 + 0.5
    elif mode == "Sawtooth":
        scale *= (frac * k) % 1.0
    return scale + minimum


def test_every_mode_of_the_extension():
    modes = ["Constant", "Linear Down", "Cosine Down", "Half Cosine Down", "Linear Up", "Cosine Up", "Half Cosine Up",
             "Power Up", "Power Down", "Linear Repeating", "Cosine Repeating", "Sawtooth"]  # fmt: skip
    assert sorted(SCHEDULES) == sorted(modes)


@pytest.mark.parametrize("mode", sorted(SCHEDULES))
@pytest.mark.parametrize("k", [1.0, 3.0, 4.0])
def test_scale_schedules(mode, k):
    for step in range(28):
        got = scheduled(7.0, 5.0, mode, step, 28, power=k)
        # zxl writes π/2 and 2π where the extension writes 1.5707 and 6.28318: 4e-5 of the angle at most
        assert got == pytest.approx(extension_scale(7.0, mode, 5.0, step, 28, k), abs=2e-4)
        if "Cosine" not in mode:
            assert got == pytest.approx(extension_scale(7.0, mode, 5.0, step, 28, k), abs=1e-12)


def test_repeating_modes_cycle_k_times():
    ups = [scheduled(1.0, 0.0, "Sawtooth", i, 9, power=2.0) for i in range(9)]
    assert ups == pytest.approx([0, 0.25, 0.5, 0.75, 0, 0.25, 0.5, 0.75, 0], abs=1e-12)
    tri = [scheduled(1.0, 0.0, "Linear Repeating", i, 5, power=1.0) for i in range(5)]
    assert tri == pytest.approx([1.0, 0.5, 0.0, 0.5, 1.0])
    cos = [scheduled(1.0, 0.0, "Cosine Repeating", i, 5, power=2.0) for i in range(5)]
    assert cos == pytest.approx([1.0, 0.0, 1.0, 0.0, 1.0], abs=1e-12)


def test_infotext_uses_the_extension_keys():
    dt = DynamicThresholding.recipe(7.0, "Sawtooth", 2.0)
    f = dt.infotext_fields()
    assert f["Dynamic thresholding enabled"] is True and f["Mimic scale"] == "7"
    assert f["Mimic mode"] == f["CFG mode"] == "Sawtooth" and f["Mimic scale minimum"] == "6"
    assert f["Scheduler value"] == "2" and f["Threshold percentile"] == "100"
    plain = DynamicThresholding(mimic_scale=7.0).infotext_fields()
    assert "Mimic mode" not in plain and "Scheduler value" not in plain


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
        DynamicThresholding(cfg_mode="Saw Tooth")
