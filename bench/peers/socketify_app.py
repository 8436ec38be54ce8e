"""socketify.py's native API (uWebSockets, C++): GET / answers 200 with "Hello, world".

    python bench/peers/socketify_app.py PORT [WORKERS]

bench/compare.py runs it so. socketify's App has no process model of its
own (its CLI forks WORKERS - 1 copies and serves in the parent too), so this
file gives it squall's: the top process forks WORKERS workers and waits; each
worker makes its App after the fork and listens on PORT itself (uSockets
sets SO_REUSEPORT by default, so the kernel spreads the connections). The
top process ends the workers on SIGTERM or SIGINT, and a worker dies with
it (PR_SET_PDEATHSIG). The handler adds "Connection: close" to the answer
when the request asks for it (uWS closes such a connection without saying
so, which wrk would count as an error per request).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import traceback
from typing import Any

PR_SET_PDEATHSIG = 1
BODY = b"Hello, world"


def hello(res: Any, req: Any) -> None:
    res.write_header(b"Content-Type", b"text/plain")
    # uWS closes a connection whose request says "Connection: close" but does not say so in
    # the answer; wrk would then send its next request on it and count a read error for each.
    # The other servers answer "Connection: close" themselves.
    if req.get_header(b"connection") == "close":
        res.write_header(b"Connection", b"close")
    res.end(BODY)


def serve(port: int) -> None:
    """One worker: an App of its own, listening on `port` (SO_REUSEPORT), until killed."""
    from socketify import App, AppListenOptions  # in bench/.venv only

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    app = App()
    app.get("/", hello)
    listened: list[Any] = []
    # uWS calls the handler at once, and only when it listens (else socketify prints an error).
    app.listen(AppListenOptions(port=port, host="127.0.0.1"), listened.append)
    if not listened:
        print(f"socketify_app.py: could not listen on port {port}", file=sys.stderr, flush=True)
        os._exit(1)
    app.run()


def main() -> None:
    port = int(sys.argv[1])
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    pids: list[int] = []

    def stop(_signum: int, _frame: object) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                serve(port)
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(1)
            os._exit(0)
        pids.append(pid)
    status = 0
    while pids:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        if pid in pids:
            pids.remove(pid)
            status = status or os.waitstatus_to_exitcode(code)
    sys.exit(max(status, 0))


if __name__ == "__main__":
    main()
