"""A squall `Application` that exercises every handler feature (tests/test_web.py).

Each route is small and says in its response what the handler saw, so the
test can check the server from the outside with a real HTTP client.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from squall.web import Application, HTTPError, RequestHandler

SECRET = "handler-secret-exception-text"


class HelloHandler(RequestHandler):
    def get(self) -> None:
        self.write("Hello, world")


class JSONHandler(RequestHandler):
    def get(self) -> None:
        self.write({"hello": "world", "number": 3, "html": "</script>"})


class BytesHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        self.write(b"\x00\x01\x02")
        self.write(b"\xff")


class UnicodeHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.write("h\u00e9llo \u2603")


class HeadersHandler(RequestHandler):
    def get(self) -> None:
        self.set_status(201)
        self.set_header("X-Single", "first")
        self.set_header("X-Single", "second")  # set_header replaces
        self.add_header("X-Multi", "a")
        self.add_header("X-Multi", "b")
        self.set_header("X-Number", 42)  # non-str values become text
        self.clear_header("Content-Type")
        self.set_header("Content-Type", "text/plain")
        self.write("headers")


class StatusHandler(RequestHandler):
    def get(self, code: str) -> None:
        self.set_status(int(code))
        if int(code) not in (204, 304):
            self.write(f"status {code}")


class PositionalHandler(RequestHandler):
    def get(self, first: str, second: str) -> None:
        self.write({"args": [first, second], "path_args": self.path_args})


class NamedHandler(RequestHandler):
    def get(self, name: str, number: str) -> None:
        self.write({"name": name, "number": number, "path_kwargs": self.path_kwargs})


class OptionalNamedHandler(RequestHandler):
    def get(self, page: str = "1") -> None:
        self.write({"page": page, "path_args": self.path_args, "path_kwargs": self.path_kwargs})


class QueryHandler(RequestHandler):
    def get(self) -> None:
        self.write(
            {
                "name": self.get_argument("name"),
                "default": self.get_argument("missing", "fallback"),
                "none": self.get_argument("missing", None),
                "tags": self.get_arguments("tag"),
                "query": self.get_query_argument("q", "no-q"),
                "query_all": self.get_query_arguments("tag"),
                "padded": self.get_argument("padded", ""),
                "raw_padded": self.get_argument("padded", "", strip=False),
            }
        )


class FormHandler(RequestHandler):
    def post(self) -> None:
        self.write(
            {
                "name": self.get_body_argument("name"),
                "multi": self.get_body_arguments("multi"),
                "either": self.get_argument("either"),
                "all_either": self.get_arguments("either"),
                "query_only": self.get_query_argument("either", None),
                "body_default": self.get_body_argument("nothing", "none-given"),
            }
        )


class RequiredHandler(RequestHandler):
    def get(self) -> None:
        self.write(self.get_argument("needed"))

    def post(self) -> None:
        self.write(self.get_body_argument("needed"))


class RequestInfoHandler(RequestHandler):
    def _info(self) -> None:
        request = self.request
        self.write(
            {
                "method": request.method,
                "uri": request.uri,
                "path": request.path,
                "query": request.query,
                "version": request.version,
                "remote_ip": request.remote_ip,
                "host": request.host,
                "full_url": request.full_url(),
                "x_custom": request.headers.get("X-Custom"),
                "x_custom_list": request.headers.get_list("x-custom"),
                "has_x_custom": "x-custom" in request.headers,
                "body": request.body.decode("latin-1"),
                "pid": os.getpid(),
            }
        )

    get = post = put = patch = delete = _info


class EchoHandler(RequestHandler):
    def _echo(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("X-Method", self.request.method)
        self.write(self.request.body)

    post = put = patch = delete = _echo


class RedirectHandler(RequestHandler):
    def get(self, kind: str) -> None:
        if kind == "temporary":
            self.redirect("/target")
        elif kind == "permanent":
            self.redirect("/target", permanent=True)
        elif kind == "see-other":
            self.redirect("/target?from=see-other", status=303)
        elif kind == "relative":
            self.redirect("sibling")
        else:
            raise HTTPError(404)


class TeapotHandler(RequestHandler):
    def get(self) -> None:
        raise HTTPError(418, "teapot log message for %s", "the log")


class CustomErrorPageHandler(RequestHandler):
    def get(self) -> None:
        raise HTTPError(409)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("X-Error-Page", "custom")
        self.write({"error": status_code})


class SendErrorHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("X-Dropped", "yes")
        self.write("partial output that must not be sent")
        self.send_error(503)


class ErrorHandler(RequestHandler):
    def get(self) -> None:
        self.write("written before the failure")
        raise RuntimeError(SECRET + " (sync)")


class CancelledHandler(RequestHandler):
    """A sync handler that raises CancelledError itself (no task was cancelled)."""

    def get(self) -> None:
        raise asyncio.CancelledError()


class AsyncCancelledHandler(RequestHandler):
    async def get(self) -> None:
        await asyncio.sleep(0.01)
        raise asyncio.CancelledError()


class AsyncHandler(RequestHandler):
    async def get(self) -> None:
        await asyncio.sleep(0.01)
        self.write({"async": True, "pid": os.getpid()})

    async def post(self) -> None:
        await asyncio.sleep(0.01)
        self.write({"async": True, "body": self.request.body.decode()})


class AsyncErrorHandler(RequestHandler):
    async def get(self) -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError(SECRET + " (async)")


class AsyncHTTPErrorHandler(RequestHandler):
    async def get(self) -> None:
        await asyncio.sleep(0.01)
        raise HTTPError(402)


class AsyncFinishHandler(RequestHandler):
    async def get(self) -> None:
        await asyncio.sleep(0.01)
        self.finish("finished explicitly")


class PrepareHandler(RequestHandler):
    def prepare(self) -> None:
        self.prepared = "sync prepare ran"
        self.set_header("X-Prepared", "yes")

    def get(self) -> None:
        self.write({"prepared": self.prepared})


class AsyncPrepareHandler(RequestHandler):
    async def prepare(self) -> None:
        await asyncio.sleep(0.01)
        self.prepared = "async prepare ran"

    def get(self) -> None:
        self.write({"prepared": self.prepared})


class PrepareFinishHandler(RequestHandler):
    def prepare(self) -> None:
        self.set_status(202)
        self.finish("finished in prepare")

    def get(self) -> None:
        raise RuntimeError("get() ran after prepare() finished the request")


class AsyncPrepareFinishHandler(RequestHandler):
    async def prepare(self) -> None:
        await asyncio.sleep(0.01)
        self.finish("finished in async prepare")

    def get(self) -> None:
        raise RuntimeError("get() ran after prepare() finished the request")


class PrepareErrorHandler(RequestHandler):
    def prepare(self) -> None:
        raise HTTPError(403)

    def get(self) -> None:
        self.write("must not be reached")


class InitializeHandler(RequestHandler):
    def initialize(self, greeting: str = "none", punctuation: str = "") -> None:
        self.greeting = greeting
        self.punctuation = punctuation

    def get(self) -> None:
        self.write(self.greeting + self.punctuation)


class GetOnlyHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("X-Get-Ran", "yes")
        self.write("get only body")


class HeadHandler(RequestHandler):
    def get(self) -> None:
        self.write("the get body")

    def head(self) -> None:
        self.set_header("X-Explicit-Head", "yes")
        self.set_header("X-Length", 0)


class OnFinishHandler(RequestHandler):
    finished = 0

    def get(self) -> None:
        self.write({"finished_before": OnFinishHandler.finished})

    def on_finish(self) -> None:
        OnFinishHandler.finished += 1


class OwnFinishHandler(RequestHandler):
    """Overrides finish(): the one squall calls for it after get() returns."""

    def get(self) -> None:
        self.write("body")

    def finish(self, chunk: Any = None) -> None:
        self.set_header("X-Finished-By", "OwnFinishHandler")
        super().finish(chunk)


class WriteAfterFinishHandler(RequestHandler):
    def get(self) -> None:
        self.finish("done")
        self.write("too late")  # raises after the response has gone


class BadStatusHandler(RequestHandler):
    def get(self) -> None:
        self.set_status(1000)


app = Application(
    [
        (r"/", HelloHandler),
        (r"/json", JSONHandler),
        (r"/bytes", BytesHandler),
        (r"/unicode", UnicodeHandler),
        (r"/headers", HeadersHandler),
        (r"/status/(\d+)", StatusHandler),
        (r"/positional/(\w+)/(\d+)", PositionalHandler),
        (r"/named/(?P<name>\w+)/(?P<number>\d+)", NamedHandler),
        (r"/optional(?:/(?P<page>\d+))?", OptionalNamedHandler),
        (r"/query", QueryHandler),
        (r"/form", FormHandler),
        (r"/required", RequiredHandler),
        (r"/request/.*", RequestInfoHandler),
        (r"/echo", EchoHandler),
        (r"/redirect/(\w[\w-]*)", RedirectHandler),
        (r"/teapot", TeapotHandler),
        (r"/custom-error", CustomErrorPageHandler),
        (r"/send-error", SendErrorHandler),
        (r"/error", ErrorHandler),
        (r"/cancelled", CancelledHandler),
        (r"/async-cancelled", AsyncCancelledHandler),
        (r"/async", AsyncHandler),
        (r"/async-error", AsyncErrorHandler),
        (r"/async-http-error", AsyncHTTPErrorHandler),
        (r"/async-finish", AsyncFinishHandler),
        (r"/prepare", PrepareHandler),
        (r"/prepare-async", AsyncPrepareHandler),
        (r"/prepare-finish", PrepareFinishHandler),
        (r"/prepare-async-finish", AsyncPrepareFinishHandler),
        (r"/prepare-error", PrepareErrorHandler),
        (r"/init", InitializeHandler, {"greeting": "hi", "punctuation": "!"}),
        (r"/init-default", InitializeHandler),
        (r"/get-only", GetOnlyHandler),
        (r"/head", HeadHandler),
        (r"/on-finish", OnFinishHandler),
        (r"/own-finish", OwnFinishHandler),
        (r"/write-after-finish", WriteAfterFinishHandler),
        (r"/bad-status", BadStatusHandler),
    ]
)
