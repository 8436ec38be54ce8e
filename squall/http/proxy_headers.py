"""X-Forwarded-* and Forwarded (RFC 7239), trusted only from configured proxies.

Behind a reverse proxy the socket's peer is the proxy; the proxy says who the
client was in headers that anyone else could forge too. So the headers count
only on connections whose peer is trusted (`--forwarded-allow-ips`: addresses
and CIDR networks, comma-separated, or ``*`` for every peer).

Rules, per request (`ProxyHeaders.__call__`):

- The peer is trusted when its address is in the list, when the list is
  ``*``, and when the connection came over a Unix socket (no peer address):
  only local processes allowed by the socket file's permissions can connect
  there, which in practice is the proxy in front (gunicorn does the same).
- ``Forwarded`` wins over the ``X-Forwarded-*`` family when present and
  well-formed; the two are never mixed. A malformed ``Forwarded`` is ignored
  as a whole and the ``X-Forwarded-*`` headers are used instead.
- Each proxy appends the address it received the request from, so the list is
  walked from the right, skipping addresses of trusted proxies; the first
  hop that is not a trusted proxy is the client. (If every hop is trusted,
  the left-most is the client.) The left part of the list, which the client
  may have written itself, is never believed. A hop that is not an address
  (``unknown``, an obfuscated ``_name``, garbage) ends the walk without
  changing the client address: the proxies could not say who it was.
- ``Forwarded``: the chosen element's own ``proto=`` and ``host=`` apply.
  ``X-Forwarded-Proto`` / ``-Host``: when they hold lists, the value that
  belongs to the chosen hop is taken by the same count: as many values from
  the right as trusted hops were skipped in ``X-Forwarded-For`` (the last
  value when no hop was skipped or there is no ``X-Forwarded-For``).
- Schemes: http, https, ws, wss (any case); ``ws`` counts as http and ``wss``
  as https, since `cycle.scheme` is the connection's scheme. A host must look
  like an RFC 3986 host with an optional port; it replaces the Host header.
- Anything malformed is ignored, never an error.

The result: `cycle.client` = (address, port or 0), `cycle.scheme`, and the
request's Host header.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from squall.errors import UsageError
from squall.http.cycle import RequestCycle

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+;=%-]+)(?::[0-9]{1,5})?", re.ASCII)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_OBFUSCATED_PORT = re.compile(r"_[A-Za-z0-9._-]+", re.ASCII)

# RFC 7239 section 4: forwarded-pair = token "=" value; value = token / quoted-string.
# Values are a little more lenient than `token`: proxies do send unquoted
# `for=192.0.2.1:80` and `for=[2001:db8::1]`.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PAIR = re.compile(
    rf"[ \t]*({_TOKEN})=(\"(?:[^\"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e\x80-\xff])*\""
    rf"|[!#$%&'*+\-.^_`|~0-9A-Za-z:\[\]]+)[ \t]*"
)
_OWS = re.compile(r"[ \t]*")
_QUOTED_PAIR = re.compile(r"\\(.)")

_CACHE_SIZE = 4096


def make_forwarded(allow_ips: str) -> Callable[[RequestCycle], None] | None:
    """A callback that rewrites a cycle's client and scheme, or None when no proxy is trusted.

    UsageError when an entry of `allow_ips` is neither ``*`` nor an IP address or network.
    """
    if not allow_ips.strip():
        return None
    return ProxyHeaders(TrustedProxies(allow_ips))


class TrustedProxies:
    """The `--forwarded-allow-ips` list: `address in trusted`."""

    def __init__(self, allow_ips: str) -> None:
        self.everyone = False
        networks: list[_Network] = []
        for entry in allow_ips.split(","):
            entry = entry.strip()
            if not entry:
                continue
            if entry == "*":
                self.everyone = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise UsageError(
                    f"--forwarded-allow-ips: {entry!r} is not an IP address, a network or *"
                ) from None
        self.networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def __contains__(self, address: str) -> bool:
        if self.everyone:
            return True
        cache = self._cache
        known = cache.get(address)
        if known is None:
            known = self._lookup(address)
            if len(cache) >= _CACHE_SIZE:
                cache.clear()  # header addresses come from clients: stay bounded
            cache[address] = known
        return known

    def _lookup(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return False
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)  # a v4 peer on a dual-stack socket
        return any(
            candidate in network
            for candidate in candidates
            for network in self.networks
            if network.version == candidate.version
        )

    def peer(self, client: tuple[str, int] | None) -> bool:
        """Whether the connection's peer may set the headers (a Unix socket peer may)."""
        return client is None or client[0] in self


