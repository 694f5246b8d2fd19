"""The SDXL noise schedule with Zero Terminal SNR, its sigmas, and sampling step schedules.

RECIPE.md "Noise schedule" and "Sampling":

- SDXL: β_t = (linspace(√0.00085, √0.012, 1000))², ᾱ_t = ∏(1 − β_s);
- Zero Terminal SNR (Lin et al. 2023, Algorithm 1): s = √ᾱ; s ← (s − s_T)·s_0/(s_0 − s_T);
  ᾱ = s²; back to β. Then ᾱ_T = 0 exactly and ᾱ_0 is unchanged (oracle: diffusers
  ``rescale_zero_terminal_snr``);
- σ_t = √((1 − ᾱ_t)/ᾱ_t) is infinite at T, so a sampler needs a terminal convention:
  ``comfyui`` (ComfyUI and A1111: ᾱ_T = 4.8973451890853435e-08, σ_max ≈ 4518.76) — the default,
  since that is what this model's users run — or ``diffusers`` (Euler's ᾱ_T = 2⁻²⁴, σ_max ≈ 4096),
  or ``zero`` (ᾱ_T = 0 itself, σ_max = ∞: DDIM only, sampler/samplers.py says how);
- "trailing" timesteps t_i = round(T+1 − i·(T+1)/N) − 1 (999, 963, … for N = 28), and the
  k-diffusion sigma schedules ``karras`` (ρ = 7) and ``exponential`` between σ_min and σ_max.
"""

from __future__ import annotations

import math

import torch

from zxl.config import ConfigError

T = 999  # the last training timestep
TERMINAL_ALPHA_BAR = {"comfyui": 4.8973451890853435e-08, "diffusers": 2.0**-24, "zero": 0.0}
SCHEDULES = ("trailing", "simple", "karras", "exponential")


def sdxl_betas(n: int = 1000, start: float = 0.00085, end: float = 0.012) -> torch.Tensor:
    return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2023), Algorithm 1: shift and scale √ᾱ so that ᾱ_T = 0 and ᾱ_0 is unchanged."""
    s = torch.cumprod(1.0 - betas, dim=0).sqrt()
    s_0, s_end = s[0].clone(), s[-1].clone()
    s = (s - s_end) * s_0 / (s_0 - s_end)
    abar = s**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


def alphas_cumprod(ztsnr: bool = True) -> torch.Tensor:
    """ᾱ_t for t = 0..999, float64."""
    betas = sdxl_betas()
    if ztsnr:
        betas = rescale_zero_terminal_snr(betas)
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_table(ztsnr: bool = True, terminal: str = "comfyui") -> torch.Tensor:
    """σ_t for t = 0..999 (float64), ᾱ_T replaced by the terminal convention when it is 0."""
    if terminal not in TERMINAL_ALPHA_BAR:
        raise ConfigError(
            f"sampler terminal convention must be one of {', '.join(TERMINAL_ALPHA_BAR)}, got '{terminal}'"
        )
    abar = alphas_cumprod(ztsnr).clone()
    if abar[-1] <= 0:
        abar[-1] = TERMINAL_ALPHA_BAR[terminal]
    return ((1 - abar) / abar).sqrt()


def trailing_timesteps(steps: int, t_max: int = T) -> list[int]:
    """t_i = round(T+1 − i·(T+1)/N) − 1 for i = 0..N−1."""
    n = t_max + 1
    return [int(round(n - i * n / steps)) - 1 for i in range(steps)]


def sigma_to_t(sigma: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The (fractional) timestep of a sigma, by linear interpolation in log σ (k-diffusion's way)."""
    log_table = table.log()
    log_sigma = sigma.to(table.dtype).clamp_min(table[0]).log()
    idx = torch.searchsorted(log_table, log_sigma).clamp(1, len(table) - 1)
    lo, hi = log_table[idx - 1], log_table[idx]
    w = ((log_sigma - lo) / (hi - lo)).nan_to_num(1.0).clamp(0, 1)  # σ = ∞ (the zero terminal): the last t
    return (idx - 1).to(table.dtype) + w


def get_sigmas(steps: int, schedule: str = "trailing", ztsnr: bool = True, terminal: str = "comfyui",
               rho: float = 7.0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(sigmas [N+1] ending in 0, timesteps [N]) for N sampling steps, float64."""
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"sigma schedule must be one of {', '.join(SCHEDULES)}, got '{schedule}'")
    table = sigmas_table(ztsnr, terminal)
    if schedule in ("trailing", "simple"):
        ts = torch.tensor(trailing_timesteps(steps), dtype=torch.float64)
        sig = table[ts.long()]
    else:
        s_min, s_max = table[0].item(), table[-1].item()
        if not math.isfinite(s_max):
            raise ConfigError(f"the {schedule} schedule needs a finite sigma max: use terminal comfyui or diffusers")
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        if schedule == "karras":
            lo, hi = s_min ** (1 / rho), s_max ** (1 / rho)
            sig = (hi + ramp * (lo - hi)) ** rho
        else:
            sig = torch.exp(math.log(s_max) + ramp * (math.log(s_min) - math.log(s_max)))
        ts = sigma_to_t(sig, table)
    return torch.cat([sig, sig.new_zeros(1)]), ts


def format_table(sigmas: torch.Tensor, timesteps: torch.Tensor) -> str:
    """The sigma/timestep table ``zxl sample --print-sigmas`` prints."""
    abar = 1 / (1 + sigmas**2)
    lines = [f"{'step':>4}  {'timestep':>9}  {'sigma':>14}  {'alpha_bar':>12}  {'log SNR':>9}"]
    for i, t in enumerate(timesteps.tolist()):
        s = sigmas[i].item()
        lines.append(f"{i:>4}  {t:>9.3f}  {s:>14.6f}  {abar[i].item():>12.6e}  {-2 * math.log(s):>9.4f}")
    lines.append(f"{'end':>4}  {'':>9}  {0.0:>14.6f}  {1.0:>12.6e}  {'inf':>9}")
    return "\n".join(lines)
