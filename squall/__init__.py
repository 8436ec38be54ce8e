"""squall: a multi-process HTTP service for Python.

The seed's system: `HTTPServer(app).bind(port)` + `start(n)`, which is
`bind_sockets` + `fork_processes` + `add_sockets`, then `run_forever()`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from squall.cpus import cpu_count
from squall.process import fork_processes, task_id
from squall.server import HTTPServer
from squall.sockets import bind_sockets, bind_unix_socket
from squall.web import Application, HTTPError, RequestHandler
from squall.worker import run_forever

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
