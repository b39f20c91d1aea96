"""The compiled tier: hot translated code turned into single Python functions.

A translated block runs as one closure call per instruction, and the run loop looks up,
checks and dispatches every block (``emulator.py``). Once a block has run often enough it
is compiled here into one function (a *unit*): the template bodies of its instructions
(``codegen.py``) concatenated, their constants inlined, the registers they use in local
variables (``r0`` .. ``r7``) and so the lazy flags (``lf``); the unit sets RIP and returns
how many instructions ran. Once a block unit has run often enough, the hot blocks around
it (its static successors: the targets of near branches, fall-throughs) become one
*region*: a loop dispatching between its blocks on the next EIP, locally, left when the EIP
is none of them, when its instruction budget is spent, when an interrupt it may take comes
up or when a store hit code it was made from.

What stays exactly as on the per-instruction path:

* faults: the unit notes the instruction running (``i``, one local store per instruction),
  writes its locals back (they hold exactly what the per-instruction path would have stored
  by then) and lets the exception go; ``Emulator.run`` puts RIP on that instruction and
  counts what ran (``Unit.where``, ``E.fault_at``, ``E.fault_n``);
* instructions whose templates reach beyond registers, flags and memory (``E.`` calls,
  ``R`` as a whole: segment loads, POPF, string instructions, port I/O; ready closures) are
  *opaque*: the locals are written back before them and read again after, and they run
  against ``R`` and ``E.lf`` as on the per-instruction path. A region holds none of them;
* self-modifying code: after every instruction that stores, a dropped block of the unit
  (``Unit.valid``) ends it after that instruction, as the per-instruction path stops after
  the store that hit its block;
* single-stepping, breakpoints, the interrupt shadow, RF and runs shorter than a block stay
  on the per-instruction path (except in the ``eager`` tier, which compiles such a prefix of
  a block too), and blocks with breakpoint guards are never compiled.

Tiers (``Emulator.tier``): ``tiered`` compiles a block after ``BLOCK_AT`` runs and a region
after ``REGION_AT`` runs of its entry's unit; ``eager`` compiles every block at its first run
and a region at the second (for the tests: every instruction then runs compiled); ``interp``
never compiles. The environment variable ``PYKVM_EMU_TIER`` sets the default.
"""

from __future__ import annotations

import ast
import os
import re
import struct
import time

from pykvm.emulator import codegen

BLOCK_AT = 200          # runs of a block through its closures before it is compiled ...
REGION_AT = 500         # ... and of a block unit before a region is built from it,
HOT_WINDOW = 0.05       # each within this many seconds: a block run 100 times a second (a timer
                        # loop) never pays for its compilation (~1 ms a block, a few ms a region),
                        # and compiling it would only delay the guest at its next interrupt
REGION_BLOCKS = 24      # blocks at most in a region
REGION_INSTRUCTIONS = 400
TIERS = ("tiered", "eager", "interp")


def default_tier() -> str:
    tier = os.environ.get("PYKVM_EMU_TIER") or "tiered"
    if tier not in TIERS:
        raise ValueError(f"PYKVM_EMU_TIER={tier!r}: expected one of {', '.join(TIERS)}")
    return tier


class Unit:
    """One compiled function: ``fn(left, ie) -> instructions run`` (RIP set).

    ``left`` is the most instructions it may run (a region enters only a block that fits),
    ``ie`` EFLAGS.IF (a region then leaves when INTR comes up). ``where[i]`` is (block,
    index in the block) of instruction ``i``; after an exception ``E.fault_at`` holds ``i``
    and ``E.fault_n`` the instructions completed in earlier blocks.
    """

    __slots__ = ("fn", "valid", "blocks", "where", "hits", "region", "source", "stamp")

    def __init__(self, blocks, where, region: bool):
        self.fn = None
        self.valid = True
        self.blocks = blocks
        self.where = where
        self.hits = 0
        self.region = region
        self.source = ""
        self.stamp = time.perf_counter()


