"""squall: a multi-process HTTP service for Python.

The seed's system: `HTTPServer(app).bind(port)` + `start(n)`, which is
`bind_sockets` + `fork_processes` + `add_sockets`, then `run_forever()`.
"""

from __future__ import annotations

__version__ = "0.1.0"

import squall.compiled  # noqa: F401  first: with SQUALL_PURE_PYTHON=1, the imports below load .py files
from squall import process
from squall.cpus import cpu_count
from squall.fork import fork_processes
from squall.process import task_id
from squall.server import HTTPServer
from squall.sockets import bind_sockets, bind_unix_socket
from squall.web import Application, HTTPError, RequestHandler
from squall.worker import run_forever

process.fork_processes = fork_processes  # the seed's spelling: squall.process.fork_processes(n)

__all__ = [
    "Application",
    "HTTPError",
    "HTTPServer",
    "RequestHandler",
    "__version__",
    "bind_sockets",
    "bind_unix_socket",
    "cpu_count",
    "fork_processes",
    "run_forever",
    "task_id",
]
