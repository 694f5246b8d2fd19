"""One import namespace: the wheel holds ``zxl`` alone at its top level, and ``python -m zxl``
works from any folder, whatever that folder holds (a ``trainer.py`` there once shadowed ours)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("pipeline", "scorers", "taggers", "captioners", "trainer", "sampler", "catalog")


def test_the_wheel_has_zxl_alone_at_the_top(tmp_path):
    # from a copy of the sources: setuptools builds in the source folder, and a build/ left there feeds later wheels
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "runs", "build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "-w", str(tmp_path), str(src)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("zxl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"zxl"}, top
    for folder in FOLDERS:
        assert f"zxl/{folder}/__init__.py" in names, folder
    assert "zxl/catalog/templates/index.html" in names and "zxl/sampler/configs/sdxl_v.yaml" in names


def test_python_m_zxl_works_from_a_folder_with_clashing_names(tmp_path):
    for name in FOLDERS:
        (tmp_path / f"{name}.py").write_text("raise SystemExit('the wrong module was imported')\n")
    for argv in (["train", "--help"], ["curate", "--help"], ["catalog", "--help"]):
        done = subprocess.run([sys.executable, "-m", "zxl", *argv], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0 and "usage: zxl" in done.stdout, done.stderr
