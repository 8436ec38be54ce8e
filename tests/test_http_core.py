"""squall.http.core: request parsing against a corpus, response framing, fuzzing.

The request corpus
------------------
tests/requests/valid/NAME.http and tests/requests/invalid/NAME.http hold one
byte stream each (a new case is a new pair of files, not new code); beside each
is NAME.json with what the stream must produce.

Line endings: a .http file is stored with LF line endings and every LF is sent
as CRLF, so the files stay readable and editable. A case whose JSON says
`"raw": true` is sent byte for byte (bare LF / bare CR cases, binary bodies);
only raw files may contain a CR.

NAME.json for valid cases:
    {"description": "...",
     "limits": {"max_body_bytes": 8},          # optional, fields of Limits
     "requests": [                             # every request, in order
        {"method": "GET", "target": "/", "version": "1.1",
         "headers": [["host", "example.com"]], # lower-case names, in order
         "body": "",                           # latin-1
         # optional, checked when present:
         "keep_alive": true, "expect_continue": false, "upgrade": false,
         "body_expected": false, "path": "/", "query": ""}]}
Each request must be complete (END_OF_MESSAGE seen) and no error may follow.

NAME.json for invalid cases:
    {"description": "...", "status": 400,      # 400, 413, 414 or 431
     "limits": {...},                          # optional
     "requests": [...],                        # optional: requests parsed before
                                               # the error ("body" optional)
     "xfail": "why"}                           # optional: httptools accepts it
Exactly one RequestError with that status ends the events, nothing more is
parsed afterwards, and no other Request than those listed comes out.

Each case is fed whole, one byte at a time, and at seeded random split points;
every way must give the same events (Data pieces joined).
"""

from __future__ import annotations

import gc
import itertools
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from squall.http.core import (
    CLOSED,
    DEFAULT_LIMITS,
    DONE,
    END_OF_MESSAGE,
    IDLE,
    Data,
    Limits,
    Request,
    RequestError,
    ResponseError,
    ServerConnection,
    checked_headers,
    continue_response,
    error_response,
)

CORPUS = Path(__file__).parent / "requests"
ERROR_STATUSES = {400, 413, 414, 431, 501}
REQUIRED_KEYS = ("method", "target", "version", "headers")
OPTIONAL_KEYS = (
    "body",
    "keep_alive",
    "expect_continue",
    "upgrade",
    "body_expected",
    "path",
    "query",
)


# -- corpus -----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    kind: str  # "valid" or "invalid"
    name: str
    data: bytes
    meta: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def limits(self) -> Limits:
        return Limits(**self.meta.get("limits", {}))


def load_case(path: Path) -> Case:
    meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    data = path.read_bytes()
    if not meta.get("raw", False):
        assert b"\r" not in data, f"{path}: a CR in a non-raw case (mark it raw or store LF only)"
        data = data.replace(b"\n", b"\r\n")
    return Case(path.parent.name, path.stem, data, meta)


def load_corpus(kind: str) -> list[Case]:
    return [load_case(path) for path in sorted((CORPUS / kind).glob("*.http"))]


VALID = load_corpus("valid")
INVALID = load_corpus("invalid")
ALL_CASES = VALID + INVALID


def test_corpus_is_complete() -> None:
    assert len(VALID) >= 30 and len(INVALID) >= 30
    for kind in ("valid", "invalid"):
        stems = {p.stem for p in (CORPUS / kind).glob("*.http")}
        metas = {p.stem for p in (CORPUS / kind).glob("*.json")}
        assert stems == metas, f"{kind}: .http and .json files must come in pairs"
    for case in VALID:
        assert "status" not in case.meta and case.meta["requests"], case.id
    for case in INVALID:
        assert case.meta["status"] in ERROR_STATUSES, case.id
    for case in ALL_CASES:
        for expected in case.meta.get("requests", []):
            assert set(expected) <= {*REQUIRED_KEYS, *OPTIONAL_KEYS}, case.id
            assert all(key in expected for key in REQUIRED_KEYS), case.id
            if case.kind == "valid":
                assert "body" in expected, case.id


