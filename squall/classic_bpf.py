"""Pick a reuse-port socket at random among the slots still taking connections (classic BPF).

Without a program, Linux picks a reuse-port group's socket by a hash of the
connection, and it cannot be told to pass one over: a slot about to close
keeps receiving connections until it does, and closing resets what it then
holds (unless `net.ipv4.tcp_migrate_req` is on, a root-only setting). The
eBPF steering (`squall.steering`) can skip a slot, but loading it needs
CAP_BPF. A classic BPF program attached with SO_ATTACH_REUSEPORT_CBPF needs
no capability, like any socket filter, and that is enough here: it draws a
random number and returns the group index of one of the slots still open
for business. So a retiring slot gets nothing new, and its worker can empty
its queue before the socket closes.

The program names sockets by their index in the kernel's array for the
group, which is the order in which they started listening, except that when
one closes, the last takes its place. `GroupOrder` keeps that order.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Iterable

from squall.bpf_asm import (
    BPF_ABS,
    BPF_ALU,
    BPF_JEQ,
    BPF_JMP,
    BPF_JUMP,
    BPF_K,
    BPF_LD,
    BPF_MOD,
    BPF_RET,
    BPF_STMT,
    BPF_W,
    SKF_AD_OFF,
    SKF_AD_RANDOM,
)

__all__ = ["GroupOrder", "attach", "program"]

SO_ATTACH_REUSEPORT_CBPF = 51
#: An index past the group's end: the kernel falls back to its hash.
NO_CHOICE = 0xFFFFFFFF
#: cBPF's limit is 4096 instructions; two per slot.
MAX_CHOICES = 2000


class GroupOrder:
    """The kernel's order of a reuse-port group's sockets, by key (a slot id)."""

    def __init__(self) -> None:
        self.keys: list[object] = []

    def joined(self, key: object) -> None:
        self.keys.append(key)

    def left(self, key: object) -> None:
        """The socket closed: the group's last socket moves into its place."""
        index = self.keys.index(key)
        last = self.keys.pop()
        if index < len(self.keys):
            self.keys[index] = last

    def indexes(self, keys: Iterable[object]) -> list[int]:
        wanted = set(keys)
        return [index for index, key in enumerate(self.keys) if key in wanted]


def program(choices: list[int]) -> bytes:
    """Return one of the group indexes `choices`, at random (none: the kernel's hash)."""
    if not choices:
        return BPF_STMT(BPF_RET | BPF_K, NO_CHOICE)
    code = [
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_RANDOM),  # A = a random number
        BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, len(choices)),  # A %= len(choices)
    ]
    for number, index in enumerate(choices[:-1]):
        code += [
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, number, 0, 1),  # A == number, or skip one
            BPF_STMT(BPF_RET | BPF_K, index),
        ]
    code.append(BPF_STMT(BPF_RET | BPF_K, choices[-1]))
    return b"".join(code)


def attach(sock: socket.socket, choices: list[int]) -> None:
    """Attach the program to `sock`'s group (any listening socket of the group will do)."""
    if len(choices) > MAX_CHOICES:
        raise OSError(f"more than {MAX_CHOICES} sockets in a reuse-port group")
    code = program(choices)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(code) // 8, ctypes.addressof(buffer))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
