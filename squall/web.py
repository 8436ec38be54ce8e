"""squall's own app API, the seed's: `Application` routes to `RequestHandler`s.

A handler whose method is a plain function runs to completion inside the
connection's `data_received`, with no task and no await; an `async def`
method runs as a task. Either way the whole response leaves in one write.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, urljoin

from squall.http.protocol import RequestCycle
from squall.http.status import reason_phrase

logger = logging.getLogger("squall.web")

_NO_DEFAULT: Any = object()
_running: set[asyncio.Future[Any]] = set()


class HTTPError(Exception):
    """Raise in a handler to answer with `status_code`; `log_message` goes to the log only."""

    def __init__(self, status_code: int = 500, log_message: str | None = None, *args: Any) -> None:
        super().__init__(status_code, log_message)
        self.status_code = status_code
        self.log_message = log_message % args if log_message and args else log_message


class MissingArgumentError(HTTPError):
    def __init__(self, name: str) -> None:
        super().__init__(400, f"Missing argument {name}")
        self.arg_name = name


class Headers:
    """Case-insensitive, read-only view of request headers (values decoded as latin-1)."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw  # names already lower-case

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower().encode("latin-1")
        for raw_name, value in self._raw:
            if raw_name == key:
                return value.decode("latin-1")
        return default

    def get_list(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [value.decode("latin-1") for raw_name, value in self._raw if raw_name == key]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        return (name.decode("latin-1") for name, _ in self._raw)

    def items(self) -> list[tuple[str, str]]:
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._raw]

    def __len__(self) -> int:
        return len(self._raw)


class HTTPServerRequest:
    """The request as a handler sees it (`self.request`)."""

    def __init__(self, cycle: RequestCycle) -> None:
        request = cycle.request
        assert request is not None
        self.method = request.method
        self.uri = request.target.decode("latin-1")
        self.path = unquote(request.path.decode("latin-1"))
        self.query = request.query.decode("latin-1")
        self.version = f"HTTP/{request.http_version}"
        self.headers = Headers(request.headers)
        self.body = cycle.body
        self.protocol = cycle.scheme
        client = cycle.client
        self.remote_ip = client[0] if client else ""
        self.host = self.headers.get("host") or (
            f"{cycle.server[0]}:{cycle.server[1]}" if cycle.server else ""
        )
        self._query_arguments: dict[str, list[str]] | None = None
        self._body_arguments: dict[str, list[str]] | None = None

    @property
    def query_arguments(self) -> dict[str, list[str]]:
        if self._query_arguments is None:
            self._query_arguments = parse_qs(self.query, keep_blank_values=True)
        return self._query_arguments

    @property
    def body_arguments(self) -> dict[str, list[str]]:
        if self._body_arguments is None:
            content_type = self.headers.get("content-type", "") or ""
            if self.body and content_type.startswith("application/x-www-form-urlencoded"):
                text = self.body.decode("utf-8", "replace")
                self._body_arguments = parse_qs(text, keep_blank_values=True)
            else:
                self._body_arguments = {}
        return self._body_arguments

    @property
    def arguments(self) -> dict[str, list[str]]:
        merged = {name: list(values) for name, values in self.query_arguments.items()}
        for name, values in self.body_arguments.items():
            merged.setdefault(name, []).extend(values)
        return merged

    def full_url(self) -> str:
        return f"{self.protocol}://{self.host}{self.uri}"

    def __repr__(self) -> str:
        return f"HTTPServerRequest({self.method} {self.uri})"


