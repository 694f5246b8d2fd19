"""The ZTSNR schedule, sigmas and samplers against diffusers, the numeric oracle (docs/recipe.md)."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale

from zxl.config import ConfigError
from zxl.sampler.samplers import VDenoiser, cfg, sample_ddim, sample_dpmpp_2m, sample_euler
from zxl.sampler.schedule import (
    SCHEDULES,
    alphas_cumprod,
    get_sigmas,
    nearest_timestep,
    rescale_zero_terminal_snr,
    sdxl_betas,
    sigma_to_t,
    sigmas_table,
    trailing_timesteps,
)  # fmt: skip

COMMON = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True}


def test_ztsnr_schedule_matches_diffusers_and_the_reference_values():
    ac = alphas_cumprod()
    # diffusers' scheduler holds float32: a cumulative product of 1000 float32 factors is good to ~1000 ulp
    assert torch.allclose(ac.float(), DDPMScheduler(**COMMON).alphas_cumprod, rtol=1e-4, atol=1e-6)
    # the rescale itself in float64 on both sides (in float32 they differ by 5.5e-6 on some CPUs)
    betas = sdxl_betas().double()
    assert torch.allclose(rescale_zero_terminal_snr(betas), diffusers_rescale(betas.clone()), rtol=0, atol=1e-12)
    assert ac[-1].item() == 0.0
    assert ac[499].item() == pytest.approx(0.24236, abs=1e-5)
    assert alphas_cumprod(ztsnr=False)[499].item() == pytest.approx(0.27767, abs=1e-5)
    assert ac[0].item() == pytest.approx(0.99915, abs=1e-5)


def test_terminal_conventions():
    assert sigmas_table(terminal="comfyui")[-1].item() == pytest.approx(4518.76, abs=0.01)
    assert sigmas_table(terminal="diffusers")[-1].item() == pytest.approx(4096.0, abs=0.01)
    with pytest.raises(ConfigError, match="comfyui, diffusers"):
        sigmas_table(terminal="a1111")


def test_trailing_timesteps_and_sigmas_match_diffusers_euler():
    assert trailing_timesteps(28)[:3] == [999, 963, 928]
    e = EulerDiscreteScheduler(**COMMON, timestep_spacing="trailing", prediction_type="v_prediction")
    for n in (1, 8, 28, 50):
        e.set_timesteps(n)
        sigmas, ts = get_sigmas(n, "trailing", terminal="diffusers")
        assert ts.tolist() == e.timesteps.tolist()
        torch.testing.assert_close(sigmas.float(), e.sigmas, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("schedule", ["karras", "exponential"])
def test_other_schedules_are_monotone_and_span_the_table(schedule):
    sigmas, ts = get_sigmas(20, schedule)
    table = sigmas_table()
    assert sigmas[0].item() == pytest.approx(table[-1].item()) and sigmas[-2].item() == pytest.approx(table[0].item())
    assert (sigmas[:-1].diff() < 0).all() and sigmas[-1] == 0
    assert ts[0].item() == pytest.approx(999, abs=1e-6) and ts[-1].item() == pytest.approx(0, abs=1e-6)


def _toy_v(x, t):
    """A deterministic stand-in for a v-prediction U-Net."""
    t = t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return 0.6 * x * torch.cos(t / 700) - 0.2 * torch.sin(t / 300) + 0.05 * x.flip(-1)


def test_euler_matches_diffusers():
    e = EulerDiscreteScheduler(**COMMON, timestep_spacing="trailing", prediction_type="v_prediction")
    e.set_timesteps(12)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    latents = noise * e.init_noise_sigma
    for t in e.timesteps:
        v = _toy_v(e.scale_model_input(latents, t), t.expand(2))
        latents = e.step(v, t, latents).prev_sample
    sigmas, _ = get_sigmas(12, "trailing", terminal="diffusers")
    table = sigmas_table(terminal="diffusers")
    x = noise * (1 + sigmas[0] ** 2).sqrt().float()
    ours = sample_euler(VDenoiser(_toy_v, table), x, sigmas.float())
    torch.testing.assert_close(ours, latents, rtol=1e-4, atol=1e-4)


def test_ddim_matches_diffusers_and_x0_is_minus_v_at_the_end():
    d = DDIMScheduler(
        **COMMON, timestep_spacing="trailing", prediction_type="v_prediction", set_alpha_to_one=True, clip_sample=False
    )  # as SDXL is configured
    d.set_timesteps(10)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    latents = noise.clone()
    for t in d.timesteps:
        latents = d.step(_toy_v(latents, t.expand(1)), t, latents).prev_sample
    sigmas, _ = get_sigmas(10, "trailing", terminal="zero")  # ᾱ_T = 0: σ_0 = ∞, and x starts as ε itself
    assert torch.isinf(sigmas[0])
    ours = sample_ddim(VDenoiser(_toy_v, sigmas_table(terminal="zero")), noise.clone(), sigmas.float())
    torch.testing.assert_close(ours, latents, rtol=1e-4, atol=1e-4)
    seen = []
    two = torch.tensor([float("inf"), sigmas_table()[500].item(), 0.0])
    sample_ddim(VDenoiser(_toy_v, sigmas_table(terminal="zero")), noise.clone(), two, callback=seen.append)
    torch.testing.assert_close(seen[0]["denoised"], -_toy_v(noise, torch.tensor([999.0])))


def test_dpmpp_2m_is_more_accurate_than_euler_at_the_same_steps():
    """Against a 800-step Euler solution of the same probability-flow ODE."""
    den = VDenoiser(_toy_v, sigmas_table())
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))

    def run(sampler, n):
        s, _ = get_sigmas(n, "karras")
        return sampler(den, noise * (1 + s[0] ** 2).sqrt().float(), s.float())

    ref = run(sample_euler, 800)
    err_euler = (run(sample_euler, 50) - ref).abs().mean()
    err_dpm = (run(sample_dpmpp_2m, 50) - ref).abs().mean()
    assert err_dpm < err_euler / 2


def test_cfg_rescale_matches_diffusers():
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import rescale_noise_cfg

    g = torch.Generator().manual_seed(3)
    u, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    plain = u + 4.0 * (c - u)
    torch.testing.assert_close(cfg(u, c, 4.0), plain)
    torch.testing.assert_close(cfg(u, c, 4.0, rescale=0.7), rescale_noise_cfg(plain, c, guidance_rescale=0.7))


class ComfyModelSampling:
    """ComfyUI's ``ModelSamplingDiscrete`` with ``zsnr`` (comfy/model_sampling.py) as its rules read:
    σ from the linear-in-√β schedule in float64, the ZTSNR rescale done on σ with ᾱ_T set to
    4.8973451890853435e-08, then held as float32; ``timestep`` the nearest table index in log σ,
    ``sigma`` log-linear between the neighbours of a fractional timestep."""

    def __init__(self, zsnr=True):
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        ac = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - ac) / ac) ** 0.5
        if zsnr:
            s = (1 / (sigmas * sigmas + 1)).sqrt()
            s0, st = s[0].clone(), s[-1].clone()
            s = (s - st) * s0 / (s0 - st)
            ab = s**2
            ab[-1] = 4.8973451890853435e-08
            sigmas = ((1 - ab) / ab) ** 0.5
        self.sigmas, self.log_sigmas = sigmas.float(), sigmas.log().float()
        self.sigma_min, self.sigma_max = self.sigmas[0], self.sigmas[-1]

    def timestep(self, sigma):
        return (sigma.log() - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, t):
        t = torch.clamp(t.float(), min=0, max=len(self.sigmas) - 1)
        lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()


def comfy_sigmas(ms: ComfyModelSampling, name: str, steps: int) -> torch.Tensor:
    """comfy/samplers.py's schedulers, rule for rule."""
    import math

    import numpy as np
    from scipy import stats

    if name == "simple":
        ss = len(ms.sigmas) / steps
        return torch.FloatTensor([float(ms.sigmas[-(1 + int(x * ss))]) for x in range(steps)] + [0.0])
    if name in ("normal", "sgm_uniform"):
        start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
        append_zero = True
        if name == "sgm_uniform":
            ts = torch.linspace(start, end, steps + 1)[:-1]
        else:
            if math.isclose(float(ms.sigma(end)), 0, abs_tol=0.00001):
                steps, append_zero = steps + 1, False
            ts = torch.linspace(start, end, steps)
        sigs = [float(ms.sigma(t)) for t in ts]
        return torch.FloatTensor(sigs + [0.0] * append_zero)
    if name == "karras":
        ramp = torch.linspace(0, 1, steps)
        lo, hi = float(ms.sigma_min) ** (1 / 7), float(ms.sigma_max) ** (1 / 7)
        return torch.cat([(hi + ramp * (lo - hi)) ** 7, torch.zeros(1)])
    if name == "exponential":
        s = torch.linspace(math.log(float(ms.sigma_max)), math.log(float(ms.sigma_min)), steps).exp()
        return torch.cat([s, torch.zeros(1)])
    if name == "beta":
        ts = np.rint(stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), 0.6, 0.6) * (len(ms.sigmas) - 1))
        sigs, last = [], -1
        for t in ts:
            if t != last:
                sigs.append(float(ms.sigmas[int(t)]))
            last = t
        return torch.FloatTensor(sigs + [0.0])
    if name == "ddim_uniform":
        x = 1
        if math.isclose(float(ms.sigmas[x]), 0, abs_tol=0.00001):
            steps, sigs = steps + 1, []
        else:
            sigs = [0.0]
        ss = max(len(ms.sigmas) // steps, 1)
        while x < len(ms.sigmas):
            sigs.append(float(ms.sigmas[x]))
            x += ss
        return torch.FloatTensor(sigs[::-1])
    raise AssertionError(name)


COMFY = ["simple", "normal", "sgm_uniform", "karras", "exponential", "beta", "ddim_uniform"]


@pytest.mark.parametrize("name", COMFY)
@pytest.mark.parametrize("steps", [1, 2, 7, 20, 28, 30, 50])
def test_comfyui_schedulers_under_their_names(name, steps):
    ms = ComfyModelSampling()
    ref = comfy_sigmas(ms, name, steps)
    ours, ts = get_sigmas(steps, name, terminal="comfyui")
    assert ours.shape == ref.shape and len(ts) == len(ours) - 1
    # ComfyUI holds σ in float32; ours are float64 from the same formulas
    torch.testing.assert_close(ours.float(), ref, rtol=2e-5, atol=0)


def test_simple_is_not_trailing_and_the_default_stays_trailing():
    """ComfyUI's simple floors i·1000/N where trailing rounds: 28 steps differ at 12 of them."""
    simple, _ = get_sigmas(28, "simple")
    trailing, _ = get_sigmas(28, "trailing")
    differ = int((simple[:-1] != trailing[:-1]).sum())
    assert differ == 12 and (simple[:-1] / trailing[:-1] - 1).abs().max() < 0.035
    import inspect

    assert inspect.signature(get_sigmas).parameters["schedule"].default == "trailing"


def test_schedule_names_and_a1111_labels():
    from zxl.sampler.schedule import A1111_LABELS, SCHEDULES, schedule_name

    assert set(A1111_LABELS) == set(SCHEDULES)
    assert schedule_name("SGM Uniform") == "sgm_uniform" and schedule_name("Karras") == "karras"
    assert schedule_name("DDIM") == "ddim_uniform" and schedule_name("normal") == "normal"
    with pytest.raises(ConfigError, match="sgm_uniform"):
        schedule_name("align_your_steps")


@pytest.mark.parametrize("name", ["normal", "sgm_uniform", "karras", "exponential"])
def test_interpolating_schedules_need_a_finite_sigma_max(name):
    with pytest.raises(ConfigError, match="finite sigma max"):
        get_sigmas(10, name, terminal="zero")


# ----------------------------------------------------------------------------- the U-Net's timestep rule

INTERPOLATING = ("normal", "sgm_uniform", "karras", "exponential")  # σ between table entries


def kdiffusion_sigma_to_t(sigma, sigmas):
    """k_diffusion/external.py ``DiscreteSchedule.sigma_to_t`` with quantize=False, line for line."""
    log_sigmas = sigmas.log()
    log_sigma = sigma.log()
    dists = log_sigma - log_sigmas[:, None]
    low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = ((low - log_sigma) / (low - high)).clamp(0, 1)
    return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)


