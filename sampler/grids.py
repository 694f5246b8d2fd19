"""``zxl sample``: validation grids over axes of prompt, seed, CFG, steps, sampler, mimic scale
or checkpoint, from a kohya prompt file. Each image is also saved on its own with its A1111
``parameters`` text, and so is the grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zxl.config import ConfigError, check_value
from zxl.sampler.grid import make_grid, save_png
from zxl.sampler.guidance import DynamicThresholding
from zxl.sampler.pipeline import DEFAULT_SAMPLING, SDXL, Sampling, generate
from zxl.sampler.prompts import INFOTEXT_SAMPLER, Prompt, infotext, sampler_name

AXES = ("prompt", "seed", "cfg", "steps", "sampler", "mimic", "checkpoint")


# the numeric axes: (type, allowed range, note), as the prompt file's --d, --l, --s and the mimic scale
AXIS_VALUES = {
    "seed": (int, None, ""),
    "cfg": (float, "[0, inf)", " (0 is unconditional, 1 conditional without guidance)"),
    "steps": (int, "[1, 1000]", " (the schedule has 1000 timesteps)"),
    "mimic": (float, "[0, inf)", ""),
}


def parse_axis(text: str | None, flag: str = "--x", prompts: int | None = None) -> tuple[str, list[str]] | None:
    """``cfg=3,4,5`` → ("cfg", ["3", "4", "5"]); ``prompt`` alone means every prompt of the file.
    Numeric values are checked here, before any model loads (``prompts``: how many the file holds)."""
    if not text:
        return None
    name, _, values = text.partition("=")
    name = name.strip()
    if name not in AXES:
        raise ConfigError(f"axis '{name}': choose from {', '.join(AXES)}")
    vals = [v.strip() for v in values.split(",") if v.strip()] if values else []
    if name != "prompt" and not vals:
        raise ConfigError(f"axis '{name}' needs values, e.g. --x {name}=1,2,3")
    kind, allowed, note = AXIS_VALUES.get(name, (None, None, ""))
    if name == "prompt":  # indices into the prompt file
        kind = int
        if prompts is not None:
            allowed, note = f"[0, {prompts - 1}]", f" (an index into the {prompts} prompts of the file)"
    if kind is None:
        return name, vals
    for v in vals:
        try:
            number = kind(v)
        except ValueError:
            raise ConfigError(f"{flag} {text}: '{v}' is not {'an integer' if kind is int else 'a number'}") from None
        if allowed is not None:
            check_value(f"{flag} {name}", number, allowed, integer=kind is int, note=note)
    return name, vals


def _apply(p: Prompt, axis: str, value, prompts: list[Prompt]) -> tuple[Prompt, dict]:
    if axis == "prompt":
        return prompts[int(value)], {}
    if axis == "seed":
        return p.with_(seed=int(value)), {}
    if axis == "cfg":
        return p.with_(cfg=float(value)), {}
    if axis == "steps":
        return p.with_(steps=int(value)), {}
    if axis == "sampler":
        return p.with_(sampler=sampler_name(value)), {}
    if axis == "mimic":
        return p, {"mimic": float(value)}
    return p, {"checkpoint": value}


def _label(axis: str, value, prompts: list[Prompt]) -> str:
    if axis == "prompt":
        text = prompts[int(value)].prompt
        return text if len(text) <= 40 else text[:37] + "…"
    return f"{axis} {value}"


@dataclass(frozen=True)
class Loading:
    """How ``render`` loads a model reference: device, precision, torch.compile, and the diffusers
    folder whose configs describe a single file."""

    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    config: str | None = None


DEFAULT_LOADING = Loading()


def render(
    model_ref: str | SDXL,
    prompts: list[Prompt],
    out: Path,
    x: tuple | None = None,
    y: tuple | None = None,
    sampling: Sampling = DEFAULT_SAMPLING,
    loading: Loading = DEFAULT_LOADING,
    log=print,
) -> list[Path]:
    """One grid per prompt (or one in all when an axis is ``prompt``); returns the grid files.
    ``model_ref`` is a model reference or an already loaded model (the trainer's validation grids)."""
    models: dict[str, SDXL] = {}

    def model(ref):
        if isinstance(ref, SDXL):
            return ref
        if ref not in models:
            models.clear()
            models[ref] = SDXL.load(ref, loading.device, loading.precision, loading.compile, config=loading.config)
        return models[ref]

    def values(axis):
        if axis is None:
            return [None]
        name, vals = axis
        return list(range(len(prompts))) if name == "prompt" and not vals else vals

    uses_prompt_axis = any(a is not None and a[0] == "prompt" for a in (x, y))
    bases = [prompts[0]] if uses_prompt_axis else prompts
    out.mkdir(parents=True, exist_ok=True)
    grids = []
    for g, base in enumerate(bases):
        rows = []
        for yv in values(y):
            row = []
            for xv in values(x):
                p, extra = base, {}
                for axis, v in ((y, yv), (x, xv)):
                    if axis is not None:
                        p, more = _apply(p, axis[0], v, prompts)
                        extra.update(more)
                ref = extra.get("checkpoint", model_ref)
                dyn = None
                if sampling.dynamic or "mimic" in extra:
                    dyn = DynamicThresholding.recipe(p.cfg, sampling.dynamic_mode, sampling.dynamic_value)
                    if "mimic" in extra:
                        dyn.mimic_scale, dyn.mimic_scale_min = extra["mimic"], extra["mimic"] - 1
                m = model(ref)
                image = generate(m, p, sampling, dyn)
                more = sampling.infotext_fields()
                if dyn is not None:
                    more |= dyn.infotext_fields()
                text = infotext(p, model_name=m.name, model_hash=m.hash, **more)
                name = f"{g:03d}-{p.seed}-{p.sampler}-cfg{p.cfg:g}-s{p.steps}-{len(list(out.glob('*.png'))):04d}.png"
                save_png(image, out / name, text)
                log(f"{out / name}: {INFOTEXT_SAMPLER.get(p.sampler, p.sampler)}, {p.steps} steps, cfg {p.cfg:g}")
                row.append(image)
            rows.append(row)
        x_labels = [_label(x[0], v, prompts) if x else "" for v in values(x)]
        y_labels = [_label(y[0], v, prompts) if y else "" for v in values(y)]
        grid = make_grid(rows, x_labels, y_labels, title="" if uses_prompt_axis else base.prompt[:120])
        path = save_png(
            grid,
            out / f"grid-{g:03d}.png",
            infotext(base, model_name=model_ref.name if isinstance(model_ref, SDXL) else Path(model_ref).name),
        )
        grids.append(path)
    return grids
