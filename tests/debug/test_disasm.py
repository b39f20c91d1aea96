"""Disassembly and register dumps (no KVM): iced-x86 in each bitness, code reads through paging."""

from __future__ import annotations

from pykvm.debug.disasm import bitness, disassemble, disassemble_at, read_code
from pykvm.debug.dump import format_code, format_registers
from pykvm.x86.state import CS, CpuState
from pykvm.memory import GuestMemory
from pykvm.x86 import boot


def test_same_bytes_decode_per_bitness():
    code = bytes.fromhex("b8 01 00 00 00")
    assert disassemble(code, 0x7C00, 32)[0].text == "mov eax,1"
    assert disassemble(code, 0x7C00, 16)[0].text == "mov ax,1"
    assert disassemble(code, 0x7C00, 16)[0].code == bytes.fromhex("b8 01 00")


def test_several_instructions_with_addresses():
    out = disassemble(bytes.fromhex("90 90 f4"), 0x1000, 64, count=5)
    assert [(d.address, d.text) for d in out] == [(0x1000, "nop"), (0x1001, "nop"), (0x1002, "hlt")]


def test_bitness_follows_the_mode():
    real = CpuState()
    assert bitness(real) == 16
    prot = boot.initial_state("protected", 0x100000)
    assert bitness(prot) == 32
    long_ = boot.initial_state("long", 0x100000)
    assert bitness(long_) == 64


def test_read_code_uses_cs_base_in_real_mode():
    with GuestMemory(1 << 20) as mem:
        mem.write(0x12345, b"\xf4")
        state = boot.initial_state("real", 0x12345)
        assert state.seg[CS].base + state.rip == 0x12345
        assert read_code(mem, state, 1) == b"\xf4"
        assert disassemble_at(mem, state)[0].text == "hlt"


def test_read_code_walks_the_page_tables_without_setting_accessed_bits():
    with GuestMemory(4 << 20) as mem:
        boot.prepare_memory("long", mem)
        before = mem.read(0x1000, 0x3000)
        mem.write(0x200000, b"\x90\xf4")
        state = boot.initial_state("long", 0x200000)
        assert read_code(mem, state, 2) == b"\x90\xf4"
        assert mem.read(0x1000, 0x3000) == before


def test_register_dump_names_every_register():
    text = format_registers(boot.initial_state("long", 0x100000))
    for name in ("rip:", "rax:", "r15:", "cr0:", "cr4:", "efer:", "gdt", "idt"):
        assert name in text
    assert "cs        0018" in text


def test_code_dump_shows_bytes_and_instructions():
    with GuestMemory(1 << 20) as mem:
        mem.write(0x7C00, bytes.fromhex("31 c0 f4"))
        text = format_code(mem, boot.initial_state("real", 0x7C00), count=2)
        assert "31 c0 f4" in text and "xor ax,ax" in text and "hlt" in text
