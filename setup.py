"""Build squall, compiling its request path with mypyc where a C compiler exists.

Everything else is in pyproject.toml. The modules compiled are listed in
squall/compiled.py. A build where mypyc or the C compiler fails installs
the pure-Python modules instead, with a warning; SQUALL_PURE_PYTHON=1 asks
for that build outright.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
# squall/compiled.py imports nothing of squall's: read here without importing squall.
_compiled = runpy.run_path(str(HERE / "squall" / "compiled.py"))
COMPILED: tuple[str, ...] = _compiled["COMPILED"]
built_in_tree = _compiled["built_in_tree"]
GROUP_LIBRARY: str = _compiled["GROUP_LIBRARY"]


def warn(message: str) -> None:
    print(f"squall setup: {message}; installing the pure-Python modules", file=sys.stderr)
    remove_built()


def remove_built(keep: tuple[str, ...] = ()) -> None:
    """Remove compiled modules an earlier build left in the tree (an editable install's).

    They would still be imported, running the code they were built from: one
    of a module no longer compiled would stand in front of its source, and all
    of them in front of a pure-Python build. Those in `keep` are built again.
    """
    for built, path in built_in_tree(HERE):
        if path not in keep and not (keep and path == GROUP_LIBRARY):
            built.unlink()


class OptionalBuildExt(build_ext):
    """Compiles the extensions, or leaves them out when the compiler fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers, a compiler error
            warn(f"compiling failed ({exc})")
            for ext in self.extensions:  # a module without its shared library cannot import
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.extensions = []


def extensions() -> list[Any]:
    if os.environ.get("SQUALL_PURE_PYTHON", "") not in ("", "0"):
        remove_built()
        return []
    remove_built(keep=COMPILED)
    if sys.implementation.name != "cpython":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        warn(f"mypyc is missing ({exc})")
        return []
    os.chdir(HERE)  # mypyc takes paths relative to the project and writes build/ there
    try:
        return list(mypycify(list(COMPILED), opt_level="3", debug_level="0", group_name="squall"))
    except BaseException as exc:  # mypyc reports a type error by SystemExit
        warn(f"mypyc failed ({exc!r})")
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
