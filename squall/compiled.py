"""Which of squall's modules are compiled with mypyc, and the switch back to pure Python.

The request path (accepting, the HTTP/1.1 core, the connection, the
cycle, the native handlers and the ASGI and WSGI adapters) is compiled to C
when squall is installed where a C compiler exists; every other module,
and every module where none does, runs as Python. Both builds come from
the same source and pass the same tests. `setup.py` reads `COMPILED` from
this file without importing squall, so it imports nothing of squall's and
nothing outside the standard library.

`SQUALL_PURE_PYTHON=1` in the environment runs the `.py` files even where
the compiled modules are installed beside them (to compare the two, or to
rule the compiled build out when a bug is reported); at install time it
skips the compilation.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

#: The compiled modules, as paths from the repository root (what mypyc takes).
COMPILED = (
    "squall/http/status.py",
    "squall/http/date.py",
    "squall/http/core.py",
    "squall/http/state.py",
    "squall/http/cycle.py",
    "squall/http/protocol.py",
    "squall/http/direct.py",
    "squall/http/stream_framing.py",
    "squall/http/accept.py",
    "squall/http/proxy_accept.py",
    "squall/eager.py",
    "squall/asgi_scope.py",
    "squall/asgi.py",
    "squall/web.py",
    "squall/wsgi.py",
)
#: Set to 1: install without compiling, or run the `.py` files of an installed compiled build.
PURE_PYTHON_ENV = "SQUALL_PURE_PYTHON"


def module_names() -> list[str]:
    return [path.removesuffix(".py").replace("/", ".") for path in COMPILED]


def pure_python_asked() -> bool:
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds squall's submodules among `.py` files only, ahead of the extension modules."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("squall.") or path is None:
            return None
        loader = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
        for entry in path:
            finder = importlib.machinery.FileFinder(entry, loader)
            spec = finder.find_spec(fullname, target)
            if spec is not None:
                return spec
        return None


def prefer_source() -> None:
    """With SQUALL_PURE_PYTHON=1, import squall's submodules from source."""
    if pure_python_asked() and not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


#: The group's shared library, beside the package, as its "source" path in `built_in_tree`.
GROUP_LIBRARY = "squall__mypyc.py"


def built_in_tree(root: Path) -> list[tuple[Path, str]]:
    """The extension modules a build left under `root` (an editable install's), each with
    the source path it stands for ("squall/http/core.py", or GROUP_LIBRARY).

    setup.py removes those it will not build again; `stale` names those out of date.
    """
    suffixes = sorted(importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True)
    found = []
    for built in sorted([*(root / "squall").rglob("*"), *root.glob("squall__mypyc.*")]):
        suffix = next((s for s in suffixes if built.name.endswith(s)), None)
        if suffix is not None:
            found.append((built, str(built.relative_to(root))[: -len(suffix)] + ".py"))
    return found


def stale() -> list[str]:
    """The compiled modules whose source changed after they were built (an editable install).

    They would run the old code: rebuild (`pip install -e .`) or set SQUALL_PURE_PYTHON=1.
    """
    root = Path(__file__).resolve().parent.parent
    return [
        path  # left from a build that compiled it, or older than its source
        for built, path in built_in_tree(root)
        if path != GROUP_LIBRARY
        and (path not in COMPILED or built.stat().st_mtime < (root / path).stat().st_mtime)
    ]


def loaded_compiled() -> list[str]:
    """The compiled modules this process runs (imported from an extension module)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [
        name
        for name in module_names()
        if (getattr(sys.modules.get(name), "__file__", None) or "").endswith(suffixes)
    ]


def build() -> str:
    """ "compiled" or "pure Python", for `squall --version` and the start-up log line."""
    for name in module_names():
        __import__(name)
    compiled = loaded_compiled()
    if not compiled:
        return "pure Python"
    if len(compiled) == len(COMPILED):
        return "compiled"
    return f"compiled ({len(compiled)} of {len(COMPILED)} modules)"


prefer_source()  # on import: squall/__init__ imports this module before any other of squall's
