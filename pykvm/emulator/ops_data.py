"""Data movement: MOV family, LEA, XCHG, stack operations, segment loads, XLAT, BSWAP."""

from __future__ import annotations

import iced_x86 as X

from pykvm.emulator.codegen import Invalid, MASKS, REG_INFO, SEG_INDEX, handler_table
from pykvm.x86.state import SS

M = X.Mnemonic
HANDLERS, handles = handler_table()



_RD = {1: "rd1", 2: "rd2", 4: "rd4"}
_WR = {1: "wr1", 2: "wr2", 4: "wr4"}


def emit_push(g, expr: str, size: int, wsize: int | None = None) -> None:
    """Push ``expr`` (``wsize`` bytes actually written, for PUSH Sreg) onto SS:(E)SP."""
    wsize = wsize or size
    if g.ctx.stack32:
        g.emit(f"sp = (R[4] - {size}) & 0xFFFFFFFF", f"{_WR[wsize]}(2, sp, {expr})", "R[4] = sp")
    else:
        g.emit(f"sp = (R[4] - {size}) & 0xFFFF", f"{_WR[wsize]}(2, sp, {expr})",
               "R[4] = R[4] & 0xFFFF0000 | sp")


def emit_pop(g, var: str, size: int, read: int | None = None) -> str:
    """Read the top of stack into ``var`` (``read`` bytes of the ``size``-byte slot, default all);
    returns the line that commits the new (E)SP."""
    rd = _RD[read or size]
    if g.ctx.stack32:
        g.emit("sp = R[4]", f"{var} = {rd}(2, sp)")
        return f"R[4] = (sp + {size}) & 0xFFFFFFFF"
    g.emit("sp = R[4] & 0xFFFF", f"{var} = {rd}(2, sp)")
    return f"R[4] = R[4] & 0xFFFF0000 | (sp + {size}) & 0xFFFF"


def stack_size(g) -> int:
    inc = g.ins.stack_pointer_increment
    return abs(inc) if inc else (4 if g.ctx.bitness == 32 else 2)


@handles(M.MOV)
def _mov(g):
    ins = g.ins
    k0, k1 = ins.op0_kind, ins.op1_kind
    if k0 == X.OpKind.REGISTER:
        r = ins.op0_register
        if r in SEG_INDEX:
            return _mov_to_sreg(g, SEG_INDEX[r])
        if r not in REG_INFO:
            from pykvm.emulator.ops_system import mov_to_crdr
            return mov_to_crdr(g)
    if k1 == X.OpKind.REGISTER:
        r = ins.op1_register
        if r not in REG_INFO and r not in SEG_INDEX:
            from pykvm.emulator.ops_system import mov_from_crdr
            return mov_from_crdr(g)
    d = g.op(0)
    s = g.op(1, d.size if ins.op1_kind != X.OpKind.REGISTER or ins.op1_register not in SEG_INDEX else None)
    d.write(s.read())


def _mov_to_sreg(g, i: int):
    if i == 1:
        raise Invalid()
    s = g.op(1, 2)
    g.emit(f"E.load_seg({g.k(i)}, {s.read()})")
    if i == SS:
        g.emit("E.shadow = True")
        g.terminal = True
        g.emit(f"return {g.k(g.next_eip)}")


@handles(M.MOVNTI)
def _movnti(g):
    """MOVNTI: a store with a non-temporal hint, which changes nothing here."""
    d = g.op(0)
    d.write(g.op(1, d.size).read())


@handles(M.MOVBE)
def _movbe(g):
    """MOVBE: a load or store with the bytes swapped."""
    d = g.op(0)
    size = d.size
    g.emit(f"v = int.from_bytes(({g.op(1, size).read()}).to_bytes({size}, 'little'), 'big')")
    d.write("v")


@handles(M.MOVZX)
def _movzx(g):
    d = g.op(0)
    s = g.op(1)
    d.write(s.read())


@handles(M.MOVSX)
def _movsx(g):
    d = g.op(0)
    s = g.op(1)
    sign = {1: 0x80, 2: 0x8000}[s.size]
    g.emit(f"v = {s.read()}")
    d.write(f"((v ^ {sign:#x}) - {sign:#x}) & {MASKS[d.size]:#x}")


