"""Page-table walks for the x86 paging modes (Intel SDM vol. 3, chapter 4).

Pure functions over a physical-memory accessor, so the emulator's TLB fill and the
tests (and a debugger translating addresses) share one walker. Supported: 32-bit
paging with 4 KiB and (CR4.PSE) 4 MiB pages, PAE paging with 4 KiB and 2 MiB pages,
and 4-level paging (long mode, incl. 1 GiB pages), with U/S, R/W (CR0.WP), NX
(EFER.NXE) checks and accessed/dirty-bit updates.

``mem`` is anything with ``read_u32/read_u64/write_u32/write_u64(gpa)`` (``GuestMemory`` is).
"""

from __future__ import annotations

from dataclasses import dataclass

from pykvm.x86.bits import CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_NXE

# Page-fault error-code bits, also used as the ``access`` argument of ``walk``.
PF_PRESENT = 1 << 0   # the fault was a protection violation (0 = page not present)
PF_WRITE = 1 << 1
PF_USER = 1 << 2
PF_RSVD = 1 << 3
PF_FETCH = 1 << 4
# Not an error-code bit: an explicit supervisor data access with EFLAGS.AC = 1, which SMAP lets
# through to user pages (implicit ones, such as descriptor-table reads, never carry it).
SMAP_OVERRIDE = 1 << 31

PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7
PTE_NX = 1 << 63

_ADDR_MASK_64 = 0x000FFFFFFFFFF000  # physical-address bits of a PAE / 4-level entry (52-bit)


class PageFault(Exception):
    """A walk failed; ``error_code`` is exactly what #PF pushes, ``linear`` goes to CR2."""

    def __init__(self, linear: int, error_code: int):
        super().__init__(f"page fault at {linear:#x}, error code {error_code:#x}")
        self.linear = linear
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class Translation:
    """Result of a successful walk.

    ``phys`` is the physical address of ``linear``; ``page_phys``/``page_size`` describe the
    mapping's frame. ``writable``/``user``/``executable`` are the effective permissions
    (the AND over all levels), so a TLB can decide later accesses without walking again.
    ``dirty`` tells whether the leaf's D bit is set (a TLB must not let writes through a
    clean entry, because the walk has to set D first).
    """

    phys: int
    page_phys: int
    page_size: int
    writable: bool
    user: bool
    executable: bool
    dirty: bool


def paging_mode(cr0: int, cr4: int, efer: int) -> str:
    """'none', '32bit', 'pae' or '4level'."""
    if not cr0 & CR0_PG:
        return "none"
    if efer & EFER_LMA:
        return "4level"
    if cr4 & CR4_PAE:
        return "pae"
    return "32bit"


def walk(mem, cr0: int, cr3: int, cr4: int, efer: int, linear: int, access: int = 0) -> Translation:
    """Translate ``linear`` for an access described by PF_WRITE | PF_USER | PF_FETCH bits.

    Sets accessed bits on every entry used and the dirty bit on the leaf for writes; raises
    ``PageFault`` with the SDM error code when the entry is absent or the access not allowed.
    """
    mode = paging_mode(cr0, cr4, efer)
    if mode == "none":
        return Translation(linear, linear & ~0xFFF, 0x1000, True, True, True, True)
    if mode == "32bit":
        return _walk32(mem, cr0, cr3, cr4, linear & 0xFFFFFFFF, access)
    nxe = bool(efer & EFER_NXE)
    fetch_flag = nxe or bool(cr4 & CR4_SMEP)     # the error code's I/D bit is reported
    if mode == "pae":
        linear &= 0xFFFFFFFF
        pdpte_addr = (cr3 & 0xFFFFFFE0) + ((linear >> 30) & 3) * 8
        pdpte = mem.read_u64(pdpte_addr)
        if not pdpte & PTE_P:
            raise PageFault(linear, _fault_code(access, fetch_flag, present=False))
        if pdpte & 0x1E6:  # reserved bits of a PAE PDPTE (bits 1,2,5..8)
            raise PageFault(linear, _fault_code(access, fetch_flag, present=True) | PF_RSVD)
        # PDPTEs carry no permission bits in PAE mode: they are always R/W and U.
        entries = [(pdpte_addr, None)]
        table = pdpte & _ADDR_MASK_64
        levels = ((21, 2 << 20), (12, 1 << 12))
    else:
        pml4e_addr = (cr3 & _ADDR_MASK_64) + ((linear >> 39) & 0x1FF) * 8
        entries = []
        table = None
        e = mem.read_u64(pml4e_addr)
        entries.append((pml4e_addr, e))
        if not e & PTE_P:
            raise PageFault(linear, _fault_code(access, fetch_flag, present=False))
        table = e & _ADDR_MASK_64
        levels = ((30, 1 << 30), (21, 2 << 20), (12, 1 << 12))
    return _walk_long(mem, cr0, cr4, nxe, fetch_flag, linear, access, entries, table, levels)


