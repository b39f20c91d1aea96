"""Control flow: Jcc, JMP, CALL, RET (near and far), LOOP/JCXZ, INT/INTO/INT3, IRET, HLT.

All of these end their block. Near transfers return the target EIP straight from the
template; far transfers, IRET and software interrupts call ``control``/``interrupts``
and also set ``E.stop`` because CS (and maybe CPL) changed.
"""

from __future__ import annotations

import iced_x86 as X

from pykvm.emulator.codegen import CODE_NAMES, Invalid, MASKS, MNEMONIC_NAMES, Unsupported, handler_table
from pykvm.emulator.ops_alu import CC_OF, cond_expr
from pykvm.emulator.ops_data import emit_pop, emit_push
from pykvm.x86.bits import EFER_SCE

M = X.Mnemonic
OK = X.OpKind
HANDLERS, handles = handler_table()



# -- near branches and the CS limit ----------------------------------------------------------
# SDM (JMP, CALL, Jcc, RET, LOOP): "IF tempEIP is beyond code segment limit THEN #GP(0)": the
# branch faults, before it pushes anything, not the fetch at the target. Blocks are cached per
# CS limit (``ctx.cs_limit``), so the check is decided at translation time for a constant target
# and emitted only where an operand-size-wide target can exceed the limit.
def _beyond_limit(g, target: int) -> bool:
    return target > g.ctx.cs_limit


def _emit_target_check(g, var: str, size: int) -> None:
    """Fault if the computed target ``var`` (``size`` bytes wide) lies past the CS limit."""
    if MASKS[size] > g.ctx.cs_limit:
        g.emit(f"if {var} > {g.k(g.ctx.cs_limit)}:", "    raise Fault(13, 0)")


def _taken_or_next(g, expr: str, commit: tuple = ()) -> None:
    """Return the branch target if ``expr`` holds, else the next instruction; ``commit`` lines
    (register updates) run once the branch can no longer fault."""
    target = g.ins.near_branch_target
    if _beyond_limit(g, target):
        g.emit(f"if {expr}:", "    raise Fault(13, 0)", *commit, f"return {g.k(g.next_eip)}")
    elif commit:
        g.emit(*commit, f"return {g.k(target)} if {expr} else {g.k(g.next_eip)}")
    else:
        g.emit(f"return {g.k(target)} if {expr} else {g.k(g.next_eip)}")


def _jcc(g):
    g.terminal = True
    _taken_or_next(g, cond_expr(g, CC_OF[g.ins.mnemonic]))


for _m in CC_OF:
    if MNEMONIC_NAMES[_m].startswith("J"):
        HANDLERS[_m] = _jcc


@handles(M.JMP)
def _jmp(g):
    ins = g.ins
    g.terminal = True
    kind = ins.op0_kind
    if kind in (OK.NEAR_BRANCH16, OK.NEAR_BRANCH32):
        _taken_or_next(g, "True")
    elif kind in (OK.FAR_BRANCH16, OK.FAR_BRANCH32):
        off = ins.far_branch32 if kind == OK.FAR_BRANCH32 else ins.far_branch16
        g.emit("E.stop = True",
               f"return E.far_jmp({g.k(ins.far_branch_selector)}, {g.k(off)}, {g.k(g.next_eip)})")
    elif ins.is_jmp_far_indirect:
        _far_indirect(g, "jmp")
    else:
        s = g.op(0)
        g.emit(f"t = {s.read()}")
        _emit_target_check(g, "t", s.size)
        g.emit("return t")


def _far_indirect(g, what: str):
    ins = g.ins
    if ins.op0_kind != OK.MEMORY:
        raise Invalid()
    size = 4 if X.MemorySizeExt.size(ins.memory_size) == 6 else 2
    from pykvm.emulator.codegen import SEG_INDEX
    rd = {2: "rd2", 4: "rd4"}[size]
    g.emit(f"o = {g.ea_expr()}", f"sg = {g.k(SEG_INDEX[ins.memory_segment])}",
           f"off = {rd}(sg, o)", f"sel = rd2(sg, (o + {size}) & 0xFFFFFFFF)", "E.stop = True")
    if what == "jmp":
        g.emit(f"return E.far_jmp(sel, off, {g.k(g.next_eip)})")
    else:
        g.emit(f"return E.far_call(sel, off, {size}, {g.k(g.next_eip)})")


@handles(M.CALL)
def _call(g):
    ins = g.ins
    g.terminal = True
    kind = ins.op0_kind
    if kind in (OK.NEAR_BRANCH16, OK.NEAR_BRANCH32):
        size = 2 if kind == OK.NEAR_BRANCH16 else 4
        if _beyond_limit(g, ins.near_branch_target):
            g.emit("raise Fault(13, 0)")
            return
        emit_push(g, g.k(g.next_eip & MASKS[size]), size)
        g.emit(f"return {g.k(ins.near_branch_target)}")
    elif kind in (OK.FAR_BRANCH16, OK.FAR_BRANCH32):
        size = 4 if kind == OK.FAR_BRANCH32 else 2
        off = ins.far_branch32 if kind == OK.FAR_BRANCH32 else ins.far_branch16
        g.emit("E.stop = True",
               f"return E.far_call({g.k(ins.far_branch_selector)}, {g.k(off)}, {size}, {g.k(g.next_eip)})")
    elif ins.is_call_far_indirect:
        _far_indirect(g, "call")
    else:
        s = g.op(0)
        size = s.size
        g.emit(f"t = {s.read()}")
        _emit_target_check(g, "t", size)
        emit_push(g, g.k(g.next_eip & MASKS[size]), size)
        g.emit("return t")