# -- template analysis -------------------------------------------------------------------------
_PURE_CALLS = frozenset(["int", "bool", "COND", "arith", "carry", "rd1", "rd2", "rd4", "rdn",
                         "wr1", "wr2", "wr4", "wrn", "Fault"]) | frozenset(
    name for name in dir(codegen.alu) if not name.startswith("_"))
_STORES = frozenset(["wr1", "wr2", "wr4", "wrn"])
_SCOPES = (ast.For, ast.While, ast.AsyncFor, ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
           ast.ClassDef, ast.Global, ast.Nonlocal, ast.Yield, ast.YieldFrom, ast.Await)


class Template:
    """What the compiler knows about one template body, and the body in a canonical text form
    that each instance fills in with one substitution: parameters stay ``kN``, temporaries end
    in ``__S`` (the instance's suffix), and unless the template is opaque ``R[kN]`` is
    ``RkN__`` (the local of the register the parameter names), ``R[n]`` is ``rn`` and
    ``E.lf`` is ``lf``."""

    __slots__ = ("opaque", "stores", "single_return", "lines", "returns", "reg_refs", "uses_lf")

    def __init__(self, body: str):
        tree = ast.parse(body)
        nodes = list(ast.walk(tree))
        assigned = frozenset(n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
        # R only as R[constant], E only as E.lf: everything else reaches past the locals.
        r_ok = {id(n.value) for n in nodes if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name)
                and n.value.id == "R" and _constant_index(n.slice)}
        e_ok = {id(n.value) for n in nodes if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                and n.value.id == "E" and n.attr == "lf"}
        opaque = any(isinstance(n, _SCOPES) for n in nodes)
        for n in nodes:
            if isinstance(n, ast.Name):
                if (n.id == "R" and id(n) not in r_ok) or (n.id == "E" and id(n) not in e_ok):
                    opaque = True
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
                if n.func.id not in _PURE_CALLS and n.func.id not in assigned:
                    opaque = True
        self.opaque = opaque
        self.uses_lf = not opaque and bool(e_ok)
        self.stores = opaque or any(
            (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in _STORES)
            or (isinstance(n, ast.Name) and n.id == "M") for n in nodes)
        returns = [n for n in nodes if isinstance(n, ast.Return)]
        self.single_return = len(returns) == 1 and tree.body[-1] is returns[0]
        canon = _Canonical(assigned, opaque)
        if not opaque:
            canon.find_views(tree)
        tree = ast.fix_missing_locations(canon.visit(tree))
        self.reg_refs = canon.reg_refs
        self.lines = ast.unparse(tree).split("\n")
        self.returns = [k for k, line in enumerate(self.lines) if line.lstrip().startswith("return ")]


