"""Typed configuration: dataclasses filled from YAML presets and ``--set key=value`` overrides.

Presets live in ``configs/`` as plain YAML (loaded with ``yaml.safe_load``, never executed).
Every key is checked against the dataclass it fills: an unknown key is a ``ConfigError`` that
names the full dotted key and the closest valid one, and a value of the wrong type names the key
and the type it wants, and a number outside its field's range (``num``) names the key and the
allowed range (NaN is never in range). The resolved config is written next to every output with
its hash (``runs/<name>/config.yaml``), so a run directory says exactly what produced it.

This module holds the rules only; each package owns its sections (``zxl.pipeline.config`` composes
``CurateConfig`` from its own and the families' ``score``, ``tag`` and ``caption``;
``zxl.trainer.config`` has ``TrainConfig``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says which key and what to change."""


_INTERVAL = re.compile(r"([\[(])\s*(-?inf|[-+\d.eE]+)\s*,\s*(inf|[-+\d.eE]+)\s*([\])])")


@dataclasses.dataclass(frozen=True)
class Range:
    """An interval of allowed values, written as in mathematics: ``[0, 1)``, ``(0, inf)``, ``[1, 64]``."""

    text: str

    @property
    def bounds(self) -> tuple[float, bool, float, bool]:
        m = _INTERVAL.fullmatch(self.text)
        if m is None:
            raise ValueError(f"not an interval: {self.text!r}")
        return float(m[2]), m[1] == "[", float(m[3]), m[4] == "]"

    def __contains__(self, value: float) -> bool:
        lo, lo_in, hi, hi_in = self.bounds
        if isinstance(value, float) and math.isnan(value):
            return False
        return (lo < value or (lo_in and value == lo)) and (value < hi or (hi_in and value == hi))

    def describe(self, integer: bool) -> str:
        lo, lo_in, hi, hi_in = self.bounds

        def show(v: float) -> str:
            return f"{int(v)}" if v.is_integer() else f"{v:g}"

        kind = "an integer" if integer else "a number"
        if math.isinf(hi) and not hi_in:
            return f"{kind} {'>=' if lo_in else '>'} {show(lo)}"
        if integer and lo_in and hi_in:
            return f"an integer from {show(lo)} to {show(hi)}"
        return f"{kind} in {self.text.replace(' ', '')}"


def num(default: float, allowed: str) -> Any:
    """A numeric config field with its allowed range (an interval, see ``Range``)."""
    return dataclasses.field(default=default, metadata={"range": Range(allowed)})


def check_value(name: str, value: float, allowed: str, integer: bool = False, note: str = "") -> None:
    """One value outside a config (a command-line flag, a prompt-file option) against its range, with
    the config values' wording: the ConfigError names ``name`` and the allowed range (``note`` after it)."""
    if value not in Range(allowed):
        raise ConfigError(f"{name} must be {Range(allowed).describe(integer)}{note}, got {value!r}")


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Every numeric field against its range, sections included; the first failure names its key."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            check_ranges(value, key + ".")
        elif "range" in f.metadata and value is not None and value not in f.metadata["range"]:
            raise ConfigError(f"{key} must be {f.metadata['range'].describe(hints[f.name] is int)}, got {value!r}")


# --------------------------------------------------------------------------- loading


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a dataclass accepts, sections included."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        keys.append(key)
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(valid_keys(hints[f.name], key + "."))
    return keys


def _unknown_key(root: type, key: str) -> ConfigError:
    section, _, last = key.rpartition(".")
    keys = valid_keys(root)
    siblings = [k for k in keys if section and k.startswith(section + ".") and k.count(".") == key.count(".")]
    # a known section with a misspelt key: suggest from that section first (optim.lr → optim.unet_lr)
    close = [k for k in difflib.get_close_matches(key, siblings, n=1, cutoff=0.5)] if siblings else []
    close = close or [k for k in siblings if last and last in k.rsplit(".", 1)[-1]][:1]
    close = close or difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if not close:  # a misspelt last part of a long key: compare last parts too
        last = key.rsplit(".", 1)[-1]
        tails = {k.rsplit(".", 1)[-1]: k for k in valid_keys(root)}
        close = [tails[m] for m in difflib.get_close_matches(last, list(tails), n=1, cutoff=0.6)]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert) one value against its annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' wants a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' wants a mapping, got {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, kt, f"{key}.{k}"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' wants true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' wants an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in ("inf", ".inf", "+inf"):
            return float("inf")
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' wants a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' wants a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict, root: type | None = None, prefix: str = "") -> Any:
    """Build ``cls`` from a nested mapping; unknown keys and wrong types raise ConfigError."""
    root = root or cls
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<top>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = prefix + str(name)
        if name not in names:
            while isinstance(value, dict) and len(value) == 1:  # name the whole dotted key
                ((sub, value),) = value.items()
                key = f"{key}.{sub}"
            raise _unknown_key(root, key)
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value or {}, root, key + ".")
        else:
            kwargs[name] = _coerce(value, tp, key)
    built = cls(**kwargs)
    if root is cls:
        check_ranges(built)
    return built


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], c) with c parsed as a YAML scalar (so 3 is an int, [x] a list)."""
    if "=" not in text:
        raise ConfigError(f"--set wants key=value, got '{text}'")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set wants key=value, got '{text}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_config(
    cls: type, presets: Sequence[str | os.PathLike] = (), overrides: Sequence[str] = (), extra: dict | None = None
) -> Any:
    """Defaults, then each preset file in order, then ``extra`` (CLI flags), then ``--set`` overrides."""
    data: dict = {}
    for path in presets:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top")
        data = _deep_merge(data, loaded)
    if extra:
        data = _deep_merge(data, extra)
    for text in overrides:
        parts, value = parse_override(text)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        data = _deep_merge(data, nested)
    return from_dict(cls, data)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, float) and obj == float("inf"):
        return "inf"
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def config_hash(data: Any) -> str:
    """A short, stable hash of a config (or any section of one, or a plain dict)."""
    blob = json.dumps(_jsonable(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_yaml(cfg: Any) -> str:
    """The resolved config as YAML, its hash in the first line (a comment, so it loads back)."""
    body = yaml.safe_dump(_jsonable(to_dict(cfg)), sort_keys=False)
    return f"# zxl resolved config, hash {config_hash(cfg)}\n{body}"