@handles(M.RET)
def _ret(g):
    ins = g.ins
    g.terminal = True
    size = 4 if CODE_NAMES[ins.code].startswith("RETND") else 2
    imm = ins.immediate(0) & 0xFFFF if ins.op_count else 0
    commit = emit_pop(g, "v", size)
    if imm:
        if g.ctx.stack32:
            commit = f"R[4] = (sp + {size} + {g.k(imm)}) & 0xFFFFFFFF"
        else:
            commit = f"R[4] = R[4] & 0xFFFF0000 | (sp + {size} + {g.k(imm)}) & 0xFFFF"
    _emit_target_check(g, "v", size)
    g.emit(commit, "return v")


@handles(M.RETF)
def _retf(g):
    ins = g.ins
    g.terminal = True
    size = 4 if CODE_NAMES[ins.code].startswith("RETFD") else 2
    imm = ins.immediate(0) & 0xFFFF if ins.op_count else 0
    g.emit("E.stop = True", f"return E.far_ret({size}, {g.k(imm)})")


@handles(M.IRET, M.IRETD)
def _iret(g):
    g.terminal = True
    size = 4 if g.ins.mnemonic == M.IRETD else 2
    g.emit("E.stop = True", f"return E.iret({size}, {g.k(g.next_eip)})")


@handles(M.INT, M.INT3, M.INTO, M.INT1)
def _int(g):
    ins = g.ins
    g.terminal = True
    nxt = g.k(g.next_eip)
    mn = ins.mnemonic
    if mn == M.INT:
        g.emit(f"E.software_interrupt({g.k(ins.immediate(0) & 0xFF)}, {nxt})", f"return ST.rip")
    elif mn == M.INT3:
        g.emit(f"E.software_interrupt(3, {nxt})", "return ST.rip")
    elif mn == M.INT1:
        g.emit(f"E.software_interrupt(1, {nxt}, False)", "return ST.rip")
    else:
        g.emit("if not arith(E.lf) & 0x800:", f"    return {nxt}",
               f"E.software_interrupt(4, {nxt})", "return ST.rip")


def _counter(g):
    """(mask, read-expression) of the count register of LOOP/JCXZ: CX or ECX by address size."""
    name = CODE_NAMES[g.ins.code]
    if name.endswith("_ECX"):
        return 0xFFFFFFFF
    if name.endswith("_CX"):
        return 0xFFFF
    return 0xFFFFFFFF if g.ctx.bitness == 32 else 0xFFFF


@handles(M.LOOP, M.LOOPE, M.LOOPNE)
def _loop(g):
    g.terminal = True
    mask = _counter(g)
    mn = g.ins.mnemonic
    if mask == 0xFFFFFFFF:
        g.emit("c = (R[1] - 1) & 0xFFFFFFFF")
        commit = ("R[1] = c",)
    else:
        g.emit("c = (R[1] - 1) & 0xFFFF")
        commit = ("R[1] = R[1] & 0xFFFF0000 | c",)
    if mn == M.LOOP:
        _taken_or_next(g, "c", commit)
    else:
        zf = cond_expr(g, 4 if mn == M.LOOPE else 5)
        _taken_or_next(g, f"c and {zf}", commit)


@handles(M.JCXZ, M.JECXZ)
def _jcxz(g):
    g.terminal = True
    mask = 0xFFFFFFFF if g.ins.mnemonic == M.JECXZ else 0xFFFF
    _taken_or_next(g, f"not R[1] & {mask:#x}")


@handles(M.HLT)
def _hlt(g):
    g.terminal = True
    g.emit("E.require_cpl0()", "ST.halted = True", "E.stop = True", f"return {g.k(g.next_eip)}")



@handles(M.SYSENTER, M.SYSEXIT)
def _sysenter(g):
    g.terminal = True
    fn = "sysenter" if g.ins.mnemonic == M.SYSENTER else "sysexit"
    g.emit("E.stop = True", f"return E.{fn}()")


@handles(M.SYSCALL, M.SYSRET)
def _syscall(g):
    """#UD while EFER.SCE is clear (a WRMSR to EFER retranslates, so this is decided here);
    with it set, legacy-mode SYSCALL (AMD only) is not emulated."""
    if not g.ctx.emu.state.efer & EFER_SCE:
        raise Invalid()
    raise Unsupported("SYSCALL/SYSRET outside 64-bit mode")
