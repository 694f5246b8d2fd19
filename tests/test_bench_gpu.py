"""``python -m bench.gpu --tiny``: every GPU benchmark's code runs on the CPU with tiny models and
reports JSON of the documented shape (the real figures need ``make bench-gpu`` on a CUDA machine)."""

import json

import pytest


def test_bench_gpu_tiny_runs_every_entry_on_the_cpu(tmp_path, monkeypatch, capsys):
    """In this process (``python -m bench.gpu`` is ``sys.exit(main())``): its libraries are loaded already."""
    from bench.gpu import main

    monkeypatch.delenv("ZXL_BENCH_WD_MODEL", raising=False)
    assert main(["--tiny", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
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


def test_bench_gpu_refuses_to_run_full_size_without_cuda(tmp_path, capsys):
    import torch

    from bench.gpu import main

    if torch.cuda.is_available():
        return
    with pytest.raises(SystemExit) as stop:
        main(["sdxl", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "no CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
