"""bench/compare.py --smoke: every server of the side-by-side benchmark starts, answers, stops.

Also: bench/request_path.py runs, and bench/gc_pauses.py's servers answer from each worker.

The first run makes bench/.venv and installs the peers into it (pip), and
installs nginx with apt-get if it is missing; later runs take seconds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench import compare, gc_pauses
from tests.service import ROOT

PIDS = re.compile(r"^(\S+): pids ((?:\d+@\d+ ?)+)")


def test_every_server_answers_and_nothing_is_left() -> None:
    names = list(compare.ALL_SERVERS)
    if compare.nginx_binary() is None and shutil.which("apt-get") is None:
        names.remove("nginx")  # nothing to install it with
    result = subprocess.run(
        [sys.executable, "bench/compare.py", "--smoke", "--servers", ",".join(names)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for name in names:
        assert f"{name}: ok 200 b'Hello, world'\n" in out, out + result.stderr

    # Every process the script saw (the top one and its workers) is gone now.
    seen: dict[str, dict[int, str]] = {}
    for line in out.splitlines():
        match = PIDS.match(line)
        if match:
            pairs = (pair.split("@") for pair in match.group(2).split())
            seen[match.group(1)] = {int(pid): started for pid, started in pairs}
    assert sorted(seen) == sorted(names), out
    for name, pids in seen.items():
        assert len(pids) >= compare.WORKERS + 1, f"{name}: workers not recorded: {pids}"
        still = [pid for pid, started in pids.items() if compare.start_time(pid) == started]
        assert not still, f"{name}: still running: {still}"
    assert out.splitlines()[-1] == "left: none", out


def test_request_path_runs_every_case() -> None:
    # The hot-path tool drives HTTPProtocol with a stand-in transport: it breaks
    # whenever the protocol asks the transport for something new.
    result = subprocess.run(
        [sys.executable, "bench/request_path.py", "--requests", "300"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "native keep-alive",
        "native new connection",
        "ASGI keep-alive",
        "ASGI new connection",
    ], result.stdout
    assert "Traceback" not in result.stderr, result.stderr


def test_request_path_compares_two_trees() -> None:
    # --before runs each tree in its own process; this tree against itself.
    result = subprocess.run(
        [sys.executable, "bench/request_path.py", "--before", str(ROOT), "--requests", "300"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| native")]
    assert len(rows) == 2, result.stdout  # and rounds of 3 (the default)
    assert "before µs | after µs" in result.stdout, result.stdout


def test_gc_pauses_reads_each_workers_collections(tmp_path: Path) -> None:
    # bench/gc_pauses.py's servers start on its app, and GET /gc reaches each worker.
    compare.ensure_venv()
    for server in gc_pauses.SERVERS:
        with compare.serving(server, tmp_path) as (_running, port, answer):
            assert answer[0] == 200, answer
            stats = gc_pauses.worker_stats(port, compare.WORKERS)
        for worker in stats:
            assert set(worker["generations"]) == {"0", "1", "2"}, worker
        if server.runtime == "squall":
            # A socket per worker: held connections reach each. (uvicorn's
            # shared socket may hand all of them to one worker.)
            assert len({s["pid"] for s in stats}) == compare.WORKERS, stats
            assert all(worker["frozen"] > 1000 for worker in stats), stats


def test_h2load_servers_answer_over_h2c_and_nothing_is_left() -> None:
    # bench/h2load.py: squall, hypercorn and granian each answer 10 streams over h2c.
    assert shutil.which("h2load"), "h2load is needed (Debian's nghttp2-client)"
    result = subprocess.run(
        [sys.executable, "bench/h2load.py", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for name in ("hypercorn", "granian-asgi", "granian-rsgi", "squall-asgi", "squall-native"):
        assert f"{name}: ok h2c, 10/10 succeeded" in out, out + result.stderr
    assert out.splitlines()[-1] == "left: none", out
