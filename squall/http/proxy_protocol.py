"""The PROXY protocol (HAProxy), versions 1 and 2: who the client really is.

A load balancer that forwards TCP (not HTTP) puts one header in front of the
connection's bytes; `parse_proxy_header` reads it. Sans-IO: it takes the bytes
received so far and says "incomplete" (None), "this header, N bytes long", or
raises `ProxyProtocolError`, in which case the connection must be closed: from
a peer whose header is read (`--proxy-allow-from`), nothing else is accepted,
since a client that could skip the header could also forge it. The socket
side, before any TLS, is `squall.http.proxy_accept`.

While the result is "incomplete", every byte given is part of the header (a
v1 line ends at its LF, a v2 header at its stated length), so a reader may
take them all off the socket without taking any byte that follows.

Version 1 (text)::

    PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\\r\\n
    PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\\r\\n
    PROXY UNKNOWN[ anything]\\r\\n

at most 107 bytes, single spaces, addresses of the named family, ports
0..65535 in decimal without leading zeros.

Version 2 (binary): the 12-byte signature, a version/command byte (version 2;
LOCAL or PROXY), a family/transport byte, a 16-bit length, then the addresses
and any TLVs (skipped). AF_INET and AF_INET6 over STREAM give the client's
address; LOCAL (a health check from the proxy itself), AF_UNSPEC and AF_UNIX
give none (the socket's own address stays).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass


class ProxyProtocolError(Exception):
    """The connection did not start with a valid PROXY protocol header."""


@dataclass(frozen=True)
class ProxyHeader:
    consumed: int  # bytes of the header; HTTP starts after them
    client: tuple[str, int] | None  # None: LOCAL / UNKNOWN, keep the socket's address
    server: tuple[str, int] | None


V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the longest v1 line, CRLF included (the spec's bound)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16  # signature, version/command, family/transport, length
V2_MAX_PAYLOAD = 2048  # addresses + TLVs; real proxies send far less

_V2_LOCAL = 0x20
_V2_PROXY = 0x21
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0, 1, 2, 3
_UNSPEC, _STREAM = 0, 1
_INET_ADDRESSES = struct.Struct("!4s4sHH")
_INET6_ADDRESSES = struct.Struct("!16s16sHH")
_UNIX_ADDRESSES = 216  # two 108-byte paths


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`; None while incomplete."""
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    if not data:
        return None
    raise ProxyProtocolError("no PROXY protocol header")


# -- version 1 ------------------------------------------------------------------------


def _parse_v1(data: bytes) -> ProxyHeader | None:
    if not data.startswith(V1_PREFIX):
        if V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
            return None  # "PROX..." so far
        raise ProxyProtocolError("no PROXY protocol header")
    end = data.find(b"\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError("PROXY v1 header longer than 107 bytes")
        if b"\r" in data[: len(data) - 1]:
            raise ProxyProtocolError("PROXY v1 header: CR without LF")
        return None
    if data[end - 1 : end] != b"\r":
        raise ProxyProtocolError("PROXY v1 header does not end with CRLF")
    line = data[len(V1_PREFIX) : end - 1]
    consumed = end + 1
    if b"\r" in line:
        raise ProxyProtocolError("PROXY v1 header: stray CR")
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        return ProxyHeader(consumed, None, None)  # the rest of the line is to be ignored
    parts = line.split(b" ")
    if len(parts) != 5:
        raise ProxyProtocolError("PROXY v1 header: expected 5 fields after PROXY")
    family, source, destination, source_port, destination_port = parts
    if family == b"TCP4":
        client = _v1_address(source, ipaddress.IPv4Address)
        server = _v1_address(destination, ipaddress.IPv4Address)
    elif family == b"TCP6":
        client = _v1_address(source, ipaddress.IPv6Address)
        server = _v1_address(destination, ipaddress.IPv6Address)
    else:
        raise ProxyProtocolError("PROXY v1 header: unknown protocol family")
    return ProxyHeader(
        consumed, (client, _v1_port(source_port)), (server, _v1_port(destination_port))
    )


def _v1_address(
    text: bytes, kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
) -> str:
    if b"%" in text:  # a scope id is no part of the syntax
        raise ProxyProtocolError("PROXY v1 header: invalid address")
    try:
        return str(kind(text.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError("PROXY v1 header: invalid address") from None


def _v1_port(text: bytes) -> int:
    if (
        not 0 < len(text) <= 5
        or not text.isdigit()
        or (text[:1] == b"0" and len(text) > 1)
        or int(text) > 65535
    ):
        raise ProxyProtocolError("PROXY v1 header: invalid port")
    return int(text)


# -- version 2 ------------------------------------------------------------------------


def _parse_v2(data: bytes) -> ProxyHeader | None:
    signature = data[: len(V2_SIGNATURE)]
    if signature != V2_SIGNATURE[: len(signature)]:
        raise ProxyProtocolError("no PROXY protocol header")
    if len(data) < V2_HEADER:
        if len(data) > 12 and data[12] not in (_V2_LOCAL, _V2_PROXY):
            raise ProxyProtocolError("PROXY v2 header: bad version or command")
        return None
    command, family_transport, length = data[12], data[13], int.from_bytes(data[14:16], "big")
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyProtocolError("PROXY v2 header: bad version or command")
    if length > V2_MAX_PAYLOAD:
        raise ProxyProtocolError(f"PROXY v2 header: {length} bytes of payload, over the limit")
    consumed = V2_HEADER + length
    if len(data) < consumed:
        return None
    if command == _V2_LOCAL:
        return ProxyHeader(consumed, None, None)  # the proxy's own connection (health check)
    family, transport = family_transport >> 4, family_transport & 0x0F
    if family == _AF_UNSPEC and transport == _UNSPEC:
        return ProxyHeader(consumed, None, None)
    if transport != _STREAM:
        raise ProxyProtocolError("PROXY v2 header: not a stream connection")
    payload = data[V2_HEADER:consumed]
    if family == _AF_INET:
        layout = _INET_ADDRESSES
        make: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address] = ipaddress.IPv4Address
    elif family == _AF_INET6:
        layout = _INET6_ADDRESSES
        make = ipaddress.IPv6Address
    elif family == _AF_UNIX:
        if length < _UNIX_ADDRESSES:
            raise ProxyProtocolError("PROXY v2 header: address block too short")
        return ProxyHeader(consumed, None, None)
    else:
        raise ProxyProtocolError("PROXY v2 header: unknown address family")
    if length < layout.size:
        raise ProxyProtocolError("PROXY v2 header: address block too short")
    source, destination, source_port, destination_port = layout.unpack_from(payload)
    return ProxyHeader(
        consumed,
        (str(make(source)), source_port),
        (str(make(destination)), destination_port),
    )
