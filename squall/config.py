"""Every setting, defined once: its flag, environment key, type, default and help.

The command line and the `SQUALL_*` environment variables are both derived
from `SETTINGS`; `Config.validate` gives each bad value one clear message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from squall.appload import INTERFACES
from squall.errors import UsageError

ENV_PREFIX = "SQUALL_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


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

    DEFAULT_BIND = "127.0.0.1:8000"

    def validate(self) -> None:
        if self.workers < 0:
            raise UsageError(f"--workers must be 0 (one per CPU) or more, not {self.workers}")
        if self.max_restarts < 0:
            raise UsageError(f"--max-restarts must be 0 or more, not {self.max_restarts}")
        for name in ("restart_window", "graceful_timeout", "keepalive_timeout"):
            if getattr(self, name) < 0:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be 0 or more, not {getattr(self, name)}")
        if self.backlog is not None and self.backlog < 1:
            raise UsageError(f"--backlog must be 1 or more, not {self.backlog}")
        if self.interface not in INTERFACES:
            raise UsageError(f"--interface must be one of {', '.join(INTERFACES)}")
        if self.log_level not in LOG_LEVELS:
            raise UsageError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        if not self.bind:
            self.bind = [self.DEFAULT_BIND]


def _count(text: str) -> int:
    return int(text)


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
    return {f.name for f in fields(Config)}
