"""stages: the CPU each post-fetch stage spends per image at real image sizes, in units of one decode.

A booru's images are 1–2 Mpx. This entry writes such images (JPEG at quality 90, PNG, WebP at
quality 90: shapes over a blurred noise field, so each codec has real work) into one shard of a run
folder, then runs every post-fetch stage on it through the stage table's own task function
(``graph.run_shard``), one thread, and measures CPU time (``time.process_time``) per image:

    inspect                       decode check, sha256, phash, bucket
    score: technical              the offline scorer (and its pixel embedding)
    score: clip-mlp               a tiny CLIP at the real input side (224 px), random weights
    tag: metadata                 the booru's own tag strings
    tag: wd                       a tiny WD tagger at the real input side (448 px)
    caption: template             a sentence from the tags

and, side by side in the same run, a plain full decode of the same bytes (``Image.open(...).load()``),
the unit. Each is run ``repeats`` times, alternating, best kept. The two configurations the targets
name run as ``zxl curate`` runs them, inspect, score and tag in one task (one pass over the images),
caption after; each of their runs is paired with a decode of the same images just before it, and
the ratio reported is the median over the repeats of pass / paired decode (this machine's speed
drifts by ±15% between minutes; a pair a second apart shares it). Those passes run on a shard that
stores each image ``COPIES`` times: a shard's own costs (reading the fetch table, the tag frames,
four Parquet files written: ~60 ms) are spread over 10,000 rows in a run (``fetch.shard_size``),
where over 72 they would add ~0.8 ms an image that no real shard pays. The models' own CPU time (CLIP's
forward pass, onnxruntime's) is measured separately, so the report can say what the stages cost
*outside* the models: what decoding and preprocessing cost, which is what this entry is about.

Targets (issue 27): the demo configuration (inspect + technical + metadata + template) at most 2.5
decodes per image; with clip-mlp and WD (inspect + clip-mlp + metadata + wd + template), the CPU work
outside the models at most 1.5 decodes.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bench import one_torch_thread

COPIES = 3  # each image stored this many times in the shards the passes run on (module docstring)
SIZES = ((1024, 1536), (1536, 1024), (1216, 1216), (896, 1600), (1344, 1344), (1024, 1024))  # 1.0–1.8 Mpx
FORMATS = ("JPEG", "PNG", "WEBP")
TINY_CLIP_224 = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def real_size_image(seed: int, size: tuple[int, int], fmt: str) -> bytes:
    """Shapes over a blurred noise field, encoded as ``fmt`` (a ~1.5 Mpx JPEG at q90 is ~0.5 MB)."""
    rng = np.random.default_rng(seed)
    w, h = size
    field = Image.fromarray(rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    im = field.filter(ImageFilter.GaussianBlur(1.2))
    draw = ImageDraw.Draw(im)
    for _ in range(14):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(40, 320))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=colour, outline=(0, 0, 0), width=3)
    buf = io.BytesIO()
    im.save(buf, fmt, quality=90) if fmt != "PNG" else im.save(buf, fmt, compress_level=6)
    return buf.getvalue()


def _model_files(folder: Path) -> dict[str, str]:
    """A tiny CLIP (224 px input) with a LAION-layout head, and a tiny WD tagger at 448 px."""
    import open_clip
    import torch

    from zxl.scorers.heads import laion_state_dict
    from zxl.testing import build_wd_model

    (folder / "zxl-bench-clip.json").write_text(json.dumps(TINY_CLIP_224))
    open_clip.add_model_config(folder / "zxl-bench-clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("zxl-bench-clip", pretrained=None).state_dict(), folder / "clip.pt")
    torch.save(laion_state_dict(dim=32, seed=1), folder / "head.pth")
    build_wd_model(folder / "wd", size=448)
    return {
        "clip_model": str(folder / "zxl-bench-clip.json"), "clip_weights": str(folder / "clip.pt"),
        "head_weights": str(folder / "head.pth"), "wd_model": str(folder / "wd"),
    }  # fmt: skip


class ModelClock:
    """CPU seconds spent inside the models' forward passes (CLIP's encode, onnxruntime's run)."""

    def __init__(self):
        self.seconds = 0.0

    @contextmanager
    def patched(self):
        from zxl.scorers.clip_mlp import ClipMlpScorer
        from zxl.taggers.wd import WDTagger

        originals = {(ClipMlpScorer, "embed"): ClipMlpScorer.embed, (WDTagger, "predict"): WDTagger.predict}

        def timed(fn):
            def wrapper(*args, **kwargs):
                t0 = time.process_time()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.seconds += time.process_time() - t0

            return wrapper

        for (cls, name), fn in originals.items():
            setattr(cls, name, timed(fn))
        try:
            yield self
        finally:
            for (cls, name), fn in originals.items():
                setattr(cls, name, fn)


