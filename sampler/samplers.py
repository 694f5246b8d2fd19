"""Samplers with k-diffusion's one signature, a v-prediction denoiser, and CFG with rescale.

``sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None)``,
where ``model(x, sigma, **extra_args)`` returns the denoised prediction D (Karras et al. 2022) and
``generator`` seeds the fresh noise of stochastic samplers (the others ignore it). A new sampler is
one new function. ``VDenoiser`` adapts a v-prediction network at the edge (docs/recipe.md "Sampling"):
input x/√(σ²+1), D = x/(σ²+1) − v̂·σ/√(σ²+1).

σ = ∞ (Zero Terminal SNR's true ᾱ_T = 0, the ``zero`` terminal convention) has one convention: there,
x is passed in its variance-preserving form x/√(σ²+1) — the only finite one, pure noise ε — and D is
−v̂ exactly. DDIM is the sampler that accepts it; the others need a finite σ_max.
"""

from __future__ import annotations

import torch

from zxl.sampler.schedule import timestep_rule, timesteps_of


def v_to_denoised(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """D = x/(σ²+1) − v̂·σ/√(σ²+1) for a sample x at noise level σ (per batch item)."""
    s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return x / (s**2 + 1) - v * s / (s**2 + 1).sqrt()


class VDenoiser:
    """``model(x_in, t) -> v̂`` as a k-diffusion denoiser ``(x, sigma) -> D``; ``inputs`` and
    ``denoised`` are its two halves, for callers that combine several v̂ between them (CFG).
    ``timesteps`` is the rule for t at a σ (schedule.timesteps_of): ``comfyui``, the nearest whole
    timestep (ComfyUI's), or ``continuous``, the interpolated fractional one (k-diffusion's, A1111's)."""

    def __init__(self, model, sigma_table: torch.Tensor, timesteps: str = "comfyui"):
        self.model = model
        self.table = sigma_table
        self.timesteps = timestep_rule(timesteps)

    def inputs(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the network's input x/√(σ²+1), its timestep by the rule); x itself where σ = ∞."""
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        scale = torch.where(torch.isinf(s), torch.ones_like(s), (s**2 + 1).rsqrt())
        t = timesteps_of(sigma.reshape(-1).double().cpu(), self.table, self.timesteps).to(x.device, x.dtype)
        return x * scale, t

    def denoised(self, x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D from the network's v̂: x/(σ²+1) − v̂·σ/√(σ²+1), and −v̂ where σ = ∞."""
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        finite = torch.isfinite(s)
        return torch.where(finite, v_to_denoised(x, v, torch.where(finite, s, 0).reshape(-1)), -v)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kw) -> torch.Tensor:
        x_in, t = self.inputs(x, sigma)
        return self.denoised(x, self.model(x_in, t, **kw), sigma)


def cfg(uncond: torch.Tensor, cond: torch.Tensor, scale: float, rescale: float = 0.0) -> torch.Tensor:
    """v = v_u + s·(v_c − v_u), then CFG rescale (Lin et al. 2023 §3.4) with φ = ``rescale``:
    v ← φ·v·std(v_c)/std(v) + (1 − φ)·v, std over all but the batch dim."""
    out = uncond + scale * (cond - uncond)
    if rescale:
        dims = list(range(1, out.ndim))
        ratio = cond.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True)
        out = rescale * (out * ratio) + (1 - rescale) * out
    return out


def _to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def _noop(*a, **k):
    return None


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None):
    """Algorithm 2 (Euler steps) of Karras et al. (2022)."""
    extra_args, callback = extra_args or {}, callback or _noop
    for i in range(len(sigmas) - 1):
        s = sigmas[i] * x.new_ones([x.shape[0]])
        denoised = model(x, s, **extra_args)
        callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        x = x + _to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None, eta=1.0):
    """Euler ancestral (k-diffusion): an Euler step to σ_down, then fresh noise of σ_up."""
    extra_args, callback = extra_args or {}, callback or _noop
    for i in range(len(sigmas) - 1):
        s = sigmas[i] * x.new_ones([x.shape[0]])
        denoised = model(x, s, **extra_args)
        callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        s_from, s_to = sigmas[i], sigmas[i + 1]
        s_up = min(s_to, eta * (s_to**2 * (s_from**2 - s_to**2) / s_from**2) ** 0.5)
        s_down = (s_to**2 - s_up**2) ** 0.5
        x = x + _to_d(x, s_from, denoised) * (s_down - s_from)
        if s_to > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            x = x + noise * s_up
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None):
    """DPM-Solver++(2M) (Lu et al. 2022), in k-diffusion's form."""
    extra_args, callback = extra_args or {}, callback or _noop
    old_denoised = None
    for i in range(len(sigmas) - 1):
        s = sigmas[i] * x.new_ones([x.shape[0]])
        denoised = model(x, s, **extra_args)
        callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        t, t_next = -torch.log(sigmas[i]), -torch.log(sigmas[i + 1]) if sigmas[i + 1] > 0 else None
        if t_next is None:
            x = denoised
        else:
            h = t_next - t
            if old_denoised is None:
                d = denoised
            else:
                h_last = t - (-torch.log(sigmas[i - 1]))
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None):
    """DDIM (Song et al. 2021), η = 0, in the variance-preserving form x_vp = x/√(σ²+1), ᾱ = 1/(σ²+1).

    x̂_0 = D, ε̂ = (x_vp − √ᾱ·x̂_0)/√(1−ᾱ), x'_vp = √ᾱ'·x̂_0 + √(1−ᾱ')·ε̂; returned in k-diffusion's
    scale. For finite σ this is the Euler step (why ComfyUI's ``ddim`` is its Euler); it also starts
    at σ_0 = ∞ (ᾱ_T = 0), where x is ε and x̂_0 = −v̂ exactly.
    """
    extra_args, callback = extra_args or {}, callback or _noop
    for i in range(len(sigmas) - 1):
        sig, sig_next = sigmas[i], sigmas[i + 1]
        inf = bool(torch.isinf(sig))
        denoised = model(x, sig * x.new_ones([x.shape[0]]), **extra_args)
        callback({"x": x, "i": i, "sigma": sig, "denoised": denoised})
        if inf:  # x is x_vp = ε; ε̂ = x_vp since √ᾱ = 0
            eps = x
        else:
            eps = (x - denoised) / sig  # = (x_vp − √ᾱ·x̂_0)/√(1−ᾱ)
        x = denoised + eps * sig_next  # x' = √(1+σ'²)·(√ᾱ'·x̂_0 + √(1−ᾱ')·ε̂)
    return x


SAMPLERS = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "ddim": sample_ddim,
}
