"""Guest memory as instructions see it: segmentation, paging, a TLB, RAM fast path, MMIO.

Every data access of an emulated instruction goes through one of the closures built here
(``rd1/rd2/rd4/wr1/wr2/wr4``, taking a segment number and an offset). The fast path is
a limit check against precomputed per-segment bounds, one dict lookup in a per-page TLB
(linear page -> offset of the page in the RAM mmap) and one ``struct`` access: no object
is allocated. Everything else (limit/type faults, TLB misses, page walks, accesses that
cross a page, MMIO, writes to pages holding translated code) takes the slow path.

The TLBs only ever hold RAM pages; the write TLB never holds a page that has translated
code on it, so a store into such a page always reaches the slow path. There, a second
small TLB (``cwtlb``) and a per-page bitmap of 64-byte lines holding code decide quickly
whether the store may hit code; the emulator's per-line masks of the bytes holding code then
say whether it does (it drops the stale blocks, looking only at the blocks indexed under the
lines the store touches: self-modifying code stays correct) or only touches data sharing the
page or the line (then it is just done).
"""

from __future__ import annotations

import struct

from pykvm.emulator.faults import CpuFault
from pykvm.x86.state import SS
from pykvm.x86 import paging
from pykvm.x86.bits import CR0_PE, CR0_PG, CR4_SMAP, CR4_SMEP, EXC_GP, EXC_PF, EXC_SS, FLAG_AC

_S16 = struct.Struct("<H")
_S32 = struct.Struct("<I")
_S64 = struct.Struct("<Q")


def line_mask(offset: int, size: int) -> int:
    """Bitmap of the 64-byte lines of a page that bytes [offset, offset+size) touch."""
    first = offset >> 6
    last = (offset + size - 1) >> 6
    if last > 63:
        last = 63
    return ((1 << (last - first + 1)) - 1) << first


class PhysAccessor:
    """Physical reads/writes for page walks and descriptor tables: RAM, else the MMIO bus
    (which is also where the memory's hole, a PC's legacy area, goes: ROM or nothing)."""

    def __init__(self, memory, bus):
        self.view = memory.view
        self.base = memory.base
        self.end = memory.base + memory.size
        self.hole_start, self.hole_end = memory.hole_start, memory.hole_end
        self.bus = bus

    def _ram(self, gpa: int, size: int) -> bool:
        return (self.base <= gpa and gpa + size <= self.end
                and not (gpa < self.hole_end and gpa + size > self.hole_start))

    def read(self, gpa: int, size: int) -> int:
        if self._ram(gpa, size):
            return int.from_bytes(self.view[gpa - self.base:gpa - self.base + size], "little")
        return self.bus.mmio_read(gpa, size)

    def write(self, gpa: int, size: int, value: int) -> None:
        if self._ram(gpa, size):
            self.view[gpa - self.base:gpa - self.base + size] = value.to_bytes(size, "little")
        else:
            self.bus.mmio_write(gpa, size, value)

    def read_u32(self, gpa):
        return self.read(gpa, 4)

    def read_u64(self, gpa):
        return self.read(gpa, 8)

    def write_u32(self, gpa, value):
        self.write(gpa, 4, value)

    def write_u64(self, gpa, value):
        self.write(gpa, 8, value)


