"""``zxl curate``'s configuration: the pipeline's own sections, and the families' sections
(``score``, ``tag``, ``caption``, each owned by its package) composed into ``CurateConfig``.

Loaded with zxl.config's rules (YAML presets, ``--set``, unknown keys named with the closest valid
one, every number checked against its interval)."""

from __future__ import annotations

import dataclasses

from zxl.captioners.config import CaptionConfig
from zxl.config import num
from zxl.scorers.config import ScoreConfig
from zxl.taggers.config import TagConfig


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
    hash_column: str = ""  # the file's hash as the source gives it (a booru export: md5), for fetch.verify_hash


@dataclasses.dataclass
class FetchConfig:
    """img2dataset's downloader and resizer settings (its own names and meanings)."""

    thread_count: int = num(32, "[1, 1024]")
    timeout: float = num(10.0, "(0, 3600]")  # seconds per read of a response
    retries: int = num(0, "[0, 100]")  # more tries of a transient failure (timeout, reset, 429, 5xx), with backoff
    # Politeness to each host, across the whole run whatever the workers and threads (pipeline/polite.py):
    per_host_concurrency: int = num(0, "[0, 100000]")  # requests in flight to one host; 0 = no limit
    per_host_rate: float = num(0.0, "[0, 1000000]")  # requests per second to one host; 0 = no limit
    max_retry_wait: float = num(60.0, "[0, 86400]")  # seconds one URL may wait on Retry-After in all
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
    # Check each download against the source's hash (source.hash_column): md5 | sha256 | sha512 | "" (off).
    # A mismatch is failed_download ("md5 mismatch: expected …, got …") and stores no image.
    verify_hash: str = ""


@dataclasses.dataclass
class InspectConfig:
    max_image_pixels: int = num(89_478_485, "[1, inf)")  # stored images above this are not decoded
    phash_size: int = num(8, "[2, 8]")  # 8 -> a 64-bit perceptual hash (stored in an int64: 8 at most)


@dataclasses.dataclass
class CalibrateConfig:
    """Raw aesthetic score → score 1..9, one global reduction over the kept rows."""

    method: str = "quantile"  # quantile | fixed
    fractions: list[float] = dataclasses.field(default_factory=list)  # 8 cumulative fractions; [] = ninths
    edges: list[float] = dataclasses.field(default_factory=list)  # 8 raw-score edges for method=fixed
    edges_from: str = ""  # a catalog whose edges to reuse, so score_7 means the same in both
    # Cut the quantiles within each stratum of these (year, rating) instead of over all rows, so that every
    # year has the same share of each score tag; strata under min_stratum rows use the global edges.
    within: list[str] = dataclasses.field(default_factory=list)
    min_stratum: int = num(90, "[9, inf)")
    year_span: int = num(1, "[1, 100]")  # years per year stratum (5: 2005-2009, 2010-2014 …), for small corpora


@dataclasses.dataclass
class DedupConfig:
    exact: bool = True  # same sha256 of the stored bytes
    phash_distance: int = num(5, "[-1, 8]")  # near: Hamming distance of the 64-bit phash <= this; -1 turns it off
    embedding_cosine: float = num(0.95, "[0, 1]")  # near: cosine of the scorer's embeddings >= this; 0 turns it off


@dataclasses.dataclass
class WeighConfig:
    repeats: dict[int, int] = dataclasses.field(default_factory=lambda: {9: 3, 8: 2})  # score -> repeats
    default: int = num(1, "[0, 1000]")  # repeats for any other score (and for rows without one)
    # 0 = repeats by score only (the recipe); 1 = every cluster of the embedding space drawn equally often
    # (pipeline/weigh.py). Needs embeddings: the technical scorer's pixel ones or CLIP's.
    diversity: float = num(0.0, "[0, 1]")
    clusters: int = num(0, "[0, 100000]")  # k-means clusters; 0 = chosen from the data (silhouette)
    seed: int = num(0, "[0, 4294967295]")  # k-means and the reported draw sample


@dataclasses.dataclass
class TasteConfig:
    """A personal preference head (``zxl taste fit``) in place of the scorer's raw score."""

    # A head in the layout score.head_weights reads (safetensors), applied to the run's stored
    # embeddings; "" = the scorer's own score. `zxl taste apply` sets it to runs/<name>/taste/head.safetensors.
    head: str = ""


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
    taste: TasteConfig = dataclasses.field(default_factory=TasteConfig)
    tag: TagConfig = dataclasses.field(default_factory=TagConfig)
    caption: CaptionConfig = dataclasses.field(default_factory=CaptionConfig)
    demo: DemoConfig = dataclasses.field(default_factory=DemoConfig)
