"""A squall app for the raw-socket HTTP/1.1 tests (tests/test_http_wire.py).

- `/`      "ok"
- `/pid`   the worker's pid, as text
- `/echo`  POST: the body back, with its length in `x-body-length`
- `/slow`  sleeps 0.2 s (async), then "slow"
- `/big`   1 MiB of a known pattern
"""

from __future__ import annotations

import asyncio
import os

from squall import Application, RequestHandler

BIG_SIZE = 1 << 20
BIG_BODY = bytes(i % 251 for i in range(BIG_SIZE))


class RootHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write("ok")


class PidHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write(str(os.getpid()))


class EchoHandler(RequestHandler):
    def post(self) -> None:
        body = self.request.body
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("X-Body-Length", len(body))
        self.write(body)


class SlowHandler(RequestHandler):
    async def get(self) -> None:
        await asyncio.sleep(0.2)
        self.set_header("Content-Type", "text/plain")
        self.write("slow")


class BigHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        self.write(BIG_BODY)


app = Application(
    [
        (r"/", RootHandler),
        (r"/pid", PidHandler),
        (r"/echo", EchoHandler),
        (r"/slow", SlowHandler),
        (r"/big", BigHandler),
    ]
)
