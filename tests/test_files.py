"""zxl/files.py: one way to replace a file or a folder, used by every writer in the project."""

import ast
import os
from pathlib import Path

import pytest

from zxl.files import TEMPORARY, replacing, temp_name, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
CODE = ("zxl", "pipeline", "scorers", "taggers", "captioners", "trainer", "sampler", "catalog", "bench", "docs")


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    path = write_text_atomic("old", tmp_path / "a" / "f.txt")
    with pytest.raises(RuntimeError):
        with replacing(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and os.listdir(path.parent) == ["f.txt"]  # no temporary left
    with replacing(path) as tmp:
        assert TEMPORARY.match(tmp.name) and tmp.parent == path.parent
        tmp.write_text("new")
        assert path.read_text() == "old"  # readers see the old file until the rename
    assert path.read_text() == "new" and os.listdir(path.parent) == ["f.txt"]


def test_a_folder_is_swapped_whole(tmp_path):
    folder = tmp_path / "catalog"
    with replacing(folder, folder=True) as tmp:
        (tmp / "part-0.parquet").write_text("1")
    with pytest.raises(OSError):
        with replacing(folder, folder=True) as tmp:
            (tmp / "part-0.parquet").write_text("2")
            raise OSError("disk full")
    assert (folder / "part-0.parquet").read_text() == "1" and sorted(os.listdir(tmp_path)) == ["catalog"]
    with replacing(folder, folder=True, umask=True) as tmp:
        (tmp / "part-1.parquet").write_text("3")
    assert sorted(os.listdir(folder)) == ["part-1.parquet"] and sorted(os.listdir(tmp_path)) == ["catalog"]


def test_the_one_spelling_is_the_one_the_cleanup_knows(tmp_path):
    from zxl.pipeline.stages import _TEMPORARY

    for name in ("x.parquet", "_manifest.json", "catalog", "step-00000010"):
        spelt = temp_name(tmp_path / name).name
        assert TEMPORARY.match(spelt) and _TEMPORARY.match(spelt), spelt


def test_only_zxl_files_renames_into_place():
    """Every writer goes through zxl.files (replacing, move_into_place): os.replace and os.rename are
    called nowhere else in the project."""
    found = []
    for folder in CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "zxl" / "files.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr in ("replace", "rename", "renames"):
                    if isinstance(node.value, ast.Name) and node.value.id in ("os", "shutil"):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
                if isinstance(node, ast.ImportFrom) and node.module == "os":
                    found += [f"{path.relative_to(ROOT)}:{node.lineno} from os import {a.name}" for a in node.names
                              if a.name in ("replace", "rename", "renames")]  # fmt: skip
    assert not found, found
