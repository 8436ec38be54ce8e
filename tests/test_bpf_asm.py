"""The BPF assembler: its encodings against the kernel's, and the programs squall builds with it.

The expected bytes of single instructions are derived by hand from the
kernel's encoding (Documentation/bpf/standardization/instruction-set.rst,
linux/filter.h): eBPF is opcode, dst | src << 4, off (s16), imm (s32),
little-endian; classic BPF is code (u16), jt, jf, k (u32) in host order.
The whole programs are golden: captured from `squall.steering.program` and
`squall.classic_bpf.program` at aedda67, when they were still written as
raw opcodes, so an encoding that drifts fails here before a kernel sees it.
Change a golden only with the program it records.
"""

from __future__ import annotations

import sys

import pytest

from squall import classic_bpf, steering
from squall.bpf_asm import (
    BPF_ABS,
    BPF_ADD,
    BPF_ALU,
    BPF_ALU64_IMM,
    BPF_ALU64_REG,
    BPF_ATOMIC_OP,
    BPF_DW,
    BPF_EMIT_CALL,
    BPF_EXIT_INSN,
    BPF_JEQ,
    BPF_JGE,
    BPF_JLE,
    BPF_JMP,
    BPF_JMP_IMM,
    BPF_JMP_REG,
    BPF_JNE,
    BPF_JUMP,
    BPF_K,
    BPF_LD,
    BPF_LD_IMM64,
    BPF_LD_MAP_FD,
    BPF_LDX_MEM,
    BPF_MOD,
    BPF_MOV64_IMM,
    BPF_MOV64_REG,
    BPF_NEG,
    BPF_OR,
    BPF_REG_0,
    BPF_REG_1,
    BPF_REG_2,
    BPF_REG_3,
    BPF_REG_6,
    BPF_REG_7,
    BPF_REG_8,
    BPF_REG_9,
    BPF_REG_10,
    BPF_REG_FP,
    BPF_RET,
    BPF_ST_MEM,
    BPF_STMT,
    BPF_STX_MEM,
    BPF_SUB,
    BPF_W,
    SKF_AD_OFF,
    SKF_AD_RANDOM,
    BPF_FUNC_ktime_get_ns,
    BPF_FUNC_map_lookup_elem,
    BPF_FUNC_sk_select_reuseport,
    assemble,
)

little_endian = pytest.mark.skipif(
    sys.byteorder != "little", reason="classic BPF is in host order; the expected bytes are LE"
)


def instructions(code: bytes) -> list[str]:
    """One hex string per 8-byte instruction, so that a mismatch names the instruction."""
    return [code[at : at + 8].hex() for at in range(0, len(code), 8)]


def golden(text: str) -> list[str]:
    return instructions(bytes.fromhex(text))