# -- feeding ----------------------------------------------------------------


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def random_splits(data: bytes, seed: str, trials: int = 6) -> list[list[bytes]]:
    """Several splittings of `data` at random points; same seed, same points."""
    rng = random.Random(seed)
    out = []
    for _ in range(trials):
        if len(data) < 2:
            out.append([data])
            continue
        count = rng.randint(1, min(8, len(data) - 1))
        points = sorted(rng.sample(range(1, len(data)), count))
        bounds = [0, *points, len(data)]
        out.append([data[a:b] for a, b in itertools.pairwise(bounds)])
    return out


@dataclass
class Parsed:
    """The events of one stream, with each request's Data joined."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    error: tuple[int, str] | None = None

    def comparable(self) -> tuple[list[dict[str, Any]], tuple[int, str] | None]:
        return self.requests, self.error


def request_dict(request: Request) -> dict[str, Any]:
    return {
        "method": request.method,
        "target": request.target.decode("latin-1"),
        "version": request.http_version,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers],
        "keep_alive": request.keep_alive,
        "expect_continue": request.expect_continue,
        "upgrade": request.upgrade,
        "body_expected": request.body_expected,
        "path": request.path.decode("latin-1"),
        "query": request.query.decode("latin-1"),
    }


def feed(chunks: Iterable[bytes], limits: Limits = DEFAULT_LIMITS) -> Parsed:
    """Feed `chunks` to a fresh connection, checking the event grammar as it goes:
    (Request Data* END_OF_MESSAGE)* [Request Data*] [RequestError], and nothing
    at all after a RequestError."""
    conn = ServerConnection(limits)
    parsed = Parsed()
    handed_out: list[Request] = []
    bodies: list[bytearray] = []
    complete: list[bool] = []
    for chunk in chunks:
        events = conn.receive_data(chunk)
        assert isinstance(events, list)
        for event in events:
            assert parsed.error is None, f"event {event!r} after {parsed.error}"
            if isinstance(event, Request):
                assert not complete or complete[-1], "a Request before the last one ended"
                parsed.requests.append(request_dict(event))
                handed_out.append(event)
                bodies.append(bytearray())
                complete.append(False)
            elif isinstance(event, Data):
                assert complete and not complete[-1], "Data outside a request"
                bodies[-1] += event.data
            elif event is END_OF_MESSAGE:
                assert complete and not complete[-1], "END_OF_MESSAGE outside a request"
                complete[-1] = True
            else:
                assert isinstance(event, RequestError), f"unknown event {event!r}"
                assert event.status in ERROR_STATUSES, event
                parsed.error = (event.status, event.reason)
    for request, obj, body, done in zip(parsed.requests, handed_out, bodies, complete, strict=True):
        # Parsing never changes a Request after handing it out (no trailers
        # merged into its headers, no late upgrade flag).
        assert request_dict(obj) == request
        request["body"] = body.decode("latin-1")
        request["complete"] = done
        assert len(body) <= limits.max_body_bytes
    if parsed.error is not None:
        # A rejected connection parses nothing more, not even a clean request.
        assert conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == []
    return parsed


def ways(case: Case) -> dict[str, list[list[bytes]]]:
    return {
        "whole": [whole(case.data)],
        "bytewise": [bytewise(case.data)],
        "random": random_splits(case.data, case.id),
    }


# -- corpus tests -----------------------------------------------------------


def check_requests(case: Case, got: list[dict[str, Any]]) -> None:
    expected = case.meta.get("requests", [])
    assert [r["target"] for r in got] == [e["target"] for e in expected], case.meta["description"]
    for want, have in zip(expected, got, strict=True):
        for key, value in want.items():
            assert have[key] == value, f"{case.id}: {key} of {want['target']}"


def corpus_params(cases: Sequence[Case]) -> list[Any]:
    params = []
    for case in cases:
        marks = []
        if "xfail" in case.meta:
            marks.append(pytest.mark.xfail(strict=True, reason=case.meta["xfail"]))
        for way in ("whole", "bytewise", "random"):
            params.append(pytest.param(case, way, id=f"{case.id}-{way}", marks=marks))
    return params


@pytest.mark.parametrize(("case", "way"), corpus_params(VALID))
def test_valid_request(case: Case, way: str) -> None:
    for chunks in ways(case)[way]:
        parsed = feed(chunks, case.limits)
        assert parsed.error is None, f"{case.id}: {parsed.error}"
        assert all(r["complete"] for r in parsed.requests), case.id
        check_requests(case, parsed.requests)


@pytest.mark.parametrize(("case", "way"), corpus_params(INVALID))
def test_invalid_request(case: Case, way: str) -> None:
    for chunks in ways(case)[way]:
        parsed = feed(chunks, case.limits)
        assert parsed.error is not None, f"{case.id}: no error, got {parsed.requests}"
        assert parsed.error[0] == case.meta["status"], f"{case.id}: {parsed.error}"
        check_requests(case, parsed.requests)


@pytest.mark.parametrize("case", ALL_CASES, ids=[case.id for case in ALL_CASES])
def test_split_points_do_not_matter(case: Case) -> None:
    """Whole, byte by byte and random splits give the same events, whatever they are."""
    results = [
        feed(chunks, case.limits) for chunks_list in ways(case).values() for chunks in chunks_list
    ]
    first = results[0]
    for other in results[1:]:
        assert other.error == first.error
        assert len(other.requests) == len(first.requests)
        for a, b in zip(first.requests, other.requests, strict=True):
            if a["complete"] and b["complete"]:
                assert a == b
            else:
                # The request cut short by an error: how much body came out before
                # a 413 depends on the split, but it is always the same stream.
                assert {**a, "body": ""} == {**b, "body": ""}
                assert a["body"].startswith(b["body"]) or b["body"].startswith(a["body"])


# -- parsing tests beyond the corpus ------------------------------------------


def test_smuggling_attempt_yields_one_error_and_no_admin_request() -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    conn = ServerConnection()
    events = conn.receive_data(data)
    assert len(events) == 1 and isinstance(events[0], RequestError)
    assert events[0].status == 400
    # Whatever arrives later, in any piece, the connection stays dead.
    assert conn.receive_data(b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n") == []
    assert conn.receive_data(b"") == []


def test_nothing_parsed_after_upgrade() -> None:
    conn = ServerConnection()
    events = conn.receive_data(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00"
    )
    assert isinstance(events[0], Request) and events[0].upgrade
    assert events[1:] == [END_OF_MESSAGE]
    assert conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") == []


@pytest.mark.parametrize("cut", [None, 60, 75, 80, 83])
def test_an_upgrade_requests_body_is_read_though_the_parser_skips_it(cut: int | None) -> None:
    # llhttp skips an Upgrade request's body (an upgrade has none); the core
    # reads it, in any number of pieces, and the message ends after it. Before,
    # the request ended at its head: the app saw an empty body.
    data = (
        b"POST /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
        b"Content-Length: 6\r\n\r\nabcdefGET / HTTP/1.1\r\n\r\n"
    )
    pieces = [data] if cut is None else [data[:cut], data[cut:]]
    parsed = feed(pieces)
    assert parsed.error is None
    assert [
        (request["target"], request["body"], request["complete"]) for request in parsed.requests
    ] == [("/ws", "abcdef", True)]


def test_an_upgrade_request_with_a_chunked_body_is_refused() -> None:
    conn = ServerConnection()
    events = conn.receive_data(
        b"POST /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert isinstance(events[-1], RequestError) and events[-1].status == 501


def test_header_block_limit_holds_when_the_head_comes_in_one_read() -> None:
    # Default limits: 64 KiB of header fields sent in a single read.
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Fill: " + b"v" * 70_000 + b"\r\n\r\n"
    for chunks in (whole(head), [head[:100], head[100:]], [head[:40_000], head[40_000:]]):
        parsed = feed(chunks)
        assert parsed.error is not None and parsed.error[0] == 431
        assert parsed.requests == []


def test_header_limit_does_not_count_the_previous_body() -> None:
    # A big body and the start of the next head in one read are not a big head.
    limits = Limits(max_header_bytes=256)
    body = b"b" * 4000
    first = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4000\r\n\r\n" + body
    second = b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n"
    parsed = feed([first[:60], first[60:] + second[:10], second[10:]], limits)
    assert parsed.error is None
    assert [r["target"] for r in parsed.requests] == ["/a", "/b"]


def test_long_target_is_414_not_431() -> None:
    limits = Limits(max_target_bytes=100, max_header_bytes=150)
    data = b"GET /" + b"a" * 400 + b" HTTP/1.1\r\n\r\n"
    for chunks in (whole(data), bytewise(data), [data[:300], data[300:]]):
        parsed = feed(chunks, limits)
        assert parsed.error is not None and parsed.error[0] == 414


def test_receive_after_complete_request_waits_for_more() -> None:
    conn = ServerConnection()
    assert conn.receive_data(b"") == []
    assert conn.receive_data(b"GET / HT") == []
    events = conn.receive_data(b"TP/1.1\r\nHost: a\r\n\r\nGET /2")
    assert [type(e) for e in events] == [Request, type(END_OF_MESSAGE)]
    events = conn.receive_data(b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(events[0], Request) and events[0].target == b"/2"


@pytest.mark.parametrize(
    ("reads", "versions"),
    [
        # Pipelined, versions mixed in one read: the first is read off its request
        # line, the others from the parser.
        (
            [
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n"
            ],
            ["1.1", "1.0", "1.1"],
        ),
        (
            [b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"],
            ["1.0", "1.1"],
        ),
        # Empty lines before a request, first on the connection and later on it.
        ([b"\r\n\r\nGET / HTTP/1.0\r\n\r\n"], ["1.0"]),
        (
            [
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                b"\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            ],
            ["1.1", "1.0"],
        ),
        # Targets that hold what a version looks like, and other forms.
        ([b"GET /x?v=HTTP/1.1 HTTP/1.0\r\n\r\n"], ["1.0"]),
        ([b"GET /HTTP/1.1\r\n HTTP/1.0\r\n\r\n"], []),
        ([b"OPTIONS * HTTP/1.0\r\n\r\n"], ["1.0"]),
        ([b"GET http://a/HTTP/1.0 HTTP/1.1\r\nHost: a\r\n\r\n"], ["1.1"]),
        # A head in pieces, and one whose line ends in a bare LF (refused).
        ([b"GET / HT", b"TP/1.0\r\n\r\n"], ["1.0"]),
        ([b"GET / HTTP/1.0\nHost: HTTP/1.1\r\n\r\n"], []),
    ],
)
def test_each_requests_version_is_its_own(reads: list[bytes], versions: list[str]) -> None:
    conn = ServerConnection()
    events = [event for data in reads for event in conn.receive_data(data)]
    assert [event.http_version for event in events if isinstance(event, Request)] == versions


def test_a_closed_connection_parses_nothing_and_holds_no_cycle() -> None:
    conn = ServerConnection()
    events = conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTT")
    request = events[0]
    assert isinstance(request, Request)
    conn.close()
    assert conn.receive_data(b"P/1.1\r\nHost: a\r\n\r\n") == []
    # A response still in progress may go on being framed after the close: it
    # goes nowhere, and nothing raises.
    assert conn.encode_response(request, 200, [], b"ok") == b""
    assert conn.our_state == CLOSED
    gc.collect()
    gc.disable()
    try:
        del conn
        assert gc.collect() == 0  # the parser no longer calls back into it
    finally:
        gc.enable()


def test_request_header_lookup() -> None:
    (request, _) = ServerConnection().receive_data(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n"
    )
    assert isinstance(request, Request)
    assert request.header(b"x-dup") == b"1"
    assert request.header(b"missing") is None


# -- response framing ---------------------------------------------------------


@dataclass
class ParsedResponse:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    headers_complete: bool = False
    complete: bool = False
    keep_alive: bool = False

    def values(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


class _ResponseRecorder:
    def __init__(self, out: ParsedResponse) -> None:
        self.out = out
        self.parser: Any = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.out.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.out.headers_complete = True
        self.out.status = self.parser.get_status_code()
        self.out.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.out.body += body

    def on_message_complete(self) -> None:
        self.out.complete = True


def parse_response(raw: bytes) -> ParsedResponse:
    """Parse `raw` with httptools' response parser: it must be well-formed."""
    out = ParsedResponse()
    recorder = _ResponseRecorder(out)
    recorder.parser = httptools.HttpResponseParser(recorder)
    recorder.parser.feed_data(raw)
    assert out.headers_complete, raw
    return out


