"""System instructions: port I/O, interrupt flag, descriptor tables, control/debug registers,
MSRs, CPUID, RDTSC, INVLPG, cache control, UD2."""

from __future__ import annotations

import iced_x86 as X

from pykvm.emulator.codegen import Invalid, MASKS, REG_INFO, SEG_INDEX, handler_table

M = X.Mnemonic
OK = X.OpKind
R_ = X.Register
HANDLERS, handles = handler_table()

_CR = {R_.CR0: 0, R_.CR2: 2, R_.CR3: 3, R_.CR4: 4, R_.CR8: 8}
_DR = {getattr(R_, f"DR{i}"): i for i in range(8)}



def mov_to_crdr(g):
    ins = g.ins
    reg = ins.op0_register
    src = REG_INFO[ins.op1_register][0]
    if reg in _CR:
        g.terminal = True
        g.emit(f"E.write_cr({g.k(_CR[reg])}, R[{g.k(src)}])", f"return {g.k(g.next_eip)}")
    elif reg in _DR:
        g.emit(f"E.write_dr({g.k(_DR[reg])}, R[{g.k(src)}])")
    else:
        raise Invalid()


def mov_from_crdr(g):
    ins = g.ins
    reg = ins.op1_register
    dst = REG_INFO[ins.op0_register][0]
    if reg in _CR:
        g.emit(f"R[{g.k(dst)}] = E.read_cr({g.k(_CR[reg])})")
    elif reg in _DR:
        g.emit(f"R[{g.k(dst)}] = E.read_dr({g.k(_DR[reg])})")
    else:
        raise Invalid()


# Port I/O ends its block: a device access may raise or lower an interrupt request (an EOI, a
# pc-testdev IRQ line, an unmasking), which must be seen at the very next instruction boundary.
@handles(M.IN)
def _in(g):
    d = g.op(0)
    size = d.size
    port = g.op(1)
    p = port.read() if port.kind == "imm" else "(R[2] & 0xFFFF)"
    g.emit(f"port = {p}", f"E.check_io(port, {size})", f"v = E.bus.pio_read(port, {size}) & {MASKS[size]:#x}")
    d.write("v")
    g.terminal = True
    g.emit(f"return {g.k(g.next_eip)}")


@handles(M.OUT)
def _out(g):
    port = g.op(0)
    s = g.op(1)
    size = s.size
    p = port.read() if port.kind == "imm" else "(R[2] & 0xFFFF)"
    g.emit(f"port = {p}", f"E.check_io(port, {size})", f"E.bus.pio_write(port, {size}, {s.read()})")
    g.terminal = True
    g.emit(f"return {g.k(g.next_eip)}")


@handles(M.CLI)
def _cli(g):
    g.emit("E.check_iopl()", "ST.rflags &= ~0x200")


@handles(M.CLAC, M.STAC)
def _clac_stac(g):
    """EFLAGS.AC for SMAP: #UD in real mode and above CPL 0 (without SMAP in CPUID the generic
    feature check has raised #UD already)."""
    _protected_mode_only(g)
    op = "|= 0x40000" if g.ins.mnemonic == M.STAC else "&= ~0x40000"
    g.emit("if ST.cpl:", "    raise Fault(6)", f"ST.rflags {op}")


@handles(M.STI)
def _sti(g):
    # STI ends the block so the interrupt shadow it creates is visible when run() returns.
    g.terminal = True
    g.emit("E.check_iopl()", "if not ST.rflags & 0x200:", "    ST.rflags |= 0x200", "    E.shadow = True",
           f"return {g.k(g.next_eip)}")


@handles(M.CLD)
def _cld(g):
    g.emit("ST.rflags &= ~0x400")


@handles(M.STD)
def _std(g):
    g.emit("ST.rflags |= 0x400")


def _mem_offset(g):
    ins = g.ins
    if ins.op0_kind != OK.MEMORY:
        raise Invalid()
    return g.ea_expr(), g.k(SEG_INDEX[ins.memory_segment])


@handles(M.LGDT, M.LIDT)
def _lgdt(g):
    o, seg = _mem_offset(g)
    which = "gdt" if g.ins.mnemonic == M.LGDT else "idt"
    opsize = 2 if _code_name(g).endswith("_16") else 4
    g.emit(f"E.load_dtr('{which}', {seg}, {o}, {opsize})")
    g.terminal = True
    g.emit(f"return {g.k(g.next_eip)}")


@handles(M.SGDT, M.SIDT)
def _sgdt(g):
    o, seg = _mem_offset(g)
    which = "gdt" if g.ins.mnemonic == M.SGDT else "idt"
    opsize = 2 if _code_name(g).endswith("_16") else 4
    g.emit(f"E.store_dtr('{which}', {seg}, {o}, {opsize})")


def _code_name(g) -> str:
    from pykvm.emulator.codegen import CODE_NAMES
    return CODE_NAMES[g.ins.code]


def _protected_mode_only(g) -> None:
    """LLDT/LTR/SLDT/STR/LAR/LSL/VERR/VERW/ARPL: #UD in real mode, before any operand is read."""
    if g.ctx.real:
        raise Invalid()


@handles(M.LLDT, M.LTR)
def _lldt(g):
    _protected_mode_only(g)
    s = g.op(0, 2)
    fn = "lldt" if g.ins.mnemonic == M.LLDT else "ltr"
    g.emit(f"E.{fn}({s.read()})")


