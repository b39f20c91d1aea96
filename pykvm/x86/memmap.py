"""The guest-physical memory map of a pykvm PC, as pure data: one description for everyone.

The machine registers its KVM memory slots from it, the emulator's MMU treats as RAM
exactly what it calls RAM, the loaders place images and boot structures only in its RAM
and hand it to the guest (multiboot memory maps, PVH's ``hvm_memmap_table_entry`` array),
the RTC's CMOS memory-size bytes are computed from it, and ``-v`` prints it.

The layout is a PC's, as QEMU's ``pc`` machine lays out ``-m SIZE`` (``ram_size`` bytes
of RAM in all, the legacy hole eating 384 KiB of it):

==========================  =========================================================
0 - 0x9ffff                 RAM ("conventional memory", 640 KiB)
0xa0000 - 0xfffff           legacy hole: VGA window, option ROMs, the BIOS area; reserved.
                            With a firmware ROM, its last 128 KiB (or all of it, if
                            smaller) are visible read-only at the top, ending at 0xfffff.
0x100000 - RAM top          RAM ("extended memory"), up to the PCI hole at 3 GiB at most
PCI hole - 4 GiB            device MMIO (pc-testdev's page at 0xff000000), the firmware
                            ROM just below 4 GiB
4 GiB - ...                 the RAM that did not fit below the PCI hole
==========================  =========================================================

Regions never overlap; address ranges no region names (the PCI hole) are unmapped: reads
there see all-ones, writes are dropped. The machine backs the reserved legacy hole with RAM,
as a PC has shadow RAM there, but nothing is placed there and the guest is told to keep out.
``e820()`` gives the firmware-style table (RAM as type 1, everything else the map names as
reserved, type 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from pykvm.errors import BadInputError

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
FOUR_GIB = 1 << 32

LOW_RAM_END = 0xA0000               # 640 KiB
HIGH_RAM_START = 0x100000           # 1 MiB
LEGACY_HOLE = (LOW_RAM_END, HIGH_RAM_START)
PCI_HOLE_START = 0xC0000000         # 3 GiB, QEMU's choice for a pc with that much RAM
BIOS_ALIAS_MAX = 128 * KIB          # how much of a firmware ROM shows below 1 MiB
ROM_MIN, ROM_MAX, ROM_ALIGN = 64 * KIB, 16 * MIB, 64 * KIB

RAM, RESERVED, ROM, MMIO = "ram", "reserved", "rom", "mmio"
E820_RAM = 1
E820_RESERVED = 2


def _span(start: int, size: int) -> str:
    return f"{start:#x}-{start + size - 1:#x}"


@dataclass(frozen=True)
class Region:
    """``size`` bytes at guest-physical ``start`` of one ``kind`` (RAM, RESERVED, ROM, MMIO)."""

    start: int
    size: int
    kind: str
    what: str

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def e820_type(self) -> int:
        return E820_RAM if self.kind == RAM else E820_RESERVED

    def __str__(self) -> str:
        return f"{self.what} {_span(self.start, self.size)}"


class MemoryMap:
    """Sorted, non-overlapping regions (``BadInputError`` when two overlap)."""

    def __init__(self, regions):
        self.regions: tuple[Region, ...] = tuple(sorted((r for r in regions if r.size > 0),
                                                        key=lambda r: r.start))
        for a, b in zip(self.regions, self.regions[1:]):
            if b.start < a.end:
                raise BadInputError(f"the {a} overlaps the {b}")

    @property
    def ram(self) -> list[Region]:
        return [r for r in self.regions if r.kind == RAM]

    @property
    def ram_size(self) -> int:
        return sum(r.size for r in self.ram)

    def ram_split(self) -> tuple[int, int]:
        """(bytes of RAM below 4 GiB, counted from 0 as a BIOS reports it, bytes above)."""
        below = max((r.end for r in self.ram if r.end <= FOUR_GIB), default=0)
        return below, sum(r.size for r in self.ram if r.start >= FOUR_GIB)

    def lower_upper_kib(self) -> tuple[int, int]:
        """A BIOS's two memory sizes, in KiB: RAM from 0 (at most 640 KiB) and RAM from 1 MiB
        up to the first address that is not RAM (multiboot's mem_lower and mem_upper)."""
        lower = next((r.size for r in self.ram if r.start == 0), 0)
        upper = next((r.size for r in self.ram if r.start == HIGH_RAM_START), 0)
        return min(lower, LOW_RAM_END) // KIB, upper // KIB

    def overlapping(self, start: int, size: int) -> list[Region]:
        return [r for r in self.regions if r.start < start + size and start < r.end]

    def region_at(self, addr: int) -> Region | None:
        hits = self.overlapping(addr, 1)
        return hits[0] if hits else None

    def is_ram(self, start: int, size: int) -> bool:
        """True when every byte of ``start`` .. ``start + size - 1`` is RAM (one region)."""
        return size > 0 and any(r.start <= start and start + size <= r.end for r in self.ram)

    def check_ram(self, start: int, size: int, what: str) -> None:
        """``BadInputError`` naming what ``what`` hits, unless the range is all RAM."""
        if self.is_ram(start, size):
            return
        for r in self.overlapping(start, size):
            if r.kind != RAM:
                raise BadInputError(f"{what} {_span(start, size)} overlaps the {r}")
        ram = ", ".join(_span(r.start, r.size) for r in self.ram) or "none"
        raise BadInputError(f"{what} {_span(start, size)} lies outside guest RAM ({ram})")

    def e820(self) -> list[tuple[int, int, int]]:
        """(start, size, type) for every region, adjacent ones of one type merged."""
        table: list[list[int]] = []
        for r in self.regions:
            if table and table[-1][0] + table[-1][1] == r.start and table[-1][2] == r.e820_type:
                table[-1][1] += r.size
            else:
                table.append([r.start, r.size, r.e820_type])
        return [tuple(entry) for entry in table]

    def describe(self) -> list[str]:
        """One line per region, for ``-v``."""
        return [f"{r.start:#014x}-{r.end - 1:#014x} {r.kind:<8} {r.what} ({_size(r.size)})"
                for r in self.regions]


def _size(n: int) -> str:
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} bytes"


