"""Register dumps in the layout kvmtool made familiar (``lkvm debug``), from a ``CpuState``."""

from __future__ import annotations

from pykvm.debug.disasm import disassemble_at, read_code
from pykvm.x86.state import GPR_NAMES, SEGMENT_NAMES, CpuState


def format_registers(state: CpuState) -> str:
    return format_gprs(state) + "\n" + format_system(state)


def format_gprs(state: CpuState) -> str:
    """RIP, RSP, RFLAGS and the general registers."""
    g = dict(zip(GPR_NAMES, state.gpr))
    return "\n".join([
        "Registers:",
        "----------",
        f"rip: {state.rip:016x}   rsp: {g['rsp']:016x} flags: {state.rflags:016x}",
        f"rax: {g['rax']:016x}   rbx: {g['rbx']:016x}   rcx: {g['rcx']:016x}",
        f"rdx: {g['rdx']:016x}   rsi: {g['rsi']:016x}   rdi: {g['rdi']:016x}",
        f"rbp: {g['rbp']:016x}    r8: {g['r8']:016x}    r9: {g['r9']:016x}",
        f"r10: {g['r10']:016x}   r11: {g['r11']:016x}   r12: {g['r12']:016x}",
        f"r13: {g['r13']:016x}   r14: {g['r14']:016x}   r15: {g['r15']:016x}",
    ])


def format_system(state: CpuState) -> str:
    """Control registers, segment registers with their descriptor caches, GDTR/IDTR, EFER."""
    rows = [
        f"cr0: {state.cr0:016x}   cr2: {state.cr2:016x}   cr3: {state.cr3:016x}",
        f"cr4: {state.cr4:016x}   cr8: {state.cr8:016x}",
        "Segment registers:",
        "------------------",
        "register  selector  base              limit     type  p dpl db s l g avl",
    ]
    for name, s in zip(SEGMENT_NAMES, state.seg):
        rows.append(f"{name:<9} {s.selector:04x}      {s.base:016x}  {s.limit:08x}  {s.type:02x}    "
                    f"{s.present} {s.dpl}   {s.db}  {s.s} {s.l} {s.g} {s.avl}")
    rows.append(f"gdt                 {state.gdt.base:016x}  {state.gdt.limit:04x}")
    rows.append(f"idt                 {state.idt.base:016x}  {state.idt.limit:04x}")
    rows.append(f"efer: {state.efer:016x}  apic base: {state.apic_base:016x}")
    return "\n".join(rows)


def format_code(memory, state: CpuState, count: int = 4) -> str:
    """The code bytes at CS:RIP and the next few instructions."""
    code = read_code(memory, state, 32)
    rows = ["Code:", "-----", f"rip: [<{state.rip:016x}>] " + " ".join(f"{b:02x}" for b in code)]
    for d in disassemble_at(memory, state, count):
        rows.append(f"  {d.address:016x}  {d.code.hex(' '):<30} {d.text}")
    return "\n".join(rows)
