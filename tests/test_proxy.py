"""Who the client is behind a proxy: the PROXY protocol and forwarding headers.

Unit tests feed `parse_proxy_header` bytes (whole, byte by byte, broken) and
run the `make_forwarded` callback on a real `Request` in a stand-in cycle
(the callback touches only `client`, `scheme` and `request`). End-to-end
tests run real squall processes and talk to them over raw sockets and httpx;
the PROXY protocol ones also over TLS (the header in cleartext, then the `ssl`
module's handshake), and from 127.0.0.2, a loopback address outside the
default `--proxy-allow-from`.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import trustme

from squall.errors import UsageError
from squall.http.core import Request
from squall.http.cycle import RequestCycle
from squall.http.proxy_headers import make_forwarded, parse_forwarded, parse_node
from squall.http.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse_proxy_header,
)
from tests.h2_client import H2Client
from tests.service import Service, Services, free_port, wait_until, with_descriptor_limit

TIMEOUT = 5.0

# -- the PROXY protocol, sans-IO -------------------------------------------------------

V1_TCP4 = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n"


def v2(
    command: int = 0x21,
    family: int = 0x11,
    addresses: bytes = b"",
    tlvs: bytes = b"",
    length: int | None = None,
) -> bytes:
    payload = addresses + tlvs
    size = len(payload) if length is None else length
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", size) + payload


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + struct.pack("!HH", sport, dport)
    )


V2_TCP4 = v2(addresses=inet("203.0.113.5", "192.0.2.10", 40000, 8080))
V2_TCP6 = v2(family=0x21, addresses=inet6("2001:db8::5", "2001:db8::10", 40001, 443))
# A TLV (type 0x04 NOOP) after the addresses is skipped.
V2_TLV = v2(addresses=inet("203.0.113.6", "192.0.2.10", 1, 2), tlvs=b"\x04\x00\x03abc")


@pytest.mark.parametrize(
    ("header", "client", "server"),
    [
        (V1_TCP4, ("192.0.2.1", 56324), ("198.51.100.7", 443)),
        (V1_TCP6, ("2001:db8::1", 56324), ("2001:db8::2", 443)),
        (
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
            ("0.0.0.0", 0),
            ("255.255.255.255", 65535),
        ),
        (b"PROXY UNKNOWN\r\n", None, None),
        (b"PROXY UNKNOWN whatever is here\r\n", None, None),
        (V2_TCP4, ("203.0.113.5", 40000), ("192.0.2.10", 8080)),
        (V2_TCP6, ("2001:db8::5", 40001), ("2001:db8::10", 443)),
        (V2_TLV, ("203.0.113.6", 1), ("192.0.2.10", 2)),
        (v2(command=0x20), None, None),  # LOCAL: the proxy's own health check
        (v2(command=0x20, addresses=inet("1.1.1.1", "2.2.2.2", 1, 2)), None, None),
        (v2(family=0x00), None, None),  # PROXY over AF_UNSPEC: no address
        (v2(family=0x31, addresses=b"\x00" * 216), None, None),  # AF_UNIX
    ],
)
def test_valid_headers_whole_and_byte_by_byte(
    header: bytes, client: tuple[str, int] | None, server: tuple[str, int] | None
) -> None:
    http = b"GET / HTTP/1.1\r\n\r\n"
    assert parse_proxy_header(header + http) == ProxyHeader(len(header), client, server)
    assert parse_proxy_header(header) == ProxyHeader(len(header), client, server)
    for end in range(len(header)):
        assert parse_proxy_header(header[:end]) is None, header[:end]


def test_v1_header_of_the_maximum_length() -> None:
    address = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    header = f"PROXY TCP6 {address} {address} 65535 65535\r\n".encode()
    assert len(header) == 104
    parsed = parse_proxy_header(header)
    assert parsed is not None and parsed.client == (address, 65535)
    padded = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(padded) == 107
    assert parse_proxy_header(padded) == ProxyHeader(107, None, None)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP on a PROXY listener
        b"POST / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\n",  # LF without CR
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\rX",  # CR without LF
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324\r\n",  # a field missing
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443 1\r\n",  # one too many
        b"PROXY TCP4  192.0.2.1 198.51.100.7 56324 443\r\n",  # two spaces
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443 \r\n",  # trailing space
        b"PROXY TCP5 192.0.2.1 198.51.100.7 56324 443\r\n",
        b"PROXY tcp4 192.0.2.1 198.51.100.7 56324 443\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.7 56324 443\r\n",  # wrong family
        b"PROXY TCP6 192.0.2.1 2001:db8::2 56324 443\r\n",
        b"PROXY TCP4 192.0.2.256 198.51.100.7 56324 443\r\n",
        b"PROXY TCP4 192.0.2.01 198.51.100.7 56324 443\r\n",
        b"PROXY TCP4 localhost 198.51.100.7 56324 443\r\n",
        b"PROXY TCP6 fe80::1%eth0 2001:db8::2 56324 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 65536 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 -1 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 0443 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 +443 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 443 \xd9\xa3\r\n",  # non-ASCII digit
        b"PROXY \xff\xfe\r\n",
        b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n",  # 108 bytes
        b"PROXY UNKNOWN " + b"x" * 200,  # no end in sight
        b"\r\n\r\n\x00\r\nQUITX",  # a broken v2 signature
        v2(command=0x11),  # version 1 in a v2 header
        v2(command=0x31),  # version 3
        v2(command=0x22),  # command 2
        v2(length=2049),  # over the cap
        v2(family=0x12, addresses=inet("1.1.1.1", "2.2.2.2", 1, 2)),  # DGRAM
        v2(family=0x10, addresses=inet("1.1.1.1", "2.2.2.2", 1, 2)),  # INET, UNSPEC transport
        v2(family=0x41, addresses=b"\x00" * 12),  # family 4
        v2(family=0x11, addresses=b"\x00" * 11),  # short INET block
        v2(family=0x21, addresses=inet("1.1.1.1", "2.2.2.2", 1, 2)),  # short INET6 block
        v2(family=0x31, addresses=b"\x00" * 100),  # short UNIX block
    ],
)
def test_invalid_headers_raise(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(data)


def test_invalid_headers_fail_early() -> None:
    # A plain request is refused on its first byte, not after buffering it.
    for data in (b"G", b"PO", b"\r\n\r\n\x00\r\nX", b"\r\x00", V2_SIGNATURE + b"\x11"):
        with pytest.raises(ProxyProtocolError):
            parse_proxy_header(data)
    # An oversized v2 length is refused before the payload arrives.
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(v2(length=60000))


def test_empty_input_needs_more() -> None:
    assert parse_proxy_header(b"") is None


# -- forwarding headers, on a stand-in cycle ------------------------------------------


class FakeCycle:
    """What the forwarded callback uses of a RequestCycle."""

    def __init__(
        self,
        headers: list[tuple[bytes, bytes]],
        client: tuple[str, int] | None = ("127.0.0.1", 5000),
        scheme: str = "http",
    ) -> None:
        self.request = Request("GET", b"/", "1.1", headers, True)
        self.client = client
        self.scheme = scheme


def forward(
    allow_ips: str,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None = ("127.0.0.1", 5000),
    scheme: str = "http",
) -> FakeCycle:
    callback = make_forwarded(allow_ips)
    assert callback is not None
    cycle = FakeCycle(headers, client, scheme)
    callback(cast(RequestCycle, cycle))
    return cycle


def host_of(cycle: FakeCycle) -> list[bytes]:
    return [value for name, value in cycle.request.headers if name == b"host"]


def test_nothing_trusted_means_no_callback() -> None:
    assert make_forwarded("") is None
    assert make_forwarded("  ") is None


@pytest.mark.parametrize("entry", ["localhost", "10.0.0.0/33", "1.2.3", "10.0.0.1;10.0.0.2"])
def test_invalid_allow_list_is_a_usage_error(entry: str) -> None:
    with pytest.raises(UsageError, match="forwarded-allow-ips"):
        make_forwarded(f"127.0.0.1,{entry}")


def test_x_forwarded_headers_from_a_trusted_peer() -> None:
    cycle = forward(
        "127.0.0.1",
        [
            (b"host", b"internal:8000"),
            (b"x-forwarded-for", b"203.0.113.9"),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-host", b"example.com"),
        ],
    )
    assert cycle.client == ("203.0.113.9", 0)
    assert cycle.scheme == "https"
    assert host_of(cycle) == [b"example.com"]


def test_headers_from_an_untrusted_peer_are_ignored() -> None:
    headers = [
        (b"host", b"internal:8000"),
        (b"x-forwarded-for", b"203.0.113.9"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"example.com"),
        (b"forwarded", b"for=203.0.113.9;proto=https"),
    ]
    cycle = forward("10.0.0.1, 192.168.0.0/16", list(headers))
    assert cycle.client == ("127.0.0.1", 5000)
    assert cycle.scheme == "http"
    assert cycle.request.headers == headers


@pytest.mark.parametrize(
    ("allow", "peer"),
    [
        ("127.0.0.0/8", "127.0.0.1"),
        ("10.0.0.1,127.0.0.1", "127.0.0.1"),
        ("*", "198.51.100.1"),
        ("::1", "::1"),
        ("2001:db8::/32", "2001:db8::7"),
        ("127.0.0.1", "::ffff:127.0.0.1"),  # a v4 peer on a dual-stack socket
    ],
)
def test_trusted_peers(allow: str, peer: str) -> None:
    cycle = forward(allow, [(b"x-forwarded-for", b"203.0.113.9")], client=(peer, 1))
    assert cycle.client == ("203.0.113.9", 0)


def test_unix_socket_peer_is_trusted() -> None:
    cycle = forward("10.0.0.1", [(b"x-forwarded-for", b"203.0.113.9")], client=None)
    assert cycle.client == ("203.0.113.9", 0)


@pytest.mark.parametrize(
    ("value", "client"),
    [
        # The right-most hop that is not a trusted proxy is the client; what
        # the client wrote itself (the left part) is never believed.
        (b"1.1.1.1, 203.0.113.9", ("203.0.113.9", 0)),
        (b"1.1.1.1, 203.0.113.9, 10.0.0.2, 10.0.0.3", ("203.0.113.9", 0)),
        (b"10.0.0.5, 10.0.0.2", ("10.0.0.5", 0)),  # all trusted: the left-most
        (b" 203.0.113.9 ,, ", ("203.0.113.9", 0)),
        (b"[2001:db8::9]:4711", ("2001:db8::9", 4711)),
        (b"2001:db8::9", ("2001:db8::9", 0)),
        (b"203.0.113.9:8080", ("203.0.113.9", 8080)),
        (b"unknown", ("127.0.0.1", 5000)),  # not an address: keep the peer
        (b"1.1.1.1, garbage", ("127.0.0.1", 5000)),  # the walk stops at garbage
        (b"1.1.1.1, 203.0.113.9:99999", ("127.0.0.1", 5000)),
        (b"", ("127.0.0.1", 5000)),
    ],
)
def test_x_forwarded_for_walk(value: bytes, client: tuple[str, int]) -> None:
    cycle = forward("127.0.0.1, 10.0.0.0/8", [(b"x-forwarded-for", value)])
    assert cycle.client == client


def test_several_x_forwarded_for_headers_form_one_list() -> None:
    cycle = forward(
        "127.0.0.1, 10.0.0.0/8",
        [(b"x-forwarded-for", b"1.1.1.1, 203.0.113.9"), (b"x-forwarded-for", b"10.0.0.2")],
    )
    assert cycle.client == ("203.0.113.9", 0)


@pytest.mark.parametrize(
    ("xff", "proto", "scheme"),
    [
        (None, b"https", "https"),
        (None, b"HTTPS", "https"),
        (None, b"wss", "https"),
        (None, b"ws", "http"),
        (None, b"ftp", "http"),  # not a scheme we know: ignored
        (None, b"https, http", "http"),  # the last value: our trusted peer's
        (b"203.0.113.9, 10.0.0.2", b"https, http", "https"),  # one trusted hop skipped
        (b"203.0.113.9", b"https, http", "http"),
        (b"203.0.113.9, 10.0.0.2, 10.0.0.3", b"https", "https"),  # fewer: the left-most
    ],
)
def test_x_forwarded_proto(xff: bytes | None, proto: bytes, scheme: str) -> None:
    headers = [(b"x-forwarded-proto", proto)]
    if xff is not None:
        headers.append((b"x-forwarded-for", xff))
    assert forward("127.0.0.1, 10.0.0.0/8", headers).scheme == scheme


@pytest.mark.parametrize(
    ("value", "host"),
    [
        (b"example.com", b"example.com"),
        (b"example.com:8443", b"example.com:8443"),
        (b"[2001:db8::1]:8443", b"[2001:db8::1]:8443"),
        (b"evil.example, example.com", b"example.com"),
        (b"bad host", b"internal"),
        (b"example.com/path", b"internal"),
        (b"example.com:port", b"internal"),
        (b"ex\xe4mple.com", b"internal"),
        (b"", b"internal"),
    ],
)
def test_x_forwarded_host(value: bytes, host: bytes) -> None:
    cycle = forward("127.0.0.1", [(b"host", b"internal"), (b"x-forwarded-host", value)])
    assert host_of(cycle) == [host]


def test_x_forwarded_host_added_when_the_request_had_none() -> None:
    cycle = forward("127.0.0.1", [(b"x-forwarded-host", b"example.com")])
    assert host_of(cycle) == [b"example.com"]


@pytest.mark.parametrize(
    ("value", "client", "scheme", "host"),
    [
        (b"for=203.0.113.9", ("203.0.113.9", 0), "http", b"internal"),
        (
            b'for="[2001:db8:cafe::17]:4711";proto=https;host=example.org',
            ("2001:db8:cafe::17", 4711),
            "https",
            b"example.org",
        ),
        (b'For="203.0.113.9:80";PROTO=HTTPS', ("203.0.113.9", 80), "https", b"internal"),
        (b"for=192.0.2.43, for=203.0.113.9", ("203.0.113.9", 0), "http", b"internal"),
        # Trusted hops are skipped; the element of the chosen hop gives proto and host.
        (
            b"for=1.1.1.1;proto=http;host=evil, for=203.0.113.9;proto=https;host=good,"
            b" for=10.0.0.2;proto=http;host=internal2",
            ("203.0.113.9", 0),
            "https",
            b"good",
        ),
        (b"for=10.0.0.2;proto=https, for=10.0.0.3", ("10.0.0.2", 0), "https", b"internal"),
        # Obfuscated or unknown: the walk ends there and the client stays the peer.
        (b"for=_hidden;proto=https", ("127.0.0.1", 5000), "https", b"internal"),
        (b'for="_hidden:_port"', ("127.0.0.1", 5000), "http", b"internal"),
        (b"for=unknown", ("127.0.0.1", 5000), "http", b"internal"),
        (b"for=1.1.1.1, for=unknown", ("127.0.0.1", 5000), "http", b"internal"),
        (b'for="203.0.113.9:_abc"', ("203.0.113.9", 0), "http", b"internal"),
        (b"proto=https", ("127.0.0.1", 5000), "https", b"internal"),
        (b'for="\\"quoted\\""', ("127.0.0.1", 5000), "http", b"internal"),
        (b"for=203.0.113.9;proto=gopher", ("203.0.113.9", 0), "http", b"internal"),
        (b'for=203.0.113.9;host="bad host"', ("203.0.113.9", 0), "http", b"internal"),
    ],
)
def test_forwarded(value: bytes, client: tuple[str, int], scheme: str, host: bytes) -> None:
    cycle = forward("127.0.0.1, 10.0.0.0/8", [(b"host", b"internal"), (b"forwarded", value)])
    assert (cycle.client, cycle.scheme, host_of(cycle)) == (client, scheme, [host])


def test_forwarded_wins_over_x_forwarded() -> None:
    cycle = forward(
        "127.0.0.1",
        [
            (b"host", b"internal"),
            (b"x-forwarded-for", b"198.51.100.1"),
            (b"x-forwarded-proto", b"http"),
            (b"x-forwarded-host", b"x.example"),
            (b"forwarded", b"for=203.0.113.9;proto=https"),
        ],
    )
    assert (cycle.client, cycle.scheme, host_of(cycle)) == (
        ("203.0.113.9", 0),
        "https",
        [b"internal"],  # the X- headers are not mixed in
    )


@pytest.mark.parametrize(
    "value",
    [
        b"for=203.0.113.9;for=1.1.1.1",  # a parameter twice in one element
        b"for",
        b"for=",
        b"=1.1.1.1",
        b'for="203.0.113.9',  # unterminated quote
        b"for=203.0.113.9 proto=https",
        b"for=a\x00b",
        b",,,",
        b"",
    ],
)
def test_malformed_forwarded_falls_back_to_x_forwarded(value: bytes) -> None:
    cycle = forward(
        "127.0.0.1",
        [(b"forwarded", value), (b"x-forwarded-for", b"198.51.100.1")],
    )
    assert cycle.client == ("198.51.100.1", 0)


def test_parse_forwarded_syntax() -> None:
    assert parse_forwarded('for=192.0.2.60;proto=http;by=203.0.113.43, for="[::1]"') == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"},
        {"for": "[::1]"},
    ]
    assert parse_forwarded("for=1.2.3.4 ; proto=https ,for=5.6.7.8") == [
        {"for": "1.2.3.4", "proto": "https"},
        {"for": "5.6.7.8"},
    ]
    assert parse_forwarded('host="a\\"b"') == [{"host": 'a"b'}]
    assert parse_forwarded('for="1,2";proto=http') == [{"for": "1,2", "proto": "http"}]
    assert parse_forwarded("for=1.2.3.4;") == [{"for": "1.2.3.4"}]


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("192.0.2.1", ("192.0.2.1", 0)),
        ("192.0.2.1:0", ("192.0.2.1", 0)),
        ("192.0.2.1:65535", ("192.0.2.1", 65535)),
        ("[2001:DB8::1]", ("2001:db8::1", 0)),
        ("[2001:db8::1]:_obf", ("2001:db8::1", 0)),
        ("192.0.2.1:65536", None),
        ("192.0.2.1:", None),
        ("[192.0.2.1]", None),  # brackets hold IPv6 only
        ("[2001:db8::1", None),
        ("[2001:db8::1]80", None),
        ("[fe80::1%eth0]", None),
        ("2001:db8::1:80:x", None),
        ("_hidden", None),
        ("unknown", None),
        ("", None),
    ],
)
def test_parse_node(text: str, node: tuple[str, int] | None) -> None:
    assert parse_node(text) == node


def test_no_exception_on_hostile_input() -> None:
    callback = make_forwarded("*")
    assert callback is not None
    junk = [b"\xff\xfe", b'"', b"[", b"]", b":", b";", b",", b"=", b"\\", b"%", b"_"]
    for first in junk:
        for second in junk:
            value = first + b"1.2.3.4" + second
            for name in (
                b"forwarded",
                b"x-forwarded-for",
                b"x-forwarded-proto",
                b"x-forwarded-host",
            ):
                cycle = FakeCycle([(name, value), (name, b"for=" + value)])
                callback(cast(RequestCycle, cycle))


# -- end to end: real squall processes ------------------------------------------------


@dataclass
class Server:
    service: Service
    port: int
    unix: Path | None = None
    metrics_port: int | None = None
    ca_file: Path | None = None


def serving(
    tmp_path_factory: pytest.TempPathFactory,
    app: str,
    *options: str,
    unix: bool = False,
    metrics_port: int | None = None,
    ca_file: Path | None = None,
) -> Iterator[Server]:
    """A module's server: one worker serving `app` with `options`, stopped by PID at the end."""
    port = free_port()
    base = tmp_path_factory.mktemp("proxy")
    binds = ["--bind", f"127.0.0.1:{port}"]
    path = None
    if unix:
        path = base / "squall.sock"
        binds += ["--bind", f"unix:{path}"]
    service = Service(
        [sys.executable, "-m", "squall", app, *binds, "--workers", "1", *options],
        base / "squall.log",
    )
    try:
        service.wait_for_port(port)
        service.wait_for_workers(1)
        yield Server(service, port, path, metrics_port, ca_file)
    finally:
        service.stop()


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(
        tmp_path_factory,
        "tests.apps.echo_client:app",
        "--forwarded-allow-ips",
        "127.0.0.1",
    )


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(
        tmp_path_factory,
        "tests.apps.echo_client:app",
        "--forwarded-allow-ips",
        "10.0.0.1",
        unix=True,
    )


