"""A raw ASGI app whose every request costs a fixed slice of CPU (bench/overload.py).

SQUALL_BENCH_WORK_MS (default 2) of busy work per request makes saturation a
matter of the workers' CPU, at a rate a Python load generator can exceed by
three times without taking the CPUs from the servers.
"""

import os
import time

WORK = float(os.environ.get("SQUALL_BENCH_WORK_MS", "2")) / 1000


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
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
