"""The SDXL noise schedule with Zero Terminal SNR, its sigmas, and sampling step schedules.

docs/recipe.md "Noise schedule" and "Sampling":

- SDXL: β_t = (linspace(√0.00085, √0.012, 1000))², ᾱ_t = ∏(1 − β_s);
- Zero Terminal SNR (Lin et al. 2023, Algorithm 1): s = √ᾱ; s ← (s − s_T)·s_0/(s_0 − s_T);
  ᾱ = s²; back to β. Then ᾱ_T = 0 exactly and ᾱ_0 is unchanged (oracle: diffusers
  ``rescale_zero_terminal_snr``);
- σ_t = √((1 − ᾱ_t)/ᾱ_t) is infinite at T, so a sampler needs a terminal convention:
  ``comfyui`` (ComfyUI and A1111: ᾱ_T = 4.8973451890853435e-08, σ_max ≈ 4518.76) — the default,
  since that is what this model's users run — or ``diffusers`` (Euler's ᾱ_T = 2⁻²⁴, σ_max ≈ 4096),
  or ``zero`` (ᾱ_T = 0 itself, σ_max = ∞: DDIM only, sampler/samplers.py says how);
- step schedules: ``trailing`` (the default: diffusers' trailing timesteps
  t_i = round(T+1 − i·(T+1)/N) − 1, i.e. 999, 963, … for N = 28), and ComfyUI's schedulers under
  their ComfyUI names, each ComfyUI's formula (comfy/samplers.py) over the same σ table:
  ``simple`` σ[T − ⌊i·(T+1)/N⌋]; ``normal`` σ(t) at t = linspace(T, 0, N), σ(t) interpolated in
  log σ (in float32, as ComfyUI: its σ bit for bit); ``sgm_uniform`` the same over
  linspace(T, 0, N+1) without its last point; ``karras`` (ρ = 7) and ``exponential`` between
  σ_min and σ_max (k-diffusion); ``beta`` σ[rint(T·F⁻¹(1 − i/N))] with F the Beta(0.6, 0.6) CDF,
  repeated timesteps dropped; ``ddim_uniform`` every ⌊(T+1)/N⌋-th σ from σ[1] up (which may give
  one step more than asked, as in ComfyUI).
  A1111 labels them "Schedule type: Simple", "Normal", "SGM Uniform", "Karras", "Exponential",
  "Beta", "DDIM"; A1111's own "Beta" interpolates differently (docs/training.md);
- the timestep the U-Net gets at a σ between table entries (``normal``, ``sgm_uniform``, ``karras``,
  ``exponential``): ``comfyui`` (the default) the nearest whole t in log σ, ComfyUI's
  ``ModelSamplingDiscrete.timestep`` (argmin over |log σ_table − log σ|, in float32); ``continuous``
  the fractional t interpolated in log σ, k-diffusion's ``DiscreteSchedule.sigma_to_t`` (A1111).
  At a table entry both give that entry's t.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from zxl.config import ConfigError

T = 999  # the last training timestep
TERMINAL_ALPHA_BAR = {"comfyui": 4.8973451890853435e-08, "diffusers": 2.0**-24, "zero": 0.0}
SCHEDULES = ("trailing", "simple", "normal", "sgm_uniform", "karras", "exponential", "beta", "ddim_uniform")
A1111_LABELS = {"trailing": "Trailing", "simple": "Simple", "normal": "Normal", "sgm_uniform": "SGM Uniform",
                "karras": "Karras", "exponential": "Exponential", "beta": "Beta", "ddim_uniform": "DDIM"}  # fmt: skip
# the timestep the U-Net gets at a sigma between table entries: ComfyUI's nearest whole one, or
# k-diffusion's (and A1111's) interpolated fractional one
TIMESTEP_RULES = ("comfyui", "continuous")
BETA_ALPHA = BETA_BETA = 0.6  # ComfyUI's KSampler "beta" (the BetaSamplingScheduler node's defaults)


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
    """The (fractional) timestep of a sigma, by linear interpolation in log σ (k-diffusion's
    ``DiscreteSchedule.sigma_to_t`` unquantized, A1111's default): the ``continuous`` rule."""
    log_table = table.log()
    log_sigma = sigma.to(table.dtype).clamp_min(table[0]).log()
    idx = torch.searchsorted(log_table, log_sigma).clamp(1, len(table) - 1)
    lo, hi = log_table[idx - 1], log_table[idx]
    w = ((log_sigma - lo) / (hi - lo)).nan_to_num(1.0).clamp(0, 1)  # σ = ∞ (the zero terminal): the last t
    return (idx - 1).to(table.dtype) + w


def nearest_timestep(sigma: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The whole timestep nearest a sigma in log σ, as ComfyUI's ``ModelSamplingDiscrete.timestep``
    computes it (the ``comfyui`` rule): the table's log held in float32, σ's log taken in float32,
    the argmin of the distance (the lower index on a tie). σ = ∞ (the zero terminal) is the last t.
    Returned in the table's dtype, like ``sigma_to_t``."""
    log_table = table.log().float()
    s = sigma.float()
    t = (s.log() - log_table[:, None]).abs().argmin(dim=0).view(s.shape)
    return torch.where(torch.isinf(s), len(table) - 1, t).to(table.dtype)


def timestep_rule(rule: str, option: str = "--timesteps") -> str:
    """``rule`` when it is one of TIMESTEP_RULES, else a ConfigError naming ``option`` and the choices."""
    if rule not in TIMESTEP_RULES:
        raise ConfigError(f"{option} must be one of {', '.join(TIMESTEP_RULES)}, got '{rule}'")
    return rule


def timesteps_of(sigma: torch.Tensor, table: torch.Tensor, rule: str = "comfyui") -> torch.Tensor:
    """The timestep the U-Net is given at each sigma, by ``rule``: ``comfyui`` (nearest whole timestep)
    or ``continuous`` (k-diffusion's interpolation)."""
    if timestep_rule(rule) == "comfyui":
        return nearest_timestep(sigma, table)
    return sigma_to_t(sigma, table)


def schedule_name(name: str) -> str:
    """A schedule given by its ComfyUI name or its A1111 label ("SGM Uniform", "Karras", …) → ours."""
    key = name.strip().lower().replace(" ", "_")
    by_label = {v.lower().replace(" ", "_"): k for k, v in A1111_LABELS.items()}
    if key in SCHEDULES:
        return key
    if key in by_label:
        return by_label[key]
    raise ConfigError(f"sigma schedule must be one of {', '.join(SCHEDULES)} (or its A1111 label), got '{name}'")


def sigma_at(t: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """σ at a fractional timestep, interpolated in log σ between the table's neighbours, as ComfyUI's
    ``ModelSamplingDiscrete.sigma`` computes it: in float32, over the table's log held in float32
    (returned in the table's dtype). ComfyUI's σ bit for bit, so that a σ midway between two entries
    (t = k + ½) has ComfyUI's nearest whole timestep too (``nearest_timestep``)."""
    t = t.float().clamp(0, len(table) - 1)
    lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
    log_table = table.log().float()
    return ((1 - w) * log_table[lo] + w * log_table[hi]).exp().to(table.dtype)


def _table_steps(table: torch.Tensor, steps: int, schedule: str, rho: float) -> torch.Tensor:
    """σ for each step (no trailing 0), float64, by the schedule's own rule."""
    n = len(table)  # T + 1
    if schedule == "trailing":
        return table[torch.tensor(trailing_timesteps(steps))]
    if schedule == "simple":
        ss = n / steps
        return table[torch.tensor([n - 1 - int(i * ss) for i in range(steps)])]
    if schedule == "ddim_uniform":
        ss = max(n // steps, 1)
        return table[torch.arange(1, n, ss)].flip(0)
    if schedule == "beta":
        from scipy.stats import beta

        ts = np.rint(beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), BETA_ALPHA, BETA_BETA) * (n - 1))
        keep = [int(t) for i, t in enumerate(ts) if i == 0 or t != ts[i - 1]]
        return table[torch.tensor(keep)]
    s_min, s_max = table[0].item(), table[-1].item()
    if not math.isfinite(s_max):
        raise ConfigError(f"the {schedule} schedule needs a finite sigma max: use terminal comfyui or diffusers")
    if schedule in ("normal", "sgm_uniform"):  # ComfyUI's float32 linspace (499.5 at 3 normal steps)
        t = torch.linspace(n - 1, 0, steps + (schedule == "sgm_uniform"), dtype=torch.float32)
        return sigma_at(t[:steps], table)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    if schedule == "karras":
        lo, hi = s_min ** (1 / rho), s_max ** (1 / rho)
        return (hi + ramp * (lo - hi)) ** rho
    return torch.exp(math.log(s_max) + ramp * (math.log(s_min) - math.log(s_max)))


def get_sigmas(steps: int, schedule: str = "trailing", ztsnr: bool = True, terminal: str = "comfyui",
               rho: float = 7.0, timesteps: str = "comfyui") -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(sigmas [M+1] ending in 0, timesteps [M]) for N sampling steps, float64. M = N but for
    ``beta`` (fewer where timesteps repeat) and ``ddim_uniform`` (⌈T/⌊(T+1)/N⌋⌉), as in ComfyUI.
    The timesteps are those the U-Net gets by the ``timesteps`` rule (``timesteps_of``), at the
    float32 sigmas ``generate`` hands the samplers."""
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"sigma schedule must be one of {', '.join(SCHEDULES)}, got '{schedule}'")
    timestep_rule(timesteps)
    table = sigmas_table(ztsnr, terminal)
    sig = _table_steps(table, steps, schedule, rho)
    return torch.cat([sig, sig.new_zeros(1)]), timesteps_of(sig, table, timesteps)


def format_table(sigmas: torch.Tensor, timesteps: torch.Tensor) -> str:
    """The sigma/timestep table ``zxl sample --print-sigmas`` prints."""
    abar = 1 / (1 + sigmas**2)
    lines = [f"{'step':>4}  {'timestep':>9}  {'sigma':>14}  {'alpha_bar':>12}  {'log SNR':>9}"]
    for i, t in enumerate(timesteps.tolist()):
        s = sigmas[i].item()
        lines.append(f"{i:>4}  {t:>9.3f}  {s:>14.6f}  {abar[i].item():>12.6e}  {-2 * math.log(s):>9.4f}")
    lines.append(f"{'end':>4}  {'':>9}  {0.0:>14.6f}  {1.0:>12.6e}  {'inf':>9}")
    return "\n".join(lines)