# (instruction, its bytes: opcode, regs (src << 4 | dst), off, imm) with the opcode's sum.
EBPF = [
    # ALU64 0x07 | MOV 0xb0 | X 0x08; src r10, dst r2
    (BPF_MOV64_REG(BPF_REG_2, BPF_REG_10), "bf a2 0000 00000000"),
    (BPF_MOV64_REG(BPF_REG_6, BPF_REG_1), "bf 16 0000 00000000"),
    # ALU64 0x07 | MOV 0xb0 | K 0x00; imm -1
    (BPF_MOV64_IMM(BPF_REG_8, -1), "b7 08 0000 ffffffff"),
    # ALU64 0x07 | ADD 0x00 | K; imm -4
    (BPF_ALU64_IMM(BPF_ADD, BPF_REG_2, -4), "07 02 0000 fcffffff"),
    # ALU64 0x07 | MOD 0x90 | K
    (BPF_ALU64_IMM(BPF_MOD, BPF_REG_7, 3), "97 07 0000 03000000"),
    # ALU64 0x07 | NEG 0x80
    (BPF_ALU64_IMM(BPF_NEG, BPF_REG_7, 0), "87 07 0000 00000000"),
    # ALU64 0x07 | SUB 0x10 | X 0x08
    (BPF_ALU64_REG(BPF_SUB, BPF_REG_2, BPF_REG_1), "1f 12 0000 00000000"),
    # ALU64 0x07 | OR 0x40 | X 0x08
    (BPF_ALU64_REG(BPF_OR, BPF_REG_1, BPF_REG_3), "4f 31 0000 00000000"),
    # LDX 0x01 | W 0x00 | MEM 0x60; off 32
    (BPF_LDX_MEM(BPF_W, BPF_REG_7, BPF_REG_6, 32), "61 67 2000 00000000"),
    # LDX 0x01 | DW 0x18 | MEM 0x60; off -16
    (BPF_LDX_MEM(BPF_DW, BPF_REG_2, BPF_REG_FP, -16), "79 a2 f0ff 00000000"),
    # STX 0x03 | DW 0x18 | MEM 0x60
    (BPF_STX_MEM(BPF_DW, BPF_REG_FP, BPF_REG_0, -16), "7b 0a f0ff 00000000"),
    # STX 0x03 | W 0x00 | MEM 0x60
    (BPF_STX_MEM(BPF_W, BPF_REG_FP, BPF_REG_9, -4), "63 9a fcff 00000000"),
    # ST 0x02 | DW 0x18 | MEM 0x60; off -24, imm 1
    (BPF_ST_MEM(BPF_DW, BPF_REG_FP, -24, 1), "7a 0a e8ff 01000000"),
    # ST 0x02 | W 0x00 | MEM 0x60; imm 128
    (BPF_ST_MEM(BPF_W, BPF_REG_FP, -4, 128), "62 0a fcff 80000000"),
    # STX 0x03 | DW 0x18 | ATOMIC 0xc0; the operation in imm (ADD 0x00)
    (BPF_ATOMIC_OP(BPF_DW, BPF_ADD, BPF_REG_0, BPF_REG_1, 0), "db 10 0000 00000000"),
    # LD 0x00 | DW 0x18 | IMM 0x00, then a reserved 0 opcode; imm low 32 bits, then high
    (BPF_LD_IMM64(BPF_REG_3, 0x1_0000_0005), "18 03 0000 05000000 00 00 0000 01000000"),
    (BPF_LD_IMM64(BPF_REG_3, 0xFFFF_FFFF_8000_0000), "18 03 0000 00000080 00 00 0000 ffffffff"),
    # The same with src BPF_PSEUDO_MAP_FD (1): imm is a map's descriptor
    (BPF_LD_MAP_FD(BPF_REG_1, 7), "18 11 0000 07000000 00 00 0000 00000000"),
    # JMP 0x05 | JEQ 0x10 | K 0x00; off 3
    (BPF_JMP_IMM(BPF_JEQ, BPF_REG_0, 0, 3), "15 00 0300 00000000"),
    (BPF_JMP_IMM(BPF_JEQ, BPF_REG_9, 128, 2), "15 09 0200 80000000"),
    # JMP 0x05 | JNE 0x50 | K
    (BPF_JMP_IMM(BPF_JNE, BPF_REG_0, 0, 4), "55 00 0400 00000000"),
    # JMP 0x05 | JGE 0x30 | X 0x08; off -2
    (BPF_JMP_REG(BPF_JGE, BPF_REG_1, BPF_REG_8, -2), "3d 81 feff 00000000"),
    # JMP 0x05 | JLE 0xb0 | X 0x08
    (BPF_JMP_REG(BPF_JLE, BPF_REG_2, BPF_REG_3, 1), "bd 32 0100 00000000"),
    # JMP 0x05 | CALL 0x80; the helper's number in imm (1, 5, 82)
    (BPF_EMIT_CALL(BPF_FUNC_map_lookup_elem), "85 00 0000 01000000"),
    (BPF_EMIT_CALL(BPF_FUNC_ktime_get_ns), "85 00 0000 05000000"),
    (BPF_EMIT_CALL(BPF_FUNC_sk_select_reuseport), "85 00 0000 52000000"),
    # JMP 0x05 | EXIT 0x90
    (BPF_EXIT_INSN(), "95 00 0000 00000000"),
]


@pytest.mark.parametrize(("insn", "expected"), EBPF, ids=[code for _, code in EBPF])
def test_ebpf_encodings(insn: bytes, expected: str) -> None:
    assert insn == bytes.fromhex(expected)


