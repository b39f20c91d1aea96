"""What the SDM leaves undefined along a userspace run, tracked instruction by instruction so
that every differential comparison masks it by construction, on any host CPU.

Why: the kernel's emulator runs ALU instructions with the host's own instructions, so a
flag the SDM leaves undefined shows whatever the host vendor does (AMD EPYC sets AF on
every SHL/SHR/SAR, Intel clears it; ../shared/PVM.md). A fixed hand mask per test only
holds on the vendor it was written on; a mask derived from what ran holds on both.

How: the harness drives pykvm's emulator one instruction at a time (``Tracker.step``).
Before each instruction it decodes the bytes at CS:EIP with iced-x86 and keeps

* ``flags``: RFLAGS bits whose value is currently undefined. Each instruction clears the
  bits it defines and sets the bits it leaves undefined (iced's ``rflags_modified`` /
  ``rflags_undefined``), refined at run time where the SDM makes it depend on a value:
  shifts and rotates by a masked count of 0 change nothing, 1-bit shifts define OF,
  SHL/SHR by >= the width leave CF undefined, RCL/RCR by a multiple of width+1 keep CF
  (``flags.shift`` has the SDM's per-count rules);
* ``memory``: bytes holding a copy of undefined flags, by physical address, with the mask
  of undefined bits: the image PUSHF/PUSHFD pushed, and the EFLAGS image of every
  exception or interrupt frame (the emulator's ``delivery_observer`` says where it went;
  a fault pushes the flags as they were before the faulting instruction, a single-step
  trap as they are after it). A later write of the byte makes it defined again; also
  bytes whose whole value the SDM leaves open (see ``_undefined_results``);
* ``gprs``: register bits whose value is undefined (BSF/BSR of zero, SHLD/SHRD of a 16-bit
  operand by more than 16, BSWAP of a 16-bit register, the upper half of SMSW r32, a POP
  of a pushed flags image), cleared by a write of the register.

POPF and IRET that pop a tagged image carry its undefined bits back into ``flags``.
Anything else that *reads* something undefined (a Jcc/SETcc/CMOVcc/ADC/LAHF on an
undefined flag, an AND on a pushed image, an instruction using a tainted register) makes
the comparison meaningless: ``UndefinedRead`` fails the test naming the instruction and
what it read, instead of comparing or skipping silently.

The result (``Undefined``) rides on the emulator's ``Snapshot``; ``harness.differences``
masks those bits of the final RFLAGS, the registers and the memory bytes, whatever the
other side computed. Nothing here depends on the host: on Intel the kernel's AF after
``shr`` is 0 instead of AMD's 1, and the same bit is masked
(``tests/differential/test_undefined.py`` checks both vendors' images).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import iced_x86 as X

from pykvm.emulator.features import falls_back
from pykvm.x86 import paging
from pykvm.x86.bits import CR0_PE, CR0_PG, FLAG_AF, FLAG_CF, FLAG_OF, FLAG_PF, FLAG_SF, FLAG_TF, FLAG_ZF
from pykvm.x86.state import CS, GPR_NAMES, SS, CpuState
from tests.differential import accesses as A
from tests.differential import flags as F

M = X.Mnemonic
_FORMATTER = X.Formatter(X.FormatterSyntax.INTEL)

# iced RflagsBits -> EFLAGS bits (only the six arithmetic flags can be undefined; the rest
# are listed so that "modified" clears them correctly).
_ICED_FLAGS = ((X.RflagsBits.CF, FLAG_CF), (X.RflagsBits.PF, FLAG_PF), (X.RflagsBits.AF, FLAG_AF),
               (X.RflagsBits.ZF, FLAG_ZF), (X.RflagsBits.SF, FLAG_SF), (X.RflagsBits.OF, FLAG_OF))
FLAG_NAMES = ((FLAG_CF, "CF"), (FLAG_PF, "PF"), (FLAG_AF, "AF"), (FLAG_ZF, "ZF"), (FLAG_SF, "SF"),
              (FLAG_OF, "OF"))

SHIFTS = {M.SHL: "shl", M.SAL: "sal", M.SHR: "shr", M.SAR: "sar", M.ROL: "rol", M.ROR: "ror",
          M.RCL: "rcl", M.RCR: "rcr", M.SHLD: "shld", M.SHRD: "shrd"}
_PUSHF = {M.PUSHF: 2, M.PUSHFD: 4}
_POPF = {M.POPF: 2, M.POPFD: 4}
_IRET = {M.IRET: 2, M.IRETD: 4}


def eflags(iced_bits: int) -> int:
    out = 0
    for iced, bit in _ICED_FLAGS:
        if iced_bits & iced:
            out |= bit
    return out


def describe(ins) -> str:
    return _FORMATTER.format(ins)


def flag_names(mask: int) -> str:
    return "|".join(name for bit, name in FLAG_NAMES if mask & bit) or "-"


class UndefinedRead(AssertionError):
    """An instruction read a flag, register or memory byte the SDM leaves undefined there."""


@dataclass
class Undefined:
    """Undefined state after a run: RFLAGS bits, GPR bits by index, memory bits by physical address."""

    flags: int = 0
    gprs: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.flags or any(self.gprs.values()) or self.memory)

    def __or__(self, other: "Undefined") -> "Undefined":
        gprs = dict(self.gprs)
        for i, m in other.gprs.items():
            gprs[i] = gprs.get(i, 0) | m
        memory = dict(self.memory)
        for a, m in other.memory.items():
            memory[a] = memory.get(a, 0) | m
        return Undefined(self.flags | other.flags, gprs, memory)


class _NoWrites:
    """Physical memory for page walks that must leave no trace (no accessed/dirty bits)."""

    def __init__(self, memory):
        self.memory = memory

    def read_u32(self, gpa):
        return int.from_bytes(self.memory.read(gpa, 4), "little")

    def read_u64(self, gpa):
        return int.from_bytes(self.memory.read(gpa, 8), "little")

    def write_u32(self, gpa, value):
        pass

    def write_u64(self, gpa, value):
        pass


class Tracker:
    """Steps an ``Emulator`` and tracks what is undefined (see the module docstring)."""

    def __init__(self, emulator, memory):
        self.emu = emulator
        self.memory = memory
        self.flags = 0
        self.gprs: dict[int, int] = {}
        self.tags: dict[int, int] = {}          # physical address -> undefined bits of that byte
        self._image_mask = 0
        self.deliveries: list[tuple[int, int, int]] = []   # (vector, EFLAGS image linear, size), last step
        emulator.delivery_observer = self._delivered

    def result(self) -> Undefined:
        return Undefined(self.flags, {i: m for i, m in self.gprs.items() if m}, dict(self.tags))

    # -- addresses ------------------------------------------------------------------------------
    def physical(self, linear: int) -> int | None:
        """The physical address of ``linear`` (RAM, or MMIO past its end), None if unmapped."""
        st = self.emu.state
        if st.cr0 & CR0_PG and st.cr0 & CR0_PE:
            try:
                return paging.walk(_NoWrites(self.memory), st.cr0, st.cr3, st.cr4, st.efer, linear).phys
            except paging.PageFault:
                return None
        return linear

    def _ram_byte(self, linear: int) -> int | None:
        phys = self.physical(linear & 0xFFFFFFFF)
        return self.memory.read(phys, 1)[0] if phys is not None and phys < self.memory.size else None

    def _chunks(self, linear: int, size: int):
        """(offset in the range, physical address, length) of the mapped pieces of linear
        [linear, linear+size): one piece per page with paging on. Addresses past RAM (MMIO)
        are tagged too: what is written there is compared as port/MMIO traffic."""
        st = self.emu.state
        paged = st.cr0 & CR0_PG and st.cr0 & CR0_PE
        offset = 0
        while offset < size:
            lin = (linear + offset) & 0xFFFFFFFF
            room = 0x1000 - (lin & 0xFFF) if paged else (1 << 32) - lin
            n = min(size - offset, room)
            phys = self.physical(lin)
            if phys is not None:
                yield offset, phys, n
            offset += n

    def _tag(self, linear: int, size: int, mask: int) -> None:
        """Bytes [linear, linear+size) hold ``mask`` (little-endian) of undefined bits; a
        mask of 0 (a write of the range) makes them all defined."""
        for offset, phys, n in self._chunks(linear, size):
            if not mask:
                for addr in [a for a in self.tags if phys <= a < phys + n]:
                    del self.tags[addr]
                continue
            for k in range(n):
                bits = (mask >> (8 * (offset + k))) & 0xFF
                if bits:
                    self.tags[phys + k] = bits
                else:
                    self.tags.pop(phys + k, None)

    def _tagged(self, linear: int, size: int) -> dict[int, int]:
        """{offset in the range: undefined bits} of the tagged bytes of [linear, linear+size)."""
        found = {}
        for offset, phys, n in self._chunks(linear, size):
            for addr, bits in self.tags.items():
                if phys <= addr < phys + n:
                    found[offset + addr - phys] = bits
        return found

    def _delivered(self, vector: int, linear: int, size: int) -> None:
        self.deliveries.append((vector, linear, size))
        self._tag(linear, size, self._image_mask)

    # -- stepping -------------------------------------------------------------------------------
    def decode(self):
        """The instruction at CS:EIP, or None when its bytes cannot be read (it will fault)."""
        st = self.emu.state
        bitness = self.emu.bitness
        cs = st.seg[CS]
        code = bytearray()
        for k in range(15):
            byte = self._ram_byte(cs.base + st.rip + k) if st.rip + k <= cs.limit else None
            if byte is None:
                break
            code.append(byte)
        ins = X.Decoder(bitness, bytes(code), ip=st.rip).decode()
        return None if ins.code == X.Code.INVALID else ins

    def step(self) -> int:
        """Run one instruction on the emulator; returns how many ran (0 if halted)."""
        ins = self.decode()
        if ins is None:
            self._image_mask = self.flags
            self.deliveries.clear()
            return self.emu.run(1)
        st = self.emu.state
        stack32 = self.emu.stack32
        pre = self.flags
        read = eflags(ins.rflags_read)
        if read & pre and ins.mnemonic not in _PUSHF:
            raise UndefinedRead(f"{describe(ins)!r} at {st.rip:#x} reads {flag_names(read & pre)}, which the SDM leaves "
                                f"undefined here: the comparison would test the host CPU")
        modified, undefined = self._flag_effects(ins, st)
        post = (pre & ~modified) | undefined
        accesses = A.memory_accesses(ins, st, stack32) if (self.tags or self.gprs) else []
        registers = A.used_registers(ins) if self.gprs else []
        for index, mask, access in registers:
            if access in (A.READ, A.READ_WRITE) and self.gprs.get(index, 0) & mask:
                raise UndefinedRead(f"{describe(ins)!r} at {st.rip:#x} reads register bits "
                                    f"{self.gprs[index] & mask:#x} of {GPR_NAMES[index]}, which hold an undefined value")
        popped = self._check_memory_reads(ins, accesses, stack32)
        if ins.mnemonic in _POPF or ins.mnemonic in _IRET:
            post |= popped
        results = self._undefined_results(ins, st)
        tf = st.rflags & FLAG_TF
        self._image_mask = pre | post if tf else pre
        self.deliveries.clear()
        ran = self.emu.run(1)
        if self.deliveries:
            # A fault (or INT n) changed no arithmetic flag; a single-step trap came after
            # the instruction completed, so its flags (and the image) may be either.
            trap = tf and any(d[0] == 1 for d in self.deliveries)
            self.flags = pre | (post if trap else 0)
            if trap:
                self._tag_results(results)
            return ran
        if not ran:
            return ran
        self.flags = post
        for index, mask, access in registers:
            if access == A.WRITE:
                self.gprs[index] = self.gprs.get(index, 0) & ~mask
        for acc in accesses:
            if acc.access in (A.WRITE, A.READ_WRITE):
                self._tag(acc.linear, acc.size, 0)
        if ins.mnemonic == M.POP and popped:
            index, mask, _ = A.GPR_BITS[ins.op0_register]
            self.gprs[index] = self.gprs.get(index, 0) | (popped & mask)
        if ins.mnemonic in _PUSHF:
            sp = st.gpr[4] if stack32 else st.gpr[4] & 0xFFFF
            self._tag((st.seg[SS].base + sp) & 0xFFFFFFFF, _PUSHF[ins.mnemonic], pre)
        self._tag_results(results)
        return ran

    def _check_memory_reads(self, ins, accesses, stack32: bool) -> int:
        """Fail on a read of tagged bytes, except a POP, POPF or IRET of a pushed image:
        returns the undefined bits those pop (as a register value / EFLAGS image)."""
        if not self.tags:
            return 0
        popped = 0
        for acc in accesses:
            if acc.access not in (A.READ, A.READ_WRITE):
                continue
            tagged = self._tagged(acc.linear, acc.size)
            if not tagged:
                continue
            if acc.implicit_stack and acc.access == A.READ and self._pops_image(ins, acc, stack32):
                popped |= sum(bits << (8 * k) for k, bits in tagged.items())
                continue
            where = ", ".join(f"{acc.linear + k:#x}: {bits:#04x}" for k, bits in sorted(tagged.items())[:4])
            raise UndefinedRead(f"{describe(ins)!r} at {self.emu.state.rip:#x} reads {acc.size} bytes at "
                                f"linear {acc.linear:#x} holding undefined bits ({where}; a pushed image of "
                                "undefined flags or an undefined result): the comparison would test the host CPU")
        return popped

    def _pops_image(self, ins, acc, stack32: bool) -> bool:
        """Whether ``acc`` is POPF's operand, IRET's flags slot or a POP into a GPR."""
        if ins.mnemonic in _POPF:
            return True
        if ins.mnemonic == M.POP:
            return ins.op0_kind == X.OpKind.REGISTER and ins.op0_register in A.GPR_BITS
        if ins.mnemonic in _IRET:
            # IRET pops (E)IP, CS, (E)FLAGS: only the flags slot may carry the tags.
            bits = 32 if stack32 else 16
            return acc.offset == (self.emu.state.gpr[4] + 2 * _IRET[ins.mnemonic]) % (1 << bits)
        return False

    # -- per-instruction rules ----------------------------------------------------------------
    def _bit_scan(self, ins) -> bool:
        """BSF/BSR, or TZCNT/LZCNT where the vCPU's CPUID makes them BSF/BSR (F3 ignored)."""
        m = ins.mnemonic
        return m in (M.BSF, M.BSR) or (m in (M.TZCNT, M.LZCNT) and falls_back(self.emu.cpuid, m))

    def _flag_effects(self, ins, st: CpuState) -> tuple[int, int]:
        """(flags the instruction modifies, flags it leaves undefined), refined by count."""
        if self._bit_scan(ins):
            # BSF/BSR: "The ZF flag is set to 1 if the source operand is 0 ...; otherwise, the
            # ZF flag is cleared. The CF, OF, SF, AF, and PF flags are undefined."
            return F.ARITH, F.BSF
        modified = eflags(ins.rflags_modified)
        undefined = eflags(ins.rflags_undefined)
        op = SHIFTS.get(ins.mnemonic)
        if op is None:
            return modified, undefined
        count, width = self._count_and_width(ins, st)
        masked = count & 0x1F
        if masked == 0:
            # SDM SAL/SAR/SHL/SHR, RCL/RCR/ROL/ROR, SHLD/SHRD: "If the count is 0, the flags
            # are not affected."
            return 0, 0
        if op in ("rcl", "rcr") and masked % (width + 1) == 0:
            # RCL/RCR: tempCOUNT = (COUNT & COUNTMASK) MOD (SIZE + 1) is 0: no rotation, CF
            # keeps its value; OF "is defined only for the 1-bit rotates".
            return FLAG_OF, FLAG_OF
        return modified, F.shift(op, count, width)

    @staticmethod
    def _count_and_width(ins, st: CpuState) -> tuple[int, int]:
        k = 2 if ins.mnemonic in (M.SHLD, M.SHRD) else 1
        if ins.op_kind(k) == X.OpKind.REGISTER:
            count = st.gpr[1] & 0xFF       # CL
        else:
            count = ins.immediate(k)
        if ins.op0_kind == X.OpKind.REGISTER:
            width = 8 * X.RegisterExt.size(ins.op0_register)
        else:
            width = 8 * A.memory_bytes(ins.memory_size)
        return count, width

    def _undefined_results(self, ins, st: CpuState) -> list:
        """Destinations whose value the SDM leaves open for this instruction and input:
        (GPR index, mask) or (linear, size) pairs."""
        m = ins.mnemonic
        dest = []
        if self._bit_scan(ins):
            # BSF/BSR: "If the content of the source operand is 0, the content of the
            # destination operand is undefined." (AMD documents it as unchanged.)
            if self._source_value(ins, st) == 0:
                dest.append(self._dest(ins, st))
        elif m in (M.SHLD, M.SHRD):
            count, width = self._count_and_width(ins, st)
            if (count & 0x1F) > width:
                # SHLD/SHRD: "If the count is greater than the operand size, the result is undefined."
                dest.append(self._dest(ins, st))
        elif m == M.BSWAP and ins.op0_register in A.GPR_BITS and A.GPR_BITS[ins.op0_register][1] == 0xFFFF:
            # BSWAP: "When the BSWAP instruction references a 16-bit register, the result is undefined."
            dest.append(self._dest(ins, st))
        elif m == M.SMSW and ins.op0_kind == X.OpKind.REGISTER and A.GPR_BITS[ins.op0_register][1] == 0xFFFFFFFF:
            # SMSW: "when the destination operand is a 32-bit register, the low-order 16 bits
            # of register CR0 are copied into the low-order 16 bits of the register and the
            # high-order 16 bits are undefined."
            dest.append(("gpr", A.GPR_BITS[ins.op0_register][0], 0xFFFF0000))
        elif m == M.PUSH and ins.op0_kind == X.OpKind.REGISTER and ins.op0_register in _SEGMENTS \
                and ins.stack_pointer_increment == -4:
            # SDM PUSH: "If the source operand is a segment register (16 bits) and the operand
            # size is 32-bits, either a zero-extended value is pushed on the stack or the
            # segment selector is written on the stack using a 16-bit move. For the last case,
            # all recent Core and Atom processors perform a 16-bit move, leaving the upper
            # portion of the stack location unmodified." Hosts differ: the upper half is open.
            sp = st.gpr[4] & (0xFFFFFFFF if self.emu.stack32 else 0xFFFF)
            offset = (sp - 2) & (0xFFFFFFFF if self.emu.stack32 else 0xFFFF)
            dest.append(("mem", (st.seg[SS].base + offset) & 0xFFFFFFFF, 2))
        return dest

    def _tag_results(self, results) -> None:
        for kind, where, size_or_mask in results:
            if kind == "gpr":
                self.gprs[where] = self.gprs.get(where, 0) | size_or_mask
            else:
                self._tag(where, size_or_mask, (1 << (8 * size_or_mask)) - 1)

    def _dest(self, ins, st: CpuState) -> tuple:
        if ins.op0_kind == X.OpKind.REGISTER:
            index, mask, _ = A.GPR_BITS[ins.op0_register]
            return ("gpr", index, mask)
        explicit = [a for a in A.memory_accesses(ins, st, self.emu.stack32) if not a.implicit_stack]
        return ("mem", explicit[0].linear, explicit[0].size)

    def _source_value(self, ins, st: CpuState) -> int:
        if ins.op1_kind == X.OpKind.REGISTER:
            return A.register_value(st, ins.op1_register)
        acc = [a for a in A.memory_accesses(ins, st, self.emu.stack32) if not a.implicit_stack][0]
        value = 0
        for k in range(acc.size):
            byte = self._ram_byte(acc.linear + k)
            value |= (0xFF if byte is None else byte) << (8 * k)    # MMIO: taken as non-zero
        return value


_SEGMENTS = {X.Register.ES, X.Register.CS, X.Register.SS, X.Register.DS, X.Register.FS, X.Register.GS}
