"""Format detection (``--format auto``) and the one ``load`` entry point the machine calls."""

from __future__ import annotations

import importlib

from pykvm.errors import BadInputError
from pykvm.loaders.image import BootImage

FORMATS = ("auto", "flat", "bootsector", "elf", "multiboot", "multiboot2", "pvh")
KERNELS = ("multiboot", "multiboot2", "pvh")
ELF_MAGIC = b"\x7fELF"
# Where each kernel header's magic must be (the module's own check is the exact one): a format
# whose magic is absent is not imported at all (a flat image needs no ELF or Multiboot parser).
MULTIBOOT_MAGIC, MULTIBOOT_SEARCH = (0x1BADB002).to_bytes(4, "little"), 8192
MULTIBOOT2_MAGIC, MULTIBOOT2_SEARCH = (0xE85250D6).to_bytes(4, "little"), 32768


def _loader(fmt: str):
    return importlib.import_module(f"pykvm.loaders.{fmt}")


def detect(data: bytes) -> str:
    """Guess the format. An ELF with a PVH entry note is a PVH kernel (the protocol QEMU's -kernel
    and cloud-hypervisor prefer too); then a Multiboot 2 header, then a Multiboot 1 header (both
    win over plain ELF: such kernels are often ELF files; a kernel with both headers is loaded
    the way GRUB's ``multiboot2`` would), then ELF magic, then a 512-byte sector ending in 55AA;
    anything else is flat."""
    is_elf = data[:4] == ELF_MAGIC
    if is_elf and _loader("pvh").has_entry_note(data):
        return "pvh"
    if MULTIBOOT2_MAGIC in data[:MULTIBOOT2_SEARCH] and _loader("multiboot2").find_header(data) is not None:
        return "multiboot2"
    if MULTIBOOT_MAGIC in data[:MULTIBOOT_SEARCH] and _loader("multiboot").find_header(data) is not None:
        return "multiboot"
    if is_elf and _loader("elf").is_elf(data):
        return "elf"
    if _loader("bootsector").is_bootsector(data):
        return "bootsector"
    return "flat"


def load(memory, data: bytes, format: str = "auto", mode: str | None = None, load_addr: int | None = None,
         entry: int | None = None, cmdline: str = "", modules=()) -> BootImage:
    """Validate ``data`` as ``format`` and write it (and its boot structures) into ``memory``.

    With ``format="auto"``, a would-be boot sector given a non-real ``mode`` or another
    ``load_addr`` is loaded as the flat image those options describe.
    Raises ``BadInputError`` before writing anything when the image, or an option
    given for it, is unusable. The returned ``BootImage`` says how to start it.
    ``modules`` (``Module``) and ``cmdline`` are for the kernels that take them.
    """
    data = bytes(data)
    fmt = detect(data) if format == "auto" else format
    if format == "auto" and fmt == "bootsector" and (mode not in (None, "real") or
                                                     load_addr not in (None, _loader("bootsector").LOAD_ADDR)):
        # A 512-byte image that merely ends in 55AA, given a flat image's options: the user means flat.
        fmt = "flat"
    if fmt not in FORMATS[1:]:
        raise BadInputError(f"unknown image format {format!r} (expected one of {', '.join(FORMATS)})")
    if fmt in KERNELS:
        return _loader(fmt).load(memory, data, mode=mode, load_addr=load_addr, entry=entry, cmdline=cmdline,
                                 modules=modules)
    if cmdline:
        raise BadInputError(f"a kernel command line only applies to multiboot and PVH kernels, not {fmt}")
    if modules:
        raise BadInputError(f"modules only apply to multiboot and PVH kernels, not {fmt}")
    return _loader(fmt).load(memory, data, mode=mode, load_addr=load_addr, entry=entry)