# (instruction, its bytes: code (u16), jt, jf, k) on a little-endian host.
CLASSIC = [
    # LD 0x00 | W 0x00 | ABS 0x20; k = -0x1000 + 56 = 0xfffff038
    (BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_RANDOM), "2000 00 00 38f0ffff"),
    # ALU 0x04 | MOD 0x90 | K 0x00
    (BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, 5), "9400 00 00 05000000"),
    # JMP 0x05 | JEQ 0x10 | K; jt 0, jf 1
    (BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 2, 0, 1), "1500 00 01 02000000"),
    # RET 0x06 | K
    (BPF_STMT(BPF_RET | BPF_K, 0xFFFFFFFF), "0600 00 00 ffffffff"),
]


@little_endian
@pytest.mark.parametrize(("insn", "expected"), CLASSIC, ids=[code for _, code in CLASSIC])
def test_classic_encodings(insn: bytes, expected: str) -> None:
    assert insn == bytes.fromhex(expected)


def test_a_jump_to_a_label_counts_instructions_and_ld_imm64_as_two() -> None:
    code = assemble(
        [
            BPF_JMP_IMM(BPF_JEQ, BPF_REG_0, 0, "out"),
            BPF_LD_IMM64(BPF_REG_1, 5),
            BPF_MOV64_IMM(BPF_REG_0, 1),
            "out",
            BPF_EXIT_INSN(),
        ]
    )
    assert instructions(code) == [
        "1500030000000000",
        "1801000005000000",
        "0000000000000000",
        "b700000001000000",
        "9500000000000000",
    ]


def test_a_jump_goes_to_the_next_occurrence_of_its_label() -> None:
    code = assemble(
        [
            BPF_JMP_IMM(BPF_JEQ, BPF_REG_0, 0, "next"),
            "next",
            BPF_JMP_REG(BPF_JGE, BPF_REG_1, BPF_REG_8, "next"),
            BPF_MOV64_REG(BPF_REG_8, BPF_REG_1),
            "next",
            BPF_EXIT_INSN(),
        ]
    )
    assert instructions(code) == [
        "1500000000000000",
        "3d81010000000000",
        "bf18000000000000",
        "9500000000000000",
    ]


def test_what_cannot_be_encoded_is_refused() -> None:
    with pytest.raises(ValueError, match="never come"):
        assemble([BPF_JMP_IMM(BPF_JEQ, BPF_REG_0, 0, "nowhere"), BPF_EXIT_INSN()])
    with pytest.raises(ValueError, match="register"):
        BPF_MOV64_REG(16, BPF_REG_0)
    with pytest.raises(ValueError, match="32-bit"):
        BPF_MOV64_IMM(BPF_REG_0, 1 << 31)  # sign-extended, it would be -2**31
    with pytest.raises(ValueError, match="64 bits"):
        BPF_LD_IMM64(BPF_REG_0, 1 << 64)
    with pytest.raises(ValueError, match="32 bits"):
        BPF_STMT(BPF_RET | BPF_K, 1 << 32)


