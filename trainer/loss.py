"""The training objective (docs/recipe.md "Noise schedule", "v-prediction", "Training loss").

- ZTSNR schedule: sampler.schedule's ᾱ (equal to diffusers' ``rescale_betas_zero_snr``), so
  ᾱ_T = 0 and every SNR table below is the post-rescale one.
- x_t = √ᾱ·x_0 + √(1−ᾱ)·(ε + γ·ξ): input perturbation (kohya's ``ip_noise_gamma``); the
  v-prediction target v = √ᾱ·ε − √(1−ᾱ)·x_0 is built from the clean ε.
- Pseudo-Huber per element 2c·(√((v̂−v)² + c²) − c), mean over C, H, W; c by schedule "snr"
  c_t = (1−c₀)/(1+σ_t)² + c₀ (kohya's default; c_T = c₀), "exponential" exp(−a·t) with
  a = −ln(c₀)/1000, "constant" c₀; or plain L2.
- EDM2's adaptive loss weighting (Karras et al. 2024, "Analyzing and Improving the Training
  Dynamics of Diffusion Models", §5 / ``training/loss.py``): ℓ/exp(u(t)) + u(t), with u a linear
  layer over Fourier features of the noise level. EDM2 feeds ln(σ)/4, infinite at t = T under
  ZTSNR, so u here reads the noise level √(1−ᾱ_t) ∈ [0, 1]: finite everywhere, t = T included.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zxl.sampler.schedule import alphas_cumprod

T = 1000


class Schedule:
    """ᾱ, σ and the noising of the training schedule, on one device."""

    def __init__(self, ztsnr: bool = True, device: torch.device | str = "cpu"):
        self.alphas_cumprod = alphas_cumprod(ztsnr).to(device, torch.float32)
        ac = self.alphas_cumprod.double()
        self.sigmas = ((1 - ac) / ac).sqrt().to(device, torch.float32)  # σ_T = inf under ZTSNR
        self.snr = (ac / (1 - ac)).to(device, torch.float32)  # post-rescale: snr_T = 0

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ac = self.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return ac.sqrt(), (1 - ac).sqrt()

    def noisy_and_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, perturb: torch.Tensor | None):
        """(x_t, v): the input noised with ε (+ γξ when ``perturb`` is given), the target from clean ε."""
        a, s = self.coefficients(t)
        x_t = a * x0 + s * (noise if perturb is None else noise + perturb)
        return x_t, a * noise - s * x0


def huber_c(t: torch.Tensor, schedule: str, c0: float, sched: Schedule) -> torch.Tensor:
    """The pseudo-Huber c per sample (kohya sd-scripts ``get_huber_threshold_if_needed``)."""
    if schedule == "snr":
        return (1 - c0) / (1 + sched.sigmas[t]) ** 2 + c0
    if schedule == "exponential":
        return torch.exp(-(-math.log(c0) / T) * t.float())
    if schedule == "constant":
        return torch.full(t.shape, c0, device=t.device)
    raise ValueError(f"huber schedule {schedule!r}: choose snr, exponential or constant")


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, c: torch.Tensor | None = None):
    """Mean over C, H, W of pseudo-Huber (``kind='huber'``, c per sample) or squared error."""
    pred, target = pred.float(), target.float()
    if kind == "l2":
        elem = (pred - target) ** 2
    else:
        if c is None:
            raise ValueError(f"loss {kind!r}: pseudo-Huber needs c, one per sample (or kind 'l2')")
        c = c.float().reshape(-1, 1, 1, 1)
        elem = 2 * c * (torch.sqrt((pred - target) ** 2 + c**2) - c)
    return elem.mean(dim=(1, 2, 3))


class AdaptiveWeighting(nn.Module):
    """u(t): EDM2's learned log-variance of the loss per noise level. Fixed random Fourier
    features (EDM2's MPFourier: √2·cos(2π(f·x + φ)), f ~ N(0, 1), φ ~ U(0, 1)) of the noise level
    √(1−ᾱ_t), then a linear layer. Its weights start at zero so the first steps see the plain loss."""

    freqs: torch.Tensor  # the buffers registered below
    phases: torch.Tensor
    level: torch.Tensor

    def __init__(self, alphas_cumprod: torch.Tensor, channels: int = 128, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(channels, generator=g))
        self.register_buffer("phases", torch.rand(channels, generator=g))
        self.register_buffer("level", (1 - alphas_cumprod.double()).sqrt().float())
        self.linear = nn.Linear(channels, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = self.level.to(t.device)[t].float()
        features = math.sqrt(2) * torch.cos(2 * math.pi * (x[:, None] * self.freqs[None] + self.phases[None]))
        return self.linear(features).squeeze(-1)

    def weighted(self, loss: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ℓ / exp(u) + u per sample."""
        u = self.forward(t)
        return loss / u.exp() + u

    @torch.no_grad()
    def curve(self, points: int = 11) -> list[tuple[int, float]]:
        """(t, u(t)) at evenly spaced timesteps, T − 1 included: what the logs plot."""
        ts = torch.linspace(0, T - 1, points).round().long()
        return list(zip(ts.tolist(), self.forward(ts.to(self.linear.weight.device)).tolist(), strict=True))
