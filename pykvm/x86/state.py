"""The one CPU-state model shared by the KVM layer, the loaders, the debugger and the emulator.

It lives below all of them (in ``x86``, not in the emulator package) so that a 64-bit guest,
which never needs the emulator, does not pay for importing it.

State moves between KVM and the emulator only at mode boundaries: the machine
fills a ``CpuState`` from ``kvm_regs``/``kvm_sregs``/MSRs once when the vCPU
enters non-PVM mode, the emulator works on it, and the machine writes it back
once on conversion to PVM mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# General-purpose registers, in x86 encoding order (ModRM reg numbers).
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R8, R9, R10, R11, R12, R13, R14, R15 = range(8, 16)
GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

# Segment registers, in x86 encoding order (ES..GS), then LDTR and TR.
ES, CS, SS, DS, FS, GS, LDTR, TR = range(8)
SEGMENT_NAMES = ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr")


@dataclass(slots=True)
class Segment:
    """A segment register with its hidden descriptor cache, as ``kvm_segment`` holds it."""

    selector: int = 0
    base: int = 0
    limit: int = 0xFFFF
    type: int = 3          # read/write data, accessed
    present: int = 1
    dpl: int = 0
    db: int = 0
    s: int = 1             # 1 = code/data, 0 = system
    l: int = 0
    g: int = 0
    avl: int = 0
    unusable: int = 0

    def copy(self) -> "Segment":
        return Segment(self.selector, self.base, self.limit, self.type, self.present, self.dpl,
                       self.db, self.s, self.l, self.g, self.avl, self.unusable)


@dataclass(slots=True)
class DescriptorTable:
    base: int = 0
    limit: int = 0xFFFF


def _reset_segments() -> list[Segment]:
    segs = [Segment() for _ in range(6)]
    segs[CS] = Segment(selector=0xF000, base=0xFFFF0000, type=0xB)
    segs.append(Segment(type=2, s=0))      # LDTR: LDT, present
    segs.append(Segment(type=0xB, s=0))    # TR: busy 32-bit TSS (KVM's reset value)
    return segs


@dataclass(slots=True)
class CpuState:
    """Architectural state of one vCPU.

    ``gpr`` is indexed by the constants above; ``seg`` by ES..TR. ``msrs`` holds the
    MSRs pykvm models beyond EFER (STAR, SYSENTER_*, ...). ``interrupt_shadow`` is
    set for the instruction after STI or MOV SS, as PVM keeps it in non-PVM mode.
    """

    gpr: list[int] = field(default_factory=lambda: [0] * 16)
    rip: int = 0xFFF0
    rflags: int = 0x2
    seg: list[Segment] = field(default_factory=_reset_segments)
    gdt: DescriptorTable = field(default_factory=DescriptorTable)
    idt: DescriptorTable = field(default_factory=DescriptorTable)
    cr0: int = 0x60000010
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0
    apic_base: int = 0xFEE00900
    msrs: dict[int, int] = field(default_factory=dict)
    interrupt_shadow: bool = False
    halted: bool = False
    # NMI: one can be latched while another is being handled (blocked until the next IRET).
    nmi_pending: bool = False
    nmi_blocked: bool = False

    @property
    def cpl(self) -> int:
        """Current privilege level: SS.DPL in protected mode (as KVM reports it), 0 in real mode."""
        if not self.cr0 & 1:
            return 0
        return self.seg[SS].dpl

    def copy(self) -> "CpuState":
        return CpuState(list(self.gpr), self.rip, self.rflags, [s.copy() for s in self.seg],
                        DescriptorTable(self.gdt.base, self.gdt.limit),
                        DescriptorTable(self.idt.base, self.idt.limit),
                        self.cr0, self.cr2, self.cr3, self.cr4, self.cr8, self.efer,
                        self.apic_base, dict(self.msrs), self.interrupt_shadow, self.halted,
                        self.nmi_pending, self.nmi_blocked)
