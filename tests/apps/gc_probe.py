"""Apps that let a test count the garbage that finished connections leave behind.

`/gc/pause` collects what there is and turns the collector off; after the
test's connections, `/gc/count` collects again and answers with what it
found, then turns the collector back on; `/gc/frozen` answers with how many
objects the collector has frozen. The same routes exist for each interface:
`native` (squall.web), `asgi` and `wsgi`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from typing import Any

from squall.web import Application, RequestHandler


def _gc_route(path: str) -> bytes:
    if path == "/gc/pause":
        gc.collect()
        gc.disable()
        return b"paused"
    if path == "/gc/frozen":
        return str(gc.get_freeze_count()).encode()
    if path == "/gc/count":
        found = gc.collect()
        gc.enable()
        return str(found).encode()
    return b"Hello, world"


class ProbeHandler(RequestHandler):
    def get(self) -> None:
        self.write(_gc_route(self.request.path))


native = Application([(r"/.*", ProbeHandler)])


async def asgi(
    scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
) -> None:
    if scope["type"] != "http":
        return
    body = _gc_route(scope["path"])
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = _gc_route(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
