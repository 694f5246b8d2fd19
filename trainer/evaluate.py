"""``zxl eval``: does a checkpoint give what its users trained for? Six measures on a fixed set
of samples and held-out rows (trainer/metrics.py has the formulas):

1. **score-tag steering**: the same prompts with ``score_1`` … ``score_9`` (and no score tag),
   scored by the catalog's own scorer; the mean per tag and Spearman's ρ across tags;
2. **variety**: the Vendi score of the samples over seeds, per prompt, with and without a score tag
   (on the scorer's embeddings, or scorers/pixels.py's weight-free ones);
3. **tone** of the samples against the catalog's training images (grey, washed out, dark);
4. **prompt adherence** (CLIP score, 100·cos) when the catalog's scorer is a CLIP model; said to be
   skipped otherwise;
5. **validation loss**: the plain v-prediction MSE on held-out rows at fixed timesteps (the middle
   of each band) and fixed noise, bit-identical across runs, overall and per band;
6. **cluster coverage**: each sample assigned to the nearest centre of the catalog's clusters (the
   ``cluster`` column weigh writes, each centre the mean of its rows' stored embeddings); the
   samples' effective number of clusters and their KL divergence from the catalog's distribution
   (and from the training draws'), without a score tag, with ``score_9`` and over all samples;
   and the **Conditional Vendi score** of all samples given their prompts (zxl/diversity.py): the
   variety the model adds beyond what the prompts explain.

Held-out rows are the catalog's trainable rows whose key hashes below ``holdout``
(trainer/data.py ``held_out``); a run with ``data.holdout`` of the same value never trained on
them. Prompts are their captions with the score tag swapped, in the card's three styles (tag
soup, natural language, mixed) where a row has a sentence. Each sample PNG carries its A1111
parameters. ``evaluate`` writes ``report.json``, ``report.md``, plots and one grid per checkpoint.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from zxl.catalog.captions import DEFAULT_LAYOUT, TagLayout, build_caption, layout_of
from zxl.config import ConfigError, num
from zxl.diversity import cluster_shares, conditional_vendi, effective_clusters, kl_divergence, prompt_kernel
from zxl.files import write_text_atomic
from zxl.trainer import metrics
from zxl.trainer.data import buckets_for, caption_fields, held_out, load_rows, rng_for

if TYPE_CHECKING:
    from zxl.scorers.base import Scorer

TAGS = tuple(range(1, 10))
STYLE_WEIGHTS = {"tags": (1, 0, 0), "natural": (0, 1, 0), "mixed": (0, 0, 1)}


@dataclass(frozen=True)
class EvalConfig:
    """What ``zxl eval`` renders and measures (the same for every checkpoint of one report). The
    ranges are those of the training config's matching keys (loop.eval_*, loop.sample_steps,
    data.resolution, data.holdout, data.seed); a value outside one names its ``zxl eval`` flag."""

    prompts: int = num(3, "[1, 1000]")  # held-out rows whose captions become prompts
    seeds: int = num(3, "[2, 100]")  # samples per prompt and tag: the variety measure's set
    steps: int = num(20, "[1, 1000]")  # sampling steps (the schedule has 1000 timesteps)
    cfg: float = num(4.0, "[0, inf)")  # v_u + cfg·(v_c − v_u): 0 unconditional, 1 conditional only; finite
    sampler: str = "euler"
    resolution: int = num(1024, "[64, 8192]")  # the bucket area samples are drawn at (the training resolution)
    holdout: float = num(0.1, "(0, 1)")  # the held-out fraction (the run's data.holdout)
    val_rows: int = num(16, "[1, 100000]")  # held-out rows in the validation loss
    bands: int = num(10, "[1, 1000]")  # timestep bands of the validation loss, one fixed timestep each
    seed: int = num(0, "[0, 4294967295]")
    images: bool = True  # write every sample as a PNG with its parameters
    timesteps: str = "comfyui"  # the U-Net's t between table entries: comfyui | continuous (zxl sample --timesteps)

    def __post_init__(self):
        # the recipe's buckets step by resolution/16 (trainer/data.py buckets_for): a multiple of 64
        if not 64 <= self.resolution <= 8192 or self.resolution % 64:
            raise ConfigError(f"--resolution must be a multiple of 64 from 64 to 8192 (the run's data.resolution), "
                              f"got {self.resolution!r}")  # fmt: skip
        for f in fields(self):
            value = getattr(self, f.name)
            if "range" in f.metadata and value not in f.metadata["range"]:
                what = f.metadata["range"].describe(f.type in (int, "int")) + FLAG_NOTES.get(f.name, "")
                raise ConfigError(f"--{f.name.replace('_', '-')} must be {what}, got {value!r}")
        from zxl.sampler.schedule import timestep_rule

        timestep_rule(self.timesteps)


FLAG_NOTES = {"cfg": " (0 is unconditional, 1 conditional without guidance)"}


@dataclass
class Prompt:
    style: str
    body: str  # the caption without a score tag
    width: int
    height: int
    key: str

    def text(self, tag: int | None) -> str:
        return f"score_{tag}, {self.body}" if tag else self.body


@dataclass
class EvalSet:
    """What every checkpoint is measured on: prompts, held-out rows, the training images' tone."""

    catalog: Path
    config: EvalConfig
    rows: pd.DataFrame  # held-out trainable rows
    prompts: list[Prompt]
    train_tone: dict
    scorer: Scorer
    edges: list[float]
    clip: str | None  # why prompt adherence is skipped, or None when it runs
    buckets: list[tuple[int, int]] = field(default_factory=list)
    val_images: list | None = None  # the validation-loss rows' images, decoded at first use
    layout: TagLayout = DEFAULT_LAYOUT  # the catalog's caption layout
    clusters: Clusters | str = "not built"  # the catalog's clusters, or why cluster coverage is skipped

    @classmethod
    def build(cls, catalog: str | Path, cfg: EvalConfig, option: str = "--catalog") -> EvalSet:
        from zxl.catalog.schema import read_manifest
        from zxl.scorers.config import ScoreConfig
        from zxl.scorers.registry import build_scorer

        catalog = Path(catalog)
        rows = load_rows(catalog, cfg.resolution, option=option)  # the manifest and every part read, or one error
        mask = held_out(rows.key, cfg.holdout)
        test, train = rows[mask].reset_index(drop=True), rows[~mask].reset_index(drop=True)
        assert isinstance(test, pd.DataFrame) and isinstance(train, pd.DataFrame)  # pandas infers maybe a Series
        if test.empty:
            raise ConfigError(f"--holdout {cfg.holdout}: no held-out rows in {catalog} ({len(rows)} trainable); "
                              "raise it (and data.holdout of the runs it evaluates)")  # fmt: skip
        buckets = buckets_for(cfg.resolution)
        manifest = read_manifest(catalog)
        score_cfg = ScoreConfig(**manifest.get("config", {}).get("score", {}))  # a bare manifest: the technical one
        scorer = build_scorer(score_cfg)
        taste = manifest.get("taste")
        if taste:  # the rows were scored by the user's taste head: the samples are too
            from zxl.scorers.heads import WithHead
            from zxl.scorers.taste import check_head, verify_applied

            head = verify_applied(manifest, catalog / "_manifest.json")  # still the file that was applied
            assert head is not None  # None only for a manifest without "taste"
            scorer = WithHead(scorer, check_head(head), name=str(head.path))
        clip = (
            None if score_cfg.scorer == "clip-mlp" else f"no CLIP model configured (score.scorer is {score_cfg.scorer})"
        )
        order = sorted(range(len(test)), key=lambda i: rng_for("prompt", cfg.seed, test.key[i]).random())
        layout = layout_of(manifest)
        prompts = [_prompt(test.iloc[i], n, cfg, buckets, layout) for n, i in enumerate(order[: cfg.prompts])]
        images = _images(catalog, train.sample(n=min(64, len(train)), random_state=cfg.seed) if len(train) else test,
                         buckets)  # fmt: skip
        return cls(catalog, cfg, test, prompts, metrics.tone_summary(images), scorer,
                   manifest.get("score_edges", {}).get("edges", []), clip, buckets, layout=layout,
                   clusters=Clusters.of(catalog, rows, scorer))  # fmt: skip