class RequestHandler:
    """Subclass and define `get`, `post`, ... (plain or `async def`)."""

    SUPPORTED_METHODS: ClassVar[tuple[str, ...]] = (
        "GET",
        "HEAD",
        "POST",
        "DELETE",
        "PATCH",
        "PUT",
        "OPTIONS",
    )

    def __init__(self, application: Application, request: HTTPServerRequest, **kwargs: Any) -> None:
        self.application = application
        self.request = request
        self.path_args: list[str] = []
        self.path_kwargs: dict[str, str] = {}
        self._status = 200
        self._reason: str | None = None
        self._headers: dict[str, str] = {"Content-Type": "text/html; charset=UTF-8"}
        self._extra_headers: list[tuple[str, str]] = []
        self._chunks: list[bytes] = []
        self._finished = False
        self.initialize(**kwargs)

    def initialize(self, **kwargs: Any) -> None:
        """Hook for the keyword arguments given in the route."""

    def prepare(self) -> Awaitable[None] | None:
        """Called before the method; may be async."""
        return None

    def on_finish(self) -> None:
        """Called after the response has been sent."""

    # -- arguments ----------------------------------------------------------------

    def get_argument(self, name: str, default: Any = _NO_DEFAULT, strip: bool = True) -> Any:
        """The last value of argument `name` from the query or a form body."""
        return self._last(self.request.arguments, name, default, strip)

    def get_arguments(self, name: str, strip: bool = True) -> list[str]:
        return self._all(self.request.arguments, name, strip)

    def get_query_argument(self, name: str, default: Any = _NO_DEFAULT, strip: bool = True) -> Any:
        return self._last(self.request.query_arguments, name, default, strip)

    def get_query_arguments(self, name: str, strip: bool = True) -> list[str]:
        return self._all(self.request.query_arguments, name, strip)

    def get_body_argument(self, name: str, default: Any = _NO_DEFAULT, strip: bool = True) -> Any:
        return self._last(self.request.body_arguments, name, default, strip)

    def get_body_arguments(self, name: str, strip: bool = True) -> list[str]:
        return self._all(self.request.body_arguments, name, strip)

    @staticmethod
    def _all(source: dict[str, list[str]], name: str, strip: bool) -> list[str]:
        values = source.get(name, [])
        return [value.strip() for value in values] if strip else list(values)

    def _last(self, source: dict[str, list[str]], name: str, default: Any, strip: bool) -> Any:
        values = self._all(source, name, strip)
        if values:
            return values[-1]
        if default is _NO_DEFAULT:
            raise MissingArgumentError(name)
        return default

    # -- response -----------------------------------------------------------------

    def set_status(self, status_code: int, reason: str | None = None) -> None:
        if not 100 <= status_code <= 599:
            raise ValueError(f"invalid HTTP status code {status_code}")
        self._status = status_code
        self._reason = reason

    def get_status(self) -> int:
        return self._status

    def set_header(self, name: str, value: Any) -> None:
        self._headers[name] = _header_value(value)

    def add_header(self, name: str, value: Any) -> None:
        self._extra_headers.append((name, _header_value(value)))

    def clear_header(self, name: str) -> None:
        self._headers.pop(name, None)

    def write(self, chunk: str | bytes | dict[str, Any]) -> None:
        if self._finished:
            raise RuntimeError("cannot write() after finish()")
        if isinstance(chunk, dict):
            chunk = json.dumps(chunk).replace("</", "<\\/")
            self.set_header("Content-Type", "application/json; charset=UTF-8")
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8")
        elif not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError(f"write() takes str, bytes or dict, not {type(chunk).__name__}")
        self._chunks.append(bytes(chunk))

    def redirect(self, url: str, permanent: bool = False, status: int | None = None) -> None:
        if status is None:
            status = 301 if permanent else 302
        elif not 300 <= status <= 399:
            raise ValueError(f"redirect status must be 3xx, not {status}")
        self.set_status(status)
        self.set_header("Location", urljoin(self.request.uri, url))
        self.finish()

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        """Replace whatever was written with an error page."""
        self._chunks.clear()
        self._headers = {"Content-Type": "text/html; charset=UTF-8"}
        self._extra_headers.clear()
        self.set_status(status_code)
        self.write_error(status_code, **kwargs)
        if not self._finished:
            self.finish()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Override to render error pages; never shows the traceback."""
        reason = reason_phrase(status_code) or "Error"
        self.write(
            f"<html><title>{status_code}: {reason}</title>"
            f"<body>{status_code}: {reason}</body></html>"
        )

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> None:
        """Send the response; the handler is done."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        if chunk is not None:
            self.write(chunk)
        self._finished = True
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self._headers.items()]
        for name, value in self._extra_headers:
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
        body = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        if self._status in (204, 304) or 100 <= self._status < 200:
            body = b""
            headers = [h for h in headers if h[0].lower() != b"content-type"]
        self._cycle.respond(self._status, headers, body)
        self.on_finish()

    # -- execution ----------------------------------------------------------------

    _cycle: RequestCycle

    def _execute(self, cycle: RequestCycle, args: Sequence[str], kwargs: dict[str, str]) -> None:
        """Run prepare and the method; sync handlers finish before this returns."""
        self._cycle = cycle
        self.path_args = list(args)
        self.path_kwargs = kwargs
        try:
            method_name = self.request.method
            if method_name not in self.SUPPORTED_METHODS:
                raise HTTPError(405)
            method = getattr(self, method_name.lower(), None)
            if method is None and method_name == "HEAD":
                method = getattr(self, "get", None)  # GET's response, the body left out
            if method is None:
                raise HTTPError(405)
            prepared = self.prepare()
            if prepared is not None and inspect.isawaitable(prepared):
                self._continue_async(self._run_async(prepared, method, args, kwargs))
                return
            if self._finished:
                return
            result = method(*args, **kwargs)
            if result is not None and inspect.isawaitable(result):
                self._continue_async(self._await_result(result))
                return
        except Exception as exc:
            self._handle_exception(exc)
            return
        if not self._finished:
            self.finish()

    async def _run_async(
        self, prepared: Awaitable[None], method: Any, args: Sequence[str], kwargs: dict[str, str]
    ) -> None:
        await prepared
        if self._finished:
            return
        result = method(*args, **kwargs)
        if result is not None and inspect.isawaitable(result):
            await result

    async def _await_result(self, awaitable: Awaitable[Any]) -> None:
        await awaitable

    def _continue_async(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        _running.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(_running.discard)
        task.add_done_callback(self._async_done)

    def _async_done(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            if not self._finished and not self._cycle.complete:
                self._cycle.abort()
            return
        exc = task.exception()
        if exc is not None:
            self._handle_exception(exc)
        elif not self._finished:
            self.finish()

    def _handle_exception(self, exc: BaseException) -> None:
        if isinstance(exc, HTTPError):
            if exc.log_message:
                logger.warning("%d %s: %s", exc.status_code, self._summary(), exc.log_message)
            status = exc.status_code
        else:
            logger.error("uncaught exception in %s", self._summary(), exc_info=exc)
            status = 500
        if self._finished:
            return
        try:
            self.send_error(status)
        except Exception:
            logger.exception("failed to send the error page for %s", self._summary())
            if not self._cycle.response_started:
                self._cycle.respond(500, [], b"")

    def _summary(self) -> str:
        return f"{self.request.method} {self.request.uri} ({self.request.remote_ip})"


def _header_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if "\r" in text or "\n" in text:
        raise ValueError(f"unsafe header value {text!r}")
    return text


Route = tuple[Any, ...]


class Application:
    """Routes requests to handlers: `Application([(r"/", MainHandler), ...])`.

    Patterns are regular expressions matched against the whole path; their
    groups become the handler method's arguments (named groups as keywords).
    """

    streaming = False  # handlers run once the whole body is in

    def __init__(self, handlers: Sequence[Route] | None = None, **settings: Any) -> None:
        self.settings = settings
        self._routes: list[tuple[re.Pattern[str], type[RequestHandler], dict[str, Any]]] = []
        for route in handlers or []:
            self.add_route(*route)

    def add_route(
        self,
        pattern: str,
        handler: type[RequestHandler],
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not pattern.endswith("$"):
            pattern += "$"
        self._routes.append((re.compile(pattern), handler, kwargs or {}))

    def find_handler(
        self, path: str
    ) -> tuple[type[RequestHandler], dict[str, Any], list[str], dict[str, str]] | None:
        for regex, handler, kwargs in self._routes:
            match = regex.match(path)
            if match is not None:
                if regex.groupindex:
                    # Named groups become keywords; one that did not take part in
                    # the match is left out, so the method's default applies.
                    groups = {k: v for k, v in match.groupdict().items() if v is not None}
                    return handler, kwargs, [], groups
                args = [g if g is not None else "" for g in match.groups()]
                return handler, kwargs, args, {}
        return None

    def handle(self, cycle: RequestCycle) -> None:
        request = HTTPServerRequest(cycle)
        found = self.find_handler(request.path)
        if found is None:
            not_found = RequestHandler(self, request)
            not_found._cycle = cycle
            not_found.send_error(404)
            return
        handler_class, kwargs, args, path_kwargs = found
        try:
            handler = handler_class(self, request, **kwargs)
        except Exception:
            logger.exception("could not create %s for %r", handler_class.__name__, request)
            cycle.respond(500, [], b"")
            return
        handler._execute(cycle, args, path_kwargs)

    def __call__(self, request: Any) -> None:  # pragma: no cover - guard against misuse
        raise TypeError("an Application is served by squall.HTTPServer, not called")
