"""squall's own app API, the seed's: `Application` routes to `RequestHandler`s.

A handler whose method is a plain function runs to completion inside the
connection's `data_received`, with no task and no await; an `async def`
method runs as a task. Unless the handler calls `flush()`, the whole response
leaves in one write with a Content-Length.

Streaming, as in tornado:
- `flush()` sends what was written so far (the first one sends the head, with
  chunked framing); `await self.flush()` waits while the client reads slower
  than the handler writes.
- A handler class decorated with `@stream_request_body` runs at the request's
  head: `prepare()`, then `data_received(chunk)` for each piece of body as it
  arrives (reading pauses while it works), then the method.

Every other handler runs once its body is complete. The connection asks the
Application at the head of each request with a body (`begin`), which decides:
- no body: the handler runs at once (its empty body is complete);
- a Content-Length within the connection's buffer (`BODY_BUFFER_HIGH`): the
  request goes back to the connection, which runs it when its message ends;
- a larger or chunked body: a task reads all of it (the parser bounds it by
  `Limits.max_body_bytes`), then the handler runs.
In the first two cases a plain handler still runs inside `data_received`,
with no task.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Generator, Iterator, Sequence
from functools import cached_property
from typing import Any, ClassVar, Final, TypeVar
from urllib.parse import parse_qs, unquote, urljoin

from mypy_extensions import mypyc_attr

from squall.http.core import ResponseError
from squall.http.cycle import RequestCycle, Upgraded, body_fits_buffer
from squall.http.status import reason_phrase

logger: Final = logging.getLogger("squall.web")

_NO_DEFAULT: Any = object()
_DEFAULT_HEADERS: Final = [(b"Content-Type", b"text/html; charset=UTF-8")]
_METHOD_ATTRS: Final = {
    name: name.lower() for name in ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")
}
_running: Final[set[asyncio.Future[Any]]] = set()


@mypyc_attr(allow_interpreted_subclasses=True)
class HTTPError(Exception):
    """Raise in a handler to answer with `status_code`; `log_message` goes to the log only."""

    def __init__(self, status_code: int = 500, log_message: str | None = None, *args: Any) -> None:
        super().__init__(status_code, log_message)
        self.status_code = status_code
        self.log_message = log_message % args if log_message and args else log_message


@mypyc_attr(native_class=False)
class StreamClosedError(OSError):
    """`await self.flush()` after the client has gone: stop producing the response."""


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

    def __init__(self, cycle: RequestCycle, body: bytes | None = None) -> None:
        request = cycle.request
        assert request is not None
        self._cycle = cycle
        self._head = request
        self.method = request.method
        path = request.path.decode("latin-1")
        self.path = unquote(path) if "%" in path else path
        # The whole body; b"" for a @stream_request_body handler (it gets data_received).
        if body is None:
            body = cycle.body if request.body_expected else b""
        self.body = body
        self._query_arguments: dict[str, list[str]] | None = None
        self._body_arguments: dict[str, list[str]] | None = None

    # The rest is worked out on first use: most handlers never look.

    @cached_property
    def uri(self) -> str:
        return self._head.target.decode("latin-1")

    @cached_property
    def query(self) -> str:
        return self._head.query.decode("latin-1")

    @cached_property
    def version(self) -> str:
        return f"HTTP/{self._head.http_version}"

    @cached_property
    def headers(self) -> Headers:
        return Headers(self._head.headers)

    @cached_property
    def protocol(self) -> str:
        return self._cycle.scheme

    @cached_property
    def remote_ip(self) -> str:
        client = self._cycle.client
        return client[0] if client else ""

    @cached_property
    def host(self) -> str:
        server = self._cycle.server
        return self.headers.get("host") or (f"{server[0]}:{server[1]}" if server else "")

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


@mypyc_attr(allow_interpreted_subclasses=True)
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

    #: Set by `@stream_request_body`: run at the head, body through `data_received`.
    _stream_request_body: ClassVar[bool] = False

    def __init__(self, application: Application, request: HTTPServerRequest, **kwargs: Any) -> None:
        self.application = application
        self.request = request
        self.path_args: list[str] = []
        self.path_kwargs: dict[str, str] = {}
        self._status = 200
        self._reason: str | None = None
        self._headers: dict[str, str] = {"Content-Type": "text/html; charset=UTF-8"}
        self._headers_changed = False  # still only the default Content-Type
        self._extra_headers: list[tuple[str, str]] = []
        self._chunks: list[bytes] = []
        self._finished = False
        self._headers_written = False  # flush() has sent the head
        self._traits = _traits_of(type(self))
        if kwargs or self._traits.initializes:
            self.initialize(**kwargs)

    def initialize(self, **kwargs: Any) -> None:
        """Hook for the keyword arguments given in the route."""

    def prepare(self) -> Awaitable[None] | None:
        """Called before the method; may be async."""
        return None

    def on_finish(self) -> None:
        """Called after the response has been sent."""

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        """With `@stream_request_body`: one piece of the request body; may be async."""
        raise NotImplementedError(f"{type(self).__name__} must define data_received()")

    def on_connection_close(self) -> None:
        """With `@stream_request_body`: the request broke off before its body was complete."""

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
        self._headers_changed = True

    def add_header(self, name: str, value: Any) -> None:
        self._extra_headers.append((name, _header_value(value)))
        self._headers_changed = True

    def clear_header(self, name: str) -> None:
        self._headers.pop(name, None)
        self._headers_changed = True

    def write(self, chunk: str | bytes | dict[str, Any]) -> None:
        if self._finished:
            raise RuntimeError("cannot write() after finish()")
        if type(chunk) is str:  # the usual case first
            chunk = chunk.encode("utf-8")
        elif type(chunk) is not bytes:
            if isinstance(chunk, dict):
                chunk = json.dumps(chunk).replace("</", "<\\/")
                self.set_header("Content-Type", "application/json; charset=UTF-8")
            if isinstance(chunk, str):
                chunk = chunk.encode("utf-8")
            elif not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"write() takes str, bytes or dict, not {type(chunk).__name__}")
            chunk = bytes(chunk)
        self._chunks.append(chunk)

    def redirect(self, url: str, permanent: bool = False, status: int | None = None) -> None:
        if self._headers_written:
            raise RuntimeError("cannot redirect() after flush()")
        if status is None:
            status = 301 if permanent else 302
        elif not 300 <= status <= 399:
            raise ValueError(f"redirect status must be 3xx, not {status}")
        self.set_status(status)
        self.set_header("Location", urljoin(self.request.uri, url))
        self.finish()

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        """Replace whatever was written with an error page."""
        if self._headers_written:
            # Part of the response is out: all that is left is to cut it off.
            logger.error(
                "cannot send error %d after flush() for %s", status_code, self.request_summary()
            )
            self._abort()
            return
        self._chunks.clear()
        self._headers = {"Content-Type": "text/html; charset=UTF-8"}
        self._headers_changed = False
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

    def flush(self) -> Awaitable[None]:
        """Send what was written so far; the first flush sends the head (chunked).

        The write happens at once. The returned awaitable waits while the
        client reads slower than the handler writes (`await self.flush()` in
        an async handler); a plain handler may ignore it. Awaiting it after
        the client has gone raises `StreamClosedError`.
        """
        if self._finished:
            raise RuntimeError("cannot flush() after finish()")
        cycle = self._cycle
        try:
            if not self._headers_written:
                self._headers_written = True
                cycle.start(self._status, _encoded_headers(self), self._reason)
            if self._chunks:
                data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
                self._chunks.clear()
                if not cycle.complete:
                    cycle.write(data)
        except ResponseError:
            self._finished = True  # the cycle has logged it, and answered or closed
            raise
        cycle.flush()
        return _Drained(cycle)

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> None:
        """Send the response; the handler is done."""
        _finish(self, chunk)

    def _abort(self) -> None:
        """Give up on a response whose head is out: the connection closes."""
        self._finished = True
        if not self._cycle.complete:
            self._cycle.abort()

    # -- an Upgrade -----------------------------------------------------------------

    @classmethod
    def take_over(
        cls, application: Application, cycle: RequestCycle, trailing: bytes, found: Found
    ) -> Upgraded | None:
        """An Upgrade request routed here: the protocol that takes over its connection, or None.

        `Application.upgrade` calls it on the routed class, before any handler
        exists, with what `find_handler` found and the bytes that followed the
        request's head. None (this default) answers the request in HTTP like
        any other; `squall.websocket.WebSocketHandler` takes WebSocket
        handshakes. A handler made here is attached to `cycle` with `attach`.
        """
        return None

    def attach(self, cycle: RequestCycle, args: Sequence[str], kwargs: dict[str, str]) -> None:
        """Attach the handler to its request cycle and to its route's groups (see `take_over`)."""
        self._cycle = cycle
        self.path_args = list(args) if args else []
        self.path_kwargs = kwargs if kwargs else {}  # never the empty one a route's paths share

    def is_finished(self) -> bool:
        """Whether the response is complete (`finish()` was called, or it was cut off)."""
        return self._finished

    # -- execution ----------------------------------------------------------------

    _cycle: RequestCycle

    async def _run_async(
        self, prepared: Awaitable[None], method: Any, args: Sequence[str], kwargs: dict[str, str]
    ) -> None:
        await prepared
        if self._finished:
            return
        result = method(*args, **kwargs)
        if result is not None and inspect.isawaitable(result):
            await result

    async def _run_streaming(
        self, method: Any, args: Sequence[str], kwargs: dict[str, str]
    ) -> None:
        """@stream_request_body: prepare, data_received for each piece, then the method."""
        prepared = self.prepare()
        if prepared is not None and inspect.isawaitable(prepared):
            await prepared
        cycle = self._cycle
        more = True
        while more and not self._finished:
            # The connection reads on only as this loop takes what it has read.
            data, more = await cycle.receive_body()
            if cycle.disconnected and not cycle.body_complete:
                # The client left, or the body broke a rule (413, 408, 400) and
                # the connection has already answered: the method never runs.
                self._finished = True
                self.on_connection_close()
                return
            if data:
                received = self.data_received(data)
                if received is not None and inspect.isawaitable(received):
                    await received
        if self._finished:
            return
        result = method(*args, **kwargs)
        if result is not None and inspect.isawaitable(result):
            await result

    async def _await_result(self, awaitable: Awaitable[Any]) -> None:
        await awaitable

    def _continue_async(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._cycle.task = task  # --request-timeout cancels it
        _running.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(_running.discard)
        task.add_done_callback(self._async_done)

    def _async_done(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            # squall cancels a handler's task only once its request is answered
            # (--request-timeout's 504): this one raised CancelledError itself.
            if not self._finished and not self._cycle.complete:
                try:
                    task.result()
                except asyncio.CancelledError as cancelled:  # the handler's own is its context
                    self.handle_exception(cancelled)
            return
        exc = task.exception()
        if exc is not None:
            self.handle_exception(exc)
        elif not self._finished:
            self.finish()

    def handle_exception(self, exc: BaseException) -> None:
        """Log `exc` as its kind asks and answer with its error page (or cut the response off)."""
        if isinstance(exc, StreamClosedError):
            logger.debug("client disconnected during %s", self.request_summary())
            status = 0
        elif isinstance(exc, ResponseError):
            status = 0  # the cycle has logged it, and answered or closed
        elif isinstance(exc, HTTPError):
            if exc.log_message:
                logger.warning(
                    "%d %s: %s", exc.status_code, self.request_summary(), exc.log_message
                )
            status = exc.status_code
        else:
            logger.error("uncaught exception in %s", self.request_summary(), exc_info=exc)
            status = 500
        if self._finished:
            return
        if self._headers_written or status == 0:
            self._abort()  # part of the response is out (or nobody is listening)
            return
        try:
            self.send_error(status)
        except Exception:
            logger.exception("failed to send the error page for %s", self.request_summary())
            if not self._cycle.response_started:
                self._cycle.respond(500, [], b"")

    def request_summary(self) -> str:
        """The request as the log names it: method, URI and client address."""
        return f"{self.request.method} {self.request.uri} ({self.request.remote_ip})"


class _Drained:
    """What `flush()` returns: awaiting it waits until the client has caught up.

    Nothing is created unless it is awaited, so a plain handler may drop it.
    """

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestCycle) -> None:
        self._cycle = cycle

    def __await__(self) -> Generator[Any, None, None]:
        cycle = self._cycle
        yield from cycle.drain().__await__()
        if cycle.disconnected and not cycle.complete:
            raise StreamClosedError("the client has disconnected")


_Handler = TypeVar("_Handler", bound=type[RequestHandler])


def stream_request_body(cls: _Handler) -> _Handler:
    """Class decorator: the handler reads its body as it arrives, as in tornado.

    `prepare()` runs at the request's head, then `data_received(chunk)` (plain
    or async) for each piece of body, then the method (`post`, `put`, ...)
    once the body is complete. `self.request.body` stays empty.
    """
    if not (isinstance(cls, type) and issubclass(cls, RequestHandler)):
        raise TypeError("@stream_request_body decorates a RequestHandler subclass")
    cls._stream_request_body = True
    _TRAITS.pop(cls, None)
    return cls


def _header_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if "\r" in text or "\n" in text:
        raise ValueError(f"unsafe header value {text!r}")
    return text


Route = tuple[Any, ...]
#: What `find_handler` returns: the handler class, its kwargs, path args and path kwargs.
Found = tuple[type[RequestHandler], dict[str, Any], list[str], dict[str, str]]


def _execute(
    handler: RequestHandler, cycle: RequestCycle, args: Sequence[str], kwargs: dict[str, str]
) -> None:
    """Run prepare and the method; sync handlers finish before this returns.

    A function, not a method, so that a handler class defined in the app (an
    interpreted subclass, in the compiled build) is not asked for it by name.
    """
    handler._cycle = cycle
    if args:
        handler.path_args = list(args)
    if kwargs:
        handler.path_kwargs = kwargs
    try:
        method_name = handler.request.method
        traits = handler._traits
        if method_name not in traits.methods:
            raise HTTPError(405)
        method = getattr(handler, _METHOD_ATTRS.get(method_name) or method_name.lower(), None)
        if method is None and method_name == "HEAD":
            method = getattr(handler, "get", None)  # GET's response, the body left out
        if method is None:
            raise HTTPError(405)
        if traits.streams:
            handler.request.body = b""  # the body comes through data_received
            handler._continue_async(handler._run_streaming(method, args, kwargs))
            return
        if traits.prepares:
            prepared = handler.prepare()
            if prepared is not None and inspect.isawaitable(prepared):
                handler._continue_async(handler._run_async(prepared, method, args, kwargs))
                return
            if handler._finished:
                return
        result = method(*args, **kwargs) if args or kwargs else method()
        if result is not None and inspect.isawaitable(result):
            handler._continue_async(handler._await_result(result))
            return
    except (Exception, asyncio.CancelledError) as exc:  # a sync handler's own CancelledError: a 500
        handler.handle_exception(exc)
        return
    if not handler._finished:
        if traits.overrides_finish:
            handler.finish()
        else:
            _finish(handler, None)


def _finish(handler: RequestHandler, chunk: str | bytes | dict[str, Any] | None) -> None:
    """`RequestHandler.finish`, called directly where the class keeps it (no method lookup)."""
    if handler._finished:
        raise RuntimeError("finish() called twice")
    if chunk is not None:
        handler.write(chunk)
    handler._finished = True
    cycle = handler._cycle
    if handler._headers_written:
        if not cycle.complete:
            try:
                if handler._chunks:
                    cycle.write(b"".join(handler._chunks))
                    handler._chunks.clear()
                cycle.end()
            except ResponseError:
                return  # the cycle has logged it and ended the connection
        handler.on_finish()
        return
    chunks = handler._chunks
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    headers = _encoded_headers(handler)
    if handler._status in (204, 304) or 100 <= handler._status < 200:
        body = b""
        headers = [h for h in headers if h[0].lower() != b"content-type"]
    try:
        cycle.respond(handler._status, headers, body, handler._reason)
    except ResponseError:
        return  # the cycle has logged it and answered with a 500
    if handler._traits.finishes:
        handler.on_finish()


def _encoded_headers(handler: RequestHandler) -> list[tuple[bytes, bytes]]:
    if not handler._headers_changed:
        return _DEFAULT_HEADERS  # read, never changed, by the HTTP core
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in handler._headers.items()]
    for name, value in handler._extra_headers:
        headers.append((name.encode("latin-1"), value.encode("latin-1")))
    return headers


