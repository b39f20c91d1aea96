"""What this host's PVM does with read-only memory slots (``KVM_MEM_READONLY``), the way
``--bios`` uses them: a ROM just below 4 GiB, with code in it, on the KVM layer alone.

tests/kvm/test_readonly_slots.py asserts these facts; run this module to see them:

    python -m tests.pvm_rom_probe
"""

from __future__ import annotations

import contextlib
import time

from pykvm.kvm import Kvm
from pykvm.kvm.cpu_state import store_state
from pykvm.kvm.exits import HltExit, IoExit, MmioExit
from pykvm.memory import GuestMemory
from pykvm.x86 import boot
from pykvm.x86.state import CpuState, RDX
from tests.asm import assemble

ROM_BASE = 0xFFFF0000
ROM_SIZE = 0x10000
ALIAS = 0xF0000
RAM = 4 << 20
DATA = 0x8000                      # ROM offset of the byte the guests read and write


@contextlib.contextmanager
def rom_guest(code: bytes, at: int, state: CpuState):
    """A VM with 4 MiB of RAM (the 64-bit identity map of 4 GiB in it) and a 64 KiB ROM in two
    read-only slots, at 0xffff0000 and at 0xf0000 (as ``--bios`` maps it), holding ``code`` at
    ROM offset ``at`` and 0x2a at DATA."""
    with Kvm() as kvm, kvm.create_vm() as vm:
        mem = GuestMemory(RAM)
        vm.map_memory(mem, ranges=[(0, 0, ALIAS), (1 << 20, 1 << 20, RAM - (1 << 20))])
        for gpa, data in boot.identity_page_tables(4 << 30):
            mem.write(gpa, data)
        mem.write(boot.GDT_ADDR, boot.build_gdt())
        rom = GuestMemory(ROM_SIZE, base=ROM_BASE)
        vm.map_memory(rom, readonly=True, ranges=[(ROM_BASE, 0, ROM_SIZE), (ALIAS, 0, ROM_SIZE)])
        rom.write(ROM_BASE + at, code)
        rom.write(ROM_BASE + DATA, b"\x2a" * 64)
        vcpu = vm.create_vcpu()
        vcpu.set_cpuid(kvm.supported_cpuid())
        vcpu.enable_sync_regs()
        store_state(vcpu, state)
        yield vm, rom, vcpu


def run_until_hlt(vcpu, limit: int = 100000) -> list[tuple]:
    """KVM_RUN until HLT: the MMIO exits seen as (address, length, value, is_write) (writes are
    dropped, reads answered 0xff), and ("io", port) for port I/O."""
    exits = []
    for _ in range(limit):
        exit_ = vcpu.run()
        if isinstance(exit_, HltExit):
            return exits
        if isinstance(exit_, MmioExit):
            if not exit_.is_write:
                exit_.set_value(0xFF)
            exits.append((exit_.address, exit_.length, exit_.value, exit_.is_write))
        elif isinstance(exit_, IoExit):
            exits.append(("io", exit_.port))
        else:
            raise AssertionError(f"unexpected exit {exit_.describe()} at rip {vcpu.get_regs().rip:#x}")
    raise AssertionError("no HLT")


PVM_CODE = f"""
    mov rbx, {ROM_BASE + DATA:#x}
    mov al, [rbx]               # a read: no exit
    mov byte ptr [rbx], 0x5a    # a write: an MMIO exit
    mov dl, [rbx]               # still 0x2a
    mov rsi, rbx
    lodsb
    mov rdi, rbx
    mov ecx, 16
    mov al, 0x77
    rep stosb                   # sixteen writes
    movzx eax, byte ptr [rbx]
    hlt
"""


def pvm_mode_facts() -> dict:
    """64-bit code fetched from the read-only slot in PVM mode; reads, writes, REP STOS."""
    state = boot.initial_state("long", ROM_BASE)
    with rom_guest(assemble(PVM_CODE), 0, state) as (_, _, vcpu):
        exits = run_until_hlt(vcpu)
        regs = vcpu.get_regs()
        return {"exits": exits, "rax": regs.rax, "rdx_low": regs.rdx & 0xFF, "rip": regs.rip}


RESET_CODE16 = f"""
    mov byte ptr cs:[{DATA:#x}], 0x5a   # through CS.base 0xffff0000: a write to the slot
    mov al, cs:[{DATA:#x}]
    .byte 0xea                          # jmp far 0xf000:after: on into the alias below 1 MiB
    .word 0xe000 + (after - _start), 0xf000
after:
    mov byte ptr cs:[{DATA:#x}], 0x5b   # through CS.base 0xf0000: a write to the alias
    mov ah, cs:[{DATA:#x}]
    hlt
"""


def reset_vector_facts() -> dict:
    """The host kernel's own non-PVM emulation from the reset state (no userspace emulator):
    the first fetch at 0xfffffff0 from the read-only slot, a write through CS, a far jump."""
    state = CpuState()                         # the reset state
    state.gpr[RDX] = 0x600
    code = assemble(RESET_CODE16, bits=16)
    jump = b"\xe9" + ((0xE000 - 0xFFF3) & 0xFFFF).to_bytes(2, "little")     # at 0xfff0: jmp near 0xe000
    with rom_guest(code, 0xE000, state) as (_, rom, vcpu):
        rom.write(ROM_BASE + 0xFFF0, jump)
        exits = run_until_hlt(vcpu, limit=100)
        regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
        return {"exits": exits, "ax": regs.rax & 0xFFFF, "cs": (sregs.cs.selector, sregs.cs.base),
                "rip": regs.rip}


def write_exit_cost(count: int = 20000) -> tuple[float, float]:
    """µs per dropped ROM write (an MMIO exit) and per port write, from a Python KVM_RUN loop."""
    results = []
    for store in ("mov byte ptr [rbx], al", "out 0x80, al"):
        code = assemble(f"mov rbx, {ROM_BASE + DATA:#x}\nmov ecx, {count}\n1: {store}\ndec ecx\njnz 1b\nhlt")
        with rom_guest(code, 0, boot.initial_state("long", ROM_BASE)) as (_, _, vcpu):
            started = time.perf_counter()
            exits = run_until_hlt(vcpu, limit=count + 10)
            results.append((time.perf_counter() - started) / len(exits) * 1e6)
    return results[0], results[1]


def main() -> None:
    facts = pvm_mode_facts()
    print("PVM mode, 64-bit code fetched from a read-only slot at 0xffff0000:")
    first = [(hex(a), n, hex(v), w) for a, n, v, w in facts["exits"][:2]]
    print(f"  MMIO exits (address, length, value, is_write): {first} ... {len(facts['exits'])} in all")
    print(f"  the ROM byte read back after the writes: {facts['rax']:#x}; after the first write: "
          f"{facts['rdx_low']:#x}; HLT at rip {facts['rip']:#x}")
    facts = reset_vector_facts()
    print("The kernel's non-PVM emulation from the reset vector (CS.base 0xffff0000, IP 0xfff0):")
    print(f"  MMIO exits: {[(hex(a), n, hex(v), w) for a, n, v, w in facts['exits']]}; bytes read back "
          f"AX={facts['ax']:#06x}; CS after the far jump {facts['cs'][0]:#x} base {facts['cs'][1]:#x}, "
          f"HLT at IP {facts['rip']:#x}")
    rom, port = write_exit_cost()
    print(f"cost per exit from a Python loop: ROM write (MMIO) {rom:.1f} µs, port write {port:.1f} µs")


if __name__ == "__main__":
    main()
