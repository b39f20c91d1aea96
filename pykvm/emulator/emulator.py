"""The ``Emulator``: runs translated blocks on a ``CpuState`` until told to stop.

The run loop looks a block up by linear address in the cache of the current mode
(code size, stack size, real/protected, user/supervisor), translates it on a miss and
calls its closures. Anything that the caller must react to (HLT, a CS load, a control
register or EFER write, a CPL change) ends its block and sets ``stop``, so ``run`` returns
right after it. Faults raised by instructions are delivered through the IVT/IDT here.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import iced_x86 as X

from pykvm.emulator import compiler, segments
from pykvm.emulator.cpuid import default_cpuid
from pykvm.emulator.faults import BreakpointHit, CpuFault, Preempted
from pykvm.emulator.features import FeatureCheck
from pykvm.emulator.flags import ARITH, arith
from pykvm.emulator.interrupts import deliver_exception, deliver_external
from pykvm.emulator.mmu import Mmu, line_mask
from pykvm.x86.state import CS, SS, CpuState
from pykvm.emulator.system import SystemOps
from pykvm.emulator.translate import translate_block
from pykvm.errors import EmulationError, GuestShutdownError
from pykvm.x86.bits import CR0_PE, CR0_PG, CR0_WP, EFER_LMA, EXC_NMI, FLAG_IF, FLAG_RF, FLAG_TF, FLAG_VM

_OWN_CODE = (os.path.join("pykvm", "emulator", ""), os.path.join("pykvm", "x86", ""), "<x86-template>")


def _raised_by_emulator(exc: BaseException) -> bool:
    """True when the innermost frame of ``exc`` is emulator code (not a device on the bus)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is None or any(part in last for part in _OWN_CODE)


def _line_bytes(page: int, start: int, end: int):
    """(key, byte mask) of each 64-byte line that bytes [start, end) of ``page`` touch: the key
    is the line's physical address >> 6, bit i of the mask byte i of the line."""
    end = min(max(end, start + 1), 0x1000)
    base = page << 6
    while start < end:
        stop = min(end, (start | 63) + 1)
        yield base | start >> 6, _byte_mask(start, stop)
        start = stop


def _byte_mask(start: int, end: int) -> int:
    """Bits (start & 63) .. of bytes [start, end) within one line (empty when end <= start)."""
    return ((1 << (end - start)) - 1) << (start & 63) if end > start else 0


# Instructions kept translated before the whole cache is dropped (as QEMU flushes a full code
# buffer). The guests here translate at most ~2,000; code that wanders through memory (random
# bytes, zeroed RAM) would otherwise grow the cache, and the garbage collector's work with it,
# without bound.
CODE_CACHE_LIMIT = 1 << 15

CpuidFn = Callable[[int, int], "tuple[int, int, int, int]"]