class ProxyHeaders:
    """The per-request callback (`ServerState.forwarded`)."""

    def __init__(self, trusted: TrustedProxies) -> None:
        self.trusted = trusted

    def __call__(self, cycle: RequestCycle) -> None:
        request = cycle.request
        if request is None or not self.trusted.peer(cycle.client):
            return
        forwarded = x_for = x_proto = x_host = None
        for name, value in request.headers:
            if name[:1] not in (b"f", b"x"):
                continue
            if name == b"forwarded":
                forwarded = value if forwarded is None else forwarded + b"," + value
            elif name == b"x-forwarded-for":
                x_for = value if x_for is None else x_for + b"," + value
            elif name == b"x-forwarded-proto":
                x_proto = value if x_proto is None else x_proto + b"," + value
            elif name == b"x-forwarded-host":
                x_host = value if x_host is None else x_host + b"," + value
        if forwarded is not None:
            elements = parse_forwarded(forwarded.decode("latin-1"))
            if elements:
                self._apply_forwarded(cycle, elements)
                return
        if x_for is not None or x_proto is not None or x_host is not None:
            self._apply_x_forwarded(cycle, x_for, x_proto, x_host)

    def _apply_forwarded(self, cycle: RequestCycle, elements: list[dict[str, str]]) -> None:
        trusted = self.trusted
        chosen = elements[0]
        client: tuple[str, int] | None = None
        for element in reversed(elements):
            node = element.get("for")
            client = parse_node(node) if node is not None else None
            if client is None or client[0] not in trusted:
                chosen = element
                break
        if client is not None:
            cycle.client = client
        proto = chosen.get("proto")
        if proto is not None:
            _set_scheme(cycle, proto)
        host = chosen.get("host")
        if host is not None:
            _set_host(cycle, host)

    def _apply_x_forwarded(
        self,
        cycle: RequestCycle,
        x_for: bytes | None,
        x_proto: bytes | None,
        x_host: bytes | None,
    ) -> None:
        skipped = 0  # trusted hops right of the client
        if x_for is not None:
            hops = _split_list(x_for)
            trusted = self.trusted
            client: tuple[str, int] | None = None
            for hop in reversed(hops):
                client = parse_node(hop)
                if client is None or client[0] not in trusted or skipped == len(hops) - 1:
                    break
                skipped += 1
            if client is not None:
                cycle.client = client
        if x_proto is not None:
            proto = _pick(_split_list(x_proto), skipped)
            if proto is not None:
                _set_scheme(cycle, proto)
        if x_host is not None:
            host = _pick(_split_list(x_host), skipped)
            if host is not None:
                _set_host(cycle, host)


def _split_list(value: bytes) -> list[str]:
    """A comma-separated header value's non-empty members."""
    return [member for member in (m.strip() for m in value.decode("latin-1").split(",")) if member]


def _pick(values: list[str], skipped: int) -> str | None:
    """The value `skipped` places from the right (the left-most if there are fewer)."""
    if not values:
        return None
    return values[max(len(values) - 1 - skipped, 0)]


def _set_scheme(cycle: RequestCycle, proto: str) -> None:
    scheme = _SCHEMES.get(proto.lower())
    if scheme is not None:
        cycle.scheme = scheme


def _set_host(cycle: RequestCycle, host: str) -> None:
    request = cycle.request
    if request is None or not _HOST.fullmatch(host):
        return
    value = host.encode("ascii")
    headers = request.headers
    for index, (name, _) in enumerate(headers):
        if name == b"host":
            headers[index] = (b"host", value)
            break
    else:
        headers.append((b"host", value))


def parse_node(text: str) -> tuple[str, int] | None:
    """An address with an optional port, as proxies write them; None if it is none.

    ``192.0.2.1``, ``192.0.2.1:80``, ``[2001:db8::1]``, ``[2001:db8::1]:80``, and
    (leniently) a bare ``2001:db8::1``. An obfuscated port (``_abc``) counts as 0.
    ``unknown``, obfuscated identifiers and anything else give None.
    """
    text = text.strip()
    port_text: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if rest[0] != ":":
                return None
            port_text = rest[1:]
        version = 6
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        version = 4
    else:
        host, version = text, 0
    if "%" in host:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if version and ip.version != version:
        return None
    port = 0
    if port_text is not None:
        if _PORT.fullmatch(port_text):
            port = int(port_text)
            if port > 65535:
                return None
        elif not _OBFUSCATED_PORT.fullmatch(port_text):
            return None
    return (str(ip), port)


def parse_forwarded(value: str) -> list[dict[str, str]] | None:
    """The elements of a Forwarded header (parameter names lower-case), None if malformed.

    Empty list members are skipped; a parameter twice in one element is malformed.
    """
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    position, end = 0, len(value)
    while True:
        match = _PAIR.match(value, position)
        if match is not None:
            name = match.group(1).lower()
            if name in element:
                return None
            raw = match.group(2)
            if raw.startswith('"'):
                raw = _QUOTED_PAIR.sub(r"\1", raw[1:-1])
            element[name] = raw
            position = match.end()
        else:
            ows = _OWS.match(value, position)
            assert ows is not None  # matches the empty string
            position = ows.end()
        if position == end:
            if element:
                elements.append(element)
            return elements
        separator = value[position]
        position += 1
        if separator == ",":
            if element:
                elements.append(element)
            element = {}
        elif separator != ";":
            return None