# The MMU's fast paths (``mmu.py``: rd1 .. wr4), inlined where a template loads into a variable
# or stores a value: the same checks in the same order, the same slow path (which checks again).
_INLINE_MEMORY = {
    "rd1": ("if slo[{s}] <= {o} <= rhi[{s}]:\n"
            "    {l} = sbase[{s}] + {o}\n"
            "    {p} = rget({l} >> 12)\n"
            "    {t} = view[{p} + ({l} & 4095)] if {p} is not None else rd_slow({s}, {o}, 1)\n"
            "else:\n"
            "    {t} = rd_slow({s}, {o}, 1)"),
    "rd2": ("{l} = sbase[{s}] + {o}\n"
            "if slo[{s}] <= {o} < rhi[{s}] and ({l} & 4095) != 4095 and ({p} := rget({l} >> 12)) is not None:\n"
            "    {t} = u16(view, {p} + ({l} & 4095))[0]\n"
            "else:\n"
            "    {t} = rd_slow({s}, {o}, 2)"),
    "rd4": ("{l} = sbase[{s}] + {o}\n"
            "if slo[{s}] <= {o} and {o} + 3 <= rhi[{s}] and ({l} & 4095) <= 4092 and ({p} := rget({l} >> 12)) is not None:\n"
            "    {t} = u32(view, {p} + ({l} & 4095))[0]\n"
            "else:\n"
            "    {t} = rd_slow({s}, {o}, 4)"),
    "wr1": ("{l} = sbase[{s}] + {o}\n"
            "if slo[{s}] <= {o} <= whi[{s}] and ({p} := wget({l} >> 12)) is not None:\n"
            "    view[{p} + ({l} & 4095)] = {v}\n"
            "else:\n"
            "    wr_slow({s}, {o}, 1, {v})"),
    "wr2": ("{l} = sbase[{s}] + {o}\n"
            "if slo[{s}] <= {o} < whi[{s}] and ({l} & 4095) != 4095 and ({p} := wget({l} >> 12)) is not None:\n"
            "    p16(view, {p} + ({l} & 4095), {v})\n"
            "else:\n"
            "    wr_slow({s}, {o}, 2, {v})"),
    "wr4": ("{l} = sbase[{s}] + {o}\n"
            "if slo[{s}] <= {o} and {o} + 3 <= whi[{s}] and ({l} & 4095) <= 4092 and ({p} := wget({l} >> 12)) is not None:\n"
            "    p32(view, {p} + ({l} & 4095), {v})\n"
            "else:\n"
            "    wr_slow({s}, {o}, 4, {v})"),
}


# The same in a region for a flat segment (base 0, limit 4 GiB, readable and writable, as the
# region checks when it starts): the offset is the linear address, and the page-offset check
# also catches the accesses that would wrap past 4 GiB (the slow path faults them).
_FLAT_MEMORY = {
    "rd1": ("{t} = view[{p} + ({o} & 4095)] if ({p} := rget({o} >> 12)) is not None else rd_slow({s}, {o}, 1)"),
    "rd2": ("if ({o} & 4095) != 4095 and ({p} := rget({o} >> 12)) is not None:\n"
            "    {t} = u16(view, {p} + ({o} & 4095))[0]\n"
            "else:\n"
            "    {t} = rd_slow({s}, {o}, 2)"),
    "rd4": ("if ({o} & 4095) <= 4092 and ({p} := rget({o} >> 12)) is not None:\n"
            "    {t} = u32(view, {p} + ({o} & 4095))[0]\n"
            "else:\n"
            "    {t} = rd_slow({s}, {o}, 4)"),
    "wr1": ("if ({p} := wget({o} >> 12)) is not None:\n"
            "    view[{p} + ({o} & 4095)] = {v}\n"
            "else:\n"
            "    wr_slow({s}, {o}, 1, {v})"),
    "wr2": ("if ({o} & 4095) != 4095 and ({p} := wget({o} >> 12)) is not None:\n"
            "    p16(view, {p} + ({o} & 4095), {v})\n"
            "else:\n"
            "    wr_slow({s}, {o}, 2, {v})"),
    "wr4": ("if ({o} & 4095) <= 4092 and ({p} := wget({o} >> 12)) is not None:\n"
            "    p32(view, {p} + ({o} & 4095), {v})\n"
            "else:\n"
            "    wr_slow({s}, {o}, 4, {v})"),
}
_MEMORY_MARKER = re.compile(r"^(\s*)__mem__\.(\w+)\((\S+), (\S+), (\S+)\)$")


def _expand_memory(line: str, gen, suffix: str) -> list[str]:
    """The lines of one inlined access (a ``__mem__`` marker): the flat form where the unit may
    assume the segment flat (``gen.flat``), else the MMU's fast path with its segment checks."""
    m = _MEMORY_MARKER.match(line)
    lead, name, seg, offset, last = m.groups()
    gen.accesses += 1
    parts = {"s": seg, "o": offset, "l": f"ml{gen.accesses}{suffix}", "p": f"mp{gen.accesses}{suffix}",
             "t": last, "v": last}
    if gen.flat is not None and seg.isdigit() and int(seg) in gen.flat:
        gen.flat_used.add(int(seg))
        text = _FLAT_MEMORY[name]
    else:
        text = _INLINE_MEMORY[name]
    return [lead + x for x in text.format(**parts).split("\n")]


