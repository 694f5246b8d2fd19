import re

import pytest
import torch

from zxl.cli import main


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "curate" in out and "demo" in out
    with pytest.raises(SystemExit):
        main(["curate", "--help"])
    out = capsys.readouterr().out
    for flag in ("--urls", "--url-column", "--id-column", "--demo", "--workers", "--scheduler", "--set", "--config"):
        assert flag in out
    assert "tcp://" in out and "resumes" in out


def test_config_errors_exit_2_and_name_the_key(capsys, tmp_path):
    assert main(["curate", "--set", "fetch.timout=3", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'fetch.timout'" in err and "'fetch.timeout'" in err


def test_missing_url_list_and_column(capsys, tmp_path, urls_file):
    assert main(["curate", "--urls", str(tmp_path / "none.parquet"), "--runs-dir", str(tmp_path)]) == 2
    assert "URL list not found" in capsys.readouterr().err
    assert main(["curate", "--urls", str(urls_file), "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no column 'url'" in err and "file_url" in err


def test_curate_the_demo_end_to_end(capsys, tmp_path):
    code = main([
        "curate", "--demo", "--no-progress", "--runs-dir", str(tmp_path), "--name", "d", "--scheduler", "sync",
        "--set", "demo.size=30", "--set", "demo.bad_fraction=0.25", "--set", f"demo.dir={tmp_path / 'corpus'}",
        "--set", "demo.port=0", "--set", "fetch.timeout=1", "--set", "demo.slow_seconds=3",
    ])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "served on http://127.0.0.1:" in out
    assert "rows per status" in out and "failed_download" in out
    assert (tmp_path / "d" / "catalog" / "_manifest.json").exists()


def test_the_demo_keeps_its_urls_when_its_port_is_taken(capsys, tmp_path):
    """A rerun whose demo.port another program holds serves elsewhere, but its URLs (and so every
    stage) are the same: nothing is fetched again."""
    import socket

    import pyarrow.parquet as pq

    with socket.socket() as s:  # a free port for demo.port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["curate", "--demo", "--no-progress", "--runs-dir", str(tmp_path), "--name", "d", "--scheduler", "sync",
            "--set", "demo.size=20", f"--set=demo.dir={tmp_path / 'corpus'}", f"--set=demo.port={port}",
            "--set", "fetch.timeout=1", "--set", "demo.slow_seconds=3"]  # fmt: skip
    assert main(args) == 0
    first = pq.read_table(tmp_path / "d" / "catalog", columns=["url"])["url"].to_pylist()
    capsys.readouterr()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the demo's own socket may linger
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        assert main(args) == 0
    out = capsys.readouterr().out
    assert f"(its URLs name http://127.0.0.1:{port}: demo.port is taken)" in out
    assert "fetch" in out and "shards already done" in out.split("fetch", 1)[1].splitlines()[0]
    assert pq.read_table(tmp_path / "d" / "catalog", columns=["url"])["url"].to_pylist() == first


def test_demo_build_prints_the_folder(capsys, tmp_path):
    assert main(["demo", "build", "--size", "10", "--dir", str(tmp_path)]) == 0
    folder = capsys.readouterr().out.strip()
    assert folder.startswith(str(tmp_path)) and (tmp_path / folder.rsplit("/", 1)[1] / "COMPLETE").exists()


def test_demo_rejects_a_timeout_longer_than_the_stall(capsys, tmp_path):
    assert main(["curate", "--demo", "--runs-dir", str(tmp_path), "--set", "fetch.timeout=10",
                 "--set", "demo.slow_seconds=5"]) == 2  # fmt: skip
    assert "demo.slow_seconds" in capsys.readouterr().err


def test_score_a_folder(capsys, tmp_path, corpus, truth, sync_run):
    import json
    import shutil

    import pyarrow.parquet as pq

    src = pq.read_table(corpus / "source.parquet").to_pandas().merge(truth, on="id")
    good = src[src["bad"].isna()].head(12)
    for row in good.itertuples():
        (tmp_path / "pics" / row.variant).mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus / "files" / row.file_url.lstrip("/"), tmp_path / "pics" / row.variant)
    assert main(["score", str(tmp_path / "pics"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 12 and all(isinstance(r["aesthetic"], float) and r["error"] is None for r in rows)
    assert main(["score", rows[0]["path"], "--score-edges-from", str(sync_run[1].catalog_dir)]) == 0
    assert re.search(r"^\s*[\d.]+  score_[1-9]  ", capsys.readouterr().out)


def test_score_reports_unreadable_images(capsys, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert main(["score", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "failed" in out and "broken.jpg" in out and "cannot read the image" in out
    assert main(["score", str(tmp_path / "missing")]) == 2


def _folder_with_images(tmp_path):
    from PIL import Image

    pics = tmp_path / "pics"
    pics.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(pics / "a.png")
    Image.new("RGBA", (20, 20), (0, 0, 255, 128)).save(pics / "b.png")
    (pics / "a.txt").write_text("1girl, long hair, blonde hair, smile, outdoors\n")
    return pics


def test_tag_a_folder_with_a_wd_model(capsys, tmp_path, wd_model):
    import json

    pics = _folder_with_images(tmp_path)
    assert main(["tag", str(pics), "--wd-model", str(wd_model[0]), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["a.png", "b.png"]
    assert all(r["rating"] in ("general", "sensitive", "questionable", "explicit") for r in rows)
    assert main(["tag", str(pics)]) == 2
    assert "--wd-model" in capsys.readouterr().err


def test_caption_a_folder_from_sidecar_tags(capsys, tmp_path, wd_model):
    import json

    pics = _folder_with_images(tmp_path)
    assert main(["caption", str(pics), "--json"]) == 1  # b.png has no tags to write from
    rows = {r["path"].rsplit("/", 1)[1]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["a.png"]["caption"] == "A girl, with long blonde hair, smiling, outdoors."
    assert rows["b.png"]["caption"] is None and "image.txt" in rows["b.png"]["error"]
    main(["caption", str(pics / "b.png"), "--wd-model", str(wd_model[0])])
    assert "b.png" in capsys.readouterr().out


def test_print_sigmas(capsys):
    assert main(["sample", "--print-sigmas", "--steps", "28"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "terminal convention comfyui" in lines[0]
    first, second = lines[2].split(), lines[3].split()
    assert first[1] == "999.000" and float(first[2]) == pytest.approx(4518.7637, abs=1e-3)
    assert second[1] == "963.000" and len(lines) == 2 + 28 + 1
    assert main(["sample", "--print-sigmas", "--terminal", "diffusers", "--steps", "3"]) == 0
    assert "4095.99" in capsys.readouterr().out
    assert main(["sample", "--print-sigmas", "--schedule", "cosine"]) == 2
    assert "trailing, simple, normal, sgm_uniform, karras, exponential, beta, ddim_uniform" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "err"), [
    (["--print-sigmas", "--steps", "0"], "--steps must be an integer from 1 to 1000 (the schedule has 1000 timesteps), "
                                         "got 0"),
    (["--print-sigmas", "--steps", "5000"], "--steps must be an integer from 1 to 1000"),
    (["--cfg-rescale", "1.5"], "--cfg-rescale must be a number in [0,1] (phi: 0 is off, 1 rescales fully), got 1.5"),
    (["--cfg-rescale", "nan"], "--cfg-rescale must be a number in [0,1]"),
    (["--dynamic-value", "-1"], "--dynamic-value must be a number >= 0, got -1.0"),
    (["--x", "cfg=3,abc"], "--x cfg=3,abc: 'abc' is not a number"),
    (["--x", "cfg=-5"], "--x cfg must be a number >= 0 (0 is unconditional, 1 conditional without guidance), "
                        "got -5.0"),
    (["--y", "steps=0"], "--y steps must be an integer from 1 to 1000"),
    (["--y", "seed=1.5"], "--y seed=1.5: '1.5' is not an integer"),
    (["--x", "prompt=0,2"], "--x prompt must be an integer from 0 to 1 (an index into the 2 prompts of the file), "
                            "got 2"),
])  # fmt: skip
def test_sample_refuses_bad_numbers_before_loading_a_model(capsys, tmp_path, args, err):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n")
    code = main(["sample", "--model", str(tmp_path / "no-model"), "--prompts", str(prompts), "--out",
                 str(tmp_path / "out"), *args])  # fmt: skip
    out = capsys.readouterr().err
    assert code == 2 and out.count("\n") == 1 and out.startswith(f"zxl sample: error: {err}"), out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "not safetensors", "empty"])
def test_sample_with_a_damaged_model_file_is_a_one_line_error(capsys, tmp_path, tiny_sdxl, damage):
    from safetensors.torch import save_file

    bad = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(64, 64)}, str(bad))
    bad.write_bytes({"truncated": bad.read_bytes()[:200], "not safetensors": b"\xff" * 300, "empty": b""}[damage])
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    code = main(["sample", "--model", str(bad), "--model-config", str(tiny_sdxl), "--prompts", str(prompts),
                 "--out", str(tmp_path / "out"), "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"zxl sample: error: --model {bad}: cannot load weights from it (") and "Traceback" not in err