@pytest.fixture(scope="module")
def trusted_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(
        tmp_path_factory,
        "tests.apps.echo_client:web_app",
        "--forwarded-allow-ips",
        "127.0.0.0/8, ::1",
    )


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # PROXY headers are read from the default peers, 127.0.0.1 and ::1. The
    # header's client is trusted for forwarding headers when it is in 10/8.
    metrics_port = free_port()
    yield from serving(
        tmp_path_factory,
        "tests.apps.echo_client:app",
        "--proxy-protocol",
        "--forwarded-allow-ips",
        "10.0.0.0/8",
        "--header-timeout",
        "1",
        "--metrics",
        f"127.0.0.1:{metrics_port}",
        unix=True,
        metrics_port=metrics_port,
    )


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # PROXY headers are read from 10.9.9.9 only; the test client is 127.0.0.1.
    yield from serving(
        tmp_path_factory,
        "tests.apps.echo_client:app",
        "--proxy-protocol",
        "--proxy-allow-from",
        "10.9.9.9",
        "--forwarded-allow-ips",
        "127.0.0.1",
    )


@pytest.fixture(scope="module")
def ca_file_and_pem(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A test CA's certificate, and the server's chain and key in one PEM file."""
    directory = tmp_path_factory.mktemp("proxy-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = directory / "ca.pem"
    pem = directory / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    return ca_file, pem


@pytest.fixture(scope="module")
def tls_proxied(
    tmp_path_factory: pytest.TempPathFactory, ca_file_and_pem: tuple[Path, Path]
) -> Iterator[Server]:
    yield from serving(
        tmp_path_factory,
        "tests.apps.echo_client:app",
        "--proxy-protocol",
        "--certfile",
        str(ca_file_and_pem[1]),
        ca_file=ca_file_and_pem[0],
    )


def get_json(server: Server, headers: dict[str, str] | None = None) -> Any:
    response = httpx.get(f"http://127.0.0.1:{server.port}/", headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


class Reader:
    """Responses with a Content-Length, one after another, from one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.deadline = time.monotonic() + TIMEOUT

    def _more(self) -> None:
        assert time.monotonic() < self.deadline, self.buffer
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed after {self.buffer!r}"
        self.buffer += chunk

    def response(self) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            self._more()
            rest = self.buffer.partition(b"\r\n\r\n")[2]
        self.buffer = rest[length:]
        return head, rest[:length]


def exchange(port: int, *pieces: bytes, requests: int = 1) -> list[Any]:
    """Send `pieces` (a short pause between them) on one connection; the JSON answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        for index, piece in enumerate(pieces):
            if index:
                time.sleep(0.05)
            sock.sendall(piece)
        reader = Reader(sock)
        answers = []
        for _ in range(requests):
            head, body = reader.response()
            assert head.startswith(b"HTTP/1.1 200 "), head
            answers.append(json.loads(body))
        return answers


def closed_without_answer(port: int, data: bytes) -> bool:
    """True when the server closes the connection after `data` without a byte in reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        try:
            return sock.recv(65536) == b""
        except ConnectionResetError:
            return True


GET = b"GET / HTTP/1.1\r\nHost: squall.test\r\n\r\n"


def test_e2e_trusted_proxy_x_forwarded(trusted: Server) -> None:
    answer = get_json(
        trusted,
        {
            "X-Forwarded-For": "1.1.1.1, 203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "example.com",
        },
    )
    assert answer == {"client": ["203.0.113.9", 0], "scheme": "https", "host": "example.com"}


def test_e2e_trusted_proxy_forwarded_wins(trusted: Server) -> None:
    answer = get_json(
        trusted,
        {
            "Forwarded": 'for="[2001:db8::17]:4711";proto=https;host=example.org',
            "X-Forwarded-For": "198.51.100.1",
        },
    )
    assert answer == {"client": ["2001:db8::17", 4711], "scheme": "https", "host": "example.org"}


def test_e2e_without_headers_the_peer_is_the_client(trusted: Server) -> None:
    answer = get_json(trusted)
    assert answer["client"][0] == "127.0.0.1" and answer["client"][1] > 0
    assert answer["scheme"] == "http"
    assert answer["host"] == f"127.0.0.1:{trusted.port}"


def test_e2e_malformed_values_are_ignored(trusted: Server) -> None:
    answer = get_json(
        trusted,
        {
            "X-Forwarded-For": "not an address",
            "X-Forwarded-Proto": "gopher",
            "X-Forwarded-Host": "bad host/x",
            "Forwarded": 'for="unterminated',
        },
    )
    assert answer["client"][0] == "127.0.0.1"
    assert answer["scheme"] == "http"
    assert answer["host"] == f"127.0.0.1:{trusted.port}"


def test_e2e_each_request_on_a_connection_stands_alone(trusted: Server) -> None:
    first = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.1\r\n\r\n"
    answers = exchange(trusted.port, first + GET, requests=2)
    assert answers[0]["client"] == ["203.0.113.1", 0]
    assert answers[1]["client"][0] == "127.0.0.1"  # the next request did not inherit it


def test_e2e_untrusted_peer_headers_ignored(untrusted: Server) -> None:
    answer = get_json(
        untrusted,
        {
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "example.com",
            "Forwarded": "for=203.0.113.10;proto=https;host=example.org",
        },
    )
    assert answer["client"][0] == "127.0.0.1"
    assert answer["scheme"] == "http"
    assert answer["host"] == f"127.0.0.1:{untrusted.port}"


def test_e2e_unix_socket_peer_is_trusted(untrusted: Server) -> None:
    assert untrusted.unix is not None
    transport = httpx.HTTPTransport(uds=str(untrusted.unix))
    with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
        response = client.get(
            "http://squall.test/",
            headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"},
        )
    assert response.json() == {
        "client": ["203.0.113.9", 0],
        "scheme": "https",
        "host": "squall.test",
    }


def test_e2e_squall_application_remote_ip(trusted_web: Server) -> None:
    answer = get_json(
        trusted_web,
        {
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "w.example",
        },
    )
    assert answer == {"remote_ip": "203.0.113.7", "protocol": "https", "host": "w.example"}
    answer = get_json(trusted_web)
    assert answer["remote_ip"] == "127.0.0.1"
    assert answer["protocol"] == "http"


# -- the PROXY protocol, end to end ------------------------------------------------------------
#
# The header is read before anything else (before TLS too), and only from the
# peers in --proxy-allow-from (default 127.0.0.1 and ::1). The forwarding
# headers are then judged on the client the PROXY header names; from a peer
# whose header is not read, on the peer itself.


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A connection from `source`: 127.0.0.2 is loopback too, but not in the default list."""
    return socket.create_connection(("127.0.0.1", port), TIMEOUT, source_address=(source, 0))


def status_of(port: int, data: bytes, source: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """The status line and body of the one answer to `data`."""
    with connect(port, source) as sock:
        sock.sendall(data)
        head, body = Reader(sock).response()
    return head.partition(b"\r\n")[0], body


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes `sock` within `seconds`, without a byte in reply."""
    sock.settimeout(seconds)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize(
    ("header", "client"),
    [
        (V1_TCP4, ["192.0.2.1", 56324]),
        (V1_TCP6, ["2001:db8::1", 56324]),
        (V2_TCP4, ["203.0.113.5", 40000]),
        (V2_TCP6, ["2001:db8::5", 40001]),
        (V2_TLV, ["203.0.113.6", 1]),
    ],
    ids=["v1-tcp4", "v1-tcp6", "v2-tcp4", "v2-tcp6", "v2-tlv"],
)
def test_e2e_proxy_protocol_gives_the_client(
    proxied: Server, header: bytes, client: list[Any]
) -> None:
    # Whole, with the request in the same packet; then in pieces, split inside the header.
    assert exchange(proxied.port, header + GET)[0]["client"] == client
    assert exchange(proxied.port, header[:7], header[7:], GET)[0]["client"] == client
    # The header comes once; every request on the connection has its client.
    answers = exchange(proxied.port, header + GET + GET, requests=2)
    assert [answer["client"] for answer in answers] == [client, client]


@pytest.mark.parametrize(
    "header", [b"PROXY UNKNOWN\r\n", v2(command=0x20)], ids=["v1-unknown", "v2-local"]
)
def test_e2e_proxy_protocol_without_address_keeps_the_peer(proxied: Server, header: bytes) -> None:
    assert exchange(proxied.port, header + GET)[0]["client"][0] == "127.0.0.1"


def test_e2e_proxy_protocol_then_trusted_forwarding_headers(proxied: Server) -> None:
    # The PROXY header says the client is 10.1.2.3, a trusted proxy: its headers
    # apply, although the real peer (127.0.0.1) is not in --forwarded-allow-ips.
    request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.44\r\n\r\n"
    proxy = b"PROXY TCP4 10.1.2.3 192.0.2.10 5555 80\r\n"
    assert exchange(proxied.port, proxy + request)[0]["client"] == ["203.0.113.44", 0]
    # From a client outside 10/8 the same header is ignored.
    proxy = b"PROXY TCP4 198.51.100.3 192.0.2.10 5555 80\r\n"
    assert exchange(proxied.port, proxy + request)[0]["client"] == ["198.51.100.3", 5555]


@pytest.mark.parametrize(
    "data",
    [
        GET,  # no header at all
        b"PROXY TCP4 999.0.2.1 198.51.100.7 56324 443\r\n" + GET,
        v2(command=0x11) + GET,
        b"PROXY UNKNOWN " + b"x" * 200,
    ],
    ids=["plain-http", "bad-v1-address", "bad-v2-version", "overlong-v1"],
)
def test_e2e_connection_without_a_valid_header_is_closed(proxied: Server, data: bytes) -> None:
    # From an allowed peer the header is required: a client that could skip it could forge it.
    workers = proxied.service.workers()
    assert closed_without_answer(proxied.port, data)
    # The worker lives on and serves the next, well-behaved connection.
    assert exchange(proxied.port, V1_TCP4 + GET)[0]["client"] == ["192.0.2.1", 56324]
    assert proxied.service.workers() == workers
    wait_until(lambda: "closing connection from" in proxied.service.output(), timeout=TIMEOUT)


def test_e2e_proxy_protocol_on_a_unix_socket(proxied: Server) -> None:
    # A Unix socket's peer has no address: it is always allowed.
    assert proxied.unix is not None
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(proxied.unix))
        sock.sendall(V2_TCP6 + GET)
        answer = json.loads(Reader(sock).response()[1])
    assert answer["client"] == ["2001:db8::5", 40001]