def _simple(node) -> bool:
    return isinstance(node, (ast.Name, ast.Constant))


class _Canonical(ast.NodeTransformer):
    def __init__(self, assigned, opaque: bool):
        self.assigned = assigned
        self.opaque = opaque
        self.reg_refs = []      # (parameter number or None, register number or None, stored)
        self.accesses = 0
        self.views = set()

    def _memory(self, call, target):
        """The statements of an inlined access, or None where it stays a call."""
        name = call.func.id if isinstance(call.func, ast.Name) else None
        if name not in _INLINE_MEMORY or call.keywords or not all(_simple(a) for a in call.args[:2]):
            return None
        if (target is None) != (name[0] == "w"):
            return None
        self.accesses += 1
        k = self.accesses
        parts = {"s": ast.unparse(call.args[0]), "o": ast.unparse(call.args[1]),
                 "l": f"ml{k}__S", "p": f"mp{k}__S", "t": target}
        stmts = []
        if name[0] == "w":
            value = call.args[2]
            if not _simple(value):
                stmts.append(ast.parse(f"mv{k}__S = {ast.unparse(value)}").body[0])
                parts["v"] = f"mv{k}__S"
            else:
                parts["v"] = ast.unparse(value)
        # A marker the instance expands (``_expand_memory``): how depends on the segment then.
        last = parts["t"] if name[0] == "r" else parts["v"]
        return stmts + [ast.parse(f"__mem__.{name}({parts['s']}, {parts['o']}, {last})").body[0]]

    def _assign(self, node):
        if (not self.opaque and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call)):
            stmts = self._memory(node.value, ast.unparse(node.targets[0]))
            if stmts is not None:
                return [self.visit(s) for s in stmts]
        return self.generic_visit(node)

    def visit_Expr(self, node):
        if not self.opaque and isinstance(node.value, ast.Call):
            stmts = self._memory(node.value, None)
            if stmts is not None:
                return [self.visit(s) for s in stmts]
        return self.generic_visit(node)

    def visit_Name(self, node):
        if node.id in self.views and isinstance(node.ctx, ast.Load):
            return ast.copy_location(_lf_tuple(), node)
        if node.id in self.assigned or node.id.endswith("__S"):
            if node.id.endswith("__S"):
                return node
            return ast.copy_location(ast.Name(node.id + "__S", node.ctx), node)
        return node

    def visit_Subscript(self, node):
        if (isinstance(node.value, ast.Name) and node.value.id in self.views and isinstance(node.slice, ast.Constant)):
            return ast.copy_location(ast.Name(_LF[node.slice.value], ast.Load()), node)
        self.generic_visit(node)
        if not self.opaque and isinstance(node.value, ast.Name) and node.value.id == "R":
            store = isinstance(node.ctx, ast.Store)
            index = node.slice
            if isinstance(index, ast.Name):
                self.reg_refs.append((int(index.id[1:]), None, store))
                return ast.copy_location(ast.Name(f"R{index.id}__", node.ctx), node)
            self.reg_refs.append((None, index.value, store))
            return ast.copy_location(ast.Name(f"r{index.value}", node.ctx), node)
        return node

    # The lazy flags live in four locals (lk, la, lb, lr: kind, operands, result), so setting
    # them builds no tuple; ``p = E.lf`` used only as p[0..3] (the condition tests) reads them.
    def find_views(self, tree) -> None:
        """Names bound once to ``E.lf`` and used only as ``p[constant]`` or call arguments."""
        counts: dict[str, int] = {}
        for n in ast.walk(tree):
            if isinstance(n, ast.Name):
                counts[n.id] = counts.get(n.id, 0) + 1
        candidates = {}
        for n in ast.walk(tree):
            if (isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
                    and _is_lf(n.value)):
                name = n.targets[0].id
                candidates[name] = candidates.get(name, 0) + 1
        uses: dict[str, int] = {}
        for n in ast.walk(tree):
            if (isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id in candidates
                    and isinstance(n.slice, ast.Constant) and n.slice.value in (0, 1, 2, 3)
                    and isinstance(n.ctx, ast.Load)):
                uses[n.value.id] = uses.get(n.value.id, 0) + 1
            elif isinstance(n, ast.Call):
                for a in n.args:
                    if isinstance(a, ast.Name) and a.id in candidates:
                        uses[a.id] = uses.get(a.id, 0) + 1
        self.views = {name for name, once in candidates.items()
                      if once == 1 and counts[name] == 1 + uses.get(name, 0)}

    def visit_Assign(self, node):
        if not self.opaque:
            target = node.targets[0] if len(node.targets) == 1 else None
            if isinstance(target, ast.Name) and target.id in self.views:
                return None
            if _is_lf(target):
                value = self.visit(node.value)
                names = [ast.Name(x, ast.Store()) for x in _LF]
                if isinstance(value, ast.Tuple) and len(value.elts) == 4 and not any(
                        isinstance(n, ast.Name) and n.id in _LF for n in ast.walk(value)):
                    return [ast.copy_location(ast.Assign([nm], e), node) for nm, e in zip(names, value.elts)]
                return ast.copy_location(ast.Assign([ast.Tuple(names, ast.Store())], value), node)
        return self._assign(node)

    def visit_Attribute(self, node):
        self.generic_visit(node)
        if not self.opaque and _is_lf(node):
            return ast.copy_location(_lf_tuple(), node)
        return node


