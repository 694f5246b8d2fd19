"""Imports point one way: the core (zxl/) imports none of the packages; the families and the catalog
build on the core alone; pipeline, sampler and trainer on those; the CLI (and the test support in
zxl.testing) on top. Every import counts, the ones inside functions too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "scorers", "taggers", "captioners", "trainer", "sampler", "catalog")
FOLDERS = {"zxl": "zxl", **{f: f"zxl.{f}" for f in PACKAGES}}
TOP = {"zxl.cli", "zxl.__main__", "zxl.testing"}
FAMILIES = {"zxl.scorers", "zxl.taggers", "zxl.captioners", "zxl.catalog"}
# what each package may import besides the core (the core may import only the core)
ALLOWED = {
    **{family: set() for family in FAMILIES},
    "zxl.pipeline": FAMILIES,
    "zxl.sampler": FAMILIES,
    "zxl.trainer": FAMILIES | {"zxl.sampler"},  # it trains and exports the sampler's SDXL
}


def package(module: str) -> str:
    """zxl.pipeline.fetch → zxl.pipeline; zxl.config → core; zxl.cli → zxl.cli (the top)."""
    if module in TOP:
        return module
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and f"zxl.{parts[1]}" in ALLOWED else "core"


def modules():
    """(module name, path) of every project file: pipeline/fetch.py → zxl.pipeline.fetch."""
    for folder, pkg in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            yield ".".join([pkg, *parts]).removesuffix(".__init__"), path


def import_nodes():
    """(module, path, import node) of every import statement in the project, those inside functions too."""
    for module, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            absolute = isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
            if isinstance(node, ast.Import) or absolute:
                yield module, path, node


def imports():
    for module, path, node in import_nodes():
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        for name in names:
            if name == "zxl" or name.startswith("zxl."):
                yield module, name, f"{path.relative_to(ROOT)}:{node.lineno}"


def test_every_arrow_points_down():
    wrong = []
    for module, name, where in imports():
        src, dst = package(module), package(name)
        if src in TOP or src == dst or dst == "core":
            continue
        if src == "core" or dst in TOP or dst not in ALLOWED.get(src, set()):
            wrong.append(f"{where}: {module} ({src}) imports {name} ({dst})")
    assert not wrong, "imports that point the wrong way:\n" + "\n".join(wrong)


def test_the_walk_sees_the_imports():
    seen = {(package(m), package(n)) for m, n, _ in imports()}
    assert ("zxl.pipeline", "zxl.catalog") in seen and ("zxl.trainer", "zxl.sampler") in seen
    assert ("zxl.cli", "zxl.pipeline") in seen and ("zxl.scorers", "core") in seen


@pytest.mark.parametrize("module", ["zxl.config", "zxl.pipeline.fetch", "zxl.cli"])
def test_package_names(module):
    assert package(module) == {"zxl.config": "core", "zxl.pipeline.fetch": "zxl.pipeline", "zxl.cli": "zxl.cli"}[module]


def file_graph() -> dict[str, set[str]]:
    """Module → the zxl modules (files) it imports anywhere in it; ``from zxl.pipeline import taste``
    is an arrow to zxl.pipeline.taste, ``from zxl.pipeline.taste import x`` to the same file."""
    known = {module for module, _ in modules()}
    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, _, node in import_nodes():
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                       for a in node.names]  # fmt: skip
        graph[module].update(t for t in targets if t in known and t != module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_file_imports_itself_through_others():
    """No circle of imports between files, the ones inside functions too: a circle means two files
    hold one job between them (split it), or one holds two (split that)."""
    found = cycles(file_graph())
    assert not found, "import circles between files:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_the_circle_finder_finds_circles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = file_graph()
    assert "zxl.scorers.taste" in graph["zxl.pipeline.reduce"] and "zxl.pipeline.curate" in graph["zxl.pipeline.taste"]


def test_every_package_folder_is_linked_from_zxl():
    """zxl/<folder> links to <folder>: an editor or type checker resolves ``zxl.<folder>`` by reading
    files, without the editable install's import hook (docs/design.md, "Layers")."""
    for folder in PACKAGES:
        link = ROOT / "zxl" / folder
        assert link.is_symlink() and link.resolve() == ROOT / folder, link
        assert (link / "__init__.py").is_file()
    import zxl.pipeline

    assert Path(zxl.pipeline.__file__).resolve() == ROOT / "pipeline" / "__init__.py"
