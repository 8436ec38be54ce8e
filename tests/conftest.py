from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service import Services


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """Start real processes; every one is stopped (by PID) when the test ends."""
    started = Services(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()