_LF = ("lk", "la", "lb", "lr")


def _is_lf(node) -> bool:
    return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "E"
            and node.attr == "lf")


def _lf_tuple():
    return ast.Tuple([ast.Name(x, ast.Load()) for x in _LF], ast.Load())


def _constant_index(node) -> bool:
    return (isinstance(node, ast.Name) and node.id[:1] == "k" and node.id[1:].isdigit()) or (
        isinstance(node, ast.Constant) and type(node.value) is int)


_TEMPLATES: dict[str, Template] = {}
_CLOSURE = None     # recipes of ready closures have no template


def template(body: str | None) -> Template | None:
    if body is None:
        return _CLOSURE
    t = _TEMPLATES.get(body)
    if t is None:
        t = _TEMPLATES[body] = Template(body)
    return t


def instruction_info(recipe) -> tuple[bool, bool]:
    """(opaque, may store) of one instruction's recipe."""
    t = template(recipe[0])
    if t is None:
        return True, True
    return t.opaque, t.stores


def region_member(blk) -> bool:
    """Whether ``blk`` may be part of a region: a near branch or a fall-through at its end,
    no opaque instruction, no breakpoint guard."""
    if not blk.branch or blk.guarded or blk.recipes is None or not blk.valid:
        return False
    for recipe in blk.recipes:
        if instruction_info(recipe)[0]:
            return False
    return blk.fall is not None or template(blk.recipes[-1][0]).single_return


# -- code generation ---------------------------------------------------------------------------
_UNIT_GLOBALS = dict(codegen._GLOBALS, u16=struct.Struct("<H").unpack_from, u32=struct.Struct("<I").unpack_from,
                     p16=struct.Struct("<H").pack_into, p32=struct.Struct("<I").pack_into)
_SIMPLE = (int, str, bool, type(None), float)
_FLUSH, _RELOAD = "__FLUSH__()", "__RELOAD__()"


class _Gen:
    """What the whole unit needs to know once every instruction is transformed."""

    def __init__(self):
        self.regs: set[int] = set()
        self.written: set[int] = set()
        self.uses_lf = False
        self.bound: dict[int, tuple[str, object]] = {}
        self.opaque_ids: list[int] = []
        self.accesses = 0
        self.flat = None                  # segments a region may take as flat (it checks when it starts)
        self.flat_used: set[int] = set()

    def bind(self, value) -> str:
        got = self.bound.get(id(value))
        if got is None:
            got = self.bound[id(value)] = (f"K{len(self.bound)}", value)
        return got[0]