def check_rom_size(size: int) -> None:
    if not ROM_MIN <= size <= ROM_MAX or size % ROM_ALIGN:
        raise BadInputError(f"a firmware ROM is 64 KiB to 16 MiB in multiples of 64 KiB, "
                            f"this one has {size} bytes")


def rom_ranges(rom_size: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Where a firmware ROM of ``rom_size`` bytes shows: ((gpa, offset in the ROM, size), ...)
    for the whole ROM just below 4 GiB and its alias ending at 0xfffff."""
    check_rom_size(rom_size)
    alias = min(rom_size, BIOS_ALIAS_MAX)
    return (FOUR_GIB - rom_size, 0, rom_size), (HIGH_RAM_START - alias, rom_size - alias, alias)


def pc_memory_map(ram_size: int, rom_size: int = 0, mmio: tuple[tuple[int, int, str], ...] = ()) -> MemoryMap:
    """The map of a PC with ``ram_size`` bytes of RAM, a firmware ROM of ``rom_size`` bytes
    (0: none) and device MMIO ranges ``(start, size, what)``."""
    if ram_size <= 0:
        raise BadInputError(f"guest RAM size must be positive, not {ram_size}")
    low_top = min(ram_size, PCI_HOLE_START)
    regions = [Region(0, min(ram_size, LOW_RAM_END), RAM, "RAM (conventional)")]
    hole_end = HIGH_RAM_START
    if rom_size:
        (high, _, size), (alias, _, alias_size) = rom_ranges(rom_size)
        regions += [Region(high, size, ROM, "firmware ROM"),
                    Region(alias, alias_size, ROM, "firmware ROM (alias below 1 MiB)")]
        hole_end = alias
    regions.append(Region(LOW_RAM_END, hole_end - LOW_RAM_END, RESERVED, "legacy hole (VGA, option ROMs, BIOS)"))
    if low_top > HIGH_RAM_START:
        regions.append(Region(HIGH_RAM_START, low_top - HIGH_RAM_START, RAM, "RAM (extended)"))
    if ram_size > low_top:
        regions.append(Region(FOUR_GIB, ram_size - low_top, RAM, "RAM (above 4 GiB)"))
    regions += [Region(start, size, MMIO, what) for start, size, what in mmio]
    return MemoryMap(regions)


def map_of(memory) -> MemoryMap:
    """The map a ``GuestMemory`` belongs to: the machine's (``memory.memory_map``), else that of
    a PC whose RAM is this memory (RAM from 0), else just this memory's range as RAM."""
    explicit = getattr(memory, "memory_map", None)
    if explicit is not None:
        return explicit
    if memory.base == 0:
        return pc_memory_map(memory.size)
    return MemoryMap([Region(memory.base, memory.size, RAM, "RAM")])