def answering(raw: bytes) -> tuple[ServerConnection, Request]:
    """A connection that has read the request in `raw`, and that request."""
    conn = ServerConnection()
    events = conn.receive_data(raw)
    assert isinstance(events[0], Request), events
    return conn, events[0]


GET11 = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
HEAD11 = b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
GET10 = b"GET / HTTP/1.0\r\n\r\n"
GET10_KEEP = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
GET11_CLOSE = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
DATE_RE = re.compile(rb"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$")


def head_of(raw: bytes) -> bytes:
    return raw[: raw.index(b"\r\n\r\n") + 4]


def test_encode_response_sets_content_length_and_body() -> None:
    conn, request = answering(GET11)
    raw = conn.encode_response(request, 200, [(b"content-type", b"text/plain")], b"hello")
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw.endswith(b"\r\n\r\nhello")
    resp = parse_response(raw)
    assert resp.status == 200 and resp.complete and resp.body == b"hello"
    assert resp.values(b"content-length") == [b"5"]
    assert resp.values(b"content-type") == [b"text/plain"]
    assert resp.values(b"transfer-encoding") == []
    assert resp.values(b"connection") == []
    assert resp.keep_alive and conn.keep_alive and conn.our_state == DONE


def test_encode_response_empty_body() -> None:
    conn, request = answering(GET11)
    raw = conn.encode_response(request, 200, [], b"")
    resp = parse_response(raw)
    assert resp.complete and resp.body == b"" and resp.values(b"content-length") == [b"0"]