_TOKEN = re.compile(r"\bR?k(\d+)(__)?\b|__S\b")


def _instruction(gen: _Gen, recipe, uid: int, tail: list[str] | None) -> list[str]:
    """The lines of one instruction; ``tail`` (terminal only) is what follows each of its
    returns, which become ``eip = ...``. An opaque instruction is framed by the flush and
    reload markers."""
    body, params = recipe
    t = template(body)
    if t is None:                                 # a ready closure
        gen.opaque_ids.append(uid)
        name = gen.bind(params)
        if tail is None:
            return [_FLUSH, f"{name}()", _RELOAD]
        return [_FLUSH, f"eip = {name}()", _RELOAD] + tail
    if not t.opaque:
        for param, reg, stored in t.reg_refs:
            if param is not None:
                reg = params[param]
            gen.regs.add(reg)
            if stored:
                gen.written.add(reg)
        if t.uses_lf:
            gen.uses_lf = True
    suffix = f"_{uid}"

    def fill(m):
        if m.group(1) is None:
            return suffix
        value = params[int(m.group(1))]
        if m.group(0)[0] == "R":
            return f"r{value}"
        if isinstance(value, _SIMPLE):
            return repr(value)
        return gen.bind(value)

    lines = []
    for line in t.lines:
        line = _TOKEN.sub(fill, line)
        if "__mem__." in line:
            lines += _expand_memory(line, gen, suffix)
        else:
            lines.append(line)
    if tail is not None:
        tail = ([_RELOAD] if t.opaque else []) + tail
        for k in reversed([k for k, line in enumerate(lines) if line.lstrip().startswith("return ")]):
            line = lines[k]
            lead = line[:len(line) - len(line.lstrip())]
            lines[k:k + 1] = [lead + "eip = " + line.lstrip()[7:]] + [lead + x for x in tail]
    if t.opaque:
        gen.opaque_ids.append(uid)
        lines = [_FLUSH] + lines + ([] if tail is not None else [_RELOAD])
    return lines