@dataclass
class Clusters:
    """The catalog's clusters in its stored embedding: what the samples are assigned to."""

    centres: np.ndarray  # [k, d] float32: the mean stored embedding of each cluster's trainable rows
    catalog: np.ndarray  # [k] each cluster's share of the trainable rows
    draws: np.ndarray  # [k] its share of the draws per epoch (the catalog's weights)
    embedding: str

    @classmethod
    def of(cls, catalog: Path, rows: pd.DataFrame, scorer: Scorer) -> Clusters | str:
        """The clusters of the trainable ``rows`` (held-out ones too), or why there are none to use."""
        from zxl.catalog.embeddings import embedding_kind, read_embeddings

        if "cluster" not in rows or rows.cluster.isna().all():
            return "the catalog has no clusters (a catalog from before weigh wrote them: rerun zxl curate)"
        run_dir = catalog.resolve().parent
        kind = embedding_kind(run_dir)
        if kind is None:
            return f"no stored embeddings in {run_dir / 'embeddings'}"
        if kind != scorer.embedding_kind:
            return f"the catalog's embeddings are {kind}, the scorer's {scorer.embedding_kind}: not one space"
        keys, emb = read_embeddings(run_dir, dtype=np.float16)  # 950k × 768: 1.5 GB, summed in chunks
        assert emb is not None  # a kind is read from a file that has them
        index = {k: i for i, k in enumerate(keys)}
        have = rows[rows.cluster.notna() & rows.key.isin(index)]
        labels = have.cluster.to_numpy(np.int64)
        at = np.fromiter((index[key] for key in have.key), np.int64, len(have))
        k = int(labels.max()) + 1
        counts = np.bincount(labels, minlength=k)
        centres = np.zeros((k, emb.shape[1]))
        for a in range(0, len(at), 16384):
            np.add.at(centres, labels[a : a + 16384], emb[at[a : a + 16384]].astype(np.float64))
        centres = (centres / np.maximum(counts, 1)[:, None]).astype(np.float32)
        draws = have.draws.to_numpy(np.float64)
        return cls(centres, cluster_shares(labels, k), cluster_shares(labels, k, draws), kind)

    def assign(self, emb: np.ndarray) -> np.ndarray:
        """The nearest centre (squared Euclidean, as weigh assigns rows) of each embedding."""
        x = np.asarray(emb, np.float64)
        c = self.centres.astype(np.float64)
        return np.argmin((c**2).sum(1)[None, :] - 2.0 * x @ c.T, axis=1)


