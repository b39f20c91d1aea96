"""Basic-block translation: guest bytes -> a list of instruction closures.

A block starts at a linear address and runs until an instruction that ends it (a branch,
anything that changes mode, CS, CPL or control registers), the end of the fetched bytes
or ``MAX_BLOCK`` instructions. One iced ``Decoder`` is built per block. The block
remembers the EIP of each instruction (for faults and partial execution) and the
physical pages its bytes came from (for self-modifying-code invalidation).
"""

from __future__ import annotations

import iced_x86 as X

from pykvm.emulator import codegen
from pykvm.emulator.codegen import Gen, Invalid, TranslateContext, Unsupported
from pykvm.emulator.faults import CpuFault
from pykvm.emulator.features import F
from pykvm.emulator.handlers import HANDLERS
from pykvm.errors import EmulationError
from pykvm.x86.bits import CR0_EM, CR0_TS, CR4_OSFXSR, CR4_OSXSAVE, EXC_GP, EXC_NM, EXC_UD

MAX_BLOCK = 64
# Terminal instructions after which a block may join a region (compiler.py): near transfers
# whose templates end in one ``return`` and change nothing but registers, flags and memory.
_REGION_BRANCHES = frozenset(getattr(X.Mnemonic, name) for name in (
    "JA", "JAE", "JB", "JBE", "JCXZ", "JE", "JECXZ", "JG", "JGE", "JL", "JLE", "JMP", "JNE", "JNO", "JNP",
    "JNS", "JO", "JP", "JS", "CALL", "RET", "LOOP", "LOOPE", "LOOPNE"))
LEGACY = X.EncodingKind.LEGACY
_FORMATTER = X.Formatter(X.FormatterSyntax.INTEL)


class Block:
    """A translated run of instructions.

    ``fns`` are the closures of all but the last instruction (they return nothing);
    ``term`` is the last one and returns the next EIP. ``eips[i]`` is the EIP of
    instruction ``i`` and ``eips[n]`` the EIP after the block when it falls through.

    For the compiled tier (``compiler.py``): ``recipes[i]`` is how instruction ``i`` was
    made, ``(template body, constants)`` or ``(None, closure)``; ``fall`` the EIP the block
    falls through to (its last instruction does not branch), else None; ``branch`` whether it
    ends in a near branch (JMP/Jcc/CALL/RET/LOOP/JCXZ) or falls through, so it may join a
    region; ``hits`` counts runs through the closures, ``unit`` is the compiled function that
    starts here and ``units`` every compiled unit holding this block (dropped with it).
    """

    __slots__ = ("fns", "term", "eips", "n", "valid", "key", "cache", "eip", "pages", "ranges",
                 "recipes", "fall", "branch", "hits", "unit", "units", "guarded", "partial", "succ", "stamp")

    def __init__(self, fns, term, eips, eip, pages, ranges=(), recipes=None, fall=None, branch=False):
        self.fns = fns
        self.term = term
        self.eips = eips
        self.n = len(fns) + 1
        self.valid = True
        self.key = None
        self.cache = None
        self.eip = eip
        self.pages = pages
        self.ranges = ranges   # (physical page, first offset, end offset) of the block's bytes
        self.recipes = recipes
        self.fall = fall
        self.branch = branch
        self.hits = 0
        self.unit = None
        self.units = None
        self.guarded = False
        self.partial = None    # compiled prefixes (instruction count -> unit), eager tier only
        self.succ = ()         # EIPs a near branch or fall-through goes to (known at translation)
        self.stamp = 0.0       # when ``hits`` started counting (time.perf_counter)


def _raiser(exc_factory):
    def f():
        raise exc_factory()
    return f


def describe(ins) -> str:
    return _FORMATTER.format(ins)


def fetch_code(emu, lin: int, eip: int):
    """Bytes available for decoding at ``lin``: the rest of its page plus up to 15 bytes of the next.

    Returns (data, pages, cacheable, deferred_fault): ``deferred_fault`` is the fault to raise
    if an instruction actually needs bytes that could not be fetched (next page absent or
    beyond the CS limit).
    """
    mmu = emu.mmu
    mem = emu.memory
    cs_limit = emu.state.seg[1].limit
    avail = cs_limit - eip + 1 if eip <= cs_limit else 0
    if avail <= 0:
        return b"", [], False, CpuFault(EXC_GP, 0)
    phys = mmu.fetch_page(lin)
    room = 0x1000 - (lin & 0xFFF)
    take = min(room, avail)
    data, cacheable = _read_phys(emu, phys, take)
    pages = [phys >> 12]
    deferred = None
    if take == room and avail > room:
        try:
            phys2 = mmu.fetch_page((lin + room) & 0xFFFFFFFF)
        except CpuFault as e:
            deferred = e
        else:
            more, ok2 = _read_phys(emu, phys2, min(15, avail - room))
            data += more
            cacheable = cacheable and ok2
            pages.append(phys2 >> 12)
    elif take < room:
        deferred = CpuFault(EXC_GP, 0)
    return data, pages, cacheable, deferred