def test_date_and_server_headers() -> None:
    conn, request = answering(GET11)
    raw = conn.encode_response(request, 200, [], b"x")
    resp = parse_response(raw)
    (date,) = resp.values(b"date")
    assert DATE_RE.match(date), date
    assert resp.values(b"server") == [b"squall"]


@given(st.floats(min_value=0, max_value=253402300799))  # to 9999-12-31 23:59:59
def test_imf_fixdate_is_what_email_formats(seconds: float) -> None:
    from email.utils import formatdate

    from squall.http.date import imf_fixdate

    assert imf_fixdate(seconds) == formatdate(int(seconds), usegmt=True).encode()


def test_head_gets_content_length_but_no_body() -> None:
    conn, request = answering(HEAD11)
    raw = conn.encode_response(request, 200, [], b"0123456789")
    assert raw == head_of(raw), "a HEAD response has no body bytes"
    resp = parse_response(raw)
    assert resp.values(b"content-length") == [b"10"]
    assert resp.body == b""
    # Streaming to HEAD: a head only, no chunks, no last chunk.
    conn, request = answering(HEAD11)
    raw = conn.start_response(request, 200, [])
    assert raw == head_of(raw)
    assert conn.encode_body(b"data") == b""
    assert conn.end_response() == b""


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    conn, request = answering(GET11)
    raw = conn.encode_response(request, status, [(b"Content-Length", b"3")], b"abc")
    assert raw == head_of(raw)
    resp = parse_response(raw)
    assert resp.status == status and resp.complete
    assert resp.values(b"content-length") == []
    assert resp.values(b"transfer-encoding") == []
    assert resp.keep_alive
    # Streaming: no chunked framing either.
    conn, request = answering(GET11)
    raw = conn.start_response(request, status, [])
    assert b"transfer-encoding" not in raw.lower() and b"content-length" not in raw.lower()
    assert conn.encode_body(b"abc") == b""
    assert conn.end_response() == b""
    assert parse_response(raw).complete