@pytest.mark.parametrize("name", SCHEDULES)
def test_comfyui_timesteps_are_comfyuis_nearest_whole_timestep(name):
    """For every schedule at 1–50 steps: the t the U-Net gets is ComfyUI's ``timestep(σ)`` — argmin over
    |log σ_table − log σ| with ComfyUI's float32 table — at the float32 σ generate() samples with; and for
    ComfyUI's own schedulers, at the σ ComfyUI itself computes (bit-identical σ, so ties fall alike)."""
    ms = ComfyModelSampling()
    den = VDenoiser(_toy_v, sigmas_table())
    for steps in range(1, 51):
        sigmas, ts = get_sigmas(steps, name)
        assert ts.dtype == torch.float64 and torch.equal(ts, ts.round())
        ref = ms.timestep(sigmas[:-1].float())
        assert ts.long().tolist() == ref.tolist(), (name, steps)
        x = torch.zeros(len(ts), 4, 2, 2)
        assert den.inputs(x, sigmas[:-1].float())[1].tolist() == ref.float().tolist()  # what generate() passes
        if name in COMFY:
            assert ts.long().tolist() == ms.timestep(comfy_sigmas(ms, name, steps)[:-1]).tolist(), (name, steps)


@pytest.mark.parametrize("name", SCHEDULES)
def test_continuous_timesteps_are_k_diffusions_and_differ_off_the_table(name):
    table = sigmas_table()
    differ = 0
    for steps in range(1, 51):
        sigmas, ts = get_sigmas(steps, name)
        _, tc = get_sigmas(steps, name, timesteps="continuous")
        torch.testing.assert_close(tc, kdiffusion_sigma_to_t(sigmas[:-1], table), rtol=0, atol=1e-9)
        assert torch.equal(tc, sigma_to_t(sigmas[:-1], table))  # the rule zxl had before the option
        on_table = (tc - tc.round()).abs() < 1e-9
        assert torch.equal(ts[on_table], tc[on_table]) and bool((ts[~on_table] != tc[~on_table]).all())
        assert bool(((ts - tc).abs() <= 0.5 + 1e-4).all())  # the nearest one: within half a step
        differ += int((~on_table).sum())
    if name in INTERPOLATING:
        assert differ > 0
    else:  # trailing, simple, beta and ddim_uniform index the table: both rules give its t
        assert differ == 0