def test_e2e_silent_or_slow_header_is_closed_after_the_header_timeout(proxied: Server) -> None:
    # --header-timeout 1: nothing at all, or half a header, and the connection is closed.
    with connect(proxied.port) as silent, connect(proxied.port) as slow:
        slow.sendall(V1_TCP4[:10])
        started = time.monotonic()
        assert closed_within(silent, 4.0)
        assert closed_within(slow, 4.0)
        assert 0.8 < time.monotonic() - started < 4.0
    assert exchange(proxied.port, V2_TCP4 + GET)[0]["client"] == ["203.0.113.5", 40000]


def open_connections(server: Server) -> int:
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=TIMEOUT).text
    for line in text.splitlines():
        if line.startswith("squall_connections_open "):
            return int(float(line.split()[1]))
    raise AssertionError(text)


def test_e2e_connections_are_counted_while_their_header_is_read(proxied: Server) -> None:
    wait_until(lambda: open_connections(proxied) == 0, timeout=TIMEOUT)
    with connect(proxied.port) as waiting:
        waiting.sendall(V1_TCP4[:10])  # held by the worker, its header incomplete
        wait_until(lambda: open_connections(proxied) == 1, timeout=TIMEOUT)
        waiting.sendall(V1_TCP4[10:] + GET)  # then served, and still one connection
        Reader(waiting).response()
        assert open_connections(proxied) == 1
    wait_until(lambda: open_connections(proxied) == 0, timeout=TIMEOUT)
    with connect(proxied.port) as dropped:
        dropped.sendall(b"PROXY TCP4 nonsense\r\n")  # let go of without being served
        assert closed_within(dropped, TIMEOUT)
    wait_until(lambda: open_connections(proxied) == 0, timeout=TIMEOUT)


