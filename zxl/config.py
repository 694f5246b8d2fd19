"""Typed configuration: dataclasses filled from YAML presets and ``--set key=value`` overrides.

Presets live in ``configs/`` as plain YAML (loaded with ``yaml.safe_load``, never executed).
Every key is checked against the dataclass it fills: an unknown key is a ``ConfigError`` that
names the full dotted key and the closest valid one, and a value of the wrong type names the key
and the type it wants, and a number outside its field's range (``num``) names the key and the
allowed range (NaN is never in range). The resolved config is written next to every output with its hash
(``runs/<name>/config.yaml``), so a run directory says exactly what produced it.
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


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Every numeric field against its range, sections included; the first failure names its key."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            check_ranges(value, key + ".")
        elif "range" in f.metadata and value is not None and value not in f.metadata["range"]:
            raise ConfigError(f"{key} must be {f.metadata['range'].describe(hints[f.name] is int)}, got {value!r}")


@dataclasses.dataclass
class RunConfig:
    name: str = "demo"  # runs/<name>/
    runs_dir: str = "runs"  # a folder; on several machines one every worker and this one see at the same path
    shard_size: int = num(10_000, "[1, inf)")  # URLs per shard, one Dask task per shard per stage
    scheduler: str = "local"  # local (a LocalCluster) | sync | tcp://host:8786
    workers: int = num(0, "[0, 4096]")  # LocalCluster worker processes; 0 = one per core
    threads_per_worker: int = num(1, "[1, 1024]")
    dashboard_address: str = (
        "127.0.0.1:0"  # LocalCluster dashboard (this machine only); ":8787" = every interface; "" = off
    )
    shard_retries: int = num(1, "[0, 100]")  # a failed shard task is retried this many times, then the run stops
    progress: bool = True
    # Dask resources (docs/scale-out.md). Each task of a stage that runs a model (score with clip-mlp, tag with
    # wd, caption with hf) asks for these, e.g. {GPU: 1}: it runs only on a worker that offers them, as many at a
    # time as the worker offers. Fetch, inspect and the other stages ask for nothing and run on any worker.
    model_resources: dict[str, float] = dataclasses.field(default_factory=dict)  # {} = no resources asked
    # LocalCluster only: what worker 0, 1, … offers, e.g. [{GPU: 1}] = worker 0 owns the GPU and runs the model
    # stages; workers past the list offer nothing. A cluster of your own: dask worker … --resources GPU=1.
    worker_resources: list[dict[str, float]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class SourceConfig:
    """Where the URL list comes from and how its columns map onto ours."""

    path: str = ""  # parquet, csv or jsonl; empty with --demo
    format: str = "auto"  # auto (from the suffix) | parquet | csv | jsonl
    url_column: str = "url"
    id_column: str = ""  # the source's own id (e.g. a booru post id); empty: key = hash of url
    keep_columns: list[str] = dataclasses.field(default_factory=lambda: ["*"])  # "*" = all


@dataclasses.dataclass
class FetchConfig:
    """img2dataset's downloader and resizer settings (its own names and meanings)."""

    thread_count: int = num(32, "[1, 1024]")
    timeout: float = num(10.0, "(0, 3600]")  # seconds per read of a response
    retries: int = num(0, "[0, 100]")
    user_agent_token: str = "zxl"
    disallowed_header_directives: list[str] = dataclasses.field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )
    # Keep enough resolution for the largest training bucket: never upscale, and only downscale
    # images whose short side is above image_size (keep_ratio = short side; 1024 covers every
    # bucket of the recipe, whose short sides are 768..1024).
    image_size: int = num(1024, "[1, 65535]")
    resize_mode: str = "keep_ratio"
    resize_only_if_bigger: bool = True
    encode_format: str = "jpg"
    encode_quality: int = num(95, "[0, 100]")  # JPEG/WebP quality; with png the compression level 0..9
    skip_reencode: bool = True  # a JPEG that needs no resize is stored byte for byte
    extract_exif: bool = True  # keep the original's EXIF (img2dataset's column): the year fallback
    min_image_size: int = num(0, "[0, 65535]")
    max_aspect_ratio: float = num(float("inf"), "[1, inf]")
    max_image_pixels: int = num(89_478_485, "[1, inf)")  # decoder limit (Pillow's default): larger is a bomb
    # Never fetch from loopback, private, link-local or cloud-metadata addresses (redirects too)
    # unless they are listed here (host names or addresses) or allow_private_networks is set.
    allowed_hosts: list[str] = dataclasses.field(default_factory=list)
    allow_private_networks: bool = False
    # The most one response (redirects included) may hold: an endless body fails there. 0 = no bound.
    max_response_bytes: int = num(256 * 2**20, "[0, inf)")
    # curl's --connect-to: "HOST:PORT:HOST2:PORT2" connects there for URLs naming HOST:PORT (the URL, its
    # key and the Host header stay; the address checks apply to HOST2). Not in the stage hash, like DNS.
    connect_to: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class InspectConfig:
    max_image_pixels: int = num(89_478_485, "[1, inf)")  # stored images above this are not decoded
    phash_size: int = num(8, "[2, 8]")  # 8 -> a 64-bit perceptual hash (stored in an int64: 8 at most)


