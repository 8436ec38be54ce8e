"""A raw ASGI app whose every request costs a fixed slice of CPU (bench/overload.py).

SQUALL_BENCH_WORK_MS (default 2) of busy work per request makes saturation a
matter of the workers' CPU, at a rate a Python load generator can exceed by
three times without taking the CPUs from the servers.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # squall is not installed in bench/.venv, where uvicorn serves this
    from squall.asgi import Receive, Scope, Send

WORK = float(os.environ.get("SQUALL_BENCH_WORK_MS", "2")) / 1000


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    end = time.perf_counter() + WORK
    while time.perf_counter() < end:
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})