def test_e2e_peer_outside_the_default_list_is_a_plain_client(proxied: Server) -> None:
    # 127.0.0.2 is not in the default --proxy-allow-from (127.0.0.1, ::1).
    status, body = status_of(proxied.port, V1_TCP4 + GET, source="127.0.0.2")
    assert status.startswith(b"HTTP/1.1 400 "), status
    assert b"192.0.2.1" not in body
    with connect(proxied.port, source="127.0.0.2") as sock:
        sock.sendall(GET)
        assert json.loads(Reader(sock).response()[1])["client"][0] == "127.0.0.2"


@pytest.mark.parametrize("header", [V1_TCP4, V2_TCP4], ids=["v1", "v2"])
def test_e2e_proxy_header_from_a_peer_not_allowed_is_a_bad_request(
    restricted: Server, header: bytes
) -> None:
    # --proxy-allow-from 10.9.9.9: from 127.0.0.1, a PROXY header is not read.
    # It is a malformed request: 400, and the app never runs, let alone sees the claim.
    status, body = status_of(restricted.port, header + GET)
    assert status.startswith(b"HTTP/1.1 400 "), status
    assert b"192.0.2.1" not in body and b"203.0.113.5" not in body


def test_e2e_plain_http_from_a_peer_not_allowed(restricted: Server) -> None:
    answers = exchange(restricted.port, GET + GET, requests=2)
    assert [answer["client"][0] for answer in answers] == ["127.0.0.1", "127.0.0.1"]
    # Its forwarding headers are judged on the peer itself: 127.0.0.1 is trusted.
    request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.44\r\n\r\n"
    assert exchange(restricted.port, request)[0]["client"] == ["203.0.113.44", 0]
    assert "closing connection from" not in restricted.service.output()