def test_start_response_without_length_is_chunked_on_http11() -> None:
    conn, request = answering(GET11)
    head = conn.start_response(request, 200, [(b"content-type", b"text/plain")])
    assert b"transfer-encoding: chunked" in head
    first = conn.encode_body(b"hello")
    assert first == b"5\r\nhello\r\n"
    second = conn.encode_body(b"x" * 26)
    assert second == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert conn.encode_body(b"") == b"", "an empty piece must not end the body"
    last = conn.end_response()
    assert last == b"0\r\n\r\n"
    resp = parse_response(head + first + second + last)
    assert resp.values(b"transfer-encoding") == [b"chunked"]
    assert resp.values(b"content-length") == []
    assert resp.complete and resp.body == b"hello" + b"x" * 26
    assert resp.keep_alive and conn.keep_alive


def test_start_response_with_content_length_is_raw() -> None:
    conn, request = answering(GET11)
    head = conn.start_response(request, 200, [(b"Content-Length", b"8")])
    assert b"transfer-encoding" not in head
    pieces = [conn.encode_body(b"1234"), conn.encode_body(b"5678")]
    assert pieces == [b"1234", b"5678"]
    assert conn.end_response() == b""
    resp = parse_response(head + b"".join(pieces))
    assert resp.values(b"content-length") == [b"8"]
    assert resp.values(b"transfer-encoding") == []
    assert resp.complete and resp.body == b"12345678"


