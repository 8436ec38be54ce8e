"""Every setting, defined once: its flag, environment key, type, default and help.

The command line and the `SQUALL_*` environment variables are both derived
from `SETTINGS`; `Config.validate` gives each bad value one clear message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from squall.appload import INTERFACES
from squall.errors import UsageError
from squall.http.core import DEFAULT_LIMITS
from squall.logs import FORMATS as LOG_FORMATS

ENV_PREFIX = "SQUALL_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
ON_EXHAUSTED = ("exit", "degrade")
ACCESS_LOG_FORMATS = ("off", "common", "combined", "json")
HOOKS = (
    "on_starting",
    "post_fork",
    "worker_exit",
    "on_reload",
    "when_ready",
    "on_exit",
    "worker_abort",
)


@dataclass(frozen=True)
class Setting:
    name: str
    flag: str
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    repeated: bool = False  # may be given several times (a list)
    switch: bool = False  # a flag without a value
    aliases: tuple[str, ...] = ()  # other spellings of the flag (gunicorn's, say)

    @property
    def env_key(self) -> str:
        return ENV_PREFIX + self.name.upper()


@dataclass
class Config:
    app: str = ""
    bind: list[str] = field(default_factory=list)
    workers: int = 1
    max_restarts: int = 100
    restart_window: float = 0.0
    interface: str = "auto"
    graceful_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    backlog: int | None = None
    root_path: str = ""
    log_level: str = "info"
    log_file: str | None = None
    log_format: str = "text"
    user: str | None = None
    group: str | None = None
    timeout: float = 30.0
    boot_timeout: float = 60.0
    max_requests: int = 0
    max_requests_jitter: int = 0
    max_worker_memory: int = 0
    limit_concurrency: int = 0
    max_connections: int = 0
    metrics_allowed_hosts: str = ""
    request_timeout: float = 0.0
    on_exhausted: str = "exit"
    reload_batch: int = 1
    reuse_port: bool = False
    shared_socket: bool = False
    no_steering: bool = False
    preload: bool = False
    reload: bool = False
    threads: int = 10
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_min_rate: int = 500
    access_log: str = "off"
    forwarded_allow_ips: str = ""
    proxy_protocol: bool = False
    proxy_allow_from: str = "127.0.0.1,::1"
    limit_request_line: int = DEFAULT_LIMITS.max_target_bytes
    limit_request_fields: int = DEFAULT_LIMITS.max_header_count
    limit_request_field_size: int = DEFAULT_LIMITS.max_field_bytes
    limit_request_headers: int = DEFAULT_LIMITS.max_header_bytes
    limit_request_body: int = DEFAULT_LIMITS.max_body_bytes
    certfile: str | None = None
    keyfile: str | None = None
    ws_max_size: int = 16 * 1024 * 1024
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    metrics: str | None = None
    control: str | None = None
    config: str | None = None
    # Hooks: plain callables, set from a --config file or the Python API.
    on_starting: Callable[[], object] | None = None
    post_fork: Callable[[int], object] | None = None
    worker_exit: Callable[[int, int], object] | None = None
    on_reload: Callable[[], object] | None = None
    when_ready: Callable[[], object] | None = None
    on_exit: Callable[[], object] | None = None
    worker_abort: Callable[[int, int], object] | None = None

    DEFAULT_BIND = "127.0.0.1:8000"
    bind_given: bool = field(default=False, init=False, repr=False)

    def validate(self) -> None:
        if self.workers < 0:
            raise UsageError(f"--workers must be 0 (one per CPU) or more, not {self.workers}")
        if self.max_restarts < 0:
            raise UsageError(f"--max-restarts must be 0 or more, not {self.max_restarts}")
        for name in (
            "restart_window",
            "request_timeout",
            "graceful_timeout",
            "boot_timeout",
            "keepalive_timeout",
            "header_timeout",
            "body_timeout",
            "ws_ping_interval",
            "ws_ping_timeout",
        ):
            if getattr(self, name) < 0:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be 0 or more, not {getattr(self, name)}")
        if self.backlog is not None and self.backlog < 1:
            raise UsageError(f"--backlog must be 1 or more, not {self.backlog}")
        if self.interface not in INTERFACES:
            raise UsageError(f"--interface must be one of {', '.join(INTERFACES)}")
        for name in (
            "max_requests",
            "max_requests_jitter",
            "max_worker_memory",
            "limit_concurrency",
            "max_connections",
        ):
            if getattr(self, name) < 0:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be 0 or more, not {getattr(self, name)}")
        if self.timeout < 0:
            raise UsageError(f"--timeout must be 0 (off) or more, not {self.timeout}")
        if self.reload_batch < 1:
            raise UsageError(f"--reload-batch must be 1 or more, not {self.reload_batch}")
        if self.forwarded_allow_ips.strip():
            from squall.http.proxy_headers import TrustedProxies

            TrustedProxies(self.forwarded_allow_ips)  # a bad entry is a UsageError now
        if self.proxy_allow_from.strip():
            from squall.http.proxy_accept import AllowList

            AllowList(self.proxy_allow_from)  # a bad entry is a UsageError now
        if self.keyfile is not None and self.certfile is None:
            raise UsageError("--keyfile needs --certfile")
        for name in (*LIMIT_SETTINGS, "ws_max_size"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be 1 or more, not {getattr(self, name)}")
        if self.access_log not in ACCESS_LOG_FORMATS:
            raise UsageError(f"--access-log must be one of {', '.join(ACCESS_LOG_FORMATS)}")
        if self.threads < 1:
            raise UsageError(f"--threads must be 1 or more, not {self.threads}")
        if self.on_exhausted not in ON_EXHAUSTED:
            raise UsageError(f"--on-exhausted must be one of {', '.join(ON_EXHAUSTED)}")
        for hook in HOOKS:
            value = getattr(self, hook)
            if value is not None and not callable(value):
                raise UsageError(f"hook {hook} must be a callable, not {value!r}")
        if self.log_level not in LOG_LEVELS:
            raise UsageError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise UsageError(f"--log-format must be one of {', '.join(LOG_FORMATS)}")
        self.bind_given = bool(self.bind)  # without it, systemd's sockets (if any) are used
        if not self.bind:
            self.bind = [self.DEFAULT_BIND]


def _count(text: str) -> int:
    return int(text)


def _switch(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


_SIZE = re.compile(r"([0-9]+)\s*(?:([kmg])i?b?|b)?", re.ASCII | re.IGNORECASE)
_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(text: str) -> int:
    """A number of bytes: 65536, or with a binary suffix, 64K, 10M, 1G (also 10MiB, 10MB)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(text)
    number, unit = match.groups()
    return int(number) * (_UNITS[unit.lower()] if unit else 1)


