"""squall's own WebSocket API (`WebSocketHandler`), for tests/test_websocket.py.

- `/ws/echo`              every message back (text as text, bytes as bytes)
- `/ws/hello/(\\w+)`      async `open` sends "hello <name>"; async `on_message`
                          answers "<name>: <message>"
- `/ws/sub`               picks "v2" or "v1" (in that order) if offered; sends its choice
- `/ws/close`             closes with 4002 "handler bye" as soon as it is open
- `/ws/raise`             `on_message` raises: close 1011
- `/ws/forbidden`         `prepare` raises HTTPError(401): HTTP 401
- `/ws/record?token=T`    echoes; `on_close` writes `handler-T` ("code reason")
                          into `SQUALL_TEST_WS_DIR`
- `/ws/request`           sends what `self.request` says, as JSON
- `/plain`                an ordinary handler: "plain"
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from squall.web import Application, HTTPError, RequestHandler
from squall.websocket import WebSocketHandler
from tests.apps import write_marker

RECORD_DIR_ENV = "SQUALL_TEST_WS_DIR"


class EchoHandler(WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


class HelloHandler(WebSocketHandler):
    async def open(self, name: str) -> None:
        self.name = name
        await asyncio.sleep(0.01)
        await self.write_message(f"hello {name}")

    async def on_message(self, message: str | bytes) -> None:
        await asyncio.sleep(0)
        await self.write_message(f"{self.name}: {message!s}")


class SubprotocolHandler(WebSocketHandler):
    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        for choice in ("v2", "v1"):
            if choice in subprotocols:
                return choice
        return None

    def open(self) -> None:
        self.write_message(self.selected_subprotocol or "")

    def on_message(self, message: str | bytes) -> None:
        pass


class CloseHandler(WebSocketHandler):
    def open(self) -> None:
        self.close(4002, "handler bye")

    def on_message(self, message: str | bytes) -> None:
        pass


class RaiseHandler(WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        raise RuntimeError("handler failed")


class ForbiddenHandler(WebSocketHandler):
    def prepare(self) -> None:
        raise HTTPError(401)

    def on_message(self, message: str | bytes) -> None:
        pass


class RecordHandler(EchoHandler):
    def on_close(self) -> None:
        directory = os.environ.get(RECORD_DIR_ENV)
        if directory:
            token = self.get_query_argument("token")
            text = f"{self.close_code} {self.close_reason}"
            write_marker(Path(directory) / f"handler-{token}", text)


class RequestInfoHandler(WebSocketHandler):
    def open(self) -> None:
        self.write_message(
            {
                "method": self.request.method,
                "path": self.request.path,
                "query": self.request.query,
                "protocol": self.request.protocol,
                "host": self.request.host,
                "upgrade": self.request.headers.get("Upgrade"),
            }
        )

    def on_message(self, message: str | bytes) -> None:
        pass


class PlainHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write("plain")


app = Application(
    [
        (r"/ws/echo", EchoHandler),
        (r"/ws/hello/(\w+)", HelloHandler),
        (r"/ws/sub", SubprotocolHandler),
        (r"/ws/close", CloseHandler),
        (r"/ws/raise", RaiseHandler),
        (r"/ws/forbidden", ForbiddenHandler),
        (r"/ws/record", RecordHandler),
        (r"/ws/request", RequestInfoHandler),
        (r"/plain", PlainHandler),
    ]
)