@handles(M.SLDT, M.STR)
def _sldt(g):
    _protected_mode_only(g)
    d = g.op(0)
    idx = 6 if g.ins.mnemonic == M.SLDT else 7
    d.write(f"ST.seg[{g.k(idx)}].selector")


@handles(M.LAR, M.LSL)
def _lar(g):
    """LAR/LSL: ZF=1 and the access rights / limit of a descriptor visible at this CPL, else ZF=0
    and the destination unchanged."""
    _protected_mode_only(g)
    d = g.op(0)
    fn = "lar" if g.ins.mnemonic == M.LAR else "lsl"
    g.emit(f"v = E.{fn}({g.op(1, 2).read()} & 0xFFFF)")
    with g.block("if v is not None:"):
        d.write(f"v & {MASKS[d.size]:#x}")
    g.emit("E.lf = zf_only(E.lf, v is not None)")


@handles(M.VERR, M.VERW)
def _verr(g):
    _protected_mode_only(g)
    write = g.ins.mnemonic == M.VERW
    g.emit(f"E.lf = zf_only(E.lf, E.verify({g.op(0, 2).read()}, {write}))")


@handles(M.ARPL)
def _arpl(g):
    """ARPL: raise the destination selector's RPL to the source's (ZF=1), else ZF=0."""
    _protected_mode_only(g)
    d = g.op(0, 2)
    g.emit(f"a = {d.read()}", f"b = {g.op(1, 2).read()}")
    with g.block("if a & 3 < b & 3:"):
        d.write("a & 0xFFFC | b & 3")
    g.emit("E.lf = zf_only(E.lf, a & 3 < b & 3)")


@handles(M.SMSW)
def _smsw(g):
    d = g.op(0)
    d.write("ST.cr0 & 0xFFFFFFFF" if d.size == 4 else "ST.cr0 & 0xFFFF")


@handles(M.LMSW)
def _lmsw(g):
    s = g.op(0, 2)
    g.terminal = True
    g.emit(f"E.lmsw({s.read()})", f"return {g.k(g.next_eip)}")


@handles(M.CLTS)
def _clts(g):
    g.terminal = True
    g.emit("E.require_cpl0()", "E.write_cr(0, ST.cr0 & ~8)", f"return {g.k(g.next_eip)}")


@handles(M.RDMSR)
def _rdmsr(g):
    g.emit("v = E.rdmsr(R[1])", "R[0] = v & 0xFFFFFFFF", "R[2] = v >> 32 & 0xFFFFFFFF")


@handles(M.WRMSR)
def _wrmsr(g):
    g.terminal = True
    g.emit("E.wrmsr(R[1], R[2] << 32 | R[0])", f"return {g.k(g.next_eip)}")


@handles(M.CPUID)
def _cpuid(g):
    g.emit("a, b, c, d = E.cpuid_insn(R[0], R[1])",
           "R[0] = a & 0xFFFFFFFF", "R[3] = b & 0xFFFFFFFF", "R[1] = c & 0xFFFFFFFF", "R[2] = d & 0xFFFFFFFF")


@handles(M.RDTSC)
def _rdtsc(g):
    g.emit("v = E.rdtsc()", "R[0] = v & 0xFFFFFFFF", "R[2] = v >> 32 & 0xFFFFFFFF")


@handles(M.RDTSCP)
def _rdtscp(g):
    g.emit("v = E.rdtsc()", "R[0] = v & 0xFFFFFFFF", "R[2] = v >> 32 & 0xFFFFFFFF",
           "R[1] = ST.msrs.get(0xC0000103, 0) & 0xFFFFFFFF")


@handles(M.INVLPG)
def _invlpg(g):
    g.terminal = True
    g.emit("E.require_cpl0()", "E.flush_tlb()", f"return {g.k(g.next_eip)}")


@handles(M.WBINVD, M.INVD, M.WBNOINVD)
def _wbinvd(g):
    # WBNOINVD is WBINVD (F3 ignored) where CPUID does not offer it; either way a no-op here.
    g.emit("E.require_cpl0()")


@handles(M.UD2, M.UD0, M.UD1)
def _ud2(g):
    g.emit("raise Fault(6)")


# -- x87 control: just enough for boot code that probes for an FPU --------------------------------
def _fpu_check(g):
    """#NM when CR0.EM or CR0.TS says the FPU is not available (WAIT only checks TS with MP)."""
    g.emit("if ST.cr0 & 0xC:", "    raise Fault(7)")


@handles(M.FNINIT, M.FNCLEX)
def _fninit(g):
    _fpu_check(g)
    if g.ins.mnemonic == M.FNINIT:
        g.emit("E.fpu_cw = 0x37F", "E.fpu_sw = 0")
    else:
        g.emit("E.fpu_sw &= 0x7F00")


@handles(M.FNSTSW)
def _fnstsw(g):
    _fpu_check(g)
    g.op(0, 2).write("E.fpu_sw")


@handles(M.FNSTCW)
def _fnstcw(g):
    _fpu_check(g)
    g.op(0, 2).write("E.fpu_cw")


@handles(M.FLDCW)
def _fldcw(g):
    _fpu_check(g)
    g.emit(f"E.fpu_cw = {g.op(0, 2).read()}")


@handles(M.WAIT)
def _wait(g):
    g.emit("if ST.cr0 & 0xA == 0xA:", "    raise Fault(7)")
