"""The training loop end to end on the tiny SDXL-architecture model and the curated demo catalog:
resume, kill and resume, NaN steps, a full disk while saving, export, merge, overfitting."""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from zxl.config import ConfigError, load_config
from zxl.trainer import checkpoint
from zxl.trainer.config import TrainConfig
from zxl.trainer.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def catalog(sync_run):
    cfg, _ = sync_run
    return Path(cfg.run.runs_dir) / cfg.run.name / "catalog"


def config(catalog, tiny_sdxl, out, *overrides) -> TrainConfig:
    base = [
        f"model.base={tiny_sdxl}", f"data.catalog={catalog}", "data.resolution=64", "optim.batch_size=2",
        "optim.grad_accum=2", "optim.precision=fp32", "optim.gradient_checkpointing=false", "optim.warmup_steps=2",
        "optim.unet_lr=1e-3", "optim.text_encoder_lr=5e-4", "loop.max_steps=4", "loop.save_every=2",
        "loop.sample_every=0", "loop.log_every=1", f"loop.output={out}", "loop.progress=false",
    ]  # fmt: skip
    return load_config(TrainConfig, [], [*base, *overrides])


def quiet(*_a, **_k):
    pass


def test_resume_gives_the_same_losses(catalog, tiny_sdxl, tmp_path):
    straight = train(config(catalog, tiny_sdxl, tmp_path / "a"), log=quiet)
    assert straight["steps"] == 4 and len(straight["losses"]) == 4
    half = train(config(catalog, tiny_sdxl, tmp_path / "b", "loop.max_steps=2"), log=quiet)
    rest = train(config(catalog, tiny_sdxl, tmp_path / "b"), resume=True, log=quiet)
    assert half["losses"] + rest["losses"] == pytest.approx(straight["losses"], rel=1e-5)
    a = load_file(Path(straight["checkpoint"]) / "model.safetensors")
    b = load_file(Path(rest["checkpoint"]) / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    # the run wrote what a user looks at
    out = tmp_path / "a"
    assert (out / "log.csv").read_text().splitlines()[0].startswith("step,loss,lr,grad_norm,images_per_s")
    assert list((out / "tensorboard").iterdir())
    assert (out / "config.yaml").is_file() and (out / "result.json").is_file()
    assert [p.name for p in checkpoint.step_dirs(out / "checkpoints")] == ["step-00000002", "step-00000004"]
    state = torch.load(Path(straight["checkpoint"]) / "state.pt", weights_only=True)
    assert {"optimizer", "weighting", "weighting_optimizer", "scaler", "lr_schedule", "position"} <= set(state)


def test_kill_mid_run_and_resume(catalog, tiny_sdxl, tmp_path):
    straight = train(config(catalog, tiny_sdxl, tmp_path / "a", "loop.max_steps=6"), log=quiet)
    out = tmp_path / "killed"
    args = [f"--set={s}" for s in config_overrides(catalog, tiny_sdxl, out, "loop.max_steps=6", "loop.save_every=1")]
    proc = subprocess.Popen([sys.executable, "-m", "zxl", "train", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "checkpoints" / "step-00000003").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = checkpoint.step_dirs(out / "checkpoints")
    assert done, "the run never wrote a checkpoint"
    for d in done:  # every folder with a final name is whole
        checkpoint.load(d)
    resumed = train(config(catalog, tiny_sdxl, out, "loop.max_steps=6", "loop.save_every=1"), resume=True, log=quiet)
    n = len(resumed["losses"])
    assert 0 < n < 6
    assert resumed["losses"] == pytest.approx(straight["losses"][-n:], rel=1e-5)


def config_overrides(catalog, tiny_sdxl, out, *extra) -> list[str]:
    cfg = config(catalog, tiny_sdxl, out, *extra)
    flat = []
    for section in ("model", "data", "optim", "loop", "loss"):
        for k, v in vars(getattr(cfg, section)).items():
            flat.append(f"{section}.{k}={json.dumps(v) if not isinstance(v, str) else v}")
    return flat


def test_nan_steps_are_skipped_then_stop_the_run(catalog, tiny_sdxl, tmp_path, monkeypatch):
    import zxl.trainer.train as tt

    real = tt.per_sample_loss
    calls = {"n": 0}

    def once_nan(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(tt, "per_sample_loss", once_nan)
    result = train(config(catalog, tiny_sdxl, tmp_path / "a"), log=quiet)
    assert result["nan_steps"] == 1 and result["steps"] == 4
    monkeypatch.setattr(tt, "per_sample_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(FloatingPointError, match="3 steps in a row had a non-finite loss"):
        train(config(catalog, tiny_sdxl, tmp_path / "b", "loop.max_nan_steps=3"), log=quiet)


def test_full_disk_while_saving_keeps_the_previous_checkpoint(catalog, tiny_sdxl, tmp_path, monkeypatch):
    real = checkpoint.save_file
    calls = {"n": 0}

    def disk_full_on_second(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", disk_full_on_second)
    out = tmp_path / "a"
    with pytest.raises(
        checkpoint.CheckpointError, match=r"No space left on device; the previous checkpoint .*step-00000002 is intact"
    ):
        train(config(catalog, tiny_sdxl, out), log=quiet)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]  # no temporary left behind
    checkpoint.load(out / "checkpoints" / "step-00000002")


def test_missing_base_model_is_named(catalog, tmp_path):
    with pytest.raises(ConfigError, match="model.base: .*nope does not exist"):
        train(config(catalog, tmp_path / "nope", tmp_path / "a"), log=quiet)


def test_every_input_file_is_checked_before_step_1(tmp_path):
    """The catalog, the base model, model.config, the validation prompts (read at the first grid, after
    the first checkpoint) and the checkpoint to resume: a missing or bad one is named before any work,
    so the output folder is never made. The catalog here has no parts at all: nothing gets that far."""
    cat = tmp_path / "catalog"
    cat.mkdir()
    (cat / "_manifest.json").write_text('{"schema_version": 1}')
    base, out, prompts = tmp_path / "base", tmp_path / "out", tmp_path / "prompts.txt"
    base.mkdir()
    prompts.write_text("a cat --w 64 --h 64\n")

    def refused(match, *overrides, resume=False):
        cfg = config(cat, base, out, "loop.sample_every=1", f"loop.prompts={prompts}", *overrides)
        with pytest.raises(ConfigError, match=match):
            train(cfg, resume=resume, log=quiet)
        assert not out.exists()

    refused(f"^loop.prompts: {tmp_path / 'none.txt'} does not exist \\(the kohya prompt file of the validation grids",
            f"loop.prompts={tmp_path / 'none.txt'}")  # fmt: skip
    prompts.write_text("a cat --w 64 --h 64\na dog --l -1\n")
    refused(f"^loop.prompts: {prompts}:2: --l must be a number >= 0 \\(the CFG scale\\), got -1.0$")
    prompts.write_text("a cat --w 64 --h 64\n")
    refused(f"^data.catalog: {tmp_path / 'none'} does not exist", f"data.catalog={tmp_path / 'none'}")
    refused(f"^data.catalog: {tmp_path} is not a zxl catalog \\(no _manifest.json\\)", f"data.catalog={tmp_path}")
    refused(f"^model.base: {tmp_path / 'none'} does not exist", f"model.base={tmp_path / 'none'}")
    refused("^model.base: give the base model", "model.base=")
    refused(f"^model.config: {tmp_path / 'none'} is not a folder", f"model.config={tmp_path / 'none'}")
    refused(f"^--resume {tmp_path / 'none'}: no such checkpoint folder", resume=str(tmp_path / "none"))
    # with sample_every 0 the prompts are never read, so they need not exist
    with pytest.raises(ConfigError, match="^data.catalog: .* has no trainable rows"):
        train(config(cat, base, out, f"loop.prompts={tmp_path / 'none.txt'}"), log=quiet)


def test_zxl_train_names_a_missing_prompt_file_or_a_damaged_catalog_part(tmp_path, capsys):
    from tests.test_trainer_data import _two_part_catalog
    from zxl.cli import main

    cat = _two_part_catalog(tmp_path / "catalog")
    argv = ["train", "--base", str(tmp_path), "--catalog", str(cat), "--set", f"loop.output={tmp_path / 'out'}",
            "--set", "loop.sample_every=5", "--set", f"loop.prompts={tmp_path / 'none.txt'}"]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"zxl train: error: loop.prompts: {tmp_path / 'none.txt'} does not exist (the kohya prompt file of the "
        "validation grids, every loop.sample_every steps; 0 draws none)\n"
    )
    part = cat / "part-00001.parquet"
    part.write_bytes(part.read_bytes()[:100])
    assert main([*argv, "--set", "loop.sample_every=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"zxl train: error: data.catalog: part {part} cannot be read (ArrowInvalid: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "not safetensors"])
def test_a_damaged_base_or_checkpoint_is_a_one_line_error(catalog, tiny_sdxl, tmp_path, capsys, damage):
    from safetensors.torch import save_file

    from zxl.cli import main

    bad = tmp_path / "base.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(64, 64)}, str(bad))
    bad.write_bytes(bad.read_bytes()[:200] if damage == "truncated" else b"<html>not a model</html>")
    code = main(["train", "--base", str(bad), "--set", f"data.catalog={catalog}", "--set", "data.resolution=64",
                 "--set", f"loop.output={tmp_path / 'out'}", "--set", "loop.progress=false"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert (
        err.startswith(f"zxl train: error: model.base (--base) {bad}: cannot load weights from it (")
        and "Traceback" not in err
    )
    # a resume from a checkpoint whose weights were cut short
    done = train(config(catalog, tiny_sdxl, tmp_path / "a", "loop.max_steps=2"), log=quiet)
    weights = Path(done["checkpoint"]) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000] if damage == "truncated" else b"\0" * 64)
    with pytest.raises(
        checkpoint.CheckpointError, match=rf"--resume {done['checkpoint']}: the checkpoint does not load"
    ):
        train(config(catalog, tiny_sdxl, tmp_path / "a"), resume=True, log=quiet)


def test_export_merge_and_load_back(catalog, tiny_sdxl, tmp_path):
    from zxl.sampler.pipeline import SDXL
    from zxl.trainer.export import merge_and_write

    result = train(config(catalog, tiny_sdxl, tmp_path / "a", "loop.save_every=1", "loop.keep_last=4",
                          "loop.export=both"), log=quiet)  # fmt: skip
    exported = Path(result["export"])
    assert exported.suffix == ".safetensors" and exported.with_suffix(".yaml").is_file()
    umask = os.umask(0)
    os.umask(umask)
    ckpt_file = Path(result["checkpoint"]) / "model.safetensors"
    for written in (exported, ckpt_file):  # safetensors alone would leave 0600: unreadable to another user
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask, written
    sd = load_file(exported)
    assert "v_pred" in sd and "ztsnr" in sd and any(k.startswith("model.diffusion_model.") for k in sd)
    trained = checkpoint.split(load_file(Path(result["checkpoint"]) / "model.safetensors"))
    model = SDXL.load(exported, device="cpu", precision="fp32", config=tiny_sdxl)
    assert model.v_pred and model.ztsnr
    for name, t in model.unet.state_dict().items():
        assert torch.equal(t, trained["unet"][name]), name
    for name, t in model.text_encoder_2.state_dict().items():
        assert torch.equal(t, trained["text_encoder_2"][name]), name

    # diffusers reads the exported file too, with the same weights
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_single_file(str(exported), config=str(tiny_sdxl), local_files_only=True)
    for name, t in pipe.unet.state_dict().items():
        assert torch.equal(t, trained["unet"][name]), name

    # and the diffusers folder with no settings at all: v-prediction, zero terminal SNR, trailing
    from diffusers import DiffusionPipeline, EulerDiscreteScheduler

    from zxl.sampler.schedule import trailing_timesteps

    folder = Path(result["export_diffusers"])
    assert folder.name == exported.stem and (folder / "model_index.json").is_file()
    pipe = DiffusionPipeline.from_pretrained(str(folder))
    assert isinstance(pipe, StableDiffusionXLPipeline) and isinstance(pipe.scheduler, EulerDiscreteScheduler)
    sc = pipe.scheduler.config
    assert (sc.prediction_type, sc.rescale_betas_zero_snr, sc.timestep_spacing) == ("v_prediction", True, "trailing")
    pipe.scheduler.set_timesteps(28)
    assert pipe.scheduler.timesteps.tolist() == trailing_timesteps(28)
    for name, t in pipe.unet.state_dict().items():
        assert torch.equal(t, trained["unet"][name]), name
    # from_single_file never reads the marker keys: its scheduler is the config folder's, so give it this one
    single = StableDiffusionXLPipeline.from_single_file(str(exported), config=str(folder), local_files_only=True)
    assert (single.scheduler.config.prediction_type, single.scheduler.config.timestep_spacing) == (
        "v_prediction", "trailing")  # fmt: skip

    # merge: the mean of the checkpoints, exported as a single file and as a diffusers folder
    ckpts = checkpoint.step_dirs(tmp_path / "a" / "checkpoints")
    assert len(ckpts) == 4
    merged = merge_and_write(ckpts[-3:], tmp_path / "merged.safetensors")
    parts = [checkpoint.split(load_file(c / "model.safetensors"))["unet"] for c in ckpts[-3:]]
    m = SDXL.load(merged, device="cpu", precision="fp32", config=tiny_sdxl)
    for name, t in m.unet.state_dict().items():
        assert torch.allclose(t, sum(p[name] for p in parts) / 3, atol=1e-6), name
    weighted = merge_and_write(ckpts[-2:], tmp_path / "w.safetensors", weights=[3, 1])
    w = load_file(weighted)
    single_a = load_file(merge_and_write([ckpts[-2]], tmp_path / "a.safetensors"))
    single_b = load_file(merge_and_write([ckpts[-1]], tmp_path / "b.safetensors"))
    key = next(k for k in w if k.startswith("model.diffusion_model.") and w[k].numel() > 1)
    assert torch.allclose(w[key], 0.75 * single_a[key] + 0.25 * single_b[key], atol=1e-6)
    folder = merge_and_write(ckpts[-1:], tmp_path / "diffusers")
    back = SDXL.load(folder, device="cpu", precision="fp32")
    assert back.v_pred and back.ztsnr
    for name, t in back.unet.state_dict().items():
        assert torch.equal(t, checkpoint.split(load_file(ckpts[-1] / "model.safetensors"))["unet"][name])


def test_a_tiny_model_overfits_eight_images(catalog, tiny_sdxl, tmp_path):
    """Eight images of one bucket, 120 steps (t in 300..699 so that steps compare): the loss falls by half."""
    table = pq.read_table(catalog)
    ok = table.filter(pc.and_(pc.equal(table["status"], "ok"), pc.greater(table["repeats"], 0)))
    bucket = Counter(ok["bucket"].to_pylist()).most_common(1)[0][0]
    eight = ok.filter(pc.equal(ok["bucket"], bucket)).slice(0, 8)
    assert eight.num_rows == 8
    small = catalog.parent / "catalog-eight"
    shutil.rmtree(small, ignore_errors=True)
    small.mkdir()
    ones = pa.array([1] * 8, pa.int16())
    pq.write_table(eight.set_column(eight.schema.get_field_index("repeats"), eight.schema.field("repeats"), ones),
                   small / "part-00000.parquet")  # fmt: skip
    shutil.copy(catalog / "_manifest.json", small / "_manifest.json")
    cfg = config(small, tiny_sdxl, tmp_path / "a", "loop.max_steps=120", "loop.save_every=1000", "optim.batch_size=4",
                 "optim.grad_accum=1", "loss.ip_noise_gamma=0", "data.caption_dropout=0", "optim.warmup_steps=5",
                 "optim.unet_lr=3e-3", "loss.min_timestep=300", "loss.max_timestep=700")  # fmt: skip
    losses = train(cfg, log=quiet)["losses"]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first / 2, (first, last)


def test_two_process_data_parallel_equals_one_process_with_the_doubled_batch(catalog, tiny_sdxl, tmp_path):
    """``accelerate launch`` with two CPU processes (gloo) and batch 2 each against one process, batch 4."""
    import socket

    one = train(config(catalog, tiny_sdxl, tmp_path / "one", "optim.batch_size=4", "loop.max_steps=3"), log=quiet)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two"
    args = [f"--set={s}" for s in config_overrides(catalog, tiny_sdxl, out, "optim.batch_size=2", "loop.max_steps=3")]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(port), "-m", "zxl", "train", *args]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((out / "result.json").read_text())
    assert two["steps"] == 3
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)
    a = load_file(Path(one["checkpoint"]) / "model.safetensors")
    b = load_file(Path(two["checkpoint"]) / "model.safetensors")
    # attention key biases have an exactly zero gradient (softmax ignores a constant shift), so what they
    # get is rounding noise, which Adafactor's normalisation turns into lr-sized steps either way
    noise_only = [k for k in a if k.endswith("k_proj.bias")]
    assert max((a[k] - b[k]).abs().max().item() for k in a if k not in noise_only) < 1e-5


def test_precision_checkpointing_ema_and_loss_options(catalog, tiny_sdxl, tmp_path):
    from zxl.trainer.export import merge_and_write

    plain = train(config(catalog, tiny_sdxl, tmp_path / "a", "loop.max_steps=2"), log=quiet)
    ckpt = train(config(catalog, tiny_sdxl, tmp_path / "b", "loop.max_steps=2", "optim.gradient_checkpointing=true"),
                 log=quiet)  # fmt: skip
    assert ckpt["losses"] == pytest.approx(plain["losses"], rel=1e-5)  # recomputation changes nothing
    for precision in ("bf16", "fp16"):
        r = train(config(catalog, tiny_sdxl, tmp_path / precision, "loop.max_steps=2", f"optim.precision={precision}"),
                  log=quiet)  # fmt: skip
        assert r["steps"] == 2 and all(math.isfinite(x) for x in r["losses"]) and r["nan_steps"] == 0
    for extra in (["loss.loss=l2"], ["loss.huber_schedule=exponential"], ["loss.adaptive_weighting=false"],
                  ["data.flip=true"], ["optim.optimizer=adamw", "optim.text_encoder_lr=0"]):  # fmt: skip
        r = train(
            config(catalog, tiny_sdxl, tmp_path / extra[0].replace("=", "-"), "loop.max_steps=1", *extra), log=quiet
        )
        assert r["steps"] == 1 and math.isfinite(r["losses"][0]), extra
    ema = train(config(catalog, tiny_sdxl, tmp_path / "ema", "loop.max_steps=2", "optim.ema_decay=0.5"), log=quiet)
    weights = load_file(Path(ema["checkpoint"]) / "model.safetensors")
    name = "conv_in.weight"
    assert not torch.equal(weights[f"ema.unet.{name}"], weights[f"unet.{name}"])
    out = merge_and_write([Path(ema["checkpoint"])], tmp_path / "ema.safetensors", None, str(tiny_sdxl), ema=True)
    from zxl.sampler.pipeline import SDXL

    model = SDXL.load(out, device="cpu", precision="fp32", config=tiny_sdxl)
    assert torch.equal(model.unet.state_dict()[name], weights[f"ema.unet.{name}"])
