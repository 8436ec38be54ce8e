"""Every setting, defined once: its flag, environment key, type, default and help.

The command line and the `SQUALL_*` environment variables are both derived
from `SETTINGS`; `Config.validate` gives each bad value one clear message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from squall.appload import INTERFACES
from squall.errors import UsageError
from squall.http.core import DEFAULT_LIMITS, Limits
from squall.logs import FORMATS as LOG_FORMATS
from squall.supervisor import SupervisorSettings
from squall.websocket.session import WebSocketOptions
from squall.wsgi import DEFAULT_THREADS

SUPERVISOR_DEFAULTS = SupervisorSettings()
#: The WebSocket settings' defaults are the session's own.
DEFAULT_WEBSOCKET = WebSocketOptions()

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
    minimum: float | None = None  # a smaller value is refused (`Config.validate`)
    minimum_means: str = ""  # what the minimum does, for the message: "(off)"

    @property
    def env_key(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def default(self) -> Any:
        """The default, from `Config`: the one place where defaults live."""
        return _DEFAULTS.get(self.name)

    @property
    def described(self) -> str:
        """The help text, with the default said (unless the help says it in words)."""
        default = self.default
        if self.switch or "default" in self.help or default in (None, "", 0, []):
            return self.help
        if self.parse is _size:
            default = _size_text(default)
        elif isinstance(default, float):
            default = f"{default:g}"
        return f"{self.help} (default {default})"

    def check(self, value: Any) -> None:
        """Refuse a value below the minimum or outside the choices, in one clear line."""
        if self.minimum is not None and value is not None and value < self.minimum:
            least = int(self.minimum) if self.minimum == int(self.minimum) else self.minimum
            means = f" {self.minimum_means}" if self.minimum_means else ""
            raise UsageError(f"{self.flag} must be {least}{means} or more, not {value}")
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{self.flag} must be one of {', '.join(self.choices)}")


@dataclass
class Config:
    app: str = ""
    bind: list[str] = field(default_factory=list)
    workers: int = 1
    max_restarts: int = SUPERVISOR_DEFAULTS.max_restarts
    restart_window: float = SUPERVISOR_DEFAULTS.restart_window
    interface: str = "auto"
    graceful_timeout: float = SUPERVISOR_DEFAULTS.graceful_timeout
    keepalive_timeout: float = 5.0
    backlog: int | None = None
    root_path: str = ""
    log_level: str = "info"
    log_file: str | None = None
    log_format: str = "text"
    user: str | None = None
    group: str | None = None
    timeout: float = SUPERVISOR_DEFAULTS.timeout
    boot_timeout: float = SUPERVISOR_DEFAULTS.boot_timeout
    max_requests: int = 0
    max_requests_jitter: int = 0
    max_worker_memory: int = 0
    limit_concurrency: int = 0
    max_connections: int = 0
    metrics_allowed_hosts: str = ""
    request_timeout: float = 0.0
    on_exhausted: str = SUPERVISOR_DEFAULTS.on_exhausted
    reload_batch: int = SUPERVISOR_DEFAULTS.reload_batch
    reuse_port: bool = False
    shared_socket: bool = False
    no_steering: bool = False
    preload: bool = False
    reload: bool = False
    threads: int = DEFAULT_THREADS
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
    no_http2: bool = False
    h2c: bool = False
    h2_max_concurrent_streams: int = 100
    h2_max_resets: int = 200
    h2_max_control_frames: int = 1000
    ws_max_size: int = DEFAULT_WEBSOCKET.max_size
    ws_ping_interval: float = DEFAULT_WEBSOCKET.ping_interval
    ws_ping_timeout: float = DEFAULT_WEBSOCKET.ping_timeout
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

    def supervisor_settings(self) -> SupervisorSettings:
        """The supervisor's part of the settings."""
        return SupervisorSettings(
            **{each.name: getattr(self, each.name) for each in fields(SupervisorSettings)}
        )

    def limits(self) -> Limits:
        """The request limits (`--limit-request-*`), as the HTTP core takes them."""
        return Limits(**{field: getattr(self, name) for name, field in LIMIT_SETTINGS.items()})

    def validate(self) -> None:
        for setting in SETTINGS:
            setting.check(getattr(self, setting.name))
        if self.forwarded_allow_ips.strip():
            from squall.http.proxy_headers import TrustedProxies

            TrustedProxies(self.forwarded_allow_ips)  # a bad entry is a UsageError now
        if self.proxy_allow_from.strip():
            from squall.http.proxy_accept import AllowList

            AllowList(self.proxy_allow_from)  # a bad entry is a UsageError now
        if self.keyfile is not None and self.certfile is None:
            raise UsageError("--keyfile needs --certfile")
        for hook in HOOKS:
            value = getattr(self, hook)
            if value is not None and not callable(value):
                raise UsageError(f"hook {hook} must be a callable, not {value!r}")
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