@dataclasses.dataclass
class ScoreConfig:
    """The embed + score stage (scorers/)."""

    scorer: str = "technical"  # a name from scorers.registry: technical | clip-mlp
    batch_size: int = num(32, "[1, 65536]")  # images per model call
    loader_threads: int = num(4, "[1, 256]")  # decode + prepare threads per worker, overlapping the model
    device: str = "auto"  # auto (cuda when there is one) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (fp16 on cuda, fp32 on cpu) | fp32 | fp16 | bf16
    clip_model: str = "ViT-L-14"  # an open_clip architecture name
    clip_weights: str = ""  # open_clip checkpoint: a local file, or a pretrained tag / hf-hub: id
    head_weights: str = ""  # aesthetic head: a local .pth/.safetensors, or org/name/file on the hub
    head_layout: str = "auto"  # auto | laion (improved-aesthetic-predictor) | waifu-v3


@dataclasses.dataclass
class CalibrateConfig:
    """Raw aesthetic score → score 1..9, one global reduction over the kept rows."""

    method: str = "quantile"  # quantile | fixed
    fractions: list[float] = dataclasses.field(default_factory=list)  # 8 cumulative fractions; [] = ninths
    edges: list[float] = dataclasses.field(default_factory=list)  # 8 raw-score edges for method=fixed
    edges_from: str = ""  # a catalog whose edges to reuse, so score_7 means the same in both


@dataclasses.dataclass
class DedupConfig:
    exact: bool = True  # same sha256 of the stored bytes
    phash_distance: int = num(5, "[-1, 8]")  # near: Hamming distance of the 64-bit phash <= this; -1 turns it off
    embedding_cosine: float = num(0.95, "[0, 1]")  # near: cosine of the scorer's embeddings >= this; 0 turns it off


@dataclasses.dataclass
class WeighConfig:
    repeats: dict[int, int] = dataclasses.field(default_factory=lambda: {9: 3, 8: 2})  # score -> repeats
    default: int = num(1, "[0, 1000]")  # repeats for any other score (and for rows without one)


@dataclasses.dataclass
class TagConfig:
    """Rating, year, general and character tags (taggers/)."""

    taggers: list[str] = dataclasses.field(default_factory=lambda: ["metadata"])  # first with a value wins
    # metadata: the source columns holding each field (a booru export by default)
    rating_column: str = "rating"
    created_at_column: str = "created_at"
    general_column: str = "tag_string_general"
    character_column: str = "tag_string_character"
    separator: str = " "  # between tags in a tag string (booru: a space; many CSVs: ", ")
    exif_year: bool = True  # no date in the source: take the year of EXIF DateTimeOriginal
    # wd: a SmilingWolf WD tagger (a folder or hub repo with model.onnx and selected_tags.csv)
    wd_model: str = ""
    wd_general_threshold: float = num(0.35, "[0, 1]")  # v2 models; each v3 model publishes its own P=R threshold
    wd_character_threshold: float = num(0.85, "[0, 1]")
    wd_mcut: bool = False  # Maximum Cut Thresholding instead of the fixed thresholds
    batch_size: int = num(32, "[1, 65536]")
    device: str = "auto"  # auto (CUDA execution provider when there is one) | cpu | cuda


@dataclasses.dataclass
class CaptionConfig:
    """Natural-language captions for the best-scored images (captioners/)."""

    captioner: str = "template"  # template | hf | none
    min_score: int = num(8, "[1, 9]")  # only ok rows with score >= this are captioned
    model: str = ""  # hf: a local folder or a hub repo id
    family: str = "auto"  # hf: auto | florence2 | blip2 | llava | qwen2-vl
    prompt: str = ""  # hf: empty = the family's own prompt
    max_new_tokens: int = num(128, "[1, 8192]")
    batch_size: int = num(8, "[1, 65536]")
    device: str = "auto"
    precision: str = "auto"  # auto (fp16 on cuda) | fp32 | fp16 | bf16


@dataclasses.dataclass
class DemoConfig:
    """The bundled demo corpus: generated from a seed, served on 127.0.0.1."""

    size: int = num(600, "[1, 1000000]")  # rows, bad ones included
    seed: int = num(0, "[0, 4294967295]")
    bad_fraction: float = num(0.05, "[0, 1]")
    dir: str = ".cache/demo"  # built corpora are cached here, one folder per (size, seed)
    host: str = "127.0.0.1"
    port: int = num(8799, "[0, 65535]")  # preferred; a busy port falls back to a free one
    slow_seconds: float = num(8.0, "(0, 3600]")  # how long the "slow" rows stall; keep above fetch.timeout


@dataclasses.dataclass
class CurateConfig:
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    source: SourceConfig = dataclasses.field(default_factory=SourceConfig)
    fetch: FetchConfig = dataclasses.field(default_factory=FetchConfig)
    inspect: InspectConfig = dataclasses.field(default_factory=InspectConfig)
    score: ScoreConfig = dataclasses.field(default_factory=ScoreConfig)
    calibrate: CalibrateConfig = dataclasses.field(default_factory=CalibrateConfig)
    dedup: DedupConfig = dataclasses.field(default_factory=DedupConfig)
    weigh: WeighConfig = dataclasses.field(default_factory=WeighConfig)
    tag: TagConfig = dataclasses.field(default_factory=TagConfig)
    caption: CaptionConfig = dataclasses.field(default_factory=CaptionConfig)
    demo: DemoConfig = dataclasses.field(default_factory=DemoConfig)


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
        if dataclasses.is_dataclass(tp):
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
    cls: type, presets: list[str | os.PathLike] = (), overrides: list[str] = (), extra: dict | None = None
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