def _read_phys(emu, phys: int, n: int):
    mem = emu.memory
    if mem.contains(phys, n):
        off = phys - mem.base
        return bytes(mem.view[off:off + n]), True
    # Code outside RAM: a ROM (read-only, so its code may be cached like RAM's), or another
    # device on the MMIO bus, read byte by byte and never cached.
    entry = emu.bus.mmio.find(phys)
    if entry is not None and hasattr(entry[2], "code") and phys + n <= entry[1]:
        return entry[2].code(phys - entry[3], n), True
    n = min(n, 64)
    return bytes(emu.bus.mmio_read(phys + i, 1) & 0xFF for i in range(n)), False


_X87 = frozenset((F.FPU, F.FPU287, F.FPU387, F.FXSR))
_XSAVE = frozenset((F.XSAVE, F.XSAVEOPT, F.XSAVEC, F.XSAVES))
_VEX_GPR = frozenset((F.BMI1, F.BMI2))         # VEX-encoded instructions on general registers
_MMX_REGISTERS = range(X.Register.MM0, X.Register.MM7 + 1)
_VECTOR_REGISTERS = range(X.Register.XMM0, X.Register.ZMM31 + 1)
_MXCSR = frozenset((X.Mnemonic.LDMXCSR, X.Mnemonic.STMXCSR))


def _unimplemented(emu, ins, error: EmulationError):
    """The closure of an instruction pykvm does not emulate: the #UD / #NM the CPU would raise
    first where CR0/CR4/XCR0 say the unit is off (checked when it runs: CR0.TS changes without
    a retranslation), else the emulation error.

    XCR0 keeps its reset value (x87 only) in the emulator, since XSETBV is not emulated, so
    AVX-class (VEX/EVEX vector) instructions always raise #UD here."""
    features = set(ins.cpuid_features())
    registers = [ins.op_register(i) for i in range(ins.op_count) if ins.op_kind(i) == X.OpKind.REGISTER]
    mmx = any(r in _MMX_REGISTERS for r in registers)
    x87 = bool(features & _X87)
    # SSE state: XMM operands or MXCSR (not the SSE-era instructions on general registers, such
    # as MOVNTI or CRC32, which CR4.OSFXSR does not gate).
    sse = not mmx and (any(r in _VECTOR_REGISTERS for r in registers) or ins.mnemonic in _MXCSR)
    avx = ins.encoding in (X.EncodingKind.VEX, X.EncodingKind.EVEX) and not features <= _VEX_GPR
    xsave = bool(features & _XSAVE)
    st = emu.state

    def f():
        cr0 = st.cr0
        if avx or (xsave and not st.cr4 & CR4_OSXSAVE):
            raise CpuFault(EXC_UD)
        if x87:
            if cr0 & (CR0_EM | CR0_TS):
                raise CpuFault(EXC_NM)
        elif mmx or sse:
            if cr0 & CR0_EM or (sse and not st.cr4 & CR4_OSFXSR):
                raise CpuFault(EXC_UD)
            if cr0 & CR0_TS:
                raise CpuFault(EXC_NM)
        raise error
    return f