def compile_unit(emu, blocks, count: int | None = None, region: bool = False) -> Unit:
    """Compile ``blocks`` into a unit: one block, or with ``region`` a region whose first
    block is its entry; ``count`` compiles only the first ``count`` instructions of a block."""
    gen = _Gen()
    if region:
        mmu = emu.mmu
        gen.flat = {s for s in range(6) if mmu.sbase[s] == 0 and mmu.slo[s] == 0
                    and mmu.rhi[s] == 0xFFFFFFFF and mmu.whi[s] == 0xFFFFFFFF}
    where = []
    parts = []           # (block, lines) in order
    for blk in blocks:
        n = blk.n if count is None else count
        eips = blk.eips
        code = []
        for j in range(n):
            uid = len(where)
            where.append((blk, j))
            recipe = blk.recipes[j]
            code.append(f"i = {uid}")
            if j == blk.n - 1 and blk.fall is None:          # the terminal instruction
                code += _instruction(gen, recipe, uid, [] if region else [f"n = {n}", "break"])
                continue
            code += _instruction(gen, recipe, uid, None)
            if instruction_info(recipe)[1] and j + 1 < blk.n:
                # A store may have hit this unit's code: stop after it.
                code += ["if not U.valid:", f"    eip = {eips[j + 1]}", f"    n {'+=' if region else '='} {j + 1}",
                         "    break"]
        if count is not None and count < blk.n:
            code += [f"eip = {eips[count]}", f"n = {count}", "break"]
        elif blk.fall is not None:
            code.append(f"eip = {blk.fall}")
            if not region:
                code += [f"n = {n}", "break"]
        if region:
            code += [f"n += {n}", f"left -= {n}", "if ie and E.intr_pending:", "    break"]
            if instruction_info(blk.recipes[-1])[1]:
                code += ["if not U.valid:", "    break"]
        parts.append((blk, code))

    flush = [f"R[{r}] = r{r}" for r in sorted(gen.written)] + (["E.lf = (lk, la, lb, lr)"] if gen.uses_lf else [])
    reload = [f"r{r} = R[{r}]" for r in sorted(gen.regs)] + (["lk, la, lb, lr = E.lf"] if gen.uses_lf else [])
    ind = " " * 8
    lines = ["def _make(E, U):", "    R = E.R", "    M = E.mmu", "    ST = E.state",
             "    rd1 = M.rd1; rd2 = M.rd2; rd4 = M.rd4; rdn = M.rdn",
             "    wr1 = M.wr1; wr2 = M.wr2; wr4 = M.wr4; wrn = M.wrn",
             "    slo = M.slo; rhi = M.rhi; whi = M.whi; sbase = M.sbase; rget = M.rtlb.get; wget = M.wtlb.get",
             "    view = M.memory.view; rd_slow = M.rd_slow; wr_slow = M.wr_slow",
             "    def unit(left, ie):"]
    if gen.flat_used:
        # The segments taken as flat must still be: else this region is done for.
        test = " or ".join(f"sbase[{s}] or slo[{s}] or rhi[{s}] != 4294967295 or whi[{s}] != 4294967295"
                           for s in sorted(gen.flat_used))
        lines += [f"{ind}if {test}:", f"{ind}    U.valid = False", f"{ind}    return 0"]
    lines += [ind + x for x in reload]
    lines += [ind + "n = 0", ind + "i = 0", ind + f"eip = {blocks[0].eip}", ind + "try:", ind + "    while True:"]
    inner = ind + " " * 8
    if region:
        # Blocks in address order, each tested once per pass with ``if`` (not ``elif``): control
        # that flows forward through the loop (the common layout) costs one comparison a block.
        for blk, code in sorted(parts, key=lambda part: part[0].eip):
            lines.append(f"{inner}if eip == {blk.eip}:")
            lines.append(f"{inner}    if left < {blk.n}:")
            lines.append(f"{inner}        break")
            _emit(lines, inner + "    ", code, flush, reload)
        members = ", ".join(str(blk.eip) for blk in blocks)
        lines += [f"{inner}if eip not in {{{members}}}:", f"{inner}    break"]
    else:
        _emit(lines, inner, parts[0][1], flush, reload)
    lines.append(f"{ind}except BaseException:")
    opq = gen.opaque_ids
    if opq and flush:
        cond = " and ".join(f"i != {u}" for u in opq) if len(opq) <= 3 else f"i not in {set(opq)!r}"
        lines.append(f"{ind}    if {cond}:")
        lines += [f"{ind}        {x}" for x in flush]
    else:
        lines += [f"{ind}    {x}" for x in flush]
    lines += [f"{ind}    E.fault_at = i", f"{ind}    E.fault_n = n", f"{ind}    raise"]
    lines += [ind + x for x in flush]
    lines += [ind + "ST.rip = eip", ind + "return n", "    return unit"]
    source = "\n".join(lines) + "\n"
    unit = Unit(list(blocks), where, region)
    unit.source = source
    glb = dict(_UNIT_GLOBALS)
    for name, value in gen.bound.values():
        glb[name] = value
    ns: dict = {}
    exec(compile(source, "<x86-unit>", "exec"), glb, ns)
    unit.fn = ns["_make"](emu, unit)
    for blk in blocks:
        if blk.units is None:
            blk.units = []
        blk.units.append(unit)
    return unit


def _emit(lines: list[str], indent: str, code: list[str], flush: list[str], reload: list[str]) -> None:
    """Add ``code`` at ``indent``, expanding the flush / reload markers in place."""
    for line in code:
        body = line.lstrip()
        if body == _FLUSH or body == _RELOAD:
            lead = indent + line[:len(line) - len(body)]
            lines += [lead + x for x in (flush if body == _FLUSH else reload)] or [lead + "pass"]
        else:
            lines.append(indent + line)
