"""``python -m bench.gpu --tiny``: every GPU benchmark's code runs on the CPU with tiny models and
reports JSON of the documented shape (the real figures need ``make bench-gpu`` on a CUDA machine)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_gpu_tiny_runs_every_entry_on_the_cpu(tmp_path):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    env.pop("ZXL_BENCH_WD_MODEL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--tiny", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    (written,) = tmp_path.glob("gpu-tiny-*.json")
    assert json.loads(written.read_text()) == report
    assert report["tiny"] is True and report["machine"]["device"] == "cpu"
    assert {"torch", "diffusers", "open_clip_torch"} <= set(report["versions"])
    assert set(report["seconds"]) == {"clip", "wd", "sdxl", "eval", "train", "total"}
    entries = report["entries"]
    names = [e["name"] for e in entries]
    assert [n.split(",")[1].strip().split(" (")[0] for n in names[:3]] == [
        "score stage path", "decode on the device", "model alone"
    ]  # fmt: skip
    assert names[3].startswith("wd tagger wd-tiny") and names[4].startswith("SDXL 64×64, 2 Euler steps")
    for e in entries:
        assert e["ours"] > 0 and e["baseline"] > 0 and e["ratio"] > 0, e
        assert e["unit"] in ("images/s", "s/image", "s") and e["target"]
    sdxl = entries[4]
    assert sdxl["baseline_name"].startswith("diffusers StableDiffusionXLPipeline")
    assert sdxl["configs"].startswith("tiny") and sdxl["met"] in (True, False)
    ev = entries[5]
    assert ev["name"].startswith("zxl eval per checkpoint, 64 px") and ev["met"] in (True, False)
    train = entries[6:]  # bf16 with gradient checkpointing on and off (fp16 + scaler is for a GPU)
    assert [e["name"].split(", ")[2:4] for e in train] == [["bf16", "gradient checkpointing on"],
                                                          ["bf16", "gradient checkpointing off"]]  # fmt: skip
    assert all(e["baseline_name"].startswith("plain diffusers loop") and e["unit"] == "images/s" for e in train)


def test_bench_gpu_refuses_to_run_full_size_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "sdxl", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
