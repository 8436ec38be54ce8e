"""Encode BPF instructions with the kernel's own names (include/uapi/linux/bpf*.h, filter.h).

squall assembles two small programs in Python, with no compiler: the eBPF
steering program (`squall.steering`) and the classic BPF one
(`squall.classic_bpf`). The functions here are named and ordered like the C
macros of tools/include/linux/filter.h (`BPF_MOV64_REG(dst, src)`, ...) and
of linux/filter.h for classic BPF (`BPF_STMT`, `BPF_JUMP`), so a program reads
like the kernel's own samples and can be checked against its documentation
(Documentation/bpf/standardization/instruction-set.rst) without decoding hex.
Only the codes squall's programs use are named.

An eBPF instruction is 8 bytes: opcode, dst and src registers (one nibble
each, dst low), a signed 16-bit offset and a signed 32-bit immediate, here
little-endian, the layout of the hosts squall steers on. `BPF_LD_IMM64` is
two instructions. A classic instruction is a `struct sock_filter` in the
host's byte order.

Jumps may name a label instead of an offset: `assemble` resolves each to the
next occurrence of that label in the program, counted in instructions.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias, overload

# -- opcode fields, shared by classic BPF and eBPF (linux/bpf_common.h, linux/bpf.h) ----------

# Instruction classes: the low 3 bits.
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_ST = 0x02
BPF_STX = 0x03
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_RET = 0x06  # classic BPF
BPF_ALU64 = 0x07  # eBPF (classic BPF's BPF_MISC)

# Loads and stores: the size (bits 3-4) and the mode (bits 5-7).
BPF_W = 0x00
BPF_DW = 0x18
BPF_IMM = 0x00
BPF_ABS = 0x20
BPF_MEM = 0x60
BPF_ATOMIC = 0xC0

# Arithmetic and jumps: the operation (bits 4-7) and where the operand is (bit 3).
BPF_ADD = 0x00
BPF_SUB = 0x10
BPF_OR = 0x40
BPF_LSH = 0x60
BPF_RSH = 0x70
BPF_NEG = 0x80
BPF_MOD = 0x90
BPF_MOV = 0xB0

BPF_JEQ = 0x10
BPF_JGE = 0x30
BPF_JNE = 0x50
BPF_CALL = 0x80
BPF_EXIT = 0x90
BPF_JLE = 0xB0

BPF_K = 0x00  # the immediate
BPF_X = 0x08  # the src register (classic BPF: the X register)

# -- eBPF ------------------------------------------------------------------------------------

# r0: return value; r1-r5: arguments (clobbered by a call); r6-r9: kept across calls;
# r10: the read-only frame pointer.
(
    BPF_REG_0,
    BPF_REG_1,
    BPF_REG_2,
    BPF_REG_3,
    BPF_REG_4,
    BPF_REG_5,
    BPF_REG_6,
    BPF_REG_7,
    BPF_REG_8,
    BPF_REG_9,
    BPF_REG_10,
) = range(11)
BPF_REG_FP = BPF_REG_10

#: In BPF_LD_IMM64's src register: the immediate is a map's descriptor.
BPF_PSEUDO_MAP_FD = 1

# Helper functions, by their number in enum bpf_func_id.
BPF_FUNC_map_lookup_elem = 1
BPF_FUNC_ktime_get_ns = 5
BPF_FUNC_sk_select_reuseport = 82


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One struct bpf_insn. `imm` is signed: most instructions sign-extend it to 64 bits."""
    if not (0 <= dst < 16 and 0 <= src < 16):
        raise ValueError(f"no register r{dst} or r{src}")
    if not -(1 << 31) <= imm < 1 << 31:
        raise ValueError(f"immediate {imm} is not a signed 32-bit number")
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


@dataclass(frozen=True)
class Jump:
    """A jump whose offset is the distance to a label, known only when `assemble` reaches it."""

    label: str
    code: int
    dst: int
    src: int = 0
    imm: int = 0

    def to(self, off: int) -> bytes:
        return _insn(self.code, self.dst, self.src, off, self.imm)


def _jump(code: int, dst: int, src: int, imm: int, off: int | str) -> bytes | Jump:
    if isinstance(off, str):
        return Jump(off, code, dst, src, imm)
    return _insn(code, dst, src, off, imm)


def BPF_ALU64_REG(op: int, dst: int, src: int) -> bytes:
    """dst op= src (64-bit)."""
    return _insn(BPF_ALU64 | op | BPF_X, dst, src)


def BPF_ALU64_IMM(op: int, dst: int, imm: int) -> bytes:
    """dst op= imm (64-bit; imm sign-extended)."""
    return _insn(BPF_ALU64 | op | BPF_K, dst, imm=imm)


def BPF_MOV64_REG(dst: int, src: int) -> bytes:
    """dst = src."""
    return BPF_ALU64_REG(BPF_MOV, dst, src)


def BPF_MOV64_IMM(dst: int, imm: int) -> bytes:
    """dst = imm (sign-extended)."""
    return BPF_ALU64_IMM(BPF_MOV, dst, imm)