def _size_text(value: int) -> str:
    """A byte count as `_size` reads it: 100M, 64K, or plain bytes."""
    for unit in "GMK":
        if value and value % _UNITS[unit.lower()] == 0:
            return f"{value // _UNITS[unit.lower()]}{unit}"
    return str(value)


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
        "worker processes; 0 means one per usable CPU",
        "N",
        minimum=0,
        minimum_means="(one per CPU)",
    ),
    Setting(
        "max_restarts",
        "--max-restarts",
        _count,
        "give up after this many worker restarts within --restart-window",
        "N",
        minimum=0,
    ),
    Setting(
        "restart_window",
        "--restart-window",
        _seconds,
        "the window in which --max-restarts counts, in seconds; 0 means the whole lifetime",
        "SECONDS",
        minimum=0,
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
        "on stop, how long workers may finish requests in flight",
        "SECONDS",
        minimum=0,
    ),
    Setting(
        "keepalive_timeout",
        "--keepalive-timeout",
        _seconds,
        "close idle keep-alive connections after this long",
        "SECONDS",
        minimum=0,
    ),
    Setting(
        "backlog",
        "--backlog",
        _count,
        "listen backlog (default: the most the OS allows)",
        "N",
        minimum=1,
    ),
    Setting(
        "root_path", "--root-path", str, "ASGI root_path, for apps mounted below a prefix", "PATH"
    ),
    Setting("log_level", "--log-level", str, "log level", choices=LOG_LEVELS),
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
        "replace a worker whose event loop has made no progress for this long, after logging its stacks; 0 disables",
        "SECONDS",
        minimum=0,
        minimum_means="(off)",
    ),
    Setting(
        "boot_timeout",
        "--boot-timeout",
        _seconds,
        "a worker not ready this long after its start is stopped: at the first start the service stops, later it counts as a crash; 0 disables",
        "SECONDS",
        minimum=0,
    ),
    Setting(
        "max_requests",
        "--max-requests",
        _count,
        "replace a worker gracefully after it served this many requests; 0 disables",
        "N",
        minimum=0,
    ),
    Setting(
        "request_timeout",
        "--request-timeout",
        _seconds,
        "a request still running after this long gets 504 (or, its response begun, a closed "
        "connection) and its task is cancelled; 0: none",
        "SECONDS",
        minimum=0,
    ),
    Setting(
        "max_connections",
        "--max-connections",
        _count,
        "per worker: at this many open connections, accept no more until one closes (the kernel "
        "queue or the other workers hold them); default 0: what ulimit -n allows, less a reserve",
        "N",
        minimum=0,
    ),
    Setting(
        "limit_concurrency",
        "--limit-concurrency",
        _count,
        "per worker: a request beyond this many in flight gets 503 with Retry-After at once, "
        "without calling the app; 0: no limit",
        "N",
        minimum=0,
    ),
    Setting(
        "max_worker_memory",
        "--max-worker-memory",
        _count,
        "replace a worker whose resident memory passes this many MiB (its successor ready "
        "first; each worker's limit is up to 5%% lower, so they do not all go at once); 0: off",
        "MiB",
        minimum=0,
    ),
    Setting(
        "max_requests_jitter",
        "--max-requests-jitter",
        _count,
        "add up to this many to each worker's --max-requests, so they do not all recycle at once",
        "N",
        minimum=0,
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
        "on reload (SIGHUP), replace this many workers at a time",
        "N",
        minimum=1,
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
    Setting("threads", "--threads", _count, "WSGI: threads per worker", "N", minimum=1),
    Setting(
        "header_timeout",
        "--header-timeout",
        _seconds,
        "a request head must arrive within this long once begun, else 408 and close",
        "SECONDS",
        minimum=0,
    ),
    Setting(
        "body_timeout",
        "--body-timeout",
        _seconds,
        "the longest silence while a request body is read, else 408 and close",
        "SECONDS",
        minimum=0,
    ),
    Setting(
        "body_min_rate",
        "--body-min-rate",
        _size,
        "once --body-timeout has passed since a request body began, it must have come at "
        "this many bytes a second on average, else 408 and close (default 500; 0: off)",
        "BYTES",
        minimum=0,
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
        "the longest request target (URL), in bytes, else 414",
        "BYTES",
        minimum=1,
    ),
    Setting(
        "limit_request_fields",
        "--limit-request-fields",
        _count,
        "the most header fields in a request, else 431",
        "N",
        minimum=1,
    ),
    Setting(
        "limit_request_field_size",
        "--limit-request-field-size",
        _size,
        "the longest header field line (name, value, separator and CRLF), in bytes, else 431",
        "BYTES",
        aliases=("--limit-request-field_size",),
        minimum=1,
    ),
    Setting(
        "limit_request_headers",
        "--limit-request-headers",
        _size,
        "the largest request head (target and all header fields), in bytes, else 431",
        "BYTES",
        minimum=1,
    ),
    Setting(
        "limit_request_body",
        "--limit-request-body",
        _size,
        "the largest request body, in bytes (suffixes K, M, G), else 413",
        "BYTES",
        minimum=1,
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
        "no_http2",
        "--no-http2",
        _switch,
        "with TLS, offer only http/1.1 by ALPN (by default h2 first)",
        switch=True,
    ),
    Setting(
        "h2c",
        "--h2c",
        _switch,
        "serve cleartext HTTP/2 too: prior knowledge (the h2c preface) and Upgrade: h2c",
        switch=True,
    ),
    Setting(
        "h2_max_concurrent_streams",
        "--h2-max-concurrent-streams",
        _count,
        "HTTP/2 streams a connection may have open (counting reset ones whose handler still runs)",
        "N",
        minimum=1,
    ),
    Setting(
        "h2_max_resets",
        "--h2-max-resets",
        _count,
        "HTTP/2 stream resets a client may send per 10 s before GOAWAY (rapid reset)",
        "N",
        minimum=1,
    ),
    Setting(
        "h2_max_control_frames",
        "--h2-max-control-frames",
        _count,
        "HTTP/2 PING, SETTINGS, PRIORITY and empty DATA frames a client may send per 10 s before GOAWAY",
        "N",
        minimum=1,
    ),
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
        "the largest WebSocket message accepted, in bytes (suffixes K, M, G), else close 1009",
        "BYTES",
        aliases=("--websocket-max-message-size",),
        minimum=1,
    ),
    Setting(
        "ws_ping_interval",
        "--ws-ping-interval",
        _seconds,
        "send a WebSocket ping this often; 0 disables",
        "SECONDS",
        minimum=0,
    ),
    Setting(
        "ws_ping_timeout",
        "--ws-ping-timeout",
        _seconds,
        "close a WebSocket whose pong does not come within this long",
        "SECONDS",
        minimum=0,
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


#: Each setting's default, read from `Config`'s fields (`Setting.default`).
_DEFAULTS: dict[str, Any] = {
    each.name: each.default for each in fields(Config) if each.default is not MISSING
}