def test_the_issues_karras_step():
    """dpmpp_2m + karras differed from ComfyUI by up to 11/255: at 10 steps the U-Net got t = 994.37 for
    ComfyUI's 994 (σ = 485.59)."""
    sigmas, ts = get_sigmas(10, "karras")
    _, tc = get_sigmas(10, "karras", timesteps="continuous")
    assert sigmas[3].item() == pytest.approx(485.58945, abs=1e-4)
    assert ts[3].item() == 994 and tc[3].item() == pytest.approx(994.3697, abs=1e-4)


def test_a_sigma_midway_between_two_entries_falls_as_in_comfyui():
    """At 3 normal steps t = 499.5: ComfyUI's float32 σ there sits just below the midpoint in log σ, so its
    nearest timestep is 499; the σ is ComfyUI's bit for bit, so zxl's is too."""
    ms = ComfyModelSampling()
    sigmas, ts = get_sigmas(3, "normal")
    assert sigmas[:-1].float().tolist() == comfy_sigmas(ms, "normal", 3)[:-1].tolist()
    assert ts.tolist() == [999, 499, 0]
    assert get_sigmas(3, "normal", timesteps="continuous")[1][1].item() == pytest.approx(499.5, abs=1e-4)


def test_nearest_timestep_at_the_ends_and_the_zero_terminal():
    table = sigmas_table(terminal="zero")
    assert nearest_timestep(torch.tensor([float("inf"), 1e-6, 1e9]), table).tolist() == [999, 0, 998]
    sigmas, ts = get_sigmas(4, "trailing", terminal="zero")
    assert ts.tolist() == [999, 749, 499, 249]


def test_timestep_rule_names_the_option_and_choices():
    with pytest.raises(ConfigError, match="--timesteps must be one of comfyui, continuous, got 'nearest'"):
        get_sigmas(10, "karras", timesteps="nearest")
    with pytest.raises(ConfigError, match="--timesteps must be one of comfyui, continuous"):
        VDenoiser(_toy_v, sigmas_table(), "rounded")