#: The request limits, each a `squall.http.core.Limits` field.
LIMIT_SETTINGS = {
    "limit_request_line": "max_target_bytes",
    "limit_request_fields": "max_header_count",
    "limit_request_field_size": "max_field_bytes",
    "limit_request_headers": "max_header_bytes",
    "limit_request_body": "max_body_bytes",
}


def _seconds(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "bind",
        "--bind",
        str,
        "where to listen: HOST:PORT, [IPv6]:PORT, :PORT, unix:PATH or fd://N "
        f"(repeatable; default {Config.DEFAULT_BIND})",
        metavar="ADDRESS",
        repeated=True,
    ),
    Setting(
        "workers",
        "--workers",
        _count,
        "worker processes; 0 means one per usable CPU (default 1)",
        "N",
    ),
    Setting(
        "max_restarts",
        "--max-restarts",
        _count,
        "give up after this many worker restarts within --restart-window (default 100)",
        "N",
    ),
    Setting(
        "restart_window",
        "--restart-window",
        _seconds,
        "the window in which --max-restarts counts, in seconds; 0 means the whole lifetime (default 0)",
        "SECONDS",
    ),
    Setting(
        "interface",
        "--interface",
        str,
        "the app's interface (default auto: detected)",
        choices=INTERFACES,
    ),
    Setting(
        "graceful_timeout",
        "--graceful-timeout",
        _seconds,
        "on stop, how long workers may finish requests in flight (default 30)",
        "SECONDS",
    ),
    Setting(
        "keepalive_timeout",
        "--keepalive-timeout",
        _seconds,
        "close idle keep-alive connections after this long (default 5)",
        "SECONDS",
    ),
    Setting(
        "backlog", "--backlog", _count, "listen backlog (default: the most the OS allows)", "N"
    ),
    Setting(
        "root_path", "--root-path", str, "ASGI root_path, for apps mounted below a prefix", "PATH"
    ),
    Setting("log_level", "--log-level", str, "log level (default info)", choices=LOG_LEVELS),
    Setting(
        "user",
        "--user",
        str,
        "started as root: bind and load the steering program, then run as this user "
        "(name or uid); workers keep no capability",
        "USER",
    ),
    Setting(
        "group",
        "--group",
        str,
        "with --user: run as this group (name or gid) instead of the user's own",
        "GROUP",
    ),
    Setting(
        "log_file",
        "--log-file",
        str,
        "write the log to this file (reopened on SIGUSR1) instead of stderr",
        "PATH",
    ),
    Setting(
        "log_format",
        "--log-format",
        str,
        "text (default) or json: one JSON object a line, with time, level, logger, message, "
        "role (supervisor or worker), worker (its id), pid and exception",
        choices=LOG_FORMATS,
    ),
    Setting(
        "timeout",
        "--timeout",
        _seconds,
        "replace a worker whose event loop has made no progress for this long, after logging its stacks; 0 disables (default 30)",
        "SECONDS",
    ),
    Setting(
        "boot_timeout",
        "--boot-timeout",
        _seconds,
        "a worker not ready this long after its start is stopped: at the first start the service stops, later it counts as a crash; 0 disables (default 60)",
        "SECONDS",
    ),
    Setting(
        "max_requests",
        "--max-requests",
        _count,
        "replace a worker gracefully after it served this many requests; 0 disables",
        "N",
    ),
    Setting(
        "request_timeout",
        "--request-timeout",
        _seconds,
        "a request still running after this long gets 504 (or, its response begun, a closed "
        "connection) and its task is cancelled; 0: none",
        "SECONDS",
    ),
    Setting(
        "max_connections",
        "--max-connections",
        _count,
        "per worker: at this many open connections, accept no more until one closes (the kernel "
        "queue or the other workers hold them); default 0: what ulimit -n allows, less a reserve",
        "N",
    ),
    Setting(
        "limit_concurrency",
        "--limit-concurrency",
        _count,
        "per worker: a request beyond this many in flight gets 503 with Retry-After at once, "
        "without calling the app; 0: no limit",
        "N",
    ),
    Setting(
        "max_worker_memory",
        "--max-worker-memory",
        _count,
        "replace a worker whose resident memory passes this many MiB (its successor ready "
        "first; each worker's limit is up to 5%% lower, so they do not all go at once); 0: off",
        "MiB",
    ),
    Setting(
        "max_requests_jitter",
        "--max-requests-jitter",
        _count,
        "add up to this many to each worker's --max-requests, so they do not all recycle at once",
        "N",
    ),
    Setting(
        "on_exhausted",
        "--on-exhausted",
        str,
        "when the restart budget is spent: exit (stop, non-zero status) or degrade (keep the survivors serving)",
        choices=ON_EXHAUSTED,
    ),
    Setting(
        "reload_batch",
        "--reload-batch",
        _count,
        "on reload (SIGHUP), replace this many workers at a time (default 1)",
        "N",
    ),
    Setting(
        "reuse_port",
        "--reuse-port",
        _switch,
        "one SO_REUSEPORT socket per worker: even balance (the default on Linux)",
        switch=True,
    ),
    Setting(
        "shared_socket",
        "--shared-socket",
        _switch,
        "one socket every worker accepts from, instead of one per worker (--reuse-port)",
        switch=True,
    ),
    Setting(
        "no_steering",
        "--no-steering",
        _switch,
        "with a socket per worker, spread new connections at random, not to the least-loaded (eBPF)",
        switch=True,
    ),
    Setting(
        "preload",
        "--preload",
        _switch,
        "import the app once in the supervisor before forking (shares memory; reload does not re-import)",
        switch=True,
    ),
    Setting(
        "reload",
        "--reload",
        _switch,
        "development: reload the workers when a source file under the working directory changes",
        switch=True,
    ),
    Setting("threads", "--threads", _count, "WSGI: threads per worker (default 10)", "N"),
    Setting(
        "header_timeout",
        "--header-timeout",
        _seconds,
        "a request head must arrive within this long once begun, else 408 and close (default 10)",
        "SECONDS",
    ),
    Setting(
        "body_timeout",
        "--body-timeout",
        _seconds,
        "the longest silence while a request body is read, else 408 and close (default 30)",
        "SECONDS",
    ),
    Setting(
        "body_min_rate",
        "--body-min-rate",
        _size,
        "once --body-timeout has passed since a request body began, it must have come at "
        "this many bytes a second on average, else 408 and close (default 500; 0: off)",
        "BYTES",
    ),
    Setting(
        "access_log",
        "--access-log",
        str,
        "one line per request: common, combined (common with referer and user agent), "
        "json (one JSON object a line, with the worker's id, and nothing around it "
        "whatever --log-format is) or off (default)",
        choices=ACCESS_LOG_FORMATS,
    ),
    Setting(
        "forwarded_allow_ips",
        "--forwarded-allow-ips",
        str,
        "trust X-Forwarded-For/-Proto/-Host and Forwarded from these addresses or networks (comma-separated, * for all; default none)",
        "IPS",
    ),
    Setting(
        "proxy_protocol",
        "--proxy-protocol",
        _switch,
        "read a PROXY protocol (v1 or v2) header, before any TLS, on connections from --proxy-allow-from",
        switch=True,
    ),
    Setting(
        "proxy_allow_from",
        "--proxy-allow-from",
        str,
        "with --proxy-protocol: the peers whose PROXY header is read, addresses or networks "
        "(comma-separated, * for all; default 127.0.0.1,::1); others are served as plain clients",
        "IPS",
    ),
    Setting(
        "limit_request_line",
        "--limit-request-line",
        _size,
        f"the longest request target (URL), in bytes, else 414 (default {DEFAULT_LIMITS.max_target_bytes})",
        "BYTES",
    ),
    Setting(
        "limit_request_fields",
        "--limit-request-fields",
        _count,
        f"the most header fields in a request, else 431 (default {DEFAULT_LIMITS.max_header_count})",
        "N",
    ),
    Setting(
        "limit_request_field_size",
        "--limit-request-field-size",
        _size,
        f"the longest header field line (name, value, separator and CRLF), in bytes, else 431 (default {DEFAULT_LIMITS.max_field_bytes})",
        "BYTES",
        aliases=("--limit-request-field_size",),
    ),
    Setting(
        "limit_request_headers",
        "--limit-request-headers",
        _size,
        f"the largest request head (target and all header fields), in bytes, else 431 (default {DEFAULT_LIMITS.max_header_bytes})",
        "BYTES",
    ),
    Setting(
        "limit_request_body",
        "--limit-request-body",
        _size,
        "the largest request body, in bytes (suffixes K, M, G), else 413 (default 100M)",
        "BYTES",
    ),
    Setting(
        "certfile",
        "--certfile",
        str,
        "serve TLS with this certificate (PEM, chain allowed)",
        "PATH",
    ),
    Setting("keyfile", "--keyfile", str, "the TLS private key (if not in --certfile)", "PATH"),
    Setting(
        "metrics",
        "--metrics",
        str,
        "serve /metrics (Prometheus), /healthz, /readyz and a live status page at HOST:PORT or unix:PATH, from the supervisor",
        "ADDRESS",
    ),
    Setting(
        "metrics_allowed_hosts",
        "--metrics-allowed-hosts",
        str,
        "the endpoint answers only requests whose Host is one of these names (comma-separated), "
        "403 otherwise: a page opened under another name (DNS rebinding) learns nothing",
        "HOSTS",
    ),
    Setting(
        "control",
        "--control",
        str,
        "accept `squall ctl` commands on this unix socket (mode 0600)",
        "PATH",
    ),
    Setting(
        "ws_max_size",
        "--ws-max-size",
        _size,
        "the largest WebSocket message accepted, in bytes (suffixes K, M, G), else close 1009 (default 16M)",
        "BYTES",
        aliases=("--websocket-max-message-size",),
    ),
    Setting(
        "ws_ping_interval",
        "--ws-ping-interval",
        _seconds,
        "send a WebSocket ping this often; 0 disables (default 20)",
        "SECONDS",
    ),
    Setting(
        "ws_ping_timeout",
        "--ws-ping-timeout",
        _seconds,
        "close a WebSocket whose pong does not come within this long (default 20)",
        "SECONDS",
    ),
    Setting(
        "config",
        "--config",
        str,
        "a Python file setting any of these options by name, and the hooks on_starting, post_fork, worker_exit, on_reload, when_ready, on_exit, worker_abort",
        "FILE",
    ),
)


