"""A squall `Application` that misbehaves on purpose, for tests/test_hostile_wire.py.

The same routes as tests/apps/hostile_wsgi.py, whose tables it shares, plus
custom reason phrases:

- `/pid`                    the worker's pid, as text
- `/header/<case>`          `set_header(*BAD_HEADERS[case])` (or `GOOD_HEADERS[case]`)
- `/frame/<case>/<mode>`    `set_header("Content-Length", FRAMES[case][0])`, then
                            writes `FRAMES[case][1]`: `whole` lets finish() send it,
                            `stream` flush()es it in two pieces first
- `/status/<code>`          `set_status(code)` with a 1xx code, nothing written
- `/reason/custom`          `set_status(299, "Custom Reason")`
- `/reason/crlf`            a reason phrase that would forge a header
- `/x`                      `self.request.host`, `.path` and `.query` as JSON
"""

from __future__ import annotations

import os

from squall.web import Application, RequestHandler
from tests.apps.hostile_wsgi import BAD_HEADERS, FRAMES, GOOD_HEADERS

REASONS = {
    "custom": (299, "Custom Reason"),
    "crlf": (200, "OK\r\nSet-Cookie: pwn=1"),
}


class PidHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write(str(os.getpid()))


class HeaderHandler(RequestHandler):
    def get(self, case: str) -> None:
        name, value = BAD_HEADERS.get(case) or GOOD_HEADERS[case]
        self.set_header(name, value)
        self.write("header sent")


class FrameHandler(RequestHandler):
    def get(self, case: str, mode: str) -> None:
        declared, body = FRAMES[case]
        self.set_header("Content-Length", str(declared))
        if mode == "whole":
            self.write(body)
            return
        self.write(body[:3])
        self.flush()
        self.write(body[3:])
        self.flush()


class StatusHandler(RequestHandler):
    def get(self, code: str) -> None:
        self.set_status(int(code))


class ReasonHandler(RequestHandler):
    def get(self, case: str) -> None:
        self.set_status(*REASONS[case])
        self.set_header("Content-Type", "text/plain")
        self.write("reason")


class RequestFactsHandler(RequestHandler):
    def get(self) -> None:
        request = self.request
        self.write({"host": request.host, "path": request.path, "query": request.query})


app = Application(
    [
        (r"/pid", PidHandler),
        (r"/header/([\w-]+)", HeaderHandler),
        (r"/frame/(\w+)/(\w+)", FrameHandler),
        (r"/status/(\d+)", StatusHandler),
        (r"/reason/(\w+)", ReasonHandler),
        (r"/x", RequestFactsHandler),
    ]
)
