"""Flat binaries: raw bytes at a load address, entered in the mode the user names.

Nothing in a flat image says where it belongs or how it starts, so the caller
chooses: the mode defaults to real (the most common raw image, a boot stub),
the load address to the mode's default (0x7c00 real, 0x100000 protected/long)
and the entry point to the load address.
"""

from __future__ import annotations

from pykvm.errors import BadInputError
from pykvm.loaders.image import BootImage, LoadPlan, add_mode_structures, check_mode
from pykvm.x86 import boot

DEFAULT_MODE = "real"


def load(memory, data: bytes, mode: str | None = None, load_addr: int | None = None,
         entry: int | None = None) -> BootImage:
    mode = check_mode(mode or DEFAULT_MODE)
    if not data:
        raise BadInputError("flat image is empty")
    addr = boot.default_load_addr(mode) if load_addr is None else load_addr
    if addr < 0:
        raise BadInputError(f"load address {addr:#x} is negative")
    plan = LoadPlan(mode)
    plan.add_image(addr, data, what="flat image")
    add_mode_structures(plan, memory)
    start = addr if entry is None else entry
    if not plan.covers(start):
        raise BadInputError(f"entry point {start:#x} is outside the loaded image {addr:#x}-{addr + len(data) - 1:#x}")
    if mode == "real" and start > 0xFFFFF:
        raise BadInputError(f"real-mode entry point {start:#x} is not below 1 MiB")
    ranges = plan.apply(memory)
    return BootImage("flat", mode, start, ranges, {})
