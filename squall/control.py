"""`squall ctl`: steer a running service over a unix socket (mode 0600)."""

from __future__ import annotations

from collections.abc import Sequence

from squall.supervisor import PluginBase


class ControlPlugin(PluginBase):
    """In the supervisor: answers commands on the control socket."""

    def __init__(self, path: str) -> None:
        raise NotImplementedError("--control is not implemented yet")


def ctl_main(argv: Sequence[str]) -> int:
    """`squall ctl [--socket PATH] status|reload|scale N|stop|restart-worker ID`."""
    raise NotImplementedError("squall ctl is not implemented yet")
