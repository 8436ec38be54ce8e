"""Serve `tests.apps.wire:app` in one process with custom parser limits.

    python -m tests.apps.limited_server PORT '{"max_body_bytes": 8}'

The JSON object gives fields of `squall.http.core.Limits`; the command line
has no options for them, and tests/test_smuggling_wire.py needs corpus cases
with small limits on the wire.
"""

from __future__ import annotations

import json
import logging
import sys

from squall import HTTPServer, run_forever
from squall.http.core import Limits
from tests.apps.wire import app


def main() -> None:
    port = int(sys.argv[1])
    limits = Limits(**json.loads(sys.argv[2]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    server = HTTPServer(app, limits=limits, keepalive_timeout=5.0)
    server.listen(port, "127.0.0.1")
    run_forever(graceful_timeout=2.0)


if __name__ == "__main__":
    main()