def _prompt(row: pd.Series, n: int, cfg: EvalConfig, buckets, layout: TagLayout = DEFAULT_LAYOUT) -> Prompt:
    fields = caption_fields(row.to_frame().T)[0] | {"score": None}
    style = ("tags", "natural", "mixed")[n % 3] if fields.get("caption") else "tags"
    body = build_caption(fields, rng_for("eval-caption", cfg.seed, row.key), STYLE_WEIGHTS[style], layout=layout)
    w, h = buckets[int(row.bucket_index)]  # the sampler takes multiples of 8 (small resolutions' buckets are not)
    return Prompt(style, body, max(8, w // 8 * 8), max(8, h // 8 * 8), row.key)


def _images(catalog: Path, rows: pd.DataFrame, buckets) -> list:
    from zxl.catalog.images import ImageStore
    from zxl.trainer.latents import cover_crop, load_rgb

    store = ImageStore(catalog)
    out = []
    for r in rows.itertuples():
        shard, key, b = r.shard, r.shard_key, r.bucket_index  # pyright: ignore[reportAttributeAccessIssue] - namedtuple
        data, _ = store.get(shard, key)
        out.append(cover_crop(load_rgb(data), *buckets[int(b)])[0])
    return out


# ----------------------------------------------------------------------------- the six measures


def render(model, es: EvalSet, folder: Path | None, log=print) -> list[dict]:
    """Every sample: for each prompt, no tag and score_1..9, each seed. Returns one dict a sample."""
    from zxl.sampler.grid import save_png
    from zxl.sampler.pipeline import Sampling, generate
    from zxl.sampler.prompts import Prompt as SamplePrompt
    from zxl.sampler.prompts import infotext

    cfg, out = es.config, []
    sampling = Sampling(timesteps=cfg.timesteps)
    for pi, p in enumerate(es.prompts):
        for tag in (None, *TAGS):
            for s in range(cfg.seeds):
                sp = SamplePrompt(prompt=p.text(tag), negative="", width=p.width, height=p.height,
                                  seed=cfg.seed * 1000 + pi * 100 + s, cfg=cfg.cfg, steps=cfg.steps,
                                  sampler=cfg.sampler)  # fmt: skip
                image = generate(model, sp, sampling)
                if folder is not None and cfg.images:
                    name = f"p{pi}-{'none' if tag is None else f'score{tag}'}-s{s}.png"
                    more = sampling.infotext_fields()
                    save_png(image, folder / name, infotext(sp, model_name=model.name, model_hash=model.hash, **more))
                out.append({"prompt": pi, "tag": tag, "seed": s, "image": image})
        log(f"eval: prompt {pi + 1}/{len(es.prompts)} rendered")
    return out


def score_samples(es: EvalSet, samples: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(raw scores, embeddings) of the samples, by the catalog's scorer."""
    images = [s["image"] for s in samples]
    raw, emb = es.scorer.score_and_embed(es.scorer.collate([es.scorer.prepare(im) for im in images]))
    if emb is None:
        from zxl.scorers.pixels import pixel_embeddings

        emb = pixel_embeddings(images)
    raw, emb = np.asarray(raw, np.float32), np.asarray(emb, np.float32)
    return raw, emb


def steering_and_variety(es: EvalSet, samples: list[dict], raw: np.ndarray, emb: np.ndarray) -> tuple[dict, dict]:
    # the catalog's 1..9 from its score edges (pipeline/calibrate.py's rule; no edges: all 1)
    calibrated = 1 + np.searchsorted(np.asarray(es.edges, np.float64), np.asarray(raw, np.float64), side="right")
    per_tag = {t: [float(raw[i]) for i, s in enumerate(samples) if s["tag"] == t] for t in TAGS}
    steer = metrics.steering(per_tag)
    none = [float(raw[i]) for i, s in enumerate(samples) if s["tag"] is None]
    steer["mean"]["none"] = float(np.mean(none))
    steer["calibrated"] = {f"score_{t}": float(np.mean([calibrated[i] for i, s in enumerate(samples) if s["tag"] == t]))
                           for t in TAGS}  # fmt: skip
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault((s["prompt"], s["tag"]), []).append(i)
    vendi = {g: metrics.vendi(emb[ix]) for g, ix in groups.items()}
    dist = {g: metrics.mean_pairwise_distance(emb[ix]) for g, ix in groups.items()}
    with_tags = [v for (_, t), v in vendi.items() if t is not None]
    without = [v for (_, t), v in vendi.items() if t is None]
    dist_with = [v for (_, t), v in dist.items() if t is not None]
    dist_without = [v for (_, t), v in dist.items() if t is None]
    by_tag = {f"score_{t}": float(np.mean([v for (_, tt), v in vendi.items() if tt == t])) for t in TAGS}
    variety = {"vendi_with_score_tags": float(np.mean(with_tags)), "vendi_without_score_tags": float(np.mean(without)),
               "distance_with_score_tags": float(np.mean(dist_with)),
               "distance_without_score_tags": float(np.mean(dist_without)), "vendi_by_tag": by_tag,
               "seeds": es.config.seeds}  # fmt: skip
    return steer, variety


@torch.no_grad()
def validation_loss(model, es: EvalSet) -> dict:
    """Plain v-prediction MSE on the first ``val_rows`` held-out rows, each at every band's middle
    timestep with noise keyed by (seed, row, t): the same numbers on every run."""
    from zxl.trainer.latents import to_tensor
    from zxl.trainer.loss import Schedule

    cfg = es.config
    rows = es.rows.iloc[: cfg.val_rows]
    edges = [round(i * 1000 / cfg.bands) for i in range(cfg.bands + 1)]
    ts = torch.tensor([(lo + hi - 1) // 2 for lo, hi in zip(edges[:-1], edges[1:], strict=True)])
    schedule = Schedule(model.ztsnr, "cpu")
    if es.val_images is None:  # decoded once; training evaluates the same rows every eval_every steps
        es.val_images = _images(es.catalog, rows, es.buckets)
    images = es.val_images
    fields = caption_fields(rows)
    all_t, all_loss = [], []
    dev, dtype = model.device, model.dtype
    for i, (image, r) in enumerate(zip(images, rows.itertuples(), strict=True)):
        x = to_tensor(image)[None].to(dev, torch.float32)
        z0 = (model.vae.encode(x.to(model.vae.dtype)).latent_dist.mean * model.vae.config.scaling_factor).float().cpu()
        g = torch.Generator().manual_seed(int.from_bytes(rng_for("val-noise", cfg.seed, r.key).randbytes(4), "little"))
        noise = torch.randn((len(ts), *z0.shape[1:]), generator=g)
        x_t, target = schedule.noisy_and_target(z0.expand(len(ts), -1, -1, -1), noise, ts, None)
        text = build_caption(fields[i], random.Random(0), STYLE_WEIGHTS["tags"], layout=es.layout)
        emb, pooled = model.encode([text])
        w, h = es.buckets[int(r.bucket_index)]
        oh = int(r.original_height) if not pd.isna(r.original_height) else int(r.height)
        ow = int(r.original_width) if not pd.isna(r.original_width) else int(r.width)
        ids = torch.tensor([[oh, ow, 0, 0, h, w]] * len(ts), dtype=emb.dtype, device=dev)
        cond = {"text_embeds": pooled.expand(len(ts), -1), "time_ids": ids}
        pred = model.unet(x_t.to(dev, dtype), ts.to(dev), encoder_hidden_states=emb.expand(len(ts), -1, -1),
                          added_cond_kwargs=cond).sample.float().cpu()  # fmt: skip
        all_loss.append(((pred - target) ** 2).mean(dim=(1, 2, 3)).double())
        all_t.append(ts)
    t, loss = torch.cat(all_t).numpy(), torch.cat(all_loss).numpy()
    return {"mean": float(loss.mean()), "bands": metrics.band_means(t, loss, edges), "rows": len(rows),
            "timesteps": ts.tolist()}  # fmt: skip


def clip_adherence(es: EvalSet, samples: list[dict], emb: np.ndarray) -> dict:
    """100·cos(image, prompt) under the catalog scorer's CLIP model, when it is one; ``emb`` are the
    samples' image embeddings from ``score_samples`` (that model's)."""
    if es.clip is not None:
        return {"skipped": es.clip}
    from zxl.scorers.base import TextEmbedder

    # es.clip is None only for the clip-mlp scorer, or a taste head over it (EvalSet.build)
    assert isinstance(es.scorer, TextEmbedder)
    img = emb
    txt = es.scorer.embed_text([es.prompts[s["prompt"]].text(s["tag"]) for s in samples])
    sims = 100 * (np.asarray(img) * np.asarray(txt)).sum(axis=1)
    return {"mean": float(sims.mean()), "with_score_tags": float(sims[[s["tag"] is not None for s in samples]].mean())}


def coverage(es: EvalSet, samples: list[dict], emb: np.ndarray) -> dict:
    """The samples over the catalog's clusters, and the Conditional Vendi score given the prompts."""
    text = [es.prompts[s["prompt"]].text(s["tag"]) for s in samples]
    # es.clip None: the scorer is a CLIP model (or a head over one) and embeds text (EvalSet.build)
    text_emb = None if es.clip is not None else es.scorer.embed_text(text)  # pyright: ignore[reportAttributeAccessIssue] - a TextEmbedder
    kernel = prompt_kernel(text, None if text_emb is None else np.asarray(text_emb))
    none = np.array([s["tag"] is None for s in samples])
    out: dict = {"conditional_vendi": conditional_vendi(emb, kernel),
                 "conditional_vendi_without_score_tags": conditional_vendi(emb[none], kernel[np.ix_(none, none)]),
                 "text_kernel": "bag of words" if text_emb is None else "CLIP text embeddings"}  # fmt: skip
    if isinstance(es.clusters, str):
        return {**out, "skipped": es.clusters}
    c = es.clusters
    labels, k = c.assign(emb), len(c.centres)
    out |= {"k": k, "embedding": c.embedding, "catalog": c.catalog.tolist(), "draws": c.draws.tolist(),
            "catalog_effective_clusters": effective_clusters(np.arange(k), c.catalog),
            "draws_effective_clusters": effective_clusters(np.arange(k), c.draws)}  # fmt: skip
    for name, keep in (("none", none), ("score_9", np.array([s["tag"] == 9 for s in samples])),
                       ("all", np.ones(len(samples), bool))):  # fmt: skip
        counts = np.bincount(labels[keep], minlength=k)
        spread = effective_clusters(labels[keep], np.ones(int(keep.sum())))
        out[name] = {"counts": counts.tolist(), "effective_clusters": spread,
                     "kl_from_catalog": kl_divergence(counts, c.catalog),
                     "kl_from_draws": kl_divergence(counts, c.draws)}  # fmt: skip
    return out


def evaluate_model(model, es: EvalSet, folder: Path | None = None, log=print) -> dict:
    """The six measures for one loaded model; samples under ``folder`` when given."""
    samples = render(model, es, folder, log)
    raw, emb = score_samples(es, samples)
    steer, variety = steering_and_variety(es, samples, raw, emb)
    tone = metrics.tone_summary([s["image"] for s in samples])
    result = {
        "steering": steer,
        "variety": variety,
        "tone": {"samples": tone, "training": es.train_tone, "flags": metrics.tone_flags(tone, es.train_tone)},
        "clip": clip_adherence(es, samples, emb),
        "val_loss": validation_loss(model, es),
        "coverage": coverage(es, samples, emb),
    }
    if folder is not None:
        _grid(samples, es, folder / "grid.png")
    return result


def figures(result: dict) -> dict:
    """One flat row of an eval result: what training logs and ``zxl merge --best --by`` ranks."""
    st, v, tone = result["steering"], result["variety"], result["tone"]
    row = {"val_loss": result["val_loss"]["mean"], "spearman": st["spearman"], "score_1": st["mean"]["score_1"],
           "score_9": st["mean"]["score_9"], "score_none": st["mean"]["none"],
           "steering_gap": st["mean"]["score_9"] - st["mean"]["score_1"],
           "vendi_with_tags": v["vendi_with_score_tags"], "vendi_without_tags": v["vendi_without_score_tags"],
           **{k: tone["samples"][k] for k in metrics.TONE_KEYS},
           "tone_flags": " ".join(tone["flags"]) or "none"}  # fmt: skip
    if "mean" in result["clip"]:
        row["clip"] = result["clip"]["mean"]
    cov = result.get("coverage", {})
    if "conditional_vendi" in cov:
        row["conditional_vendi"] = cov["conditional_vendi"]
    if "all" in cov:
        row |= {
            "coverage": cov["all"]["effective_clusters"],
            "coverage_none": cov["none"]["effective_clusters"],
            "coverage_score_9": cov["score_9"]["effective_clusters"],
            "cluster_kl": cov["all"]["kl_from_catalog"],
        }
    return row


def _grid(samples: list[dict], es: EvalSet, path: Path) -> None:
    from zxl.sampler.grid import make_grid, save_png

    rows = []
    for pi in range(len(es.prompts)):
        rows.append([s["image"] for s in samples if s["prompt"] == pi and s["seed"] == 0])
    labels = ["no score tag", *(f"score_{t}" for t in TAGS)]
    save_png(make_grid(rows, labels, [f"{p.style}: {p.body[:30]}" for p in es.prompts]), path, "")


# ----------------------------------------------------------------------------- models and the report


def model_refs(refs: list[str]) -> list[Path]:
    """Each reference as given, a run's checkpoints folder expanded to its step folders."""
    from zxl.trainer import checkpoint

    out = []
    for ref in refs:
        p = Path(ref)
        if not p.exists():
            raise ConfigError(f"--model {ref}: no such file or folder")
        steps = checkpoint.step_dirs(p)
        out += steps if steps else [p]
    return out


def load_model(ref: Path, device: str = "auto", precision: str = "fp32", config: str | None = None,
               base: str | None = None, ema: bool = True):  # fmt: skip
    """(model, step or None) from a single file, a diffusers folder or a zxl checkpoint folder."""
    from zxl.sampler.pipeline import SDXL

    meta = checkpoint_meta(ref, base)
    m = re.search(r"step-0*(\d+)", ref.name)
    step = int(m.group(1)) if m else None
    if meta is not None:
        from safetensors.torch import load_file

        from zxl.trainer import checkpoint

        cfg_dir = config if config is not None else meta["config"]["model"].get("config") or None
        parts = checkpoint.split(load_file(ref / "model.safetensors"), ema=ema)
        model = checkpoint.base_with(parts, meta["base"], cfg_dir)
        model.v_pred, model.ztsnr = meta["config"]["model"]["v_pred"], meta["config"]["model"]["ztsnr"]
        model.name = f"{ref.parent.parent.name}-{ref.name}"
        return model, meta["step"] if isinstance(meta.get("step"), int) else step
    return SDXL.load(ref, device, precision, config=config), step


def checkpoint_meta(ref: Path, base: str | None = None) -> dict | None:
    """A zxl checkpoint folder's meta.json, checked, with ``base`` the base model it completes from
    (``--base``, else the one the run recorded), which must exist; None for any other model."""
    from zxl.trainer import checkpoint

    if not (ref.is_dir() and (ref / "model.safetensors").is_file() and (ref / "meta.json").is_file()):
        return None
    meta = checkpoint.read_meta(ref, "--model")
    base = base or meta.get("base") or ""
    if not base or not Path(base).exists():
        raise ConfigError(f"--base: the base model {base!r} that {ref} was trained from is not here; give --base")
    return {**meta, "base": base}


def evaluate(refs: list[str], catalog: str, out: str | Path, cfg: EvalConfig = EvalConfig(), device: str = "auto",
             config: str | None = None, base: str | None = None, log=print) -> dict:  # fmt: skip
    """``zxl eval``: every checkpoint of ``refs`` on one EvalSet; writes the report under ``out``."""
    out = Path(out)
    paths = model_refs(refs)
    for path in paths:  # every checkpoint's meta.json and base model, before the catalog's work
        checkpoint_meta(path, base)
    es = EvalSet.build(catalog, cfg)
    log(f"eval: {len(paths)} model(s), {len(es.prompts)} prompts × 10 tags × {cfg.seeds} seeds, "
        f"{min(cfg.val_rows, len(es.rows))} held-out rows for the validation loss")  # fmt: skip
    results = []
    for n, path in enumerate(paths):
        model, step = load_model(path, device, "fp32", config, base)
        name = f"{n:02d}-{path.stem if path.is_file() else path.name}"
        log(f"eval: {name}")
        r = evaluate_model(model, es, out / name, log)
        results.append({"name": name, "model": str(path), "step": step, **r})
        del model
    report = {"catalog": str(catalog), "scorer": es.scorer.name, "config": asdict(cfg),
              "prompts": [asdict(p) for p in es.prompts], "held_out_rows": len(es.rows),
              "checkpoints": results}  # fmt: skip
    write_report(report, out)
    return report


def write_report(report: dict, out: Path) -> None:
    """report.json, the plots and report.md."""
    from zxl.trainer.plots import plot_report

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(report, indent=1, allow_nan=True), out / "report.json")
    plots = plot_report(report, out)
    lines = [f"# zxl eval — {report['catalog']}", "",
             f"{len(report['prompts'])} prompts × (no tag, score_1 … score_9) × {report['config']['seeds']} seeds, "
             f"{report['config']['steps']} steps, CFG {report['config']['cfg']:g}; validation loss on "
             f"{report['checkpoints'][0]['val_loss']['rows']} held-out rows. Samples scored by "
             f"{report.get('scorer', 'the catalog scorer')}, as the catalog's rows were.", "",
             "| checkpoint | step | score_1 → score_9 (raw) | ρ | Vendi with / without tags | conditional Vendi | "
             "clusters covered (KL from catalog) | tone flags | CLIP | val loss |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for c in report["checkpoints"]:
        m = c["steering"]["mean"]
        clip = c["clip"].get("mean")
        cov = c.get("coverage", {})
        covered = f"{cov['all']['effective_clusters']:.2f} of {cov['k']} ({cov['all']['kl_from_catalog']:.3f})" \
            if "all" in cov else "skipped"  # fmt: skip
        cond = f"{cov['conditional_vendi']:.2f}" if "conditional_vendi" in cov else ""
        lines.append(
            f"| {c['name']} | {c['step'] if c['step'] is not None else ''} | {m['score_1']:.3f} → {m['score_9']:.3f} | "
            f"{c['steering']['spearman']:.2f} | {c['variety']['vendi_with_score_tags']:.2f} / "
            f"{c['variety']['vendi_without_score_tags']:.2f} | {cond} | {covered} | "
            f"{', '.join(c['tone']['flags']) or 'none'} | "
            f"{'skipped' if clip is None else f'{clip:.1f}'} | {c['val_loss']['mean']:.4f} |"
        )
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    skipped = {c["clip"].get("skipped") for c in report["checkpoints"]} - {None}
    if skipped:
        lines += ["", f"Prompt adherence skipped: {'; '.join(sorted(skipped))}."]
    skipped = {c.get("coverage", {}).get("skipped") for c in report["checkpoints"]} - {None}
    if skipped:
        lines += ["", f"Cluster coverage skipped: {'; '.join(sorted(skipped))}."]
    first = next((c["coverage"] for c in report["checkpoints"] if "all" in c.get("coverage", {})), None)
    if first is not None:
        lines += ["", f"Clusters: the catalog's {first['k']} in its {first['embedding']} embedding; its rows cover "
                  f"{first['catalog_effective_clusters']:.2f} effectively, its training draws "
                  f"{first['draws_effective_clusters']:.2f}. Conditional Vendi: given the prompts "
                  f"({first['text_kernel']} kernel)."]  # fmt: skip
    lines += ["", "Grids: " + ", ".join(f"[{c['name']}]({c['name']}/grid.png)" for c in report["checkpoints"])]
    write_text_atomic("\n".join(lines) + "\n", out / "report.md")