def test_http10_without_length_closes() -> None:
    conn, request = answering(GET10)
    head = conn.start_response(request, 200, [])
    assert b"transfer-encoding" not in head and not conn.keep_alive
    body = conn.encode_body(b"until close")
    assert body == b"until close"
    assert conn.end_response() == b""
    resp = parse_response(head + body)
    assert resp.values(b"connection") == [b"close"]
    assert resp.values(b"transfer-encoding") == [] and resp.values(b"content-length") == []
    assert resp.body == b"until close" and not resp.keep_alive


def test_http10_keep_alive_request_with_length() -> None:
    conn, request = answering(GET10_KEEP)
    assert request.keep_alive  # the client's wish
    raw = conn.encode_response(request, 200, [], b"ok")
    resp = parse_response(raw)
    assert resp.values(b"connection") == [b"keep-alive"]
    assert resp.values(b"content-length") == [b"2"]
    assert conn.keep_alive and resp.complete and resp.body == b"ok"


def test_http10_keep_alive_request_streaming_without_length_closes() -> None:
    conn, request = answering(GET10_KEEP)
    head = conn.start_response(request, 200, [])
    assert not conn.keep_alive and b"transfer-encoding" not in head
    assert parse_response(head).values(b"connection") == [b"close"]


def test_http10_request_without_keep_alive_closes_even_with_length() -> None:
    conn, request = answering(GET10)
    resp = parse_response(conn.encode_response(request, 200, [], b"ok"))
    assert resp.values(b"connection") == [b"close"] and not conn.keep_alive


def test_request_connection_close_gives_connection_close() -> None:
    conn, request = answering(GET11_CLOSE)
    resp = parse_response(conn.encode_response(request, 200, [], b"ok"))
    assert resp.values(b"connection") == [b"close"]
    assert not resp.keep_alive and not conn.keep_alive


@pytest.mark.parametrize("value", [b"close", b"Close", b"keep-alive, close"])
def test_app_connection_close_ends_keep_alive(value: bytes) -> None:
    conn, request = answering(GET11)
    raw = conn.encode_response(request, 200, [(b"Connection", value)], b"bye")
    resp = parse_response(raw)
    assert not conn.keep_alive
    assert not resp.keep_alive
    assert resp.values(b"connection"), "the close is announced"
    assert all(b"close" in v.lower() for v in resp.values(b"connection"))
    assert resp.complete and resp.body == b"bye"


