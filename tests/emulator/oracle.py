"""Run one instruction on unicorn and on pykvm's Emulator from the same state; compare.

Unicorn (QEMU's TCG) is an independent x86 model. ``UC_MODE_16`` is real mode with zero
segment bases, ``UC_MODE_32`` a flat 32-bit mode; the emulator gets the equivalent state
(real mode with zero bases / flat protected mode at CPL 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import iced_x86
import unicorn
from unicorn import x86_const as U

from pykvm.devices.bus import Bus
from pykvm.emulator import Emulator
from pykvm.x86.state import CS, CpuState, Segment
from pykvm.memory import GuestMemory
from pykvm.x86.bits import CR0_ET, CR0_PE

MEM = 2 << 20
CODE = 0x1000
DATA = 0x9000
STACK_TOP = 0x8000
FLAGS_MASK = 0xCD5 | 0x400   # CF PF AF ZF SF OF DF

_UREGS = [U.UC_X86_REG_EAX, U.UC_X86_REG_ECX, U.UC_X86_REG_EDX, U.UC_X86_REG_EBX,
          U.UC_X86_REG_ESP, U.UC_X86_REG_EBP, U.UC_X86_REG_ESI, U.UC_X86_REG_EDI]
NAMES = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"]


@dataclass
class Result:
    regs: list
    eip: int
    flags: int
    data: bytes
    fault: str | None = None


def undefined_flags(code: bytes, bits: int) -> int:
    """RFLAGS bits the SDM leaves undefined for this instruction (iced-x86's table)."""
    ins = iced_x86.Decoder(bits, code).decode()
    return ins.rflags_undefined


class UnicornRunner:
    def __init__(self, bits: int):
        self.bits = bits
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_16 if bits == 16 else unicorn.UC_MODE_32)
        self.uc.mem_map(0, MEM)

    def run(self, code: bytes, regs, flags: int, data: bytes, whole: bool = False, segs=None) -> Result:
        """Execute one instruction (``whole``: run to the end of ``code``, for REP prefixes,
        which unicorn executes one iteration per step). ``segs``: real-mode (ES, SS, DS)."""
        uc = self.uc
        es, ss, ds = segs or (0, 0, 0)
        if self.bits == 16:
            uc.reg_write(U.UC_X86_REG_ES, es)
            uc.reg_write(U.UC_X86_REG_SS, ss)
            uc.reg_write(U.UC_X86_REG_DS, ds)
        uc.mem_write(CODE, code + b"\xf4")
        # Unicorn keeps translated blocks across emu_start calls even when the code bytes were
        # rewritten with mem_write: drop them, or the previous case's instruction runs again.
        uc.ctl_remove_cache(CODE, CODE + 0x100)
        uc.mem_write(DATA, data)
        for r, v in zip(_UREGS, regs):
            uc.reg_write(r, v)
        uc.reg_write(U.UC_X86_REG_EFLAGS, flags | 2)
        uc.reg_write(U.UC_X86_REG_EIP, CODE)
        fault = None
        try:
            uc.emu_start(CODE, CODE + len(code), count=0 if whole else 1)
        except unicorn.UcError as e:
            fault = str(e)
        return Result([uc.reg_read(r) for r in _UREGS], uc.reg_read(U.UC_X86_REG_EIP),
                      uc.reg_read(U.UC_X86_REG_EFLAGS), bytes(uc.mem_read(DATA, len(data))), fault)


class EmulatorRunner:
    def __init__(self, bits: int):
        self.bits = bits
        self.mem = GuestMemory(MEM)
        self.bus = Bus()
        self.state = CpuState()
        self.emu = Emulator(self.state, self.mem, self.bus)

    def run(self, code: bytes, regs, flags: int, data: bytes, whole: bool = False, segs=None) -> Result:
        st = self.state
        if self.bits == 32:
            st.cr0 = CR0_PE | CR0_ET
            for i in range(6):
                st.seg[i] = Segment(selector=0x8 if i == CS else 0x10, base=0, limit=0xFFFFFFFF,
                                    type=0xB if i == CS else 3, present=1, dpl=0, db=1, s=1, g=1)
        else:
            st.cr0 = CR0_ET
            es, ss, ds = segs or (0, 0, 0)
            for i in range(6):
                sel = {0: es, 2: ss, 3: ds}.get(i, 0)
                st.seg[i] = Segment(selector=sel, base=sel << 4, limit=0xFFFF, type=0xB if i == CS else 3)
        # IDT / IVT: an exception stops the comparison (the handler address is unmapped code).
        st.idt.base, st.idt.limit = 0, 0
        self.mem.write(CODE, code + b"\xf4")
        self.mem.write(DATA, data)
        st.gpr[:8] = list(regs)
        st.rflags = flags | 2
        st.rip = CODE
        st.halted = False
        self.emu.invalidate_code_cache()
        fault = None
        vectors_before = st.seg[CS].selector
        try:
            self.emu.step()
        except Exception as e:  # triple fault: the IDT is empty, so any exception ends here
            fault = str(e)
        return Result(list(st.gpr[:8]), st.rip, st.rflags, self.mem.read(DATA, len(data)), fault)
