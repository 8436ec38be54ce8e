"""Running as a user of its own: what the supervisor keeps, what the workers never have.

Started as root with `--user`, squall binds its sockets and loads the
steering program first, then becomes that user. The supervisor keeps only
the capabilities it may still use: CAP_NET_BIND_SERVICE, to open a new
worker slot's socket on a port below 1024, and CAP_BPF, to load the
steering program again when the number of slots changes. A worker keeps
none: the app never runs with a privilege, whether squall dropped root or
systemd gave the service capabilities (`AmbientCapabilities=`).

Linux only for the capabilities; elsewhere only the user and group change.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import os
import pwd
import socket
import struct
import sys
from dataclasses import dataclass

from squall.errors import UsageError

__all__ = ["Identity", "become", "drop_capabilities", "resolve"]

CAP_NET_BIND_SERVICE = 10
CAP_BPF = 39
#: What the supervisor keeps after it leaves root, if it had them.
SUPERVISOR_CAPABILITIES = (CAP_NET_BIND_SERVICE, CAP_BPF)

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_SET_KEEPCAPS = 8
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 2, 4
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    name: str | None  # for the supplementary groups; None for a bare uid


def resolve(user: str | None, group: str | None) -> Identity | None:
    """The user and group to run as, by name or number; None if neither is given."""
    if user is None and group is None:
        return None
    name: str | None = None
    if user is None:
        uid = os.geteuid()
        gid = _group_id(group) if group is not None else os.getegid()
        return Identity(uid, gid, None)
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
    except KeyError:
        if not user.isdigit():
            raise UsageError(f"--user {user}: no such user") from None
        uid, gid = int(user), int(user)  # a uid with no passwd entry (containers)
    if group is not None:
        gid = _group_id(group)
    return Identity(uid, gid, name)


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"--group {group}: no such group") from None


def become(identity: Identity, sockets: list[socket.socket], files: list[str]) -> None:
    """Leave root for `identity`, keeping `SUPERVISOR_CAPABILITIES` (those it had).

    The listening sockets are handed to the user first: a reuse-port group
    takes a new socket only from the user that owns the group's sockets.
    `files` (the log file, socket files) are given to the user too, so that
    it can reopen or remove them.
    """
    if os.geteuid() != 0:
        if (identity.uid, identity.gid) == (os.geteuid(), os.getegid()):
            return
        raise UsageError("--user and --group need squall to be started as root")
    for sock in sockets:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            os.fchown(sock.fileno(), identity.uid, identity.gid)
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            os.chown(path, identity.uid, identity.gid)
    keep = [cap for cap in SUPERVISOR_CAPABILITIES if _has_capability(cap)]
    if _libc is not None:
        _prctl(_PR_SET_KEEPCAPS, 1)
    groups = os.getgrouplist(identity.name, identity.gid) if identity.name else [identity.gid]
    os.setgroups(groups)
    os.setgid(identity.gid)
    os.setuid(identity.uid)
    if _libc is not None:
        _prctl(_PR_SET_KEEPCAPS, 0)
        # Inheritable and ambient too, so that they outlive the exec of a hot upgrade.
        _set_capabilities(keep, inheritable=True)
        for cap in keep:
            _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, cap)


def drop_capabilities() -> None:
    """In a worker not running as root: give up every capability (ambient ones included)."""
    if _libc is None or os.geteuid() == 0:
        return  # root's power is its uid; dropping capabilities alone would half-change it
    if not any(_capabilities()):
        return
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    _set_capabilities([])


def _has_capability(cap: int) -> bool:
    if _libc is None:
        return False
    return bool(_capabilities()[1] >> cap & 1)


def _capabilities() -> tuple[int, int]:
    """(effective, permitted) as 64-bit masks."""
    header = ctypes.create_string_buffer(struct.pack("=Ii", _LINUX_CAPABILITY_VERSION_3, 0))
    data = ctypes.create_string_buffer(24)
    assert _libc is not None
    if _libc.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget: " + os.strerror(ctypes.get_errno()))
    e0, p0, _i0, e1, p1, _i1 = struct.unpack("=6I", data.raw)
    return e0 | e1 << 32, p0 | p1 << 32


def _set_capabilities(caps: list[int], inheritable: bool = False) -> None:
    """Effective and permitted become exactly `caps`; inheritable the same, or none."""
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    low, high = mask & 0xFFFFFFFF, mask >> 32
    header = ctypes.create_string_buffer(struct.pack("=Ii", _LINUX_CAPABILITY_VERSION_3, 0))
    inherit_low, inherit_high = (low, high) if inheritable else (0, 0)
    data = ctypes.create_string_buffer(
        struct.pack("=6I", low, low, inherit_low, high, high, inherit_high)
    )
    assert _libc is not None
    if _libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset: " + os.strerror(ctypes.get_errno()))


def _prctl(option: int, arg: int, arg3: int = 0) -> None:
    assert _libc is not None
    if _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg3), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl: " + os.strerror(ctypes.get_errno()))