def _decode_all(blobs: list[bytes]) -> None:
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            im.load()


def _image_pass(run_dir: Path, cfg) -> None:
    """inspect + score + tag in one pass over the shard, as ``zxl curate`` runs them."""
    from zxl.pipeline import graph
    from zxl.pipeline.stages import stage_path

    names = ("inspect", "score", "tag")
    parts = [(n, "measured", tuple(graph.section(cfg, s) for s in graph.BY_NAME[n].sections)) for n in names]
    for name in names:
        stage_path(run_dir, name, 0).unlink(missing_ok=True)
    graph.run_images(str(run_dir), 0, parts)


def _timed_pass(run_dir: Path, cfg, blobs: list[bytes], clock: ModelClock) -> tuple[float, float, float]:
    """CPU seconds of a decode of ``blobs`` (the shard's images), then of the one pass over the shard
    (``_image_pass``), and of the models within that pass."""
    t0 = time.process_time()
    _decode_all(blobs)
    decode_s = time.process_time() - t0
    clock.seconds = 0.0
    with clock.patched():
        t0 = time.process_time()
        _image_pass(run_dir, cfg)
        return decode_s, time.process_time() - t0, clock.seconds


# (label, stage, overrides): the stage runs on the shard with these settings
RUNS = (
    ("inspect", "inspect", ()),
    ("score: technical", "score", ("score.scorer=technical",)),
    ("score: clip-mlp (tiny CLIP, 224 px)", "score", ("score.scorer=clip-mlp",)),
    ("tag: metadata", "tag", ("tag.taggers=[metadata]",)),
    ("tag: wd (tiny model, 448 px)", "tag", ("tag.taggers=[wd]",)),
    ("caption: template", "caption", ("caption.captioner=template",)),
)
SYNC = ("run.scheduler=sync", "score.loader_threads=1")
# The configurations as zxl curate runs them: inspect, score and tag in one task (one pass over the
# shard's images, graph.run_images), then caption in its own task after the global steps.
PASSES = (
    ("demo: inspect + technical + metadata (one pass)", ("score.scorer=technical", "tag.taggers=[metadata]")),
    ("models: inspect + clip-mlp + metadata + wd (one pass)", ("score.scorer=clip-mlp", "tag.taggers=[metadata,wd]")),
)