def _ld_imm64_raw(dst: int, src: int, imm: int) -> bytes:
    """The one 16-byte instruction: the low 32 bits in the first half, the high in the second."""
    if not -(1 << 63) <= imm < 1 << 64:
        raise ValueError(f"immediate {imm} is wider than 64 bits")
    low, high = struct.unpack("<ii", struct.pack("<Q", imm & 0xFFFFFFFFFFFFFFFF))
    return _insn(BPF_LD | BPF_DW | BPF_IMM, dst, src, imm=low) + _insn(0, imm=high)


def BPF_LD_IMM64(dst: int, imm: int) -> bytes:
    """dst = a 64-bit constant (two instructions)."""
    return _ld_imm64_raw(dst, 0, imm)


def BPF_LD_MAP_FD(dst: int, fd: int) -> bytes:
    """dst = the map behind descriptor `fd` (the kernel puts its address there at load)."""
    return _ld_imm64_raw(dst, BPF_PSEUDO_MAP_FD, fd)


def BPF_LDX_MEM(size: int, dst: int, src: int, off: int) -> bytes:
    """dst = *(size *)(src + off)."""
    return _insn(BPF_LDX | size | BPF_MEM, dst, src, off)


def BPF_STX_MEM(size: int, dst: int, src: int, off: int) -> bytes:
    """*(size *)(dst + off) = src."""
    return _insn(BPF_STX | size | BPF_MEM, dst, src, off)


def BPF_ST_MEM(size: int, dst: int, off: int, imm: int) -> bytes:
    """*(size *)(dst + off) = imm."""
    return _insn(BPF_ST | size | BPF_MEM, dst, off=off, imm=imm)


def BPF_ATOMIC_OP(size: int, op: int, dst: int, src: int, off: int) -> bytes:
    """*(size *)(dst + off) op= src, atomically (BPF_ADD: the old BPF_STX_XADD)."""
    return _insn(BPF_STX | size | BPF_ATOMIC, dst, src, off, op)


@overload
def BPF_JMP_REG(op: int, dst: int, src: int, off: int) -> bytes: ...
@overload
def BPF_JMP_REG(op: int, dst: int, src: int, off: str) -> Jump: ...
def BPF_JMP_REG(op: int, dst: int, src: int, off: int | str) -> bytes | Jump:
    """If dst op src, skip `off` instructions (or jump to the label `off`)."""
    return _jump(BPF_JMP | op | BPF_X, dst, src, 0, off)


@overload
def BPF_JMP_IMM(op: int, dst: int, imm: int, off: int) -> bytes: ...
@overload
def BPF_JMP_IMM(op: int, dst: int, imm: int, off: str) -> Jump: ...
def BPF_JMP_IMM(op: int, dst: int, imm: int, off: int | str) -> bytes | Jump:
    """If dst op imm, skip `off` instructions (or jump to the label `off`)."""
    return _jump(BPF_JMP | op | BPF_K, dst, 0, imm, off)


def BPF_EMIT_CALL(func: int) -> bytes:
    """r0 = helper `func`(r1, ..., r5)."""
    return _insn(BPF_JMP | BPF_CALL, imm=func)


def BPF_EXIT_INSN() -> bytes:
    """Return r0."""
    return _insn(BPF_JMP | BPF_EXIT)


#: What a program is written as: instructions, labels, and jumps to the next such label.
Item: TypeAlias = "bytes | str | Jump"


def assemble(program: Iterable[Item]) -> bytes:
    """Resolve each jump to the next occurrence of its label, and join the instructions."""
    out: list[bytes] = []
    at = 0  # in instructions: BPF_LD_IMM64 counts two
    pending: list[tuple[int, int, Jump]] = []  # (index in out, instruction, jump)
    for item in program:
        if isinstance(item, bytes):
            out.append(item)
            at += len(item) // 8
        elif isinstance(item, str):
            for index, where, jump in pending:
                if jump.label == item:
                    out[index] = jump.to(at - where - 1)
            pending = [entry for entry in pending if entry[2].label != item]
        else:
            pending.append((len(out), at, item))
            out.append(b"")
            at += 1
    if pending:
        raise ValueError(f"jumps to labels that never come: {[jump for _, _, jump in pending]}")
    return b"".join(out)


# -- classic BPF (linux/filter.h) ----------------------------------------------------------

#: Loads at negative offsets from SKF_AD_OFF read "ancillary" data, not the packet.
SKF_AD_OFF = -0x1000
SKF_AD_RANDOM = 56  # a random 32-bit number


def BPF_STMT(code: int, k: int) -> bytes:
    """One struct sock_filter without jumps. `k` may be given signed or as its 32-bit pattern."""
    return BPF_JUMP(code, k, 0, 0)


def BPF_JUMP(code: int, k: int, jt: int, jf: int) -> bytes:
    """One struct sock_filter: if true skip `jt` instructions, else `jf`."""
    if not -(1 << 31) <= k < 1 << 32:
        raise ValueError(f"k {k} is wider than 32 bits")
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)
