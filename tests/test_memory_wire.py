"""A worker's memory stays bounded under clients that send and never read.

Over real sockets, against one worker serving bench/connection_memory.py's
app (`GET /`, `GET /big` of 512 KiB, a WebSocket echo at `/ws`), with that
script's clients, each connection's receive buffer set to 64 KiB:

- pipelining: 200 `GET /big` sent at once on one connection, nothing read
  for 2 s. The connection must not answer a pipelined request while its
  transport's buffer is past the high-water mark.
- ping flood: 24 MB of masked pings on a WebSocket, nothing read: the
  session stops reading while the transport's writes are paused, so the
  pongs cannot pile up in the worker.

Each asserts the worker's RSS grows (peak over the attack, from
/proc/PID/status, minus before) by under 16 MiB, and that the worker then
answers a `GET /` on a new connection. One server per test, so that memory
freed by one attack does not hide the next one's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.connection_memory import PeakRSS, answers, ping_flood, pipelined, warm_up
from tests.service import alive, running_squall

APP = "bench.connection_memory:app"
TARGET_MIB = 16.0
PIPELINED = 200
PING_BYTES = 24_000_000
HOLD = 2.0  # seconds the pipelining client reads nothing
PING_HOLD = 1.0  # the ping client stops after the worker took nothing for this long


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """One worker, warmed up: (port, worker pid)."""
    with running_squall(
        tmp_path, APP, "--interface", "squall", "--log-level", "warning", workers=1
    ) as (service, port):
        (worker,) = service.workers()
        warm_up(port)
        yield port, worker


def test_pipelined_requests_unread(server: tuple[int, int]) -> None:
    port, worker = server
    with PeakRSS(worker) as rss:
        pipelined(port, PIPELINED, HOLD)
    assert alive(worker)
    assert rss.growth_mib < TARGET_MIB, (
        f"RSS {rss.before / 1024:.1f} -> peak {rss.peak / 1024:.1f} MiB"
    )
    assert answers(port)


def test_ping_flood_unread(server: tuple[int, int]) -> None:
    port, worker = server
    with PeakRSS(worker) as rss:
        sent = ping_flood(port, PING_BYTES, PING_HOLD)
    assert alive(worker)
    assert rss.growth_mib < TARGET_MIB, (
        f"RSS {rss.before / 1024:.1f} -> peak {rss.peak / 1024:.1f} MiB after {sent:,} bytes"
    )
    assert answers(port)
