"""Dynamic thresholding for high CFG scales (mcmonkeyprojects/sd-dynamic-thresholding,
dynthres_core.py), as docs/recipe.md "Sampling" writes it, on the denoised predictions D_u and D_c:

    rel = D_c − D_u;  mim = D_u + m·rel;  cfg = D_u + s·rel
    flatten to (B, C, H·W); subtract each channel's mean
    reference values, per channel or global —
        AD:  mim_ref = max|mim_c|,  cfg_ref = quantile(|cfg_c|, p)
        STD: mim_ref = std(mim_c),  cfg_ref = std(cfg_c)
    MEAN start point:  AD: m' = max(mim_ref, cfg_ref); out = clamp(cfg_c, −m', m')/m'·mim_ref + mean
                       STD: out = cfg_c/cfg_ref·mim_ref + mean
    ZERO start point:  out = cfg·mim_ref/cfg_ref
    interpolate φ:     out·φ + cfg·(1 − φ)

Both scales may follow a schedule over the steps: frac = step/(steps − 1),
value = (scale − min)·f(frac) + min, f one of ``SCHEDULES`` (the extension's twelve modes; k is its
"Scheduler value": the power of Power Up/Down, the number of cycles of the repeating modes). The
card's advice: mimic scale = CFG scale, both minimum scales one lower, Half Cosine Up for both.

Where zxl deliberately differs from the extension (docs/training.md says the same): the cosine modes
use π/2 and 2π where the extension writes 1.5707 and 6.28318 (a 4e-5 relative difference in the
angle); the step counts model calls as A1111's script does (frac = step/(steps − 1)), where the
ComfyUI node uses (999 − t)/998 of the timestep; and the ComfyUI node skips thresholding when CFG
equals the mimic scale, which zxl does not (with both schedules Constant and percentile 1 the
result is plain CFG anyway; with schedules it is not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from zxl.config import ConfigError

SCHEDULES = {
    "Constant": lambda f, k: 1.0,
    "Linear Up": lambda f, k: f,
    "Linear Down": lambda f, k: 1.0 - f,
    "Half Cosine Up": lambda f, k: 1.0 - math.cos(f),
    "Half Cosine Down": lambda f, k: math.cos(f),
    "Cosine Up": lambda f, k: 1.0 - math.cos(math.pi / 2 * f),
    "Cosine Down": lambda f, k: math.cos(math.pi / 2 * f),
    "Power Up": lambda f, k: f**k,
    "Power Down": lambda f, k: 1.0 - f**k,
    "Linear Repeating": lambda f, k: abs((f * k) % 1.0 - 0.5) * 2.0,
    "Cosine Repeating": lambda f, k: math.cos(2 * math.pi * k * f) * 0.5 + 0.5,
    "Sawtooth": lambda f, k: (f * k) % 1.0,
}
WITH_VALUE = ("Power Up", "Power Down", "Linear Repeating", "Cosine Repeating", "Sawtooth")


def scheduled(scale: float, minimum: float, mode: str, step: int, steps: int, power: float = 4.0) -> float:
    if mode not in SCHEDULES:
        raise ConfigError(f"dynamic thresholding schedule must be one of {', '.join(SCHEDULES)}, got '{mode}'")
    frac = step / (steps - 1) if steps > 1 else 1.0
    return (scale - minimum) * SCHEDULES[mode](frac, power) + minimum


@dataclass
class DynamicThresholding:
    mimic_scale: float = 4.0
    threshold_percentile: float = 1.0
    mimic_mode: str = "Constant"
    mimic_scale_min: float = 0.0
    cfg_mode: str = "Constant"
    cfg_scale_min: float = 0.0
    power: float = 4.0  # the extension's "Scheduler value" (A1111's default 4)
    measure: str = "AD"  # AD | STD
    start: str = "MEAN"  # MEAN | ZERO
    per_channel: bool = True
    interpolate_phi: float = 1.0

    def __post_init__(self):
        if self.measure not in ("AD", "STD"):
            raise ConfigError(f"dynamic thresholding measure must be AD or STD, got '{self.measure}'")
        if self.start not in ("MEAN", "ZERO"):
            raise ConfigError(f"dynamic thresholding start point must be MEAN or ZERO, got '{self.start}'")
        for mode in (self.mimic_mode, self.cfg_mode):
            scheduled(1.0, 0.0, mode, 0, 2)

    @classmethod
    def recipe(cls, cfg_scale: float, mode: str = "Half Cosine Up", value: float = 4.0) -> DynamicThresholding:
        """The model card's advice for a CFG scale (``mode`` for both scales; Half Cosine Up advised)."""
        return cls(mimic_scale=cfg_scale, mimic_mode=mode, mimic_scale_min=cfg_scale - 1,
                   cfg_mode=mode, cfg_scale_min=cfg_scale - 1, power=value)  # fmt: skip

    def infotext_fields(self) -> dict:
        """The extension's own infotext keys (A1111's paste restores them; the percentile in %)."""
        out = {"Dynamic thresholding enabled": True, "Mimic scale": f"{self.mimic_scale:g}",
               "Separate Feature Channels": self.per_channel, "Scaling Startpoint": self.start,
               "Variability Measure": self.measure, "Interpolate Phi": f"{self.interpolate_phi:g}",
               "Threshold percentile": f"{self.threshold_percentile * 100:g}"}  # fmt: skip
        if self.mimic_mode != "Constant":
            out |= {"Mimic mode": self.mimic_mode, "Mimic scale minimum": f"{self.mimic_scale_min:g}"}
        if self.cfg_mode != "Constant":
            out |= {"CFG mode": self.cfg_mode, "CFG scale minimum": f"{self.cfg_scale_min:g}"}
        if self.mimic_mode in WITH_VALUE or self.cfg_mode in WITH_VALUE:
            out["Scheduler value"] = f"{self.power:g}"
        return out

    def __call__(self, d_uncond: torch.Tensor, d_cond: torch.Tensor, cfg_scale: float, step: int, steps: int):
        m = scheduled(self.mimic_scale, self.mimic_scale_min, self.mimic_mode, step, steps, self.power)
        s = scheduled(cfg_scale, self.cfg_scale_min, self.cfg_mode, step, steps, self.power)
        rel = d_cond - d_uncond
        mim = (d_uncond + m * rel).flatten(2)
        cfg = (d_uncond + s * rel).flatten(2)
        mim_c = mim - mim.mean(dim=2, keepdim=True)
        cfg_mean = cfg.mean(dim=2, keepdim=True)
        cfg_c = cfg - cfg_mean
        cfg_abs = cfg_c.abs()
        if cfg_abs.dtype in (torch.float16, torch.bfloat16):  # torch.quantile wants fp32 or fp64
            cfg_abs = cfg_abs.float()
        if self.per_channel:
            if self.measure == "STD":
                mim_ref, cfg_ref = mim_c.std(dim=2, keepdim=True), cfg_c.std(dim=2, keepdim=True)
            else:
                mim_ref = mim_c.abs().amax(dim=2, keepdim=True)
                cfg_ref = torch.quantile(cfg_abs, self.threshold_percentile, dim=2, keepdim=True)
        else:
            if self.measure == "STD":
                mim_ref, cfg_ref = mim_c.std(), cfg_c.std()
            else:
                mim_ref, cfg_ref = mim_c.abs().max(), torch.quantile(cfg_abs, self.threshold_percentile)
        cfg_ref = cfg_ref.to(cfg.dtype)
        if self.start == "ZERO":
            out = cfg * (mim_ref / cfg_ref)
        elif self.measure == "STD":
            out = cfg_c / cfg_ref * mim_ref + cfg_mean
        else:
            top = torch.maximum(mim_ref, cfg_ref)
            out = torch.maximum(torch.minimum(cfg_c, top), -top) / top * mim_ref + cfg_mean
        out = out.unflatten(2, d_cond.shape[2:])
        if self.interpolate_phi != 1.0:
            out = out * self.interpolate_phi + cfg.unflatten(2, d_cond.shape[2:]) * (1.0 - self.interpolate_phi)
        return out