STEERING_3_5_1 = """
    bf16000000000000 8500000005000000 7b0af0ff00000000 7a0ae8ff01000000
    6167200000000000 9707000001000000 8707000000000000 0707000001000000
    b7080000ffffffff b709000001000000 620afcff00000000 bfa2000000000000
    07020000fcffffff 1811000003000000 0000000000000000 8500000001000000
    15001b0000000000 7901100000000000 1501190000000000 7901180000000000
    79a2f0ff00000000 1f12000000000000 1803000040420f00 0000000000000000
    bd32010000000000 7a0ae8ff00000000 7901080000000000 7902000000000000
    bf13000000000000 7703000020000000 1f32000000000000 6702000020000000
    7702000020000000 6701000020000000 7701000020000000 0f21000000000000
    6701000020000000 bf73000000000000 0703000000000000 9703000001000000
    4f31000000000000 3d81020000000000 bf18000000000000 b709000000000000
    15091d0001000000 79a1e8ff00000000 1501090000000000 620afcff80000000
    bf61000000000000 1812000005000000 0000000000000000 bfa3000000000000
    07030000fcffffff b704000000000000 8500000052000000 1500120000000000
    639afcff00000000 bf61000000000000 1812000005000000 0000000000000000
    bfa3000000000000 07030000fcffffff b704000000000000 8500000052000000
    5500090000000000 639afcff00000000 bfa2000000000000 07020000fcffffff
    1811000003000000 0000000000000000 8500000001000000 1500020000000000
    b701000001000000 db10000000000000 b700000001000000 9500000000000000
"""
STEERING_7_9_2 = """
    bf16000000000000 8500000005000000 7b0af0ff00000000 7a0ae8ff01000000
    6167200000000000 9707000002000000 8707000000000000 0707000002000000
    b7080000ffffffff b709000002000000 620afcff00000000 bfa2000000000000
    07020000fcffffff 1811000007000000 0000000000000000 8500000001000000
    15001b0000000000 7901100000000000 1501190000000000 7901180000000000
    79a2f0ff00000000 1f12000000000000 1803000005000000 0000000001000000
    bd32010000000000 7a0ae8ff00000000 7901080000000000 7902000000000000
    bf13000000000000 7703000020000000 1f32000000000000 6702000020000000
    7702000020000000 6701000020000000 7701000020000000 0f21000000000000
    6701000020000000 bf73000000000000 0703000000000000 9703000002000000
    4f31000000000000 3d81020000000000 bf18000000000000 b709000000000000
    620afcff01000000 bfa2000000000000 07020000fcffffff 1811000007000000
    0000000000000000 8500000001000000 15001b0000000000 7901100000000000
    1501190000000000 7901180000000000 79a2f0ff00000000 1f12000000000000
    1803000005000000 0000000001000000 bd32010000000000 7a0ae8ff00000000
    7901080000000000 7902000000000000 bf13000000000000 7703000020000000
    1f32000000000000 6702000020000000 7702000020000000 6701000020000000
    7701000020000000 0f21000000000000 6701000020000000 bf73000000000000
    0703000001000000 9703000002000000 4f31000000000000 3d81020000000000
    bf18000000000000 b709000001000000 15091d0002000000 79a1e8ff00000000
    1501090000000000 620afcff80000000 bf61000000000000 1812000009000000
    0000000000000000 bfa3000000000000 07030000fcffffff b704000000000000
    8500000052000000 1500120000000000 639afcff00000000 bf61000000000000
    1812000009000000 0000000000000000 bfa3000000000000 07030000fcffffff
    b704000000000000 8500000052000000 5500090000000000 639afcff00000000
    bfa2000000000000 07020000fcffffff 1811000007000000 0000000000000000
    8500000001000000 1500020000000000 b701000001000000 db10000000000000
    b700000001000000 9500000000000000
"""

CLASSIC_NONE = """
    06000000ffffffff
"""

CLASSIC_0 = """
    2000000038f0ffff 9400000001000000 0600000000000000
"""

CLASSIC_2_0_1 = """
    2000000038f0ffff 9400000003000000 1500000100000000 0600000002000000
    1500000101000000 0600000000000000 0600000001000000
"""

CLASSIC_BIG_7 = """
    2000000038f0ffff 9400000002000000 1500000100000000 06000000feffffff
    0600000007000000
"""


def test_the_steering_program_is_unchanged() -> None:
    # One slot, the default churn window (1 ms: an imm64 with a zero high half).
    assert instructions(steering.program(3, 5, 1)) == golden(STEERING_3_5_1)
    # Two slots (labels reused across the loop), a churn window past 32 bits.
    assert instructions(steering.program(7, 9, 2, churn_ns=2**32 + 5)) == golden(STEERING_7_9_2)


@little_endian
def test_the_classic_program_is_unchanged() -> None:
    assert instructions(classic_bpf.program([])) == golden(CLASSIC_NONE)
    assert instructions(classic_bpf.program([0])) == golden(CLASSIC_0)
    assert instructions(classic_bpf.program([2, 0, 1])) == golden(CLASSIC_2_0_1)
    assert instructions(classic_bpf.program([0xFFFFFFFE, 7])) == golden(CLASSIC_BIG_7)