def tls_client(server: Server) -> ssl.SSLContext:
    assert server.ca_file is not None
    return ssl.create_default_context(cafile=str(server.ca_file))


@pytest.mark.parametrize(
    ("pieces", "client"),
    [
        ([V1_TCP4], ["192.0.2.1", 56324]),
        ([V1_TCP6[:9], V1_TCP6[9:]], ["2001:db8::1", 56324]),
        ([V2_TCP4[:5], V2_TCP4[5:17], V2_TCP4[17:]], ["203.0.113.5", 40000]),
    ],
    ids=["v1", "v1-split", "v2-split"],
)
def test_e2e_proxy_header_before_tls(
    tls_proxied: Server, pieces: list[bytes], client: list[Any]
) -> None:
    # What an L4 load balancer does: the header in cleartext, then the client's TLS.
    with connect(tls_proxied.port) as raw:
        for index, piece in enumerate(pieces):
            if index:
                time.sleep(0.05)
            raw.sendall(piece)
        with tls_client(tls_proxied).wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(GET + GET)
            reader = Reader(tls)
            answers = [json.loads(reader.response()[1]) for _ in range(2)]
    assert [answer["client"] for answer in answers] == [client, client]
    assert answers[0]["scheme"] == "https"


def test_e2e_tls_from_a_peer_not_allowed_needs_no_header(tls_proxied: Server) -> None:
    with (
        connect(tls_proxied.port, source="127.0.0.2") as raw,
        tls_client(tls_proxied).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(GET)
        answer = json.loads(Reader(tls).response()[1])
    assert answer["client"][0] == "127.0.0.2"
    assert answer["scheme"] == "https"


def test_e2e_tls_without_the_header_from_an_allowed_peer_is_closed(tls_proxied: Server) -> None:
    with connect(tls_proxied.port) as raw, pytest.raises((ssl.SSLError, OSError)):
        tls_client(tls_proxied).wrap_socket(raw, server_hostname="localhost")
    wait_until(lambda: "closing connection from" in tls_proxied.service.output(), timeout=TIMEOUT)
    assert tls_proxied.service.workers()


@pytest.fixture(scope="module")
def h2c_proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(
        tmp_path_factory,
        "tests.apps.echo_client:app",
        "--proxy-protocol",
        "--h2c",
    )


def test_e2e_proxy_header_then_http2_prior_knowledge(h2c_proxied: Server) -> None:
    # The header first, then the h2c preface: every stream's client is the header's.
    with connect(h2c_proxied.port) as raw:
        raw.sendall(V1_TCP4)
        with H2Client(h2c_proxied.port, sock=raw, timeout=TIMEOUT) as client:
            streams = [client.get("/"), client.get("/")]
    answers = [json.loads(bytes(stream.body)) for stream in streams]
    assert [stream.status for stream in streams] == [200, 200]
    assert [answer["client"] for answer in answers] == [["192.0.2.1", 56324]] * 2
    assert answers[0]["scheme"] == "http"


def test_e2e_proxy_header_then_http2_over_tls(tls_proxied: Server) -> None:
    # The header in cleartext, then TLS whose ALPN chooses h2.
    with connect(tls_proxied.port) as raw:
        raw.sendall(V1_TCP4)
        with H2Client(
            tls_proxied.port, tls=tls_client(tls_proxied), sock=raw, timeout=TIMEOUT
        ) as client:
            stream = client.get("/")
    answer = json.loads(bytes(stream.body))
    assert stream.status == 200
    assert answer["client"] == ["192.0.2.1", 56324]
    assert answer["scheme"] == "https"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_e2e_out_of_file_descriptors_is_logged_once_without_spinning(
    services: Services,
) -> None:
    # A worker with 64 file descriptors, and more connections held (each waiting
    # for its header) than it can take: accept fails with EMFILE.
    port = free_port()
    service = services.start(
        [
            *with_descriptor_limit(64),
            *("-m", "squall", "tests.apps.echo_client:app"),
            *("--bind", f"127.0.0.1:{port}", "--workers", "1"),
            *("--proxy-protocol", "--header-timeout", "30"),
            *("--max-connections", "1000"),  # more than 64 descriptors allow: EMFILE comes first
        ]
    )
    service.wait_for_port(port)
    (worker,) = service.wait_for_workers(1)
    held = []
    try:
        for _ in range(80):
            held.append(connect(port))
        service.wait_for_log("cannot accept connections", timeout=TIMEOUT)
        before = cpu_seconds(worker)
        time.sleep(1.5)  # three retries
        assert cpu_seconds(worker) - before < 0.5  # not spinning on the listening socket
        assert service.output().count("cannot accept connections") == 1
    finally:
        for sock in held:
            sock.close()
    # With descriptors free again, it accepts again.
    wait_until(lambda: served(port), TIMEOUT)


def served(port: int) -> bool:
    try:
        return bool(exchange(port, V1_TCP4 + GET)[0]["client"] == ["192.0.2.1", 56324])
    except (OSError, AssertionError):
        return False
