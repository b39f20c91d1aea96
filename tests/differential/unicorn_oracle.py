"""unicorn (QEMU's TCG, an x86 implementation nobody here wrote) as an oracle for what the
host kernel cannot run: paging outside long mode, and anything else without /dev/kvm.

``run_unicorn(snippet)`` starts from the same RAM image and register state as the other
runners and returns a ``Snapshot``. unicorn exposes only the selector of a segment
register, so the hidden parts are ``None`` there and ``harness.differences`` skips them.
unicorn reports CPU exceptions instead of delivering them through the IDT: a snippet
that faults ends with outcome ``"exception <vector>"``, EIP at the faulting instruction
and CR2 set, and nothing pushed.
"""

from __future__ import annotations

import pytest

from pykvm.x86.state import CpuState
from pykvm.memory import GuestMemory
from pykvm.x86.descriptors import decode_descriptor
from tests.differential.harness import (HLT, MAX_INSTRUCTIONS, MEMORY_SIZE, SCRATCH_PORT, SCRATCH_PORTS, Ignore,
                                        ScratchPorts, Snapshot, Snippet, assert_same, run_emulator)

uc = pytest.importorskip("unicorn")
X = pytest.importorskip("unicorn.x86_const")

_GPRS = (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX,
         X.UC_X86_REG_ESP, X.UC_X86_REG_EBP, X.UC_X86_REG_ESI, X.UC_X86_REG_EDI)
_SEGS = (X.UC_X86_REG_ES, X.UC_X86_REG_CS, X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_FS,
         X.UC_X86_REG_GS, X.UC_X86_REG_LDTR, X.UC_X86_REG_TR)
MSR_EFER = 0xC0000080


def run_unicorn(snippet: Snippet) -> Snapshot:
    """Run ``snippet`` on unicorn until ``hlt`` (or an exception) and snapshot the result."""
    state = snippet.initial_state()
    mode = uc.UC_MODE_16 if snippet.bits == 16 else uc.UC_MODE_32
    cpu = uc.Uc(uc.UC_ARCH_X86, mode)
    with GuestMemory(MEMORY_SIZE) as memory:
        snippet.prepare(memory)
        image = bytes(memory.view)
    cpu.mem_map(0, MEMORY_SIZE)
    cpu.mem_write(0, image)
    _load_state(cpu, state)
    ports = ScratchPorts()
    _hook_ports(cpu, ports)
    vectors = []

    def on_interrupt(cpu_, intno, _):
        vectors.append(intno)
        cpu_.emu_stop()

    cpu.hook_add(uc.UC_HOOK_INTR, on_interrupt)
    start = state.seg[1].base + state.rip
    try:
        # ``until`` = linear 0: an address every snippet maps and never executes. (A far
        # ``until`` such as 2**32 makes unicorn translate it on exit when paging is on,
        # which leaves a spurious CR2 = 0xffffffff behind.)
        cpu.emu_start(start, 0, count=MAX_INSTRUCTIONS)
    except uc.UcError as e:
        if not vectors:
            raise AssertionError(f"unicorn stopped: {e} at eip={cpu.reg_read(X.UC_X86_REG_EIP):#x}") from None
    outcome = f"exception {vectors[0]}" if vectors else "halted"
    if not vectors and not _stopped_after_hlt(cpu):
        raise AssertionError(f"runaway snippet under unicorn: eip={cpu.reg_read(X.UC_X86_REG_EIP):#x}")
    return _snapshot(cpu, outcome, ports.log)


def _load_state(cpu, state: CpuState) -> None:
    """Registers, then descriptor tables and control registers, then segments: in protected
    mode unicorn loads a segment's hidden part from the GDT when its selector is written."""
    for reg, value in zip(_GPRS, state.gpr):
        cpu.reg_write(reg, value & 0xFFFFFFFF)
    cpu.reg_write(X.UC_X86_REG_EFLAGS, state.rflags)
    cpu.reg_write(X.UC_X86_REG_GDTR, (0, state.gdt.base, state.gdt.limit, 0))
    cpu.reg_write(X.UC_X86_REG_IDTR, (0, state.idt.base, state.idt.limit, 0))
    cpu.reg_write(X.UC_X86_REG_CR4, state.cr4)
    cpu.reg_write(X.UC_X86_REG_CR3, state.cr3)
    cpu.reg_write(X.UC_X86_REG_CR0, state.cr0)
    for i, reg in enumerate(_SEGS[:6]):
        cpu.reg_write(reg, state.seg[i].selector)
    cpu.reg_write(X.UC_X86_REG_EIP, state.rip)