@one_torch_thread
def run(quick: bool = False) -> list[dict]:
    import cv2

    from tests import stage_folder
    from zxl.config import load_config
    from zxl.pipeline import graph
    from zxl.pipeline.config import CurateConfig
    from zxl.pipeline.stages import stage_path

    cv2.setNumThreads(1)
    per_format = 6 if quick else 24
    repeats = 2 if quick else 5  # best of each: this machine's speed drifts by ±15% between minutes
    blobs, formats = [], []
    for fmt in FORMATS:
        for i in range(per_format):
            blobs.append(real_size_image(i, SIZES[i % len(SIZES)], fmt))
            formats.append(fmt)
    work = Path(tempfile.mkdtemp(prefix="zxl-bench-stages-"))
    try:
        files = _model_files(work)
        base = [
            f"score.clip_model={files['clip_model']}", f"score.clip_weights={files['clip_weights']}",
            f"score.head_weights={files['head_weights']}", "score.device=cpu", "score.batch_size=8",
            f"tag.wd_model={files['wd_model']}", "tag.device=cpu", "tag.batch_size=8", "tag.min_count=1",
            "caption.min_score=1", "run.workers=1",
        ]  # fmt: skip
        run_dir = work / "run"
        cfg, hashes = stage_folder.build(run_dir, blobs, *base)
        # the shard's earlier stages once, so every measured stage finds what it reads
        stage_folder.run(run_dir, cfg, hashes, "inspect", "score", "tag", "reduce", "tagrules")
        copies = 1 if quick else COPIES
        stored = blobs * copies  # the passes' shard: each image stored ``copies`` times
        pass_dir, warm_dir = work / "pass", work / "warm"
        stage_folder.build(pass_dir, stored, *base)
        stage_folder.build(warm_dir, [blobs[k * per_format] for k in range(len(FORMATS))], *base)
        cpu: dict[str, list[float]] = {label: [] for label, _, _ in RUNS}
        model: dict[str, list[float]] = {label: [] for label, _, _ in RUNS}
        cpu["decode"] = []
        paired: dict[str, list[float]] = {label: [] for label, _ in PASSES}  # a decode right before each pass
        clock = ModelClock()
        for _ in range(repeats):
            t0 = time.process_time()
            _decode_all(blobs)
            cpu["decode"].append(time.process_time() - t0)
            for label, stage, overrides in RUNS:
                cfg_r = load_config(CurateConfig, overrides=[*SYNC, *base, *overrides])
                path = stage_path(run_dir, stage, 0)
                path.unlink(missing_ok=True)
                spec = graph.BY_NAME[stage]
                args = [graph.section(cfg_r, s) for s in spec.sections]
                graph.run_shard(str(run_dir), stage, 0, "warm-up", *args)  # model loads, imports: not counted
                path.unlink()
                clock.seconds = 0.0
                with clock.patched():
                    t0 = time.process_time()
                    graph.run_shard(str(run_dir), stage, 0, "measured", *args)
                    cpu[label].append(time.process_time() - t0)
                model[label].append(clock.seconds)
            for label, overrides in PASSES:  # per image of ``blobs``: the shard's totals over ``copies``
                cfg_r = load_config(CurateConfig, overrides=[*SYNC, *base, *overrides])
                _image_pass(warm_dir, cfg_r)  # warm-up: model loads, imports (a shard of three images)
                decode_s, pass_s, model_s = _timed_pass(pass_dir, cfg_r, stored, clock)
                paired[label].append(decode_s / copies)
                cpu.setdefault(label, []).append(pass_s / copies)
                model.setdefault(label, []).append(model_s / copies)
        by_format = {}
        for fmt in FORMATS:  # each format in a shard of its own: the passes against its own decode
            picked = [b for b, f in zip(blobs, formats, strict=True) if f == fmt] * copies
            fmt_dir = work / fmt
            stage_folder.build(fmt_dir, picked, *base)
            ratios_f: dict[str, list[float]] = {label: [] for label, _ in PASSES}
            decode_ms = []
            for _ in range(3):
                for label, overrides in PASSES:
                    cfg_r = load_config(CurateConfig, overrides=[*SYNC, *base, *overrides])
                    _image_pass(warm_dir, cfg_r)  # warm-up: the models of this configuration loaded
                    decode_s, pass_s, model_s = _timed_pass(fmt_dir, cfg_r, picked, clock)
                    decode_ms.append(decode_s / len(picked) * 1e3)
                    ratios_f[label].append((pass_s - model_s) / decode_s)
            by_format[fmt] = {
                "decode_ms": float(np.median(decode_ms)), "bytes": float(np.mean([len(b) for b in picked])),
                "pass_ratios": {label: float(np.median(v)) for label, v in ratios_f.items()},
            }  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = len(blobs)
    best = {k: min(v) / n * 1e3 for k, v in cpu.items()}  # CPU ms per image, best run
    best_model = {k: model[k][int(np.argmin(cpu[k]))] / n * 1e3 for k in model}
    unit = best["decode"]
    print(
        f"  {n} images ({', '.join(f'{per_format} {f}' for f in FORMATS)}), 1–2 Mpx, the passes on a shard storing "
        f"each {copies}×; a full decode: {unit:.1f} ms"
    )
    for fmt, v in by_format.items():
        passes = ", ".join(f"{label.split(':')[0]} {r:.2f}" for label, r in v["pass_ratios"].items())
        print(
            f"    {fmt}: {v['bytes'] / 1e3:.0f} KB, decode {v['decode_ms']:.1f} ms; the passes outside the models, "
            f"in its decodes: {passes}"
        )
    for label in [r[0] for r in RUNS] + [p[0] for p in PASSES]:
        outside = best[label] - best_model[label]
        print(f"  {label:38s} {best[label]:7.1f} ms  ({best[label] / unit:.2f} decodes; "
              f"models {best_model[label]:.1f} ms, outside them {outside / unit:.2f})")  # fmt: skip
    caption = best["caption: template"]
    demo = best[PASSES[0][0]] + caption
    with_models = best[PASSES[1][0]] - best_model[PASSES[1][0]] + caption
    # the targets' ratios: each pass against the decode measured just before it, the median over the
    # repeats (the machine's speed drifts between minutes; a pair a second apart shares its speed)
    ratios = {}
    for label, _ in PASSES:
        outside = [(c - m) / n * 1e3 + caption for c, m in zip(cpu[label], model[label], strict=True)]
        ratios[label] = [o / (d / n * 1e3) for o, d in zip(outside, paired[label], strict=True)]
    demo_ratio, models_ratio = (float(np.median(ratios[label])) for label, _ in PASSES)
    print(
        f"  paired with the decode just before, median of {repeats}: demo {demo_ratio:.2f} decodes "
        f"({min(ratios[PASSES[0][0]]):.2f}–{max(ratios[PASSES[0][0]]):.2f}), models {models_ratio:.2f} outside them "
        f"({min(ratios[PASSES[1][0]]):.2f}–{max(ratios[PASSES[1][0]]):.2f})"
    )
    models = ("inspect", "score: clip-mlp (tiny CLIP, 224 px)", "tag: metadata", "tag: wd (tiny model, 448 px)",
              "caption: template")  # fmt: skip
    apart = {
        "demo": sum(best[k] for k in ("inspect", "score: technical", "tag: metadata", "caption: template")),
        "models": sum(best[k] - best_model[k] for k in models),
    }
    print(
        f"  the same stages each in a task of its own: demo {apart['demo'] / unit:.2f} decodes, "
        f"models {apart['models'] / unit:.2f} outside them"
    )
    detail = {"per_stage_ms": best, "model_ms": best_model, "formats": by_format, "images": n, "apart_ms": apart,
              "paired_ratios": ratios, "copies": copies}  # fmt: skip
    return [
        {
            "name": "post-fetch stages of the demo config (inspect + technical + metadata in one pass, template), "
            f"CPU ms/image, {n} real-size images, 1 thread",
            "ours": demo, "baseline": unit, "baseline_name": "one full PIL decode of the same bytes",
            "unit": "CPU ms/image", "ratio": demo_ratio, "target": "≤ 2.5 decodes", "detail": detail,
        },
        {
            "name": "post-fetch stages with clip-mlp and WD (inspect + clip-mlp + metadata + wd in one pass, "
            "template), CPU ms/image outside the models",
            "ours": with_models, "baseline": unit, "baseline_name": "one full PIL decode of the same bytes",
            "unit": "CPU ms/image", "ratio": models_ratio, "target": "≤ 1.5 decodes",
        },
    ]  # fmt: skip
