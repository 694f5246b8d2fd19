"""The sampler family's contract, checked for every member of SAMPLERS (as diffusers' shared
scheduler test checks every scheduler): one signature, the step count, the callback, exactness
on a denoiser whose answer is known, batch independence, and seeded noise."""

import inspect

import pytest
import torch

from zxl.sampler.samplers import SAMPLERS, VDenoiser
from zxl.sampler.schedule import get_sigmas, sigmas_table

SIGNATURE = ["model", "x", "sigmas", "extra_args", "callback", "disable", "generator"]


def _toy_v(x, t):
    t = t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return 0.6 * x * torch.cos(t / 700) - 0.2 * torch.sin(t / 300) + 0.05 * x.flip(-1)


def _start(sigmas, seed=0, batch=2):
    noise = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    return noise * (1 + sigmas[0] ** 2).sqrt().float()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_one_signature(name):
    params = list(inspect.signature(SAMPLERS[name]).parameters)
    assert params[: len(SIGNATURE)] == SIGNATURE
    for extra in params[len(SIGNATURE) :]:  # sampler options (eta, …) come after, with defaults
        assert inspect.signature(SAMPLERS[name]).parameters[extra].default is not inspect.Parameter.empty


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_one_model_call_and_one_callback_per_step(name):
    sigmas, _ = get_sigmas(7, "trailing")
    den = VDenoiser(_toy_v, sigmas_table())
    calls, seen = [], []

    def counted(x, sigma, **kw):
        calls.append(float(sigma[0]))
        return den(x, sigma, **kw)

    x = SAMPLERS[name](counted, _start(sigmas), sigmas.float(), callback=seen.append,
                       generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert len(calls) == 7 and [s["i"] for s in seen] == list(range(7))
    assert calls == pytest.approx(sigmas[:-1].tolist(), rel=1e-6)  # called at the schedule's sigmas, in order
    assert {"x", "i", "sigma", "denoised"} <= set(seen[0]) and torch.isfinite(x).all()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_constant_denoiser_lands_exactly_on_its_answer(name):
    """D(x, σ) = c for every x: the probability-flow ODE ends at c, so must every sampler."""
    sigmas, _ = get_sigmas(5, "karras")
    c = torch.linspace(-1, 1, 2 * 4 * 8 * 8).reshape(2, 4, 8, 8)
    out = SAMPLERS[name](lambda x, s: c, _start(sigmas), sigmas.float(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, c, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_batch_items_are_independent_and_seeds_repeat(name):
    sigmas, _ = get_sigmas(6, "trailing")
    den = VDenoiser(_toy_v, sigmas_table())
    x = _start(sigmas)

    def run(x_in):
        return SAMPLERS[name](den, x_in.clone(), sigmas.float(), generator=torch.Generator().manual_seed(3))

    both = run(x)
    torch.testing.assert_close(both, run(x))  # the same generator seed gives the same result
    if name != "euler_ancestral":  # its fresh noise is drawn for the whole batch at once
        torch.testing.assert_close(both[:1], run(x[:1]), rtol=1e-5, atol=1e-5)


def test_only_ddim_starts_at_an_infinite_sigma():
    sigmas, _ = get_sigmas(4, "trailing", terminal="zero")
    den = VDenoiser(_toy_v, sigmas_table(terminal="zero"))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(SAMPLERS["ddim"](den, noise, sigmas.float())).all()


def test_the_network_gets_its_timestep_by_the_rule():
    """``comfyui`` (the default): the nearest whole timestep, as ComfyUI's ModelSamplingDiscrete.timestep;
    ``continuous``: k-diffusion's interpolated one. At a table entry both give its t."""
    sigmas, _ = get_sigmas(10, "karras")
    table = sigmas_table()
    sigma = torch.stack([sigmas[3], table[500]]).float()  # σ = 485.59 lies between t = 994 and 995
    seen = {}

    def net(rule):
        def model(x_in, t):
            seen[rule] = t
            return torch.zeros_like(x_in)

        return model

    x = torch.ones(2, 4, 8, 8)
    VDenoiser(net("default"), table)(x, sigma)
    VDenoiser(net("comfyui"), table, "comfyui")(x, sigma)
    VDenoiser(net("continuous"), table, "continuous")(x, sigma)
    assert seen["default"].tolist() == seen["comfyui"].tolist() == [994.0, 500.0]
    assert seen["continuous"][0].item() == pytest.approx(994.3697, abs=1e-3) and seen["continuous"][1].item() == 500


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_both_timestep_rules_run_every_sampler_and_agree_on_the_table(name):
    den = {rule: VDenoiser(_toy_v, sigmas_table(), rule) for rule in ("comfyui", "continuous")}

    def run(schedule, rule):
        sigmas, _ = get_sigmas(6, schedule)
        return SAMPLERS[name](den[rule], _start(sigmas), sigmas.float(), generator=torch.Generator().manual_seed(3))

    torch.testing.assert_close(run("trailing", "comfyui"), run("trailing", "continuous"), rtol=0, atol=0)
    a, b = run("karras", "comfyui"), run("karras", "continuous")
    assert torch.isfinite(a).all() and not torch.equal(a, b)
