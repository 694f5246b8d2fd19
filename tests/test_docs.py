"""The repository's documents are all in the repository: every relative link and every `.md` file the
code, configs and docs name exists here; each package's architecture.md names exactly its modules; no
docstring says a package is empty or unfinished."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", "runs", ".cache", ".git", "node_modules", "build", "bench/results"}
PACKAGES = ("zxl", "pipeline", "scorers", "taggers", "captioners", "trainer", "sampler", "catalog")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MD_NAME = re.compile(r"(?<![\w/.-])((?:\.\./|\./)?[\w][\w./-]*\.md)\b")
# files zxl writes when it runs (an eval's report.md, the benchmarks' latest.md), and every package's own
# architecture.md named in general: not documents to find in the repository
WRITTEN = {"report.md", "report.json/.md", "latest.md", "eval/report.md", "runs/ablation/report.md"}  # what runs write


def files(*suffixes):
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if any(str(rel).startswith(s) or s in rel.parts for s in SKIP) or not path.is_file():
            continue
        if path.suffix in suffixes or path.name in suffixes:
            yield path


def resolves(ref: str, where: Path) -> bool:
    ref = ref.split("#", 1)[0]
    return not ref or any((base / ref).resolve().exists() for base in (where.parent, ROOT))


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for md in files(".md"):
        for ref in LINK.findall(md.read_text()):
            if re.match(r"^[a-z]+:", ref) or ref.startswith("#"):
                continue  # a URL (http:, mailto:) or an anchor on the same page
            if not resolves(ref, md):
                broken.append(f"{md.relative_to(ROOT)}: {ref}")
    assert not broken, broken


def test_every_md_file_named_in_code_configs_and_docs_is_in_the_repo():
    missing = []
    for path in files(".py", ".md", ".yaml", "Makefile"):
        text = path.read_text()
        for ref in MD_NAME.findall(text):
            if ref in WRITTEN or (ref == "architecture.md" and not (path.parent / ref).exists()):
                continue  # "each package's architecture.md", named in general
            if not resolves(ref, path):
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
    assert not missing, sorted(set(missing))


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "zxl"])
def test_each_architecture_md_names_exactly_its_modules(package):
    folder = ROOT / package
    text = (folder / "architecture.md").read_text()
    modules = {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}
    named = set(re.findall(r"(?<![\w/.])(\w+\.py)\b", text))  # bare names: a path is a cross-reference
    assert modules - named == set(), f"{package}/architecture.md does not name {sorted(modules - named)}"
    assert named - modules == set(), f"{package}/architecture.md names modules that are gone: {sorted(named - modules)}"


def test_no_docstring_says_a_package_is_empty_or_unfinished():
    stale = re.compile(r"empty until|still to come|until the \w+ issue lands", re.IGNORECASE)
    found = [f"{p.relative_to(ROOT)}" for p in files(".py", ".md") if stale.search(p.read_text())]
    assert found == [p for p in found if p.startswith("tests/")], found
