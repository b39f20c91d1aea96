"""Format detection (``--format auto``) and the one ``load`` entry point the machine calls."""

from __future__ import annotations

from pykvm.errors import BadInputError
from pykvm.loaders import bootsector, elf, flat, multiboot
from pykvm.loaders.image import BootImage

FORMATS = ("auto", "flat", "bootsector", "elf", "multiboot")


def detect(data: bytes) -> str:
    """Guess the format: a multiboot header wins over ELF (multiboot kernels are often ELF files),
    then ELF magic, then a 512-byte sector ending in 55AA; anything else is flat."""
    if multiboot.find_header(data) is not None:
        return "multiboot"
    if elf.is_elf(data):
        return "elf"
    if bootsector.is_bootsector(data):
        return "bootsector"
    return "flat"


def load(memory, data: bytes, format: str = "auto", mode: str | None = None, load_addr: int | None = None,
         entry: int | None = None, cmdline: str = "") -> BootImage:
    """Validate ``data`` as ``format`` and write it (and its boot structures) into ``memory``.

    With ``format="auto"``, a would-be boot sector given a non-real ``mode`` or another
    ``load_addr`` is loaded as the flat image those options describe.
    Raises ``BadInputError`` before writing anything when the image, or an option
    given for it, is unusable. The returned ``BootImage`` says how to start it.
    """
    data = bytes(data)
    fmt = detect(data) if format == "auto" else format
    if format == "auto" and fmt == "bootsector" and (mode not in (None, "real") or
                                                     load_addr not in (None, bootsector.LOAD_ADDR)):
        # A 512-byte image that merely ends in 55AA, given a flat image's options: the user means flat.
        fmt = "flat"
    if fmt not in FORMATS[1:]:
        raise BadInputError(f"unknown image format {format!r} (expected one of {', '.join(FORMATS)})")
    if fmt == "multiboot":
        return multiboot.load(memory, data, mode=mode, load_addr=load_addr, entry=entry, cmdline=cmdline)
    if cmdline:
        raise BadInputError(f"a kernel command line only applies to multiboot images, not {fmt}")
    loader = {"flat": flat, "bootsector": bootsector, "elf": elf}[fmt]
    return loader.load(memory, data, mode=mode, load_addr=load_addr, entry=entry)
