"""The two builds of the request path: compiled by mypyc, and pure Python.

`pip install` compiles the modules `squall.compiled.COMPILED` lists where a C
compiler exists; SQUALL_PURE_PYTHON=1 runs their source instead. These tests
check that each build is the one asked for, in real worker processes (the
compiled one maps its shared library, the pure one does not), and that both
serve. The whole suite runs under both builds in CI (.ci/run).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from squall import __version__, compiled
from tests.service import Services, free_port

SHARED_LIBRARY = "squall__mypyc"


def installed_build() -> str:
    """What a process that asks for nothing runs: "compiled", "pure Python" or a mix."""
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_PYTHON_ENV}
    done = subprocess.run(
        [sys.executable, "-c", "from squall import compiled; print(compiled.build())"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    return done.stdout.strip()


def has_c_compiler() -> bool:
    command = shlex.split(sysconfig.get_config_var("CC") or "cc")
    return bool(command) and shutil.which(command[0]) is not None


def maps_of(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not has_c_compiler(), reason="no C compiler: squall installs pure Python")
def test_an_install_with_a_c_compiler_is_compiled_whole() -> None:
    assert installed_build() == "compiled", (
        "pip install -e . did not compile the request path: its output says why"
    )


@pytest.mark.parametrize("pure", ["1", "0"])
def test_each_build_serves_and_says_which_it_runs(services: Services, pure: str) -> None:
    expected = "pure Python" if pure == "1" else installed_build()
    port = free_port()
    service = services.squall(
        "tests.apps.handlers:app",
        *("--bind", f"127.0.0.1:{port}", "--workers", "1", "--log-level", "info"),
        env={compiled.PURE_PYTHON_ENV: pure},
    )
    service.wait_for_port(port)
    (worker,) = service.wait_for_workers(1)
    response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert response.status_code == 200
    assert f"squall {__version__} ({expected}) serving" in service.output()
    assert (SHARED_LIBRARY in maps_of(worker)) == (expected != "pure Python")
    version = subprocess.run(
        [sys.executable, "-m", "squall", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, compiled.PURE_PYTHON_ENV: pure},
        check=True,
    )
    assert version.stdout.strip() == f"squall {__version__} ({expected})"


def test_the_pure_build_loads_every_module_from_source() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, squall, sys; from squall import compiled; compiled.build();"
            "print(json.dumps([m.__file__ for n, m in sys.modules.items() if n.startswith('squall')]))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, compiled.PURE_PYTHON_ENV: "1"},
        check=True,
    )
    files = json.loads(done.stdout)
    assert len(files) > len(compiled.COMPILED)
    assert all(str(f).endswith(".py") for f in files), files
    assert SHARED_LIBRARY not in done.stdout
