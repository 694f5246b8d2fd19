"""The ZTSNR schedule, sigmas and samplers against diffusers, the numeric oracle (RECIPE.md)."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale

from zxl.config import ConfigError
from zxl.sampler.samplers import VDenoiser, cfg, sample_ddim, sample_dpmpp_2m, sample_euler
from zxl.sampler.schedule import (
    alphas_cumprod,
    get_sigmas,
    rescale_zero_terminal_snr,
    sdxl_betas,
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
