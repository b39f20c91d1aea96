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
    ports = ScratchPorts()
    cpu = UnicornCpu(real=snippet.bits == 16, ports=ports, port_range=(SCRATCH_PORT, SCRATCH_PORTS))
    with GuestMemory(MEMORY_SIZE) as memory:
        snippet.prepare(memory)
        cpu.cpu.mem_write(0, bytes(memory.view))
    outcome = cpu.run(state)
    if outcome.startswith("unicorn stopped"):
        raise AssertionError(outcome)
    if outcome == "halted" and not _stopped_after_hlt(cpu.cpu):
        raise AssertionError(f"runaway snippet under unicorn: eip={cpu.cpu.reg_read(X.UC_X86_REG_EIP):#x}")
    return cpu.snapshot(outcome, ports.log)


class UnicornCpu:
    """One unicorn vCPU over MEMORY_SIZE bytes of RAM (its own, or a ``GuestMemory`` mapped
    in place), reusable across runs. Ports in ``port_range`` go to ``ports`` (others read
    as all-ones); ``mmio``, if given, is mapped over [RAM end, 4 GiB) with the same
    ``read(offset, size)``/``write(offset, size, value)`` interface as a bus device."""

    def __init__(self, real: bool, ports, port_range=(0, 0x10000), memory: GuestMemory | None = None,
                 mmio=None, ram_size: int = MEMORY_SIZE):
        self.real = real
        self.ram_size = ram_size
        self.cpu = cpu = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_16 if real else uc.UC_MODE_32)
        if memory is None:
            cpu.mem_map(0, ram_size)
        else:
            cpu.mem_map_ptr(0, memory.size, uc.UC_PROT_ALL, memory.host_address)
        if mmio is not None:
            cpu.mmio_map(ram_size, (1 << 32) - ram_size,
                         lambda cpu_, offset, size, _: mmio.read(offset, size), None,
                         lambda cpu_, offset, size, value, _: mmio.write(offset, size, value), None)
        _hook_ports(cpu, ports, *port_range)
        self.vectors: list[int] = []
        cpu.hook_add(uc.UC_HOOK_INTR, self._on_interrupt)
        # Each run starts from this context: register writes alone do not clear everything a
        # previous run left (an IRET into virtual-8086 mode keeps QEMU's cached mode flags).
        self.pristine = cpu.context_save()

    def _on_interrupt(self, cpu, intno, _):
        self.vectors.append(intno)
        cpu.emu_stop()

    def run(self, state: CpuState, count: int = MAX_INSTRUCTIONS, until: int = 0) -> str:
        """Load ``state`` and run ``count`` instructions (or up to linear ``until``); returns
        the outcome: "halted", "exception <vector>" (#UD included) or "unicorn stopped: <error>"."""
        cpu = self.cpu
        cpu.ctl_flush_tb()
        cpu.context_restore(self.pristine)
        # Writing a selector makes QEMU load the segment, which sets the descriptor's accessed
        # bit in memory: the tables are put back as they were, so only the run can change them.
        tables = [(t.base, t.limit + 1) for t in (state.gdt, state.seg[6]) if t.base + t.limit < self.ram_size]
        saved = [(base, bytes(cpu.mem_read(base, size))) for base, size in tables]
        try:
            _load_state(cpu, state)
        except uc.UcError as e:
            return f"unicorn stopped: cannot load the state ({e})"
        for base, data in saved:
            cpu.mem_write(base, data)
        # The x87 state the other runners start from (KVM's vCPU reset, FNINIT): unicorn's is 0.
        cpu.reg_write(X.UC_X86_REG_FPCW, 0x37F)
        cpu.reg_write(X.UC_X86_REG_FPSW, 0)
        self.vectors.clear()
        # ``until`` = linear 0 by default: an address every snippet maps and never executes.
        # (A far ``until`` such as 2**32 makes unicorn translate it on exit when paging is
        # on, which leaves a spurious CR2 = 0xffffffff behind.)
        # unicorn sets EIP from the start address: minus selector * 16 for a UC_MODE_16 CPU,
        # as is for a UC_MODE_32 one (whatever CS.base); ``until`` is linear either way.
        begin = state.seg[1].base + state.rip if self.real else state.rip
        try:
            cpu.emu_start(begin, until, count=count)
        except uc.UcError as e:
            if e.errno == uc.UC_ERR_INSN_INVALID and not self.vectors:
                return "exception 6"     # unicorn reports #UD this way, not through the hook
            if not self.vectors:
                return f"unicorn stopped: {e} at eip={cpu.reg_read(X.UC_X86_REG_EIP):#x}"
        return f"exception {self.vectors[0]}" if self.vectors else "halted"

    def snapshot(self, outcome: str, io_log, memory=None) -> Snapshot:
        """The state now; ``memory`` (an object with ``view``), if given, stands for RAM."""
        return _snapshot(self.cpu, outcome, io_log, memory)


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
    ldtr = state.seg[6]
    # QEMU's descriptor flags: type in bits 8-11, P in bit 15 (an LDT descriptor is S = 0).
    present = 0 if ldtr.unusable else ldtr.present
    cpu.reg_write(X.UC_X86_REG_LDTR, (ldtr.selector, ldtr.base, ldtr.limit, ldtr.type << 8 | present << 15))
    for i, reg in enumerate(_SEGS[:6]):
        cpu.reg_write(reg, state.seg[i].selector)
    cpu.reg_write(X.UC_X86_REG_EIP, state.rip)


def _hook_ports(cpu, ports, first: int, count: int) -> None:
    def port_in(cpu_, port, size, _):
        if first <= port < first + count:
            return ports.read(port - first, size)
        return (1 << (8 * size)) - 1

    def port_out(cpu_, port, size, value, _):
        if first <= port < first + count:
            ports.write(port - first, size, value)

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


def _snapshot(cpu, outcome: str, io_log, memory=None) -> Snapshot:
    gdtr, idtr = cpu.reg_read(X.UC_X86_REG_GDTR), cpu.reg_read(X.UC_X86_REG_IDTR)
    segments = tuple((_selector(cpu.reg_read(reg)),) + (None,) * 11 for reg in _SEGS)
    return Snapshot(outcome=outcome, gpr=tuple(cpu.reg_read(r) for r in _GPRS),
                    rip=cpu.reg_read(X.UC_X86_REG_EIP), rflags=cpu.reg_read(X.UC_X86_REG_EFLAGS),
                    segments=segments, gdt=(gdtr[1], gdtr[2]), idt=(idtr[1], idtr[2]),
                    cr0=cpu.reg_read(X.UC_X86_REG_CR0), cr2=cpu.reg_read(X.UC_X86_REG_CR2), cr3=cpu.reg_read(X.UC_X86_REG_CR3),
                    cr4=cpu.reg_read(X.UC_X86_REG_CR4), efer=cpu.msr_read(MSR_EFER),
                    memory=bytes(memory.view) if memory is not None else bytes(cpu.mem_read(0, MEMORY_SIZE)),
                    io=tuple(io_log))


def check_unicorn(snippet: Snippet, ignore: Ignore = Ignore()) -> Snapshot:
    """Run ``snippet`` on unicorn and on the userspace emulator (no KVM needed), assert they
    agree, and return unicorn's snapshot."""
    oracle = run_unicorn(snippet)
    assert oracle.outcome == "halted", f"unicorn did not reach hlt ({oracle.outcome}, eip={oracle.rip:#x})"
    assert_same(oracle, run_emulator(snippet), ignore, names=("unicorn", "emulator"))
    return oracle
