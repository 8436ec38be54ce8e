from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from squall import compiled
from tests.service import Services


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """Start real processes; every one is stopped (by PID) when the test ends."""
    started = Services(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test compiled modules older than their source: they would run the old code."""
    if compiled.pure_python_asked():
        return
    if stale := compiled.stale():
        pytest.exit(
            f"{', '.join(stale)} changed after they were compiled: run "
            "`python3 -m pip install -e .` again, or test the source with SQUALL_PURE_PYTHON=1",
            returncode=4,
        )