@handles(M.LEA)
def _lea(g):
    d = g.op(0)
    if g.ins.op1_kind != X.OpKind.MEMORY:
        raise Invalid()
    g.emit(f"o = {g.ea_expr()}")
    d.write("o" if d.size == 4 else f"o & {MASKS[d.size]:#x}")


@handles(M.XCHG)
def _xchg(g):
    a = g.op(0)
    b = g.op(1, a.size)
    if a.kind == "mem":
        a, b = b, a
    # b may be memory: store into it first (it may fault), then the register.
    g.emit(f"x = {a.read()}", f"y = {b.read()}")
    b.write("x")
    a.write("y")


@handles(M.CLFLUSH, M.CLFLUSHOPT, M.CLWB)
def _clflush(g):
    """Cache-line flushes: nothing to flush here, but the operand is checked like a byte load
    (SDM CLFLUSH: #GP beyond the segment limit, #PF for a page fault)."""
    g.emit(f"M.check_read({g.k(SEG_INDEX[g.ins.memory_segment])}, {g.ea_expr()}, 1)")


@handles(M.NOP, M.PAUSE, M.LFENCE, M.MFENCE, M.SFENCE,
         # The hint space (0F 0D, 0F 18-1F): prefetches, reserved NOPs, and what CPUs without the
         # feature (or with it disabled, as CET always is here) execute as NOPs. None of them
         # touches its memory operand, so none can fault.
         M.PREFETCHNTA, M.PREFETCHT0, M.PREFETCHT1, M.PREFETCHT2, M.PREFETCHW, M.PREFETCH, M.PREFETCHWT1,
         M.PREFETCHIT0, M.PREFETCHIT1, M.RESERVEDNOP, M.CLDEMOTE, M.ENDBR32, M.ENDBR64, M.RDSSPD)
def _nop(g):
    g.emit("pass")


@handles(M.PUSH)
def _push(g):
    ins = g.ins
    size = stack_size(g)
    if ins.op0_kind == X.OpKind.REGISTER and ins.op0_register in SEG_INDEX:
        # Intel CPUs write only the 16-bit selector even for a 32-bit push (ESP moves by 4).
        emit_push(g, f"ST.seg[{g.k(SEG_INDEX[ins.op0_register])}].selector", size, 2)
        return
    s = g.op(0, size)
    g.emit(f"v = {s.read()}")
    emit_push(g, "v", size)


@handles(M.POP)
def _pop(g):
    ins = g.ins
    size = stack_size(g)
    if ins.op0_kind == X.OpKind.REGISTER and ins.op0_register in SEG_INDEX:
        i = SEG_INDEX[ins.op0_register]
        if i == 1:
            raise Invalid()
        # A 32-bit POP Sreg reads just the 16-bit selector and skips the rest of its slot (what
        # CPUs do, and KVM: at the top of a 16-bit stack it does not fault on the upper half).
        commit = emit_pop(g, "v", size, read=2)
        g.emit(f"E.load_seg({g.k(i)}, v)", commit)
        if i == SS:
            g.emit("E.shadow = True", f"return {g.k(g.next_eip)}")
            g.terminal = True
        return
    d = g.op(0, size)
    commit = emit_pop(g, "v", size)
    if d.kind == "reg":
        g.emit(commit)
        d.write("v")
    else:
        # POP m: the address is computed with the incremented ESP; undo on a faulting store.
        g.emit("osp = R[4]", commit)
        with g.block("try:"):
            d.write("v")
        g.emit("except BaseException:", "    R[4] = osp", "    raise")


@handles(M.PUSHA, M.PUSHAD)
def _pusha(g):
    size = 4 if g.ins.mnemonic == M.PUSHAD else 2
    mask = MASKS[size]
    g.emit(f"vals = [R[i] & {mask:#x} for i in range(8)]", f"E.push_many(vals, {size})")