def test_app_framing_headers_are_replaced() -> None:
    conn, request = answering(GET11)
    raw = conn.encode_response(
        request,
        200,
        [(b"Content-Length", b"3"), (b"Transfer-Encoding", b"gzip"), (b"X-Kept", b"1")],
        b"abc",
    )
    resp = parse_response(raw)
    assert resp.values(b"content-length") == [b"3"]
    assert resp.values(b"transfer-encoding") == []
    assert resp.values(b"x-kept") == [b"1"]
    assert resp.complete and resp.body == b"abc"


def test_app_content_length_that_disagrees_with_the_body_is_refused() -> None:
    conn, request = answering(GET11)
    with pytest.raises(ResponseError, match="Content-Length"):
        conn.encode_response(request, 200, [(b"Content-Length", b"999")], b"abc")
    assert conn.our_state == IDLE


def test_app_transfer_encoding_is_not_doubled_when_streaming() -> None:
    conn, request = answering(GET11)
    head = conn.start_response(request, 200, [(b"Transfer-Encoding", b"chunked")])
    resp = parse_response(head + conn.encode_body(b"ab") + conn.end_response())
    assert resp.values(b"transfer-encoding") == [b"chunked"]
    assert resp.complete and resp.body == b"ab"


def test_app_content_length_not_a_number_is_refused() -> None:
    conn, request = answering(GET11)
    with pytest.raises(ResponseError, match="Content-Length"):
        conn.start_response(request, 200, [(b"Content-Length", b"lots")])
    assert conn.our_state == IDLE, "nothing was framed: a 500 may still take its place"


def test_app_headers_keep_order_and_repeats() -> None:
    headers = [(b"Set-Cookie", b"a=1"), (b"X-A", b"x"), (b"Set-Cookie", b"b=2")]
    conn, request = answering(GET11)
    resp = parse_response(conn.encode_response(request, 200, headers, b""))
    assert resp.values(b"set-cookie") == [b"a=1", b"b=2"]
    assert resp.values(b"x-a") == [b"x"]


def test_pipelined_responses_parse_back_to_back() -> None:
    conn = ServerConnection()
    first, _, second, _ = conn.receive_data(GET11 + GET11)
    assert isinstance(first, Request) and isinstance(second, Request)
    raw = conn.encode_response(first, 200, [], b"one")
    conn.start_next_cycle()
    raw += conn.start_response(second, 200, []) + conn.encode_body(b"two")
    raw += conn.end_response()
    bodies: list[bytes] = []

    class Recorder:
        def __init__(self) -> None:
            self.body = b""

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            bodies.append(self.body)
            self.body = b""

    httptools.HttpResponseParser(Recorder()).feed_data(raw)
    assert bodies == [b"one", b"two"]


@pytest.mark.parametrize(
    ("status", "reason"),
    [(400, "malformed request: Invalid header token"), (413, "request body too large"),
     (414, "request target too long"), (431, "too many request headers")],
)  # fmt: skip
def test_error_response_is_well_formed(status: int, reason: str) -> None:
    raw = error_response(status, reason)
    resp = parse_response(raw)
    assert resp.status == status and resp.complete
    assert resp.values(b"connection") == [b"close"] and not resp.keep_alive
    assert resp.values(b"content-length") == [str(len(resp.body)).encode()]
    assert resp.body.decode() == f"{status} {reason}\n"
    assert resp.values(b"server") == [b"squall"]
    assert len(resp.values(b"date")) == 1


def test_error_response_for_every_corpus_error() -> None:
    for case in INVALID:
        parsed = feed([case.data], case.limits)
        if parsed.error is None:
            continue  # an xfail case
        status, reason = parsed.error
        resp = parse_response(error_response(status, reason))
        assert resp.complete and resp.status == status and not resp.keep_alive


def test_continue_response() -> None:
    raw = continue_response()
    assert raw == b"HTTP/1.1 100 Continue\r\n\r\n"
    resp = parse_response(raw)
    assert resp.status == 100


