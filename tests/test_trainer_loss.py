"""The training objective against docs/recipe.md's formulas and diffusers' schedule, on fixed tensors."""

import math

import pytest
import torch

from zxl.trainer.loss import AdaptiveWeighting, Schedule, huber_c, per_sample_loss


@pytest.fixture(scope="module")
def sched():
    return Schedule(ztsnr=True)


def test_ztsnr_betas_equal_diffusers(sched):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)
    assert torch.allclose(sched.alphas_cumprod, ref.alphas_cumprod.float(), atol=1e-7)
    assert sched.alphas_cumprod[-1] == 0
    assert sched.alphas_cumprod[499].item() == pytest.approx(0.24236, abs=1e-5)


def test_snr_table_is_post_rescale(sched):
    assert sched.snr[-1] == 0  # before the rescale snr_T ≈ 0.0047
    ac = sched.alphas_cumprod.double()
    assert torch.allclose(sched.snr[:-1].double(), (ac / (1 - ac))[:-1], rtol=1e-6)
    assert math.isinf(sched.sigmas[-1].item())


def test_v_target_and_noising(sched):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 250, 700, 999])
    x_t, v = sched.noisy_and_target(x0, eps, t, None)
    assert torch.allclose(x_t, ref.add_noise(x0, eps, t), atol=1e-5)
    assert torch.allclose(v, ref.get_velocity(x0, eps, t), atol=1e-5)
    assert torch.allclose(x_t[3], eps[3]) and torch.allclose(v[3], -x0[3])  # at t = T: x_t = ε, v = −x_0


def test_input_perturbation_leaves_the_target_clean(sched):
    g = torch.Generator().manual_seed(1)
    x0, eps, xi = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([100, 600])
    x_clean, v_clean = sched.noisy_and_target(x0, eps, t, None)
    x_ip, v_ip = sched.noisy_and_target(x0, eps, t, 0.1 * xi)
    assert torch.equal(v_ip, v_clean)
    a, s = sched.coefficients(t)
    assert torch.allclose(x_ip, a * x0 + s * (eps + 0.1 * xi))
    assert not torch.allclose(x_ip, x_clean)


def test_pseudo_huber_formula():
    pred = torch.tensor([[[[0.0, 1.0], [2.0, -3.0]]]])
    target = torch.zeros_like(pred)
    c = torch.tensor([0.1])
    expected = sum(2 * 0.1 * (math.sqrt(d * d + 0.01) - 0.1) for d in (0.0, 1.0, 2.0, -3.0)) / 4
    assert per_sample_loss(pred, target, "huber", c).item() == pytest.approx(expected, rel=1e-6)
    assert per_sample_loss(pred, target, "l2").item() == pytest.approx((0 + 1 + 4 + 9) / 4)


def test_pseudo_huber_without_c_is_a_clear_error():
    pred = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="pseudo-Huber needs c"):
        per_sample_loss(pred, pred, "huber")


def test_huber_schedules(sched):
    t = torch.tensor([0, 10, 500, 999])
    snr = huber_c(t, "snr", 0.1, sched)
    sig = sched.sigmas[t].double()
    assert torch.allclose(snr.double(), (1 - 0.1) / (1 + sig) ** 2 + 0.1)
    assert snr[-1].item() == pytest.approx(0.1)  # c_T = c₀
    assert snr[0].item() == pytest.approx(0.9 / (1 + sig[0].item()) ** 2 + 0.1, rel=1e-6)
    exp = huber_c(t, "exponential", 0.1, sched)
    a = -math.log(0.1) / 1000
    assert torch.allclose(exp.double(), torch.exp(-a * t.double()), rtol=1e-6)
    assert torch.equal(huber_c(t, "constant", 0.1, sched), torch.full((4,), 0.1))
    with pytest.raises(ValueError, match="snr, exponential or constant"):
        huber_c(t, "cosine", 0.1, sched)


def test_adaptive_weighting_finite_at_t_max_and_formula(sched):
    w = AdaptiveWeighting(sched.alphas_cumprod, channels=16)
    t = torch.tensor([0, 500, 999])
    assert torch.equal(w(t), torch.zeros(3))  # zero-initialised: the plain loss at first
    with torch.no_grad():  # seeded: the global generator's state depends on the tests that ran before
        w.linear.weight.copy_(torch.randn(w.linear.weight.shape, generator=torch.Generator().manual_seed(0)))
        w.linear.bias.fill_(0.3)
    u = w(torch.arange(1000))
    assert torch.isfinite(u).all()
    loss = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(w.weighted(loss, t), loss / w(t).exp() + w(t))
    # one Adam step on ℓ/e^u + u moves u towards ln ℓ
    opt = torch.optim.Adam(w.parameters(), lr=2e-2, betas=(0.9, 0.99))
    big = torch.full((3,), 50.0)
    before = w(t).detach()
    w.weighted(big, t).mean().backward()
    opt.step()
    target = torch.log(big)
    assert ((w(t).detach() - target).abs() < (before - target).abs()).all()
    assert len(w.curve()) == 11 and w.curve()[-1][0] == 999
