"""An RSGI app (granian's own interface): GET / answers 200 with "Hello, world".

Served by granian --interface rsgi in bench/compare.py.
"""

from typing import Protocol


class HTTPProtocol(Protocol):
    """What the app uses of granian's RSGIHTTPProtocol (granian is in bench/.venv only)."""

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None: ...


HEADERS = [("content-type", "text/plain")]
BODY = b"Hello, world"


async def app(scope: object, protocol: HTTPProtocol) -> None:
    protocol.response_bytes(200, HEADERS, BODY)