class Emulator(SystemOps):
    """Userspace x86 emulator for non-PVM mode (real mode, 16/32-bit protected mode)."""

    def __init__(self, state: CpuState, memory, bus, cpuid: CpuidFn | None = None):
        self._state = state
        self.memory = memory
        self.bus = bus
        self.cpuid = cpuid or default_cpuid
        self.features = FeatureCheck(self.cpuid)
        self._cr4_valid = None     # CR4 bits this CPUID allows, computed on the first CR4 write
        # Where MSRs outside the emulator's own live (``read(index) -> int | None``,
        # ``write(index, value) -> bool``): the vCPU, so the emulator has exactly KVM's MSRs.
        self.msr_backend = None
        # Called after each WRMSR to IA32_APIC_BASE (the local APIC follows its enable bit).
        self.apic_base_observer = None
        self.R = state.gpr
        self.mmu = Mmu(state, memory, bus, self._on_code_write)
        self.lf = (0, 0, 0, state.rflags & ARITH)
        self.stop = False
        self.shadow = False
        self.instructions_executed = 0
        # The INTR line, kept by the owner from the interrupt controller (``set_intr``), and
        # the controller itself (``acknowledge() -> vector`` is the INTA cycle). intr_pending,
        # checked once per block, is INTR or a latched NMI (``raise_nmi``): derived, never set
        # from outside.
        self.intr_line = False
        self.intr_pending = False
        self.interrupt_controller = None
        self.interrupts_delivered = 0
        # The run loop's requests (pvm.Events: Ctrl-C, --timeout, timers): long REP string
        # instructions look at them between elements (``preempt_requested``).
        self.events = None
        # EFLAGS.RF set by the last IRET: the next instruction runs alone and clears it.
        self.rf_loaded = False
        # Called after every interrupt/exception delivery as (vector, linear address of the
        # pushed EFLAGS image, its size); None costs nothing (deliveries are rare anyway).
        self.delivery_observer = None
        # Debugger breakpoints: linear addresses whose instructions get a guard closure when
        # their block is translated (no cost anywhere else), active while ``breakpoints_armed``
        # (a debugger steps over the one it stopped at with it off). ``breakpoint_hit`` is the
        # address of the last one hit; ``breakpoint_observer(address)`` is called at each hit.
        self.breakpoints: frozenset[int] = frozenset()
        self.breakpoints_armed = True
        self.breakpoint_hit: int | None = None
        self.breakpoint_observer = None
        # The compiled tier (compiler.py): "tiered", "eager" or "interp"; after an exception
        # out of a unit, the unit's instruction index and the instructions run before its block.
        self.tier = compiler.default_tier()
        self.fault_at = 0
        self.fault_n = 0
        self.units_compiled = 0
        self.reset_side_state()
        self._caches: dict[tuple, dict] = {}
        self.cached_instructions = 0   # instructions in the cached blocks (CODE_CACHE_LIMIT)
        self.shapes: dict[tuple, dict] = {}   # (bitness, stack32) -> instruction bytes -> recipe
        self.cache: dict[int, object] = {}
        self._ctl = None
        self._paging_ctl = None
        self._snap = None
        self.bitness = 16
        self.stack32 = False
        self.real = True
        self.lma = False
        self.mode_changed()

    def reset_side_state(self) -> None:
        """Power-on values of what the emulator keeps beside ``CpuState``: DR0-DR7, the x87
        control and status words (only FNINIT/FNSTSW/FNSTCW/FLDCW are emulated) and the TSC
        offset used when there is no MSR backend."""
        self.dr = [0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400]
        self.fpu_cw = 0x37F
        self.fpu_sw = 0
        self.tsc_offset = 0

    @property
    def state(self) -> CpuState:
        return self._state

    @state.setter
    def state(self, state: CpuState) -> None:
        """Adopt a new state object (the machine rebuilds it after KVM ran): relink everything."""
        self._state = state
        self.mmu.state = state
        self.flush_blocks()
        self._paging_ctl = self._ctl = self._snap = None
        self._sync_in()

    # -- flags ------------------------------------------------------------------------------
    def get_flags(self) -> int:
        """Full EFLAGS with the lazy arithmetic flags materialised."""
        return (self.state.rflags & ~ARITH) | arith(self.lf) | 2

    def set_flags(self, value: int) -> None:
        self.state.rflags = value | 2
        self.lf = (0, 0, 0, value & ARITH)

    # -- mode tracking ------------------------------------------------------------------------
    def mode_changed(self) -> None:
        """Recompute everything derived from CR0/EFER/CS/SS: code size, segment bounds, TLB, caches."""
        st = self.state
        cr0 = st.cr0
        self.real = real = not cr0 & CR0_PE
        self.lma = bool(st.efer & EFER_LMA)
        cs = st.seg[CS]
        if real:
            # As on hardware, the cached CS/SS descriptors' D/B bits keep applying in real mode
            # (they are 0 after reset and after any return through a 16-bit segment).
            self.bitness = 32 if cs.db else 16
            self.stack32 = bool(st.seg[SS].db)
        else:
            self.bitness = 64 if self.lma and cs.l else (32 if cs.db else 16)
            self.stack32 = bool(st.seg[SS].db)
        for i in range(6):
            segments.refresh_bounds(self, i)
        cpl = st.cpl
        paging_ctl = (cr0 & (CR0_PE | CR0_PG | CR0_WP), st.cr3, st.cr4, st.efer)
        if paging_ctl != self._paging_ctl:
            self._paging_ctl = paging_ctl
            self.flush_blocks()
        ctl = (paging_ctl, cpl == 3)
        if ctl != self._ctl:
            self._ctl = ctl
            self.mmu.configure()
        # The CS limit is part of the key: near branches check their target against it.
        key = (self.bitness, self.stack32, real, cpl == 3, cs.limit)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = {}
        self.cache = cache

    def flush_blocks(self) -> None:
        """Forget every translated block (paging or CR3 changed, or memory changed behind us)."""
        for cache in self._caches.values():
            for blk in cache.values():
                blk.valid = False
                if blk.units:
                    for unit in blk.units:
                        unit.valid = False
            cache.clear()
        self.mmu.code_pages.clear()
        self.mmu.code_lines.clear()
        self.mmu.line_blocks.clear()
        self.mmu.code_bytes.clear()
        self.cached_instructions = 0

    def flush_tlb(self) -> None:
        """TLB flush (CR3 write, INVLPG): blocks are keyed by linear address, so they go too."""
        self.mmu.flush_tlb()
        self.flush_blocks()

    def invalidate_code_cache(self) -> None:
        """Guest memory may have changed behind our back (KVM ran the guest)."""
        self.flush_blocks()
        self.mmu.flush_tlb()

    def _on_code_write(self, page: int, offset: int = 0, size: int = 0x1000) -> None:
        """A store hit bytes [offset, offset+size) of a physical page with translated code:
        drop the blocks made from those bytes. The index is by 64-byte line with a mask of the
        bytes that hold code, so a store costs what it touches: nothing more when it only hits
        data next to code, the blocks of its own lines when it hits code."""
        mmu = self.mmu
        code_bytes, line_blocks = mmu.code_bytes, mmu.line_blocks
        end = offset + size
        hit = set()
        for key, mask in _line_bytes(page, offset, end):
            if code_bytes.get(key, 0) & mask:
                hit.update(b for b in line_blocks[key]
                           if any(p == page and s < end and offset < e for p, s, e in b.ranges))
        for blk in hit:
            self._discard_block(blk)

    def _discard_block(self, blk) -> None:
        """Forget one translated block."""
        blk.valid = False
        blk.fns.clear()
        if blk.units:
            for unit in blk.units:
                unit.valid = False
                for other in unit.blocks:
                    if other.unit is unit:
                        other.unit = None
        blk.unit = None
        blk.partial = None
        if blk.cache is not None and blk.cache.get(blk.key) is blk:
            del blk.cache[blk.key]
        self._unindex(blk)

    def _index(self, blk) -> None:
        """Record ``blk`` under every page and 64-byte line its bytes came from."""
        mmu = self.mmu
        code_pages, code_lines, code_bytes, line_blocks = mmu.code_pages, mmu.code_lines, mmu.code_bytes, mmu.line_blocks
        self.cached_instructions += blk.n
        for page, start, end in blk.ranges:
            users = code_pages.get(page)
            if users is None:
                users = code_pages[page] = set()
                # Writes to this page must now take the slow path (which checks for code).
                mmu.wtlb.clear()
            users.add(blk)
            code_lines[page] = code_lines.get(page, 0) | line_mask(start, max(end - start, 1))
            for key, mask in _line_bytes(page, start, end):
                users = line_blocks.get(key)
                if users is None:
                    users = line_blocks[key] = set()
                users.add(blk)
                code_bytes[key] = code_bytes.get(key, 0) | mask

    def _unindex(self, blk) -> None:
        """Remove ``blk`` from the indexes: its lines' byte masks are recomputed from the blocks
        left there; a line (a page) left without code leaves the page's bitmap (the pages with code)."""
        mmu = self.mmu
        code_pages, code_lines, code_bytes, line_blocks = mmu.code_pages, mmu.code_lines, mmu.code_bytes, mmu.line_blocks
        self.cached_instructions -= blk.n
        for page, start, end in blk.ranges:
            for key, _ in _line_bytes(page, start, end):
                users = line_blocks.get(key)
                if users is None:
                    continue
                users.discard(blk)
                if users:
                    lo = (key & 63) << 6
                    mask = 0
                    for other in users:
                        for p, s, e in other.ranges:
                            if p == page:
                                mask |= _byte_mask(max(s, lo), min(max(e, s + 1), lo + 64))
                    code_bytes[key] = mask
                else:
                    del line_blocks[key], code_bytes[key]
                    if page in code_lines:
                        code_lines[page] &= ~(1 << (key & 63))
            users = code_pages.get(page)
            if users is not None:
                users.discard(blk)
                if not users:
                    del code_pages[page]
                    code_lines.pop(page, None)

    def linear_rip(self) -> int:
        return (self.state.seg[CS].base + self.state.rip) & 0xFFFFFFFF

    # -- sync with the shared state ------------------------------------------------------------
    def _snapshot(self) -> tuple:
        """What the derived mode state depends on: control registers and the segment objects."""
        st = self._state
        return (st.cr0, st.cr3, st.cr4, st.efer, *st.seg)

    def _sync_in(self) -> None:
        """Pick up changes the caller made to ``state`` since the last call.

        Registers and flags are always re-read. Mode-derived state (segment bounds, code size,
        TLB, block caches) is recomputed when a control register, EFER or a segment register
        object changed; a caller that mutates a ``Segment`` in place calls ``sync()``.
        """
        st = self._state
        R = self.R
        if st.gpr is not R:
            R[:] = st.gpr
            st.gpr = R
        for i in range(8):
            if R[i] > 0xFFFFFFFF:
                R[i] &= 0xFFFFFFFF
        self.lf = (0, 0, 0, st.rflags & ARITH)
        snap = self._snapshot()
        if snap != self._snap:
            self.mode_changed()
            self._snap = snap

    def sync(self) -> None:
        """Recompute everything derived from ``state`` (after editing it in place)."""
        self._snap = None
        self._sync_in()

    # -- debugger breakpoints ------------------------------------------------------------------
    def set_breakpoints(self, addresses) -> None:
        """Break before the instructions at these linear addresses (replacing the previous set).

        Only the translated blocks holding an added or removed address are dropped; they get
        their guards when translated again. No breakpoint, no guard: nothing else changes.
        """
        new = frozenset(a & 0xFFFFFFFF for a in addresses)
        changed = new ^ self.breakpoints
        self.breakpoints = new
        if not changed:
            return
        for cache in self._caches.values():
            doomed = [blk for key, blk in cache.items()
                      if any((a - key) & 0xFFFFFFFF < max((blk.eips[-1] - blk.eip) & 0xFFFFFFFF, 1)
                             for a in changed)]
            for blk in doomed:
                self._discard_block(blk)

    def _plant_breakpoints(self, blk, lin: int) -> None:
        """Put a guard before each instruction of a new block that has a breakpoint."""
        base = lin - blk.eip
        last = blk.n - 1
        for i in range(blk.n):
            address = (base + blk.eips[i]) & 0xFFFFFFFF
            if address in self.breakpoints:
                blk.guarded = True
                if i < last:
                    blk.fns[i] = self._guard(blk.fns[i], address)
                else:
                    blk.term = self._guard(blk.term, address)

    def _guard(self, fn, address: int):
        emu = self

        def guarded():
            if emu.breakpoints_armed:
                raise BreakpointHit(address)
            return fn()
        return guarded

    # -- translation ------------------------------------------------------------------------
    def _translate(self, lin: int, eip: int):
        blk, cacheable = translate_block(self, lin, eip)
        blk.stamp = time.perf_counter()
        if self.breakpoints:
            self._plant_breakpoints(blk, lin)
        if cacheable and blk.pages:
            if self.cached_instructions > CODE_CACHE_LIMIT:
                self.flush_blocks()
            old = self.cache.get(lin)
            if old is not None:             # the same linear address under another CS base
                self._discard_block(old)
            blk.key = lin
            blk.cache = self.cache
            self.cache[lin] = blk
            self._index(blk)
        return blk

    # -- the compiled tier --------------------------------------------------------------------
    def _compile_block(self, blk) -> None:
        """A block ran often enough: one function for the whole block from now on (in the
        tiered mode only if those runs came quickly: ``compiler.HOT_WINDOW``)."""
        if blk.recipes is None or blk.guarded or not blk.valid or blk.key is None:
            return
        if self.tier == "tiered":
            now = time.perf_counter()
            if now - blk.stamp > compiler.HOT_WINDOW:
                blk.hits = 0
                blk.stamp = now
                return
            if compiler.region_member(blk) and self._compile_region(blk):
                return                         # a loop: straight to a region
        blk.unit = compiler.compile_unit(self, [blk])
        self.units_compiled += 1

    def _eager_unit(self, blk, count: int):
        """The ``eager`` tier's unit for the first ``count`` instructions of ``blk``."""
        if count >= blk.n:
            if blk.unit is None:
                self._compile_block(blk)
            return blk.unit
        if blk.partial is None:
            blk.partial = {}
        unit = blk.partial.get(count)
        if unit is None:
            unit = blk.partial[count] = compiler.compile_unit(self, [blk], count)
            unit.hits = -1 << 60          # a prefix never grows into a region
        return unit

    def _compile_region(self, blk) -> bool:
        """A block unit ran often enough (or a block that is part of a loop): one function for
        it and the hot blocks it reaches by near branches and fall-throughs (local dispatch
        between them). Whether a region was made."""
        unit = blk.unit
        if unit is not None:
            if self.tier == "tiered":
                now = time.perf_counter()
                if now - unit.stamp > compiler.HOT_WINDOW * compiler.REGION_AT / compiler.BLOCK_AT:
                    unit.hits = 0
                    unit.stamp = now
                    return False
            unit.hits = -1 << 60               # decided once
        if not compiler.region_member(blk):
            return False
        cache = self.cache
        base = (blk.key - blk.eip) & 0xFFFFFFFF
        # A successor joins if it is hot too: compiled already, or run a good part of that often
        # (a cold block would cost compile time and a longer dispatch for nothing).
        cold_below = compiler.BLOCK_AT // 4 if self.tier == "tiered" else 1
        members = [blk]
        seen = {blk.eip}
        size = blk.n
        k = 0
        while k < len(members) and len(members) < compiler.REGION_BLOCKS:
            for eip in members[k].succ:
                if eip in seen:
                    continue
                seen.add(eip)
                other = cache.get((base + eip) & 0xFFFFFFFF)
                if (other is None or other.eip != eip or other.unit is None and other.hits < cold_below
                        or not compiler.region_member(other) or size + other.n > compiler.REGION_INSTRUCTIONS):
                    continue
                members.append(other)
                size += other.n
            k += 1
        if len(members) < 2 and blk.eip not in blk.succ:
            return False                       # neither a loop nor a way to one
        if unit is None and not self._loops_back(members):
            return False                       # no loop yet: a block unit first
        region = compiler.compile_unit(self, members, region=True)
        region.hits = -1 << 60
        blk.unit = region
        self.units_compiled += 1
        return True

    @staticmethod
    def _loops_back(members) -> bool:
        """Whether some member branches back to the first (the region holds a loop through it)."""
        first = members[0].eip
        return any(first in m.succ for m in members)

    # -- execution --------------------------------------------------------------------------
    def step(self) -> None:
        """Execute exactly one instruction (delivering any exception it raises)."""
        self.run(1)

    def run(self, max_instructions: int, batch: int | None = None) -> int:
        """Execute up to ``max_instructions``; return how many ran.

        With ``batch``, every ``batch`` instructions (checked when a block or region ends) the
        emulator looks at what its caller's run loop would look at between batches, and
        returns only if there is something: an event (``events.pending``: Ctrl-C, --timeout, a
        timer's signal) or a device access since the last look (``bus.accesses``: a device
        may have set a new timer deadline). So the bound costs a comparison per block, not a
        return to the run loop and a new call per batch.

        Returns early right after HLT, any CS load (far transfers, IRET, exception
        delivery), control-register/EFER writes and CPL changes, and after delivering an
        external interrupt. A halted vCPU runs nothing, unless an interrupt it can take is
        pending: then it is delivered (the return address is past the HLT).

        External interrupts are taken at instruction boundaries while EFLAGS.IF = 1, and not
        right after STI or a load of SS (the interrupt shadow: exactly one instruction runs
        first). Everything that can set IF or raise INTR (STI, POPF, IRET, port I/O) ends its
        block, so checking between blocks is checking before every instruction.
        """
        st = self.state
        if max_instructions <= 0 or (st.halted and not self._interrupt_deliverable()):
            return 0
        self._sync_in()
        if self.bitness == 64:
            raise EmulationError("64-bit code must run in PVM mode, not in the emulator",
                                 rip=self.linear_rip())
        if st.rflags & FLAG_VM:
            raise EmulationError("virtual-8086 mode is not supported", rip=self.linear_rip())
        sbase = self.mmu.sbase
        tier = self.tier
        eager = tier == "eager"
        block_at, region_at = ((compiler.BLOCK_AT, compiler.REGION_AT) if tier == "tiered"
                               else (0, 2) if eager else (0, 0))
        done = 0
        self.stop = False
        self.shadow = False
        blk = None
        i = 0
        bus, events = self.bus, self.events
        check_at = batch if batch else max_instructions
        seen = bus.accesses
        try:
            while done < max_instructions:
                if done >= check_at:
                    if (events is not None and events.pending) or bus.accesses != seen:
                        break
                    seen = bus.accesses
                    check_at = done + batch
                limit = max_instructions - done
                if self.intr_pending and (st.rflags & FLAG_IF or st.nmi_pending):
                    if not st.interrupt_shadow:
                        if self._take_interrupt():
                            blk = None
                            break
                    else:
                        limit = 1     # the instruction after STI / MOV SS runs first
                rf = st.rflags & FLAG_RF
                if rf:
                    # EFLAGS.RF (loaded by IRET) is cleared when the next instruction completes.
                    limit = 1
                    self.rf_loaded = False
                eip = st.rip
                lin = (sbase[1] + eip) & 0xFFFFFFFF
                blk = self.cache.get(lin)
                if blk is None or blk.eip != eip:
                    blk = self._translate(lin, eip)
                fns = blk.fns
                n = blk.n
                i = -1
                # EFLAGS.TF: one instruction at a time, each followed by a #DB trap.
                tf = st.rflags & FLAG_TF
                unit = blk.unit
                try:
                    if unit is not None and n <= limit and not tf:
                        left = check_at - done
                        try:
                            done += unit.fn(left if n <= left <= limit else n if left < n else limit,
                                            st.rflags & FLAG_IF)
                        except BaseException:
                            blk, i = unit.where[self.fault_at]
                            done += self.fault_n
                            raise
                        if not unit.valid and blk.unit is unit:
                            blk.unit = None           # it refused to start (a segment changed)
                        unit.hits += 1
                        if unit.hits == region_at:
                            self._compile_region(blk)
                    elif eager and blk.recipes is not None and not blk.guarded and blk.key is not None:
                        unit = self._eager_unit(blk, n if n <= limit and not tf else 1 if tf else limit)
                        try:
                            done += unit.fn(limit, st.rflags & FLAG_IF)
                        except BaseException:
                            blk, i = unit.where[self.fault_at]
                            done += self.fault_n
                            raise
                        unit.hits += 1
                        if unit.hits == region_at:
                            self._compile_region(blk)
                    elif n <= limit and (not tf or n == 1):
                        for i, f in enumerate(fns):
                            f()
                        if blk.valid:
                            i = n - 1
                            st.rip = blk.term()
                            done += n
                            blk.hits += 1
                            if blk.hits == block_at:
                                self._compile_block(blk)
                        else:
                            # Self-modifying code: instruction i rewrote this block; stop after it.
                            st.rip = blk.eips[i + 1]
                            done += i + 1
                    else:
                        k = 1 if tf else limit
                        for i, f in enumerate(fns[:k]):
                            f()
                            if not blk.valid:
                                break
                        st.rip = blk.eips[i + 1]
                        done += i + 1
                except CpuFault as e:
                    st.rip = blk.eips[i]
                    done += i + 1
                    self.shadow = False
                    st.interrupt_shadow = False
                    deliver_exception(self, e)
                    break
                except Preempted:
                    st.rip = blk.eips[i]          # the REP instruction resumes from here
                    done += i
                    st.interrupt_shadow = False
                    break
                except BreakpointHit as e:
                    st.rip = blk.eips[i]          # before the instruction, which has not run
                    done += i
                    if i:
                        st.interrupt_shadow = False   # the instructions before it used it up
                    self.breakpoint_hit = e.address
                    if self.breakpoint_observer is not None:
                        self.breakpoint_observer(e.address)
                    break
                if rf and not self.rf_loaded:
                    st.rflags &= ~FLAG_RF
                st.interrupt_shadow = self.shadow
                self.shadow = False
                if tf:
                    self.dr[6] |= 0x4000          # DR6.BS: single-step trap
                    st.halted = False             # a trap after HLT returns past it
                    deliver_exception(self, CpuFault(1))
                    break
                if self.stop:
                    break
                if self.bitness == 64:
                    break
        except NotImplementedError as e:
            if blk is not None and 0 <= i < len(blk.eips):
                st.rip = blk.eips[i]
            raise self._emulation_error(str(e)) from None
        except EmulationError:
            if blk is not None and 0 <= i < len(blk.eips):
                st.rip = blk.eips[i]
            raise
        except GuestShutdownError:
            raise
        except Exception as e:
            if not _raised_by_emulator(e):
                # A device's exception (e.g. the debug-exit port) passes through. The access
                # happened, so its instruction counts as executed and RIP moves past it.
                if blk is not None and 0 <= i < len(blk.eips) - 1:
                    st.rip = blk.eips[i + 1]
                    done += i + 1
                raise
            if blk is not None and 0 <= i < len(blk.eips):
                st.rip = blk.eips[i]
            # A bug in the emulator: report it with the instruction rather than a bare traceback.
            raise self._emulation_error(f"internal emulator error {type(e).__name__}: {e}") from e
        finally:
            st.rflags = self.get_flags()
            self.instructions_executed += done
            self.stop = False
            self._snap = self._snapshot()
        return done

    def _emulation_error(self, message: str) -> EmulationError:
        """An EmulationError naming the instruction at the current RIP (bytes and disassembly)."""
        lin = self.linear_rip()
        code = b""
        text = ""
        try:
            code = bytes(self.mmu.lin_read(lin + j, 1, True) for j in range(15))
            ins = X.Decoder(self.bitness if self.bitness != 64 else 32, code, ip=self.state.rip).decode()
            code = code[:ins.len]
            text = X.Formatter(X.FormatterSyntax.INTEL).format(ins)
        except Exception:
            pass
        return EmulationError(message, rip=lin, code=code, mnemonic=text)

    # -- events from outside ------------------------------------------------------------------
    def set_intr(self, level: bool) -> None:
        """The interrupt controller's INTR output changed."""
        self.intr_line = level
        self.intr_pending = level or self.state.nmi_pending

    def raise_nmi(self) -> None:
        """An NMI arrives: latched (one at most) until the vCPU can take it, ahead of INTR."""
        self.state.nmi_pending = True
        self.intr_pending = True

    def _interrupt_deliverable(self) -> bool:
        st = self.state
        return (st.nmi_pending and not st.nmi_blocked) or (self.intr_line and bool(st.rflags & FLAG_IF))

    def preempt_requested(self) -> bool:
        """Whether a long REP instruction should stop between elements: the run loop has an
        event to handle, or an interrupt the vCPU can take is pending."""
        events = self.events
        return bool((events is not None and events.pending) or self._interrupt_deliverable())

    def _take_interrupt(self) -> bool:
        """Deliver what is pending at this instruction boundary (inside ``run``): an NMI not
        blocked by one in service first, else INTR (INTA) if IF = 1. False if neither can be."""
        st = self.state
        if st.nmi_pending and not st.nmi_blocked:
            st.nmi_pending = False
            st.nmi_blocked = True
            self.intr_pending = self.intr_line
            vector = EXC_NMI
        elif self.intr_line and st.rflags & FLAG_IF:
            vector = self.interrupt_controller.acknowledge()
        else:
            return False
        st.halted = False
        deliver_external(self, vector)
        self.interrupts_delivered += 1
        return True
