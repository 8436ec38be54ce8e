"""An RSGI app (granian's own interface): GET / answers 200 with "Hello, world".

Served by granian --interface rsgi in bench/compare.py.
"""

HEADERS = [("content-type", "text/plain")]
BODY = b"Hello, world"


async def app(scope, protocol):
    protocol.response_bytes(200, HEADERS, BODY)