class _Traits:
    """What a handler class overrides or declares, looked up once per class, not per request."""

    def __init__(self, cls: type[RequestHandler]) -> None:
        self.initializes = cls.initialize is not RequestHandler.initialize
        self.prepares = cls.prepare is not RequestHandler.prepare
        self.finishes = cls.on_finish is not RequestHandler.on_finish
        self.overrides_finish = cls.finish is not RequestHandler.finish
        self.methods = cls.SUPPORTED_METHODS
        self.streams = cls._stream_request_body


_TRAITS: Final[dict[type[RequestHandler], _Traits]] = {}
#: How many paths an Application keeps the route of, and how long one may be.
_MAX_FOUND_PATHS: Final = 1024
_MAX_FOUND_PATH: Final = 256


def _traits_of(cls: type[RequestHandler]) -> _Traits:
    traits = _TRAITS.get(cls)
    if traits is None:
        traits = _Traits(cls)
        if len(_TRAITS) < 4096:  # handler classes made on the fly are not all kept
            _TRAITS[cls] = traits
    return traits


@mypyc_attr(allow_interpreted_subclasses=True)
class Application:
    """Routes requests to handlers: `Application([(r"/", MainHandler), ...])`.

    Patterns are regular expressions matched against the whole path; their
    groups become the handler method's arguments (named groups as keywords).
    """

    def __init__(self, handlers: Sequence[Route] | None = None, **settings: Any) -> None:
        self.settings = settings
        #: (pattern, handler, kwargs, named groups?, any groups?), the last two known in advance.
        self._routes: list[
            tuple[re.Pattern[str], type[RequestHandler], dict[str, Any], bool, bool]
        ] = []
        self._streaming_routes = False  # some handler is @stream_request_body
        #: Paths already routed to a pattern without groups: what they found.
        self._found: dict[str, Found] = {}
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
        regex = re.compile(pattern)
        self._routes.append(
            (regex, handler, kwargs or {}, bool(regex.groupindex), regex.groups > 0)
        )
        if handler._stream_request_body:
            self._streaming_routes = True
        self._found.clear()  # a path may now find this route first

    def find_handler(self, path: str) -> Found | None:
        found = self._found.get(path)
        if found is not None:
            return found
        for regex, handler, kwargs, named, grouped in self._routes:
            match = regex.match(path)
            if match is not None:
                if not grouped:
                    # The same path finds the same route with no arguments every
                    # time: kept, within bounds (the client chooses the paths).
                    found = handler, kwargs, [], {}
                    if len(path) <= _MAX_FOUND_PATH and len(self._found) < _MAX_FOUND_PATHS:
                        self._found[path] = found
                    return found
                if named:
                    # Named groups become keywords; one that did not take part in
                    # the match is left out, so the method's default applies.
                    groups = {k: v for k, v in match.groupdict().items() if v is not None}
                    return handler, kwargs, [], groups
                args = [g if g is not None else "" for g in match.groups()]
                return handler, kwargs, args, {}
        return None

    def upgrade(self, cycle: RequestCycle, trailing: bytes) -> Upgraded | None:
        """An Upgrade request: its route's handler class may take over the connection.

        See `RequestHandler.take_over` (a `WebSocketHandler` takes a WebSocket
        handshake); None answers the request in HTTP.
        """
        request = cycle.request
        if request is None:
            return None
        path = request.path.decode("latin-1")
        found = self.find_handler(unquote(path) if "%" in path else path)
        if found is None:
            return None
        return found[0].take_over(self, cycle, trailing, found)

    def handle(self, cycle: RequestCycle) -> None:
        """A request whose body is complete (or that has none): dispatch it now."""
        self._dispatch(cycle, HTTPServerRequest(cycle))

    def begin(self, cycle: RequestCycle) -> bool:
        """At the head of a request with a body: when to run it."""
        if self._streaming_routes:
            server_request = HTTPServerRequest(cycle, b"")
            found = self.find_handler(server_request.path)
            if found is not None and found[0]._stream_request_body:
                self._dispatch(cycle, server_request, found)
                return True
        head = cycle.request
        assert head is not None
        if body_fits_buffer(head):
            return False  # the connection runs it once its body is complete, with no task
        # A larger (or chunked) body: this task reads all of it; the parser
        # bounds its size (Limits.max_body_bytes, 413).
        task = cycle.task = cycle.loop.create_task(self._read_then_dispatch(cycle))
        _running.add(task)
        task.add_done_callback(_running.discard)
        return True

    async def _read_then_dispatch(self, cycle: RequestCycle) -> None:
        chunks: list[bytes] = []
        more = True
        while more:
            data, more = await cycle.receive_body()
            if data:
                chunks.append(data)
        if cycle.disconnected and not cycle.body_complete:
            return  # the client left, or the connection has answered the broken body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            server_request = HTTPServerRequest(cycle, body)
        except Exception:
            logger.exception("could not read the request %r", cycle.request)
            if not cycle.response_started:
                cycle.respond(500, [], b"")
            return
        self._dispatch(cycle, server_request)

    def _dispatch(
        self,
        cycle: RequestCycle,
        request: HTTPServerRequest,
        found: Found | None = None,
    ) -> None:
        if found is None:
            found = self.find_handler(request.path)
        if found is None:
            self._not_found(cycle, request)
            return
        handler_class, kwargs, args, path_kwargs = found
        try:
            handler = (
                handler_class(self, request, **kwargs) if kwargs else handler_class(self, request)
            )
        except Exception:
            logger.exception("could not create %s for %r", handler_class.__name__, request)
            cycle.respond(500, [], b"")
            return
        _execute(handler, cycle, args, path_kwargs)

    def _not_found(self, cycle: RequestCycle, request: HTTPServerRequest) -> None:
        not_found = RequestHandler(self, request)
        not_found._cycle = cycle
        not_found.send_error(404)

    def __call__(self, request: Any) -> None:  # pragma: no cover - guard against misuse
        raise TypeError("an Application is served by squall.HTTPServer, not called")
