"""systemd: sd_notify (READY, STATUS, RELOADING, STOPPING, WATCHDOG) and socket activation."""

from __future__ import annotations

import socket

from squall.supervisor import PluginBase


class SystemdPlugin(PluginBase):
    """Tells systemd what the supervisor does; only built under systemd (NOTIFY_SOCKET)."""

    @classmethod
    def from_environment(cls) -> SystemdPlugin | None:
        return None


def listen_fds() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (LISTEN_FDS for this pid), else []."""
    return []
