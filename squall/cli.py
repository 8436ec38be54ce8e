"""`squall MODULE:ATTR [options]`: bind, fork the workers, supervise them.

Every mistake the user can make ends in one `squall: error: ...` line and
exit status 2 (usage) or 1 (runtime), never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import random
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from squall import __version__, compiled, handover, process
from squall.appload import import_app
from squall.config import (
    HOOKS,
    SETTINGS,
    Config,
    Setting,
    from_environment,
    from_file,
)
from squall.cpus import cpu_count
from squall.errors import SquallError, UsageError
from squall.listeners import ReusePortListeners, SharedListeners
from squall.listeners import adopt as adopt_listeners
from squall.logs import configure, enable_stack_dumps, reopen_log_file
from squall.privileges import become
from squall.privileges import resolve as resolve_identity
from squall.sockets import BindSpec, describe_socket, open_binds, parse_bind, reuse_port_balances
from squall.supervisor import Plugin
from squall.systemd import STATE_NAME, SystemdPlugin, listen_fds, stored_handover
from squall.watch import start_watcher

logger = logging.getLogger("squall")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see 'squall --help')")


def _typed(setting: Setting) -> Callable[[str], Any]:
    kind = {
        "_count": "a whole number",
        "_seconds": "a number of seconds",
        "_size": "a number of bytes (such as 65536, 64K or 10M)",
    }.get(getattr(setting.parse, "__name__", ""), "valid")

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
        if setting.switch:
            parser.add_argument(
                setting.flag,
                *setting.aliases,
                dest=setting.name,
                action="store_const",
                const=True,
                help=setting.described,
            )
            continue
        parser.add_argument(
            setting.flag,
            *setting.aliases,
            dest=setting.name,
            type=_typed(setting),
            action="append" if setting.repeated else "store",
            choices=setting.choices,
            metavar=setting.metavar,
            help=setting.described,
            default=None,
        )
    parser.add_argument(
        "--version", action=_PrintVersion, nargs=0, help="print the version and build"
    )
    return parser


class _PrintVersion(argparse.Action):
    """`squall --version`: the version and whether the request path runs compiled."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> NoReturn:
        print(f"squall {__version__} ({compiled.build()})")
        parser.exit()


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Defaults, then a --config file, then SQUALL_* variables, then the command line."""
    args = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    environment = from_environment()
    config_file = given.get("config") or environment.get("config")
    values = from_file(config_file) if config_file else {}
    values.update(environment)
    values.update(given)
    config = Config(**values)
    config.validate()
    return config


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["ctl"]:
        from squall.ctl import ctl_main

        try:
            code = ctl_main(args[1:])
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader left (`squall ctl status | head`): no traceback, and
            # none again when Python flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = 1
        sys.exit(code)
    try:
        config = parse_config(argv)
        run(config)
    except SquallError as exc:
        print(f"squall: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except StoppedWhileImporting as stopped:
        logger.info("stopped by %s while importing the app (--preload)", stopped.args[0])
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)


class StoppedWhileImporting(BaseException):
    """SIGTERM or SIGINT came while the supervisor imported the app (--preload).

    A BaseException, so the import's own error handling lets it through."""


