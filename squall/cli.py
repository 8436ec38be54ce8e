"""`squall MODULE:ATTR [options]`: bind, fork the workers, supervise them.

Every mistake the user can make ends in one `squall: error: ...` line and
exit status 2 (usage) or 1 (runtime), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from squall import __version__, process
from squall.appload import import_app
from squall.config import SETTINGS, Config, Setting, from_environment
from squall.cpus import cpu_count
from squall.errors import SquallError, UsageError
from squall.logs import configure
from squall.sockets import describe_socket, open_binds, parse_bind

logger = logging.getLogger("squall")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see 'squall --help')")


def _typed(setting: Setting) -> Callable[[str], Any]:
    kind = {"_count": "a whole number", "_seconds": "a number of seconds"}.get(
        getattr(setting.parse, "__name__", ""), "valid"
    )

    def convert(text: str) -> Any:
        try:
            return setting.parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None

    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="squall",
        description="Serve a Python web app (squall, ASGI or WSGI) on every core.",
        epilog="Every option can also be set as an environment variable: "
        "--max-restarts as SQUALL_MAX_RESTARTS, and so on.",
    )
    parser.add_argument("app", metavar="MODULE:ATTR", help="the app to serve, e.g. myapp:app")
    for setting in SETTINGS:
        parser.add_argument(
            setting.flag,
            dest=setting.name,
            type=_typed(setting),
            action="append" if setting.repeated else "store",
            choices=setting.choices,
            metavar=setting.metavar,
            help=setting.help,
            default=None,
        )
    parser.add_argument("--version", action="version", version=f"squall {__version__}")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """The settings from the environment, overridden by the command line."""
    values = from_environment()
    args = build_parser().parse_args(argv)
    values.update({k: v for k, v in vars(args).items() if v is not None})
    config = Config(**values)
    config.validate()
    return config


def main(argv: Sequence[str] | None = None) -> None:
    try:
        config = parse_config(argv)
        run(config)
    except SquallError as exc:
        print(f"squall: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def run(config: Config) -> NoReturn:
    """Bind, fork, supervise; in each worker, serve until told to stop."""
    from squall.supervisor import Supervisor

    configure(config.log_level)
    if ":" not in config.app:
        raise UsageError(
            f"app must be given as MODULE:ATTR (for example 'app:app'), not {config.app!r}"
        )
    sockets = open_binds([parse_bind(spec) for spec in config.bind], backlog=config.backlog)
    workers = config.workers or cpu_count()
    logger.info(
        "squall %s serving %s on %s with %d worker(s) (supervisor pid %d)",
        __version__,
        config.app,
        ", ".join(describe_socket(s) for s in sockets),
        workers,
        os.getpid(),
    )
    supervisor = Supervisor(
        workers,
        max_restarts=config.max_restarts,
        restart_window=config.restart_window,
        graceful_timeout=config.graceful_timeout,
    )
    supervisor.run()  # returns only in a worker
    serve_worker(config, sockets)


def serve_worker(config: Config, sockets: list[socket.socket]) -> NoReturn:
    from squall.server import HTTPServer
    from squall.worker import BOOT_FAILURE_EXIT, run_forever

    try:
        app = import_app(config.app)
    except SquallError as exc:
        process.notify(f"booterror {exc}")
        sys.exit(BOOT_FAILURE_EXIT)
    server = HTTPServer(
        app,
        interface=config.interface,
        keepalive_timeout=config.keepalive_timeout,
        root_path=config.root_path,
    )
    server.add_sockets(sockets)
    run_forever(graceful_timeout=config.graceful_timeout)
    sys.exit(0)