def _fault_code(access: int, fetch_flag: bool, present: bool) -> int:
    """The #PF error code; ``fetch_flag``: whether I/D is reported (NXE with PAE/4-level, or SMEP)."""
    code = access & (PF_WRITE | PF_USER)
    if access & PF_FETCH and fetch_flag:
        code |= PF_FETCH
    if present:
        code |= PF_PRESENT
    return code


def _check(linear, access, writable, user, executable, cr0, cr4, fetch_flag):
    """Raise a protection #PF when the effective permissions forbid ``access``: U/S, R/W (CR0.WP
    for supervisor writes), NX, and for supervisor accesses to user pages SMEP (fetches) and
    SMAP (data, unless ``SMAP_OVERRIDE``)."""
    if access & PF_USER:
        if not user or (access & PF_WRITE and not writable):
            raise PageFault(linear, _fault_code(access, fetch_flag, present=True))
    else:
        if user and cr4 & (CR4_SMEP | CR4_SMAP):
            if (cr4 & CR4_SMEP and access & PF_FETCH) or (
                    cr4 & CR4_SMAP and not access & (PF_FETCH | SMAP_OVERRIDE)):
                raise PageFault(linear, _fault_code(access, fetch_flag, present=True))
        if access & PF_WRITE and not writable and cr0 & CR0_WP:
            raise PageFault(linear, _fault_code(access, fetch_flag, present=True))
    if access & PF_FETCH and not executable:
        raise PageFault(linear, _fault_code(access, fetch_flag, present=True))


def _walk32(mem, cr0, cr3, cr4, linear, access) -> Translation:
    fetch_flag = bool(cr4 & CR4_SMEP)
    pde_addr = (cr3 & 0xFFFFF000) + (linear >> 22) * 4
    pde = mem.read_u32(pde_addr)
    if not pde & PTE_P:
        raise PageFault(linear, _fault_code(access, fetch_flag, present=False))
    if pde & PTE_PS and cr4 & CR4_PSE:
        writable = bool(pde & PTE_RW)
        user = bool(pde & PTE_US)
        _check(linear, access, writable, user, True, cr0, cr4, fetch_flag)
        new = pde | PTE_A | (PTE_D if access & PF_WRITE else 0)
        if new != pde:
            mem.write_u32(pde_addr, new)
        # PSE-36: PDE bits 13..20 hold physical-address bits 32..39.
        frame = (pde & 0xFFC00000) | ((pde >> 13) & 0xFF) << 32
        return Translation(frame | (linear & 0x3FFFFF), frame, 4 << 20, writable, user, True,
                           bool(new & PTE_D))
    pte_addr = (pde & 0xFFFFF000) + ((linear >> 12) & 0x3FF) * 4
    pte = mem.read_u32(pte_addr)
    if not pte & PTE_P:
        raise PageFault(linear, _fault_code(access, fetch_flag, present=False))
    writable = bool(pde & PTE_RW and pte & PTE_RW)
    user = bool(pde & PTE_US and pte & PTE_US)
    _check(linear, access, writable, user, True, cr0, cr4, fetch_flag)
    if not pde & PTE_A:
        mem.write_u32(pde_addr, pde | PTE_A)
    new = pte | PTE_A | (PTE_D if access & PF_WRITE else 0)
    if new != pte:
        mem.write_u32(pte_addr, new)
    frame = pte & 0xFFFFF000
    return Translation(frame | (linear & 0xFFF), frame, 0x1000, writable, user, True, bool(new & PTE_D))


def _walk_long(mem, cr0, cr4, nxe, fetch_flag, linear, access, entries, table, levels) -> Translation:
    """Walk the remaining PAE / 4-level levels; ``entries`` holds the upper entries already read."""
    writable = user = executable = True
    for addr, e in entries:
        if e is None:
            continue
        writable = writable and bool(e & PTE_RW)
        user = user and bool(e & PTE_US)
        executable = executable and not (nxe and e & PTE_NX)
    for i, (shift, size) in enumerate(levels):
        addr = table + ((linear >> shift) & 0x1FF) * 8
        e = mem.read_u64(addr)
        if not e & PTE_P:
            raise PageFault(linear, _fault_code(access, fetch_flag, present=False))
        if not nxe and e & PTE_NX:
            raise PageFault(linear, _fault_code(access, fetch_flag, present=True) | PF_RSVD)
        writable = writable and bool(e & PTE_RW)
        user = user and bool(e & PTE_US)
        executable = executable and not (nxe and e & PTE_NX)
        entries.append((addr, e))
        leaf = shift == 12 or (e & PTE_PS and shift in (21, 30))
        if leaf:
            _check(linear, access, writable, user, executable, cr0, cr4, fetch_flag)
            for upper_addr, upper in entries[:-1]:
                if upper is not None and not upper & PTE_A:
                    mem.write_u64(upper_addr, upper | PTE_A)
            new = e | PTE_A | (PTE_D if access & PF_WRITE else 0)
            if new != e:
                mem.write_u64(addr, new)
            frame = e & _ADDR_MASK_64 & ~(size - 1)
            return Translation(frame | (linear & (size - 1)), frame, size, writable, user, executable,
                               bool(new & PTE_D))
        table = e & _ADDR_MASK_64
    raise AssertionError("unreachable: the last level is always a leaf")