def _hook_ports(cpu, ports: ScratchPorts) -> None:
    def port_in(cpu_, port, size, _):
        if SCRATCH_PORT <= port < SCRATCH_PORT + SCRATCH_PORTS:
            return ports.read(port - SCRATCH_PORT, size)
        return (1 << (8 * size)) - 1

    def port_out(cpu_, port, size, value, _):
        if SCRATCH_PORT <= port < SCRATCH_PORT + SCRATCH_PORTS:
            ports.write(port - SCRATCH_PORT, size, value)

    cpu.hook_add(uc.UC_HOOK_INSN, port_in, None, 1, 0, X.UC_X86_INS_IN)
    cpu.hook_add(uc.UC_HOOK_INSN, port_out, None, 1, 0, X.UC_X86_INS_OUT)


def _stopped_after_hlt(cpu) -> bool:
    eip = cpu.reg_read(X.UC_X86_REG_EIP)
    cs_base = _linear_cs_base(cpu)
    try:
        return cpu.mem_read(cs_base + eip - 1, 1)[0] == HLT
    except uc.UcError:
        return False


def _linear_cs_base(cpu) -> int:
    """CS.base (unicorn shows only selectors): selector * 16 in real mode, else from the GDT."""
    selector = cpu.reg_read(X.UC_X86_REG_CS)
    if not cpu.reg_read(X.UC_X86_REG_CR0) & 1:
        return selector << 4
    gdt_base = cpu.reg_read(X.UC_X86_REG_GDTR)[1]
    raw = int.from_bytes(cpu.mem_read(gdt_base + (selector & ~7), 8), "little")
    return decode_descriptor(raw).base


def _selector(value) -> int:
    # LDTR and TR read back as (selector, base, limit, flags); the others as the selector.
    return value[0] if isinstance(value, tuple) else value


def _snapshot(cpu, outcome: str, io_log) -> Snapshot:
    gdtr, idtr = cpu.reg_read(X.UC_X86_REG_GDTR), cpu.reg_read(X.UC_X86_REG_IDTR)
    segments = tuple((_selector(cpu.reg_read(reg)),) + (None,) * 11 for reg in _SEGS)
    return Snapshot(outcome=outcome, gpr=tuple(cpu.reg_read(r) for r in _GPRS),
                    rip=cpu.reg_read(X.UC_X86_REG_EIP), rflags=cpu.reg_read(X.UC_X86_REG_EFLAGS),
                    segments=segments, gdt=(gdtr[1], gdtr[2]), idt=(idtr[1], idtr[2]),
                    cr0=cpu.reg_read(X.UC_X86_REG_CR0), cr2=cpu.reg_read(X.UC_X86_REG_CR2), cr3=cpu.reg_read(X.UC_X86_REG_CR3),
                    cr4=cpu.reg_read(X.UC_X86_REG_CR4), efer=cpu.msr_read(MSR_EFER),
                    memory=bytes(cpu.mem_read(0, MEMORY_SIZE)), io=tuple(io_log))


def check_unicorn(snippet: Snippet, ignore: Ignore = Ignore()) -> Snapshot:
    """Run ``snippet`` on unicorn and on the userspace emulator (no KVM needed), assert they
    agree, and return unicorn's snapshot."""
    oracle = run_unicorn(snippet)
    assert oracle.outcome == "halted", f"unicorn did not reach hlt ({oracle.outcome}, eip={oracle.rip:#x})"
    assert_same(oracle, run_emulator(snippet), ignore, names=("unicorn", "emulator"))
    return oracle