def from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Settings given as SQUALL_* variables (lists separated by commas)."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.env_key)
        if raw is None or raw == "":
            continue
        items = [item.strip() for item in raw.split(",")] if setting.repeated else [raw]
        try:
            parsed = [setting.parse(item) for item in items]
        except ValueError:
            raise UsageError(f"invalid value {raw!r} for {setting.env_key}") from None
        values[setting.name] = parsed if setting.repeated else parsed[0]
    return values


def config_fields() -> set[str]:
    return {f.name for f in fields(Config) if f.init}


def from_file(path: str) -> dict[str, Any]:
    """Settings and hooks from a Python file: module-level names that match settings."""
    import runpy

    try:
        namespace = runpy.run_path(path)
    except FileNotFoundError:
        raise UsageError(f"--config file {path!r} does not exist") from None
    except (Exception, SystemExit) as exc:
        raise UsageError(f"error in --config file {path!r}: {type(exc).__name__}: {exc}") from None
    known = config_fields() - {"app", "config"}
    settings = {setting.name: setting for setting in SETTINGS}
    values: dict[str, Any] = {}
    for name, value in namespace.items():
        if name not in known or value is None:
            continue
        setting = settings.get(name)
        if setting is not None:  # hooks are checked by `Config.validate`
            value = _from_python(path, setting, value)
        values[name] = value
    return values


def _from_python(path: str, setting: Setting, value: Any) -> Any:
    """A file's value, checked and parsed as on the command line: `workers = "3"` is an error."""
    if setting.repeated and isinstance(value, str):
        value = [value]  # bind = "127.0.0.1:8000" is one address, not one per character
    items = value if setting.repeated and isinstance(value, (list, tuple)) else [value]
    types, expected = _FILE_TYPES.get(setting.parse, ((str,), "a string"))
    try:
        for item in items:
            if not isinstance(item, types) or isinstance(item, bool) != (types == (bool,)):
                raise ValueError(item)
        parsed = [setting.parse(str(item)) for item in items]
    except ValueError:
        raise UsageError(
            f"{setting.name} in --config file {path!r} must be {expected}, not {value!r}"
        ) from None
    return parsed if setting.repeated else parsed[0]


_FILE_TYPES: dict[Callable[[str], Any], tuple[tuple[type, ...], str]] = {
    _count: ((int,), "a whole number"),
    _size: ((int, str), "a number of bytes (65536, or a string such as '64K' or '10M')"),
    _seconds: ((int, float), "a number of seconds"),
    _switch: ((bool,), "True or False"),
}