def test_expect_continue_then_final_response() -> None:
    conn = ServerConnection()
    events = conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    )
    (request,) = events
    assert isinstance(request, Request) and request.expect_continue and request.body_expected
    assert conn.receive_data(b"abc") == [Data(b"abc"), END_OF_MESSAGE]
    raw = continue_response() + conn.encode_response(request, 201, [], b"made")
    statuses: list[int] = []
    parser: Any = None

    class Recorder:
        def on_headers_complete(self) -> None:
            statuses.append(parser.get_status_code())

    parser = httptools.HttpResponseParser(Recorder())
    parser.feed_data(raw)
    assert statuses == [100, 201]


# -- fuzzing ------------------------------------------------------------------

FUZZ_LIMITS = Limits(
    max_target_bytes=64, max_header_bytes=256, max_header_count=8, max_body_bytes=32
)
VALID_STREAMS = [case.data for case in VALID]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def mutated_request(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID_STREAMS)))
    interesting = st.sampled_from(
        [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x00", b"\xff", b"0", b"9", b"f", b";",
         b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n", b"\r\n\r\n", b"HTTP/1.1"]
    )  # fmt: skip
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        if op == "insert":
            data[pos:pos] = draw(st.one_of(interesting, st.binary(min_size=1, max_size=4)))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        else:
            end = min(len(data), pos + draw(st.integers(1, 40)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


def check_never_raises(data: bytes, cuts: list[int], limits: Limits) -> Parsed:
    # feed() checks the event grammar and the status set; any exception escaping
    # receive_data fails the test.
    return feed(split_at(data, cuts), limits)


FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ
@given(
    st.binary(max_size=512)
    | st.lists(st.sampled_from([b"GET / HTTP/1.1\r\n", b"\r\n", b"a: b"])).map(b"".join),
    st.lists(st.integers(0, 1 << 16), max_size=6),
    st.sampled_from([DEFAULT_LIMITS, FUZZ_LIMITS]),
)
def test_fuzz_random_bytes_never_raise(data: bytes, cuts: list[int], limits: Limits) -> None:
    check_never_raises(data, cuts, limits)


@FUZZ
@given(
    mutated_request(),
    st.lists(st.integers(0, 1 << 16), max_size=6),
    st.sampled_from([DEFAULT_LIMITS, FUZZ_LIMITS]),
)
def test_fuzz_mutated_requests_never_raise(data: bytes, cuts: list[int], limits: Limits) -> None:
    check_never_raises(data, cuts, limits)


@FUZZ
@given(mutated_request(), st.lists(st.integers(0, 1 << 16), min_size=1, max_size=6))
def test_fuzz_split_points_do_not_matter(data: bytes, cuts: list[int]) -> None:
    # Far below every default limit, so the result may not depend on the reads.
    # An unterminated head is held until its blank line (its parse cost stays
    # linear however it is split), so where the input stops inside one, what is
    # held may not have met the parser yet; the closing blank line sends it there.
    data += b"\r\n\r\n"
    assert feed([data]).comparable() == feed(split_at(data, cuts)).comparable()


# -- response headers an app gives --------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"x-evil", b"a\r\nset-cookie: stolen=1"),
        (b"x-evil", b"line\nbreak"),
        (b"x-evil", b"carriage\rreturn"),
        (b"x-evil\r\nset-cookie", b"1"),
        (b"x-evil\n", b"1"),
        (b"x-evil:", b"1"),
    ],
)
def test_headers_that_could_split_a_response_are_refused(name: bytes, value: bytes) -> None:
    with pytest.raises(ResponseError, match="invalid response header"):
        checked_headers([(b"content-type", b"text/plain"), (name, value)])


def test_ordinary_headers_pass_as_given() -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"location", b"https://example.com:8443/a?b=c#d"),  # ':' is fine in a value
        (b"x-empty", b""),
    ]
    assert checked_headers(headers) == headers
    assert checked_headers(tuple(headers)) == headers