def preload_app(target: str) -> Any:
    """Import the app in the supervisor, where a stop signal ends things cleanly."""

    def stop(signum: int, frame: object) -> None:
        raise StoppedWhileImporting(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        return import_app(target)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run(config: Config) -> NoReturn:
    """Bind, fork, supervise; in each worker, serve until told to stop."""
    from squall.supervisor import Hooks, Supervisor

    configure(config.log_level, config.log_file, config.log_format)
    if ":" not in config.app:
        raise UsageError(
            f"app must be given as MODULE:ATTR (for example 'app:app'), not {config.app!r}"
        )
    if config.certfile:
        from squall.tls import server_context

        server_context(config.certfile, config.keyfile)  # a bad file is one clear error, now
    if config.reuse_port and config.shared_socket:
        raise UsageError("--reuse-port and --shared-socket: give one or the other")
    identity = resolve_identity(config.user, config.group)
    specs = [parse_bind(spec) for spec in config.bind]
    workers = config.workers or cpu_count()
    upgrade = handover.inherited()
    stored = None if upgrade is not None else stored_handover()
    report_ready_fd = -1
    if upgrade is not None:  # started by a hot upgrade: the old supervisor's sockets
        listeners = adopt_listeners(upgrade["parts"]["listeners"], upgrade["parts"]["fds"])
        workers = int(upgrade["parts"]["workers"])
        report_ready_fd = int(upgrade["report"])
        os.set_inheritable(report_ready_fd, False)
        logger.info("upgrade: taking over from the supervisor pid %d", upgrade["from"])
    elif stored is not None:  # systemd kept them for us across a restart
        description, fds = stored
        listeners = adopt_listeners(description["listeners"], fds)
        workers = int(description["workers"])
        listeners.reassert()
        logger.info("fd store: serving the %d socket(s) systemd kept", len(listeners.held()))
    else:
        listeners = open_listeners(config, specs)
    from squall.worker import import_worker_modules

    # Before leaving root: the user may not read the interpreter's own files.
    import_worker_modules()
    plugins = make_plugins(config)  # a --metrics port may be a privileged one
    if stored is not None:
        for plugin in plugins:
            if isinstance(plugin, SystemdPlugin):
                plugin.adopted = [*stored[1], STATE_NAME]
    if identity is not None:
        unix_paths = [spec.path for spec in specs if spec.kind == "unix" and spec.path]
        if config.metrics and config.metrics.startswith("unix:"):
            unix_paths.append(config.metrics[len("unix:") :])
        if config.control:
            unix_paths.append(config.control)
        files = [path for path in [config.log_file, *unix_paths] if path]
        become(identity, listeners.held(), files)
    app = preload_app(config.app) if config.preload else None
    logger.info(
        "squall %s (%s) serving %s on %s with %d worker(s)%s (supervisor pid %d)",
        __version__,
        compiled.build(),
        config.app,
        ", ".join(describe_socket(s) for s in listeners.describe()),
        workers,
        sharing(listeners),
        os.getpid(),
    )
    if config.preload:
        gc.collect()
        gc.freeze()  # keep the collector from touching (and so un-sharing) preloaded pages
    process.check_fork_safety()  # an app imported here (--preload) may have started threads
    supervisor = Supervisor(
        workers,
        config.supervisor_settings(),
        listeners=listeners,
        hooks=Hooks(**{hook: getattr(config, hook) for hook in HOOKS}),
        on_log_reopen=reopen_log_file,
        plugins=plugins,
        report_ready_fd=report_ready_fd,
    )
    watcher = None
    if config.reload:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the supervisor handles it
        watcher = start_watcher(os.getcwd(), os.getpid())
    try:
        task_id = supervisor.run()  # returns only in a worker
    except BaseException:
        if watcher is not None:
            watcher.terminate()
            watcher.wait(5)
        raise
    serve_worker(config, listeners.for_slot(task_id), app, listeners.report_for(task_id))


def open_listeners(config: Config, specs: list[BindSpec]) -> SharedListeners | ReusePortListeners:
    """systemd's sockets if it passed any (and no --bind), else bind: one per worker or shared."""
    activated = listen_fds()  # systemd socket activation
    if activated and config.bind_given:
        logger.warning("--bind given: ignoring the %d socket(s) passed by systemd", len(activated))
        for sock in activated:
            sock.close()
        activated = []
    if activated:
        return SharedListeners(activated)
    if config.reuse_port or (not config.shared_socket and reuse_port_balances()):
        return ReusePortListeners(specs, backlog=config.backlog, steer=not config.no_steering)
    return SharedListeners(open_binds(specs, backlog=config.backlog))


def sharing(listeners: SharedListeners | ReusePortListeners) -> str:
    """How new connections are spread, for the start-up line."""
    if not isinstance(listeners, ReusePortListeners) or not any(listeners.slots.values()):
        return ""
    if listeners.steering is None:
        spread = ", at random (classic BPF)" if listeners.classic else ""
        return f", one socket each (SO_REUSEPORT){spread}"
    return ", one socket each (SO_REUSEPORT), to the least-loaded worker (eBPF), a shared queue under churn"


def make_plugins(config: Config) -> list[Plugin]:
    """What runs in the supervisor's loop besides the workers."""
    plugins: list[Plugin] = []
    if config.metrics:
        from squall.metrics import MetricsPlugin

        plugins.append(MetricsPlugin(config.metrics, allowed_hosts=config.metrics_allowed_hosts))
    if config.control:
        from squall.control import ControlPlugin

        plugins.append(ControlPlugin(config.control))
    systemd = SystemdPlugin.from_environment()
    if systemd is not None:
        plugins.append(systemd)
    return plugins


def serve_worker(
    config: Config,
    sockets: list[socket.socket],
    app: Any = None,
    report_load: Callable[[int], object] | None = None,
) -> NoReturn:
    from squall.metrics import worker_recorder
    from squall.server import HTTPServer
    from squall.tls import server_context
    from squall.worker import BOOT_FAILURE_EXIT, run_forever

    enable_stack_dumps()
    if app is None:
        try:
            app = import_app(config.app)
        except SquallError as exc:
            process.notify(process.WorkerMessage.BOOT_ERROR, str(exc))
            sys.exit(BOOT_FAILURE_EXIT)
    tls = (
        server_context(config.certfile, config.keyfile, http2=not config.no_http2)
        if config.certfile
        else None
    )
    quota = 0
    if config.max_requests:
        quota = config.max_requests + random.randint(0, config.max_requests_jitter)
    server = HTTPServer(
        app,
        config,
        max_requests=quota,
        ssl_context=tls,
        metrics=worker_recorder(),
        on_closed=report_load,
    )
    server.add_sockets(sockets)
    memory_limit = 0
    if config.max_worker_memory:  # up to 5% lower: workers that grow alike do not all go at once
        memory_limit = int(config.max_worker_memory * 2**20 * (1 - random.uniform(0, 0.05)))
    run_forever(
        graceful_timeout=config.graceful_timeout,
        watchdog_timeout=config.timeout,
        memory_limit=memory_limit,
    )
    sys.exit(0)