class Mmu:
    """Segment bounds, TLBs and the data-access closures of one emulator.

    ``sbase/slo/rhi/whi`` are indexed by segment register (ES..GS): linear base, lowest
    valid offset, highest readable / writable offset (-1 when reads / writes through the
    segment must fault). The emulator refreshes them on every segment load.
    """

    def __init__(self, state, memory, bus, on_code_write):
        self.state = state
        self.memory = memory
        self.bus = bus
        self.phys = PhysAccessor(memory, bus)
        self.on_code_write = on_code_write
        self.sbase = [0] * 6
        self.slo = [0] * 6
        self.rhi = [0xFFFF] * 6
        self.whi = [0xFFFF] * 6
        self.rtlb: dict[int, int] = {}
        self.wtlb: dict[int, int] = {}
        self.code_pages: dict[int, set] = {}   # physical page number -> blocks translated from it
        self.code_lines: dict[int, int] = {}   # physical page number -> bitmap of 64-byte lines with code
        self.line_blocks: dict[int, set] = {}  # physical address >> 6 -> blocks with bytes in that line
        self.code_bytes: dict[int, int] = {}   # physical address >> 6 -> mask of the line's bytes with code
        self.cwtlb: dict[int, tuple[int, int]] = {}   # linear page -> (RAM offset, physical page) of code pages
        # linear page -> physical page address, for reads of pages that are not RAM (a ROM, a
        # device): the bus still serves them, but without a page walk each time.
        self.xtlb: dict[int, int] = {}
        self.paging = False
        self.user = False
        # Whether the last translation may go into a TLB: not a supervisor one of a user page
        # while SMEP or SMAP is on (EFLAGS.AC, read at each access, decides SMAP's verdict).
        self.cacheable = True
        self._build()

    # -- TLB management ----------------------------------------------------------------------
    def flush_tlb(self) -> None:
        self.rtlb.clear()
        self.wtlb.clear()
        self.cwtlb.clear()
        self.xtlb.clear()

    def configure(self) -> None:
        """Re-read CR0/CPL after a mode change; flushes the TLBs."""
        st = self.state
        self.paging = bool(st.cr0 & CR0_PG and st.cr0 & CR0_PE)
        self.user = st.cpl == 3
        self.flush_tlb()

    # -- translation -------------------------------------------------------------------------
    def translate(self, lin: int, access: int) -> int:
        """Linear -> physical for ``access`` (paging.PF_* bits); raises #PF."""
        if not self.paging:
            return lin
        st = self.state
        try:
            t = paging.walk(self.phys, st.cr0, st.cr3, st.cr4, st.efer, lin, access)
        except paging.PageFault as e:
            raise CpuFault(EXC_PF, e.error_code, cr2=e.linear) from None
        self.cacheable = not (t.user and not access & paging.PF_USER and st.cr4 & (CR4_SMEP | CR4_SMAP))
        return t.phys

    def explicit(self, access: int) -> int:
        """``access`` (no PF_USER: a supervisor one) for an explicit data access, which EFLAGS.AC
        exempts from SMAP."""
        return access | paging.SMAP_OVERRIDE if self.state.rflags & FLAG_AC else access

    def fetch_page(self, lin: int) -> int:
        """Physical address of a code byte (fetch permissions checked)."""
        return self.translate(lin, paging.PF_FETCH | (paging.PF_USER if self.user else 0))

    def seg_fault(self, s: int, off: int, size: int, write: bool) -> CpuFault:
        return CpuFault(EXC_SS if s == SS else EXC_GP, 0)

    def check_seg(self, s: int, off: int, size: int, write: bool) -> int:
        """Full segment check for an access; returns the linear address or raises #GP/#SS."""
        hi = self.whi[s] if write else self.rhi[s]
        if off < self.slo[s] or off + size - 1 > hi:
            raise self.seg_fault(s, off, size, write)
        return (self.sbase[s] + off) & 0xFFFFFFFF

    def _build(self) -> None:
        """Create the hot closures; everything they touch is bound to a local once."""
        view = self.memory.view
        ram_base = self.memory.base
        ram_end = self.memory.base + self.memory.size
        # Inside [ram_base, ram_end) but not RAM (a PC's legacy hole): the bus's. Page-aligned,
        # so one comparison decides for an access that stays within a page.
        hole_lo, hole_hi = self.memory.hole_start, self.memory.hole_end
        bus = self.bus
        sbase, slo, rhi, whi = self.sbase, self.slo, self.rhi, self.whi
        rget = self.rtlb.get
        wget = self.wtlb.get
        rtlb, wtlb = self.rtlb, self.wtlb
        code_pages = self.code_pages
        code_lines = self.code_lines
        cwtlb = self.cwtlb
        cwget = cwtlb.get
        xtlb = self.xtlb
        xget = xtlb.get
        u16, u32 = _S16.unpack_from, _S32.unpack_from
        p16, p32 = _S16.pack_into, _S32.pack_into
        translate = self.translate
        mmu = self
        PF_WRITE, PF_USER = paging.PF_WRITE, paging.PF_USER

        def lin_read(lin, size, system=False):
            """Read ``size`` bytes at a linear address (a page walk if needed)."""
            o = lin & 0xFFF
            user = mmu.user and not system
            acc = PF_USER if user else 0 if system else mmu.explicit(0)
            if o + size > 0x1000:
                # Crossing a page: translate both pages first, so a fault leaves nothing half-read.
                first = 0x1000 - o
                pa = translate(lin, acc)
                pb = translate((lin + first) & 0xFFFFFFFF, acc)
                return _phys_read(pa, first) | _phys_read(pb, size - first) << (8 * first)
            page = xget(lin >> 12)
            if page is not None and not user:
                return bus.mmio_read(page | o, size)
            pa = translate(lin, acc)
            if ram_base <= pa < ram_end and not hole_lo <= pa < hole_hi:
                off = pa - ram_base
                if (not system or not mmu.user) and mmu.cacheable:
                    rtlb[lin >> 12] = off - o
                return int.from_bytes(view[off:off + size], "little")
            if mmu.paging and not mmu.user and mmu.cacheable:
                xtlb[lin >> 12] = pa & ~0xFFF
            return bus.mmio_read(pa, size)

        def lin_write(lin, size, value, system=False):
            o = lin & 0xFFF
            user = mmu.user and not system
            acc = PF_WRITE | PF_USER if user else PF_WRITE if system else mmu.explicit(PF_WRITE)
            if o + size > 0x1000:
                first = 0x1000 - o
                pa = translate(lin, acc)
                pb = translate((lin + first) & 0xFFFFFFFF, acc)
                _phys_write(pa, first, value & ((1 << 8 * first) - 1))
                _phys_write(pb, size - first, value >> (8 * first))
                return
            pa = translate(lin, acc)
            if ram_base <= pa < ram_end and not hole_lo <= pa < hole_hi:
                off = pa - ram_base
                page = pa >> 12
                if page in code_pages:
                    if code_lines.get(page, 0) & line_mask(o, size):
                        mmu.on_code_write(page, o, size)
                    if (not system or not mmu.user) and mmu.cacheable:
                        cwtlb[lin >> 12] = (off - o, page)
                elif (not system or not mmu.user) and mmu.cacheable:
                    wtlb[lin >> 12] = off - o
                view[off:off + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
                return
            bus.mmio_write(pa, size, value)

        def _phys_read(pa, size):
            if ram_base <= pa and pa + size <= ram_end and not (pa < hole_hi and pa + size > hole_lo):
                return int.from_bytes(view[pa - ram_base:pa - ram_base + size], "little")
            return bus.mmio_read(pa, size) if size in (1, 2, 4, 8) else \
                sum(bus.mmio_read(pa + i, 1) << 8 * i for i in range(size))

        def _phys_write(pa, size, value):
            if ram_base <= pa and pa + size <= ram_end and not (pa < hole_hi and pa + size > hole_lo):
                page = pa >> 12
                if page in code_pages and code_lines.get(page, 0) & line_mask(pa & 0xFFF, size):
                    mmu.on_code_write(page, pa & 0xFFF, size)
                view[pa - ram_base:pa - ram_base + size] = value.to_bytes(size, "little")
            elif size in (1, 2, 4, 8):
                bus.mmio_write(pa, size, value)
            else:
                for i in range(size):
                    bus.mmio_write(pa + i, 1, (value >> 8 * i) & 0xFF)

        def rd_slow(s, off, size):
            hi = rhi[s]
            if off < slo[s] or off + size - 1 > hi:
                raise mmu.seg_fault(s, off, size, False)
            return lin_read((sbase[s] + off) & 0xFFFFFFFF, size)

        def wr_slow(s, off, size, value):
            if off < slo[s] or off + size - 1 > whi[s]:
                raise mmu.seg_fault(s, off, size, True)
            lin = (sbase[s] + off) & 0xFFFFFFFF
            o = lin & 0xFFF
            if o + size <= 0x1000:
                e = cwget(lin >> 12)
                if e is not None:
                    # A page shared by code and data: only a store into a code line invalidates.
                    page = e[1]
                    if code_lines.get(page, 0) & line_mask(o, size):
                        mmu.on_code_write(page, o, size)
                    view[e[0] + o:e[0] + o + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
                    return
            lin_write(lin, size, value)

        def rd1(s, off):
            if slo[s] <= off <= rhi[s]:
                lin = sbase[s] + off
                p = rget(lin >> 12)
                if p is not None:
                    return view[p + (lin & 0xFFF)]
            return rd_slow(s, off, 1)

        def rd2(s, off):
            if slo[s] <= off < rhi[s]:
                lin = sbase[s] + off
                p = rget(lin >> 12)
                if p is not None:
                    o = lin & 0xFFF
                    if o != 0xFFF:
                        return u16(view, p + o)[0]
            return rd_slow(s, off, 2)

        def rd4(s, off):
            if slo[s] <= off and off + 3 <= rhi[s]:
                lin = sbase[s] + off
                p = rget(lin >> 12)
                if p is not None:
                    o = lin & 0xFFF
                    if o <= 0xFFC:
                        return u32(view, p + o)[0]
            return rd_slow(s, off, 4)

        def wr1(s, off, v):
            if slo[s] <= off <= whi[s]:
                lin = sbase[s] + off
                p = wget(lin >> 12)
                if p is not None:
                    view[p + (lin & 0xFFF)] = v
                    return
            wr_slow(s, off, 1, v)

        def wr2(s, off, v):
            if slo[s] <= off < whi[s]:
                lin = sbase[s] + off
                p = wget(lin >> 12)
                if p is not None:
                    o = lin & 0xFFF
                    if o != 0xFFF:
                        p16(view, p + o, v)
                        return
            wr_slow(s, off, 2, v)

        def wr4(s, off, v):
            if slo[s] <= off and off + 3 <= whi[s]:
                lin = sbase[s] + off
                p = wget(lin >> 12)
                if p is not None:
                    o = lin & 0xFFF
                    if o <= 0xFFC:
                        p32(view, p + o, v)
                        return
            wr_slow(s, off, 4, v)

        def rdn(s, off, size):
            if size == 4:
                return rd4(s, off)
            if size == 2:
                return rd2(s, off)
            if size == 1:
                return rd1(s, off)
            return rd_slow(s, off, size)

        def wrn(s, off, size, v):
            if size == 4:
                wr4(s, off, v)
            elif size == 2:
                wr2(s, off, v)
            elif size == 1:
                wr1(s, off, v)
            else:
                wr_slow(s, off, size, v)

        def check_read(s, off, size):
            """Probe an access checked like a load that reads nothing (CLFLUSH): segment limit
            and page walk, so it faults where a load would."""
            if off < slo[s] or off + size - 1 > rhi[s]:
                raise mmu.seg_fault(s, off, size, False)
            if mmu.paging:
                translate((sbase[s] + off) & 0xFFFFFFFF, PF_USER if mmu.user else mmu.explicit(0))

        def check_write(s, off, size):
            """Probe that a later write of ``size`` bytes cannot fault (for multi-write instructions)."""
            if off < slo[s] or off + size - 1 > whi[s]:
                raise mmu.seg_fault(s, off, size, True)
            lin = (sbase[s] + off) & 0xFFFFFFFF
            if mmu.paging:
                acc = PF_WRITE | PF_USER if mmu.user else mmu.explicit(PF_WRITE)
                translate(lin, acc)
                if (lin & 0xFFF) + size > 0x1000:
                    translate((lin + size - 1) & 0xFFFFFFFF, acc)

        self.lin_read = lin_read
        self.lin_write = lin_write
        self.rd_slow = rd_slow
        self.wr_slow = wr_slow
        self.rd1, self.rd2, self.rd4 = rd1, rd2, rd4
        self.wr1, self.wr2, self.wr4 = wr1, wr2, wr4
        self.rdn, self.wrn = rdn, wrn
        self.check_read = check_read
        self.check_write = check_write
        self.phys_read = _phys_read
        self.phys_write = _phys_write
