"""squall's import graph: no circle anywhere, and every module imports on its own.

Every import counts: at the top, inside functions, and under TYPE_CHECKING.
`from squall import process` is an arrow to `squall.process`, not to the
package, whose `__init__` is the top of the house (the public API).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "squall"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path) -> set[str]:
    """The squall modules that `name` imports, anywhere in its source."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(base)
    return {each for each in found if each in MODULES and each != name}


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of imports, as a path that ends where it starts; [] if none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        path.append(node)
        for each in sorted(graph[node]):
            cycle = visit(each)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return []

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return []


def design_table() -> list[tuple[str, set[str]]]:
    """DESIGN.md's module table: each module, bottom up, with the imports it lists."""
    text = (ROOT / "DESIGN.md").read_text()
    table = text[text.index("| module | job | imports of squall's |") :].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        listed = {each.strip() for each in cells[-1].split(",")} - {"—", ""}
        rows.append((cells[0].strip("`"), listed))
    return rows


def short(name: str) -> str:
    return name.removeprefix("squall.")


def test_design_lists_every_module_with_its_imports_bottom_up() -> None:
    """DESIGN.md stays true: every module, the imports it has, and none from below it."""
    rows = design_table()
    assert sorted(name for name, _ in rows) == sorted(short(name) for name in MODULES)
    above: set[str] = set()
    for name, listed in rows:
        actual = {short(each) for each in GRAPH["squall" if name == "squall" else f"squall.{name}"]}
        assert actual == listed, (
            f"{name}: imports {sorted(actual)}, DESIGN.md lists {sorted(listed)}"
        )
        assert actual <= above, f"{name} imports from below it: {sorted(actual - above)}"
        above.add(name)


def test_no_import_circle() -> None:
    cycle = find_cycle(GRAPH)
    assert not cycle, " -> ".join(cycle)


def test_the_checker_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_process_is_a_leaf() -> None:
    """Both sides of the fork import it: it may import only `cpus`."""
    assert GRAPH["squall.process"] <= {"squall.cpus"}


def test_the_seeds_spelling_of_fork_processes() -> None:
    import squall.fork
    import squall.process

    assert squall.process.fork_processes is squall.fork.fork_processes


def test_every_module_imports_on_its_own() -> None:
    """In a fresh interpreter each: no module works only after another was imported."""
    running = {
        name: subprocess.Popen(
            [sys.executable, "-c", f"import {name}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name in MODULES
        if name != "squall.__main__"
    }
    failed = {}
    for name, proc in running.items():
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"import {name} took over 60 s")
        if proc.returncode:
            failed[name] = err.decode(errors="replace").strip().splitlines()[-1:]
    assert not failed, failed
