"""kohya's prompt-file syntax, A1111's ``parameters`` infotext, and the recipe's named defaults.

Prompt file (kohya sd-scripts): one prompt a line; options after it: ``--n`` negative prompt,
``--w``/``--h`` size, ``--d`` seed, ``--l`` CFG scale, ``--s`` steps, ``--ss`` sampler; ``#``
starts a comment; blank lines are skipped. An unknown option, a size not divisible by 8 or an
unknown sampler is an error that names the line and the valid choices.

Infotext (A1111, the PNG text key ``parameters``)::

    <prompt>
    Negative prompt: <negative>
    Steps: 28, Sampler: Euler, CFG scale: 4, Seed: 1, Size: 832x1216, Model hash: …, Model: …

A value holding ``,`` ``:`` or a newline is written JSON-quoted, so the line parses back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from zxl.config import ConfigError, check_value

NEGATIVE_PRESETS = {
    "minimal": "score_1",
    "light": "score_1, lowres, artistic error, scan artifacts, jpeg artifacts, multiple views, "
    "too many watermarks, negative space, blank page",
    "heavy": "score_1, score_2, score_3, lowres, artistic error, film grain, scan artifacts, jpeg artifacts, "
    "chromatic aberration, dithering, halftone, screentones, multiple views, logo, too many watermarks, "
    "negative space, blank page",
}
SIZES = {"portrait": (832, 1216), "square": (1024, 1024), "landscape": (1216, 832)}
SAMPLER_NAMES = {  # kohya / A1111 names → ours
    "euler": "euler", "k_euler": "euler", "euler_a": "euler_ancestral", "k_euler_a": "euler_ancestral",
    "euler_ancestral": "euler_ancestral", "dpmpp_2m": "dpmpp_2m", "dpm++_2m": "dpmpp_2m", "k_dpm_2m": "dpmpp_2m",
    "ddim": "ddim",
}  # fmt: skip
INFOTEXT_SAMPLER = {"euler": "Euler", "euler_ancestral": "Euler a", "dpmpp_2m": "DPM++ 2M", "ddim": "DDIM"}
OPTIONS = {"n", "w", "h", "d", "l", "s", "ss"}
# --l: the CFG scale, v_u + l·(v_c − v_u), finite; --s: steps, at most the schedule's 1000 timesteps
LIMITS = {"l": ("[0, inf)", False, " (the CFG scale)"), "s": ("[1, 1000]", True, " (sampling steps)")}


@dataclass
class Prompt:
    prompt: str
    negative: str = NEGATIVE_PRESETS["minimal"]
    width: int = 832
    height: int = 1216
    seed: int = 1
    cfg: float = 4.0
    steps: int = 28
    sampler: str = "euler"
    extra: dict = field(default_factory=dict)

    def with_(self, **kw) -> Prompt:
        return replace(self, **kw)


def sampler_name(name: str, where: str = "") -> str:
    try:
        return SAMPLER_NAMES[name.strip().lower()]
    except KeyError:
        raise ConfigError(
            f"{where}unknown sampler '{name}'; choose from {', '.join(sorted(set(SAMPLER_NAMES.values())))}"
        ) from None


def parse_line(line: str, default: Prompt, where: str = "") -> Prompt | None:
    text = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
    if not text:
        return None
    parts = re.split(r"\s--(?=[a-z]+\s)", " " + text)
    p = default.with_(prompt=parts[0].strip())
    for part in parts[1:]:
        opt, _, value = part.partition(" ")
        value = value.strip()
        if opt not in OPTIONS:
            raise ConfigError(
                f"{where}unknown option --{opt}; the options are " + ", ".join(f"--{o}" for o in sorted(OPTIONS))
            )
        if opt == "n":
            p = p.with_(negative=value)
        elif opt == "ss":
            p = p.with_(sampler=sampler_name(value, where))
        else:
            try:
                number = float(value) if opt == "l" else int(value)
            except ValueError:
                raise ConfigError(f"{where}--{opt} wants a number, got '{value}'") from None
            if opt in ("w", "h"):
                if number <= 0 or number % 8:
                    raise ConfigError(f"{where}--{opt} {value}: sizes must be positive multiples of 8")
                p = p.with_(**{"width" if opt == "w" else "height": number})
            else:
                if opt in LIMITS:
                    check_value(f"{where}--{opt}", number, *LIMITS[opt])
                p = p.with_(**{{"d": "seed", "l": "cfg", "s": "steps"}[opt]: number})
    return p


def read_prompt_file(path: str | Path, default: Prompt | None = None) -> list[Prompt]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompt file not found: {path}")
    default = default or Prompt(prompt="")
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        p = parse_line(line, default, f"{path}:{n}: ")
        if p is not None:
            prompts.append(p)
    if not prompts:
        raise ConfigError(f"prompt file {path} holds no prompt")
    return prompts


def _quote(value) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def infotext(p: Prompt, model_name: str = "", model_hash: str = "", **more) -> str:
    fields = {
        "Steps": p.steps, "Sampler": INFOTEXT_SAMPLER.get(p.sampler, p.sampler), "CFG scale": f"{p.cfg:g}",
        "Seed": p.seed, "Size": f"{p.width}x{p.height}",
    }  # fmt: skip
    if model_hash:
        fields["Model hash"] = model_hash
    if model_name:
        fields["Model"] = model_name
    fields.update(more)
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in fields.items())
    return f"{p.prompt}\nNegative prompt: {p.negative}\n{line}"


def parse_infotext(text: str) -> dict:
    """The fields of an infotext, values unquoted (prompt and negative prompt included)."""
    lines = text.split("\n")
    last = lines[-1]
    fields = {}
    for m in re.finditer(r'\s*([\w ]+?):\s*("(?:\\.|[^\\"])*"|[^,]*)\s*(?:,|$)', last):
        key, value = m.group(1).strip(), m.group(2).strip()
        fields[key] = json.loads(value) if value.startswith('"') else value
    body = "\n".join(lines[:-1])
    prompt, _, negative = body.partition("\nNegative prompt: ")
    if body.startswith("Negative prompt: "):
        prompt, negative = "", body[len("Negative prompt: ") :]
    return {"prompt": prompt, "negative": negative, **fields}