@handles(M.POPA, M.POPAD)
def _popa(g):
    size = 4 if g.ins.mnemonic == M.POPAD else 2
    g.emit(f"vals, sp = E.pop_many(8, {size})")
    for i in (7, 6, 5, 3, 2, 1, 0):
        v = f"vals[{7 - i}]"
        g.emit(f"R[{i}] = {v}" if size == 4 else f"R[{i}] = R[{i}] & 0xFFFF0000 | {v}")
    g.emit("E.set_sp(sp)")


@handles(M.PUSHF, M.PUSHFD)
def _pushf(g):
    size = 4 if g.ins.mnemonic == M.PUSHFD else 2
    emit_push(g, f"E.get_flags() & {0xFCFFFF if size == 4 else 0xFFFF:#x}", size)


@handles(M.POPF, M.POPFD)
def _popf(g):
    size = 4 if g.ins.mnemonic == M.POPFD else 2
    commit = emit_pop(g, "v", size)
    # POPF ends the block: it may set TF (the run loop then single-steps) or IF.
    g.terminal = True
    g.emit(f"E.popf(v, {size})", commit, f"return {g.k(g.next_eip)}")


@handles(M.LEAVE)
def _leave(g):
    # The operand size (66 prefix) says how much EBP to pop; the stack size how much of EBP
    # goes to (E)SP first. (iced cannot know LEAVE's stack increment: it depends on EBP.)
    size = g.ins.op_code().operand_size // 8
    if g.ctx.stack32:
        g.emit("sp = R[5]")
        g.emit(f"v = {_RD[size]}(2, sp)", f"R[4] = (sp + {size}) & 0xFFFFFFFF")
    else:
        g.emit("sp = R[5] & 0xFFFF")
        g.emit(f"v = {_RD[size]}(2, sp)", f"R[4] = R[4] & 0xFFFF0000 | (sp + {size}) & 0xFFFF")
    g.emit("R[5] = v" if size == 4 else "R[5] = R[5] & 0xFFFF0000 | v")


@handles(M.ENTER)
def _enter(g):
    ins = g.ins
    from pykvm.emulator.codegen import CODE_NAMES
    size = 4 if CODE_NAMES[ins.code].startswith("ENTERD") else 2
    alloc = ins.immediate(0) & 0xFFFF
    level = ins.immediate(1) & 0x1F
    g.emit(f"E.enter({size}, {g.k(alloc)}, {g.k(level)})")


@handles(M.XLATB)
def _xlat(g):
    ins = g.ins
    base = ins.memory_base
    amask = MASKS[REG_INFO[base][1]]
    seg = SEG_INDEX[ins.memory_segment]
    g.emit(f"R[0] = R[0] & 0xFFFFFF00 | rd1({g.k(seg)}, (R[3] + (R[0] & 0xFF)) & {amask:#x})")


@handles(M.BSWAP)
def _bswap(g):
    d = g.op(0)
    r = g.k(d.reg)
    if d.size == 4:
        g.emit(f"R[{r}] = int.from_bytes(R[{r}].to_bytes(4, 'little'), 'big')")
    else:
        g.emit(f"R[{r}] = R[{r}] & 0xFFFF0000")   # 16-bit BSWAP: undefined; Intel CPUs give 0


@handles(M.LDS, M.LES, M.LFS, M.LGS, M.LSS)
def _lxs(g):
    ins = g.ins
    seg = {M.LDS: 3, M.LES: 0, M.LFS: 4, M.LGS: 5, M.LSS: 2}[ins.mnemonic]
    d = g.op(0)
    if ins.op1_kind != X.OpKind.MEMORY:
        raise Invalid()
    size = d.size
    g.emit(f"o = {g.ea_expr()}", f"sg = {g.k(SEG_INDEX[ins.memory_segment])}",
           f"off = {_RD[size]}(sg, o)", f"sel = rd2(sg, (o + {size}) & 0xFFFFFFFF)",
           f"E.load_seg({g.k(seg)}, sel)")
    d.write("off")
    if seg == SS:
        g.terminal = True
        g.emit(f"return {g.k(g.next_eip)}")

