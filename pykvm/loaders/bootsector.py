"""PC boot sectors: exactly 512 bytes ending in 0x55 0xAA, loaded at 0x7c00, real mode, DL = 0x80.

This is the state a BIOS leaves when it hands over to a hard disk's first sector
(DL holds the boot drive number, 0x80 = first hard disk); there is no BIOS
behind it, so a boot sector that calls ``int 0x13`` or ``int 0x10`` finds an
empty IVT.
"""

from __future__ import annotations

from pykvm.errors import BadInputError
from pykvm.loaders.image import BootImage, LoadPlan
from pykvm.x86 import boot

SECTOR_SIZE = 512
SIGNATURE = b"\x55\xaa"
BOOT_DRIVE = 0x80
LOAD_ADDR = boot.REAL_MODE_LOAD_ADDR


def is_bootsector(data: bytes) -> bool:
    return len(data) == SECTOR_SIZE and data[510:512] == SIGNATURE


def load(memory, data: bytes, mode: str | None = None, load_addr: int | None = None,
         entry: int | None = None) -> BootImage:
    if mode not in (None, "real"):
        raise BadInputError(f"boot sectors start in real mode, not {mode}")
    if load_addr not in (None, boot.REAL_MODE_LOAD_ADDR):
        raise BadInputError(f"boot sectors load at {boot.REAL_MODE_LOAD_ADDR:#x}, not {load_addr:#x}")
    if len(data) != SECTOR_SIZE:
        raise BadInputError(f"a boot sector is exactly {SECTOR_SIZE} bytes, this image has {len(data)}")
    if data[510:512] != SIGNATURE:
        raise BadInputError(f"boot sector signature is {data[510:512].hex()}, expected 55aa at offset 510")
    plan = LoadPlan("real")
    plan.add_image(boot.REAL_MODE_LOAD_ADDR, data, what="boot sector")
    start = boot.REAL_MODE_LOAD_ADDR if entry is None else entry
    if not plan.covers(start):
        raise BadInputError(f"entry point {start:#x} is outside the boot sector 0x7c00-0x7dff")
    ranges = plan.apply(memory)
    return BootImage("bootsector", "real", start, ranges, {"rdx": BOOT_DRIVE})
