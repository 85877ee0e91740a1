"""The package layout: dependencies point one way (apps -> world -> core), and files stay readable."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sfpp"
CORE = ("models", "diffusion", "stages", "metrics", "inference", "codecs", "text")
#: The rest of the library: no more allowed to import the world or an application than the core.
LIBRARY = CORE + ("data", "rewards", "callbacks", "io", "utils")
#: Packages and modules that only applications may import.
APPLICATION_MODULES = ("sfpp.apps", "sfpp.train", "sfpp.generate", "sfpp.ode_pairs")
WORLD = "sfpp.world"
MAX_LINES = 600


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(files: list[Path]) -> dict[str, set[str]]:
    """Edges ``module -> modules of these files it imports`` (function-level imports included)."""
    names = {_module_name(path): path for path in files}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        graph[name] = {
            target for target in (_resolve(module, names) for module in _imported_modules(path)) if target
        } - {name}
    return graph


def _resolve(module: str, names: dict[str, Path]) -> str | None:
    """The longest known module a dotted import name starts with (``a.b.func`` -> ``a.b``)."""
    while module:
        if module in names:
            return module
        module = module.rpartition(".")[0]
    return None


def _cycles_within_packages(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles whose modules all belong to one package (a package's ``__init__`` counts as its own)."""

    def package(module: str) -> str:
        return module if module in packages else module.rpartition(".")[0]

    packages = {name for name in graph if (SRC.parent / name.replace(".", "/")).is_dir()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if package(target) != package(node) and target != package(node):
                continue
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycle_inside_a_package() -> None:
    files = sorted(SRC.rglob("*.py"))
    cycles = _cycles_within_packages(_import_graph(files))
    assert cycles == [], [" -> ".join(cycle) for cycle in cycles]


def test_the_cycle_check_sees_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    graph = {
        "sfpp.models.a": {"sfpp.models.b"},
        "sfpp.models.b": {"sfpp.models.a", "sfpp.io.c"},
        "sfpp.io.c": {"sfpp.models.a"},
    }
    assert _cycles_within_packages(graph) == [["sfpp.models.a", "sfpp.models.b", "sfpp.models.a"]]
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from sfpp.models.flavours import FLAVOURS\n")
    assert "sfpp.models.flavours" in _imported_modules(source)


def _is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _core_files() -> list[Path]:
    return sorted(path for package in LIBRARY for path in (SRC / package).rglob("*.py"))


def test_the_core_never_imports_the_world_or_an_application() -> None:
    offenders = []
    for path in _core_files():
        for module in _imported_modules(path):
            if _is_under(module, WORLD) or any(_is_under(module, app) for app in APPLICATION_MODULES):
                offenders.append(f"{path.relative_to(SRC)} imports {module}")
    assert offenders == []


def test_the_world_never_imports_an_application() -> None:
    offenders = [
        f"{path.relative_to(SRC)} imports {module}"
        for path in sorted((SRC / "world").rglob("*.py"))
        for module in _imported_modules(path)
        if any(_is_under(module, app) for app in APPLICATION_MODULES)
    ]
    assert offenders == []


def test_the_import_scan_sees_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from sfpp.world.scene import render\n    import sfpp.apps.demo\n")
    modules = _imported_modules(source)
    assert "sfpp.world.scene" in modules and "sfpp.apps.demo" in modules


def test_importing_the_core_loads_no_world_module() -> None:
    code = (
        "import json, sys; "
        "import sfpp.models, sfpp.diffusion, sfpp.stages, sfpp.metrics, sfpp.inference, sfpp.codecs, sfpp.text; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('sfpp.world', 'sfpp.apps')))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_source_file_exceeds_the_line_limit(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines; split it by concern"


def _layout_names(text: str) -> set[str]:
    """Package and module names a layout text mentions as ``sfpp.<name>`` or ``<name>/``."""
    import re

    names = set(re.findall(r"sfpp\.([a-z_]+)", text))
    names |= set(re.findall(r"(?<![\w./])([a-z_]+)/", text))
    return names


def test_the_readme_layout_and_the_architecture_page_match_the_tree() -> None:
    root = SRC.parents[1]
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("_")}
    readme = (root / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("\n## ", 3)]
    architecture = (root / "docs" / "architecture.md").read_text()
    for text in (layout, architecture):
        mentioned = _layout_names(text)
        assert packages <= mentioned | {"sfpp"}, sorted(packages - mentioned)
        stale = {
            name for name in mentioned if name in {"demo", "study", "evaluation", "pipeline", "wan_weights"}
        }
        assert not stale & {p.stem for p in SRC.glob("*.py")}, stale
    # every module the layout names under a package exists
    for package in packages:
        line_modules = re.findall(rf"^\s+{package}/\s+(.+)$", layout, flags=re.M)
        for line in line_modules:
            listed = re.sub(r"\([^)]*\)", "", line).split(":")[-1]  # the names, without remarks
            for word in re.findall(r"\b([a-z_]+)\b", listed):
                if (
                    word in packages
                    or (SRC / package / f"{word}.py").exists()
                    or (SRC / package / word).is_dir()
                ):
                    continue
                assert word in {"and", "the", "of", "on", "python", "m", "sfpp"}, (
                    f"{package}/{word} is not in the tree"
                )


def test_pictures_and_pages_the_docs_link_exist() -> None:
    root = SRC.parents[1]
    missing = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(root)} -> {target}")
    assert missing == []