def translate_block(emu, lin: int, eip: int) -> tuple[Block, bool]:
    """Translate the block at linear ``lin`` (EIP ``eip``) for the current mode."""
    bitness = emu.bitness
    ctx = TranslateContext(emu, bitness, emu.stack32, emu.real, emu.state.seg[1].limit)
    try:
        data, pages, cacheable, deferred = fetch_code(emu, lin, eip)
    except CpuFault as e:
        fault = e
        return Block([], _raiser(lambda: fault), [eip, eip], eip, []), False
    decoder = X.Decoder(bitness, data, ip=eip)
    ins = X.Instruction()
    fns = []
    eips = []
    recipes = []
    branch = False
    succ = None
    used_second_page = False
    first_page_room = 0x1000 - (lin & 0xFFF)
    term = None
    end = 0
    # Falling through to the next instruction never wraps EIP at 64 KiB, not even in 16-bit
    # code: past a CS limit above 0xFFFF execution goes on at 0x10000 (only branch targets
    # are truncated to the operand size).
    emask = 0xFFFFFFFF
    # Recipes of instructions already translated in this mode, by their bytes: code that runs
    # once (boot code) repeats the same few hundred instruction shapes, and a hit skips the
    # handler and code generation. Only non-terminal instructions are kept: they never bake
    # their EIP into the closure (everything that uses EIP ends a block).
    shape_key = (bitness, ctx.stack32, ctx.real)
    shapes = emu.shapes.get(shape_key)
    if shapes is None:
        shapes = emu.shapes[shape_key] = {}
    features = emu.features
    while True:
        if decoder.position >= len(data):
            break
        here = ins_eip = (eip + decoder.position) & emask
        decoder.decode_out(ins)
        if ins.code == X.Code.INVALID:
            if decoder.last_error == X.DecoderError.NO_MORE_BYTES:
                if fns or eips:
                    break
                fault = deferred or CpuFault(EXC_GP, 0)
                eips.append(here)
                term = _raiser(lambda: fault)
                recipes.append((None, term))
                break
            eips.append(here)
            term = _raiser(lambda: CpuFault(EXC_UD))
            recipes.append((None, term))
            break
        start = decoder.position - ins.len
        end = decoder.position
        if end > first_page_room:
            used_second_page = True
        eips.append(ins_eip)
        raw = data[start:end]
        recipe = shapes.get(raw)
        if recipe is not None:
            factory, arg, body = recipe
            fns.append(factory(emu, arg) if factory is not None else arg)
            recipes.append((body, arg))
            if len(fns) >= MAX_BLOCK:
                break
            continue
        g = Gen(ctx, ins, ins_eip)
        try:
            if ins.encoding != LEGACY and ctx.real:
                # Real (and virtual-8086) mode has no VEX/EVEX/XOP: C4/C5 are LES/LDS, 62 is
                # BOUND and 8F is POP, and their register forms (what the prefixes look like)
                # are invalid.
                raise Invalid()
            if not features.allows(ins):
                raise Invalid()        # a feature this vCPU's CPUID does not report
            handler = HANDLERS.get(ins.mnemonic)
            if handler is None:
                raise Unsupported("instruction not implemented")
            fn = handler(g)
            if fn is None:
                fn = g.build(emu)
                recipe = (g.factory, g.args, g.body)
            else:
                recipe = (None, fn, None)
        except Invalid:
            term = _raiser(lambda: CpuFault(EXC_UD))
            recipes.append((None, term))
            break
        except Unsupported as e:
            msg = f"cannot emulate {codegen.MNEMONIC_NAMES.get(ins.mnemonic, '?').lower()}: {e}"
            err = EmulationError(msg, rip=(emu.mmu.sbase[1] + ins_eip) & 0xFFFFFFFF,
                                 code=data[start:decoder.position], mnemonic=describe(ins))
            term = _unimplemented(emu, ins, err)
            recipes.append((None, term))
            break
        recipes.append((recipe[2], recipe[1]))
        if g.terminal:
            term = fn
            branch = ins.mnemonic in _REGION_BRANCHES
            if branch:
                succ = []
                if ins.op0_kind in (X.OpKind.NEAR_BRANCH16, X.OpKind.NEAR_BRANCH32):
                    succ.append(ins.near_branch_target)
                if ins.mnemonic not in (X.Mnemonic.JMP, X.Mnemonic.RET):
                    succ.append(g.next_eip)
            break
        if len(shapes) < 50_000:
            shapes[raw] = recipe
        fns.append(fn)
        if len(fns) >= MAX_BLOCK:
            break
    fall = None
    if term is None:
        if not fns:
            fault = deferred or CpuFault(EXC_GP, 0)
            eips.append(eip)
            term = _raiser(lambda: fault)
            recipes.append((None, term))
        else:
            # Fell through: the last instruction becomes the terminal one.
            last = fns.pop()
            nxt = (eip + end) & emask
            eips.append(nxt)
            fall = nxt
            branch = True
            succ = [nxt]

            def term(last=last, nxt=nxt):
                last()
                return nxt
    else:
        eips.append((eip + end) & emask)
    if not used_second_page:
        pages = pages[:1]
    ranges = []
    if pages:
        first = lin & 0xFFF
        ranges.append((pages[0], first, min(0x1000, first + end) if end else first + 1))
        if len(pages) > 1:
            ranges.append((pages[1], 0, end - first_page_room))
    blk = Block(fns, term, eips, eip, pages, ranges, recipes, fall, branch)
    if branch and succ:
        blk.succ = tuple(succ)
    return blk, cacheable
