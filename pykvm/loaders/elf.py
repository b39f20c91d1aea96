"""ELF executables: ELF32/EM_386 boots in protected mode, ELF64/EM_X86_64 in long mode.

Only what a boot loader needs is read: the file header and the PT_LOAD program
headers (section headers are ignored). Segments go to their *physical*
addresses (``p_paddr``), zero-filled up to ``p_memsz``, because paging is off
(protected mode) or an identity map (long mode) when the image starts. The entry
point is a virtual address; when it lies in a segment whose ``p_vaddr`` differs
from ``p_paddr`` (a higher-half kernel's boot stub) it is translated through that
segment, which is what multiboot loaders do too.

``parse_elf`` never trusts a field: every offset and size is checked against the
file before it is used, so random bytes give ``BadInputError`` and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pykvm.errors import BadInputError
from pykvm.loaders.image import BootImage, LoadPlan, add_mode_structures, check_mode

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ET_EXEC = 2
EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_DYNAMIC = 2
PT_INTERP = 3
PN_XNUM = 0xFFFF

_EHDR = {ELFCLASS32: struct.Struct("<16sHHIIIIIHHHHHH"), ELFCLASS64: struct.Struct("<16sHHIQQQIHHHHHH")}
_PHDR32 = struct.Struct("<IIIIIIII")     # type offset vaddr paddr filesz memsz flags align
_PHDR64 = struct.Struct("<IIQQQQQQ")     # type flags offset vaddr paddr filesz memsz align
_MACHINE = {ELFCLASS32: (EM_386, "EM_386"), ELFCLASS64: (EM_X86_64, "EM_X86_64")}
_TYPE_NAMES = {0: "ET_NONE", 1: "ET_REL (object file)", 3: "ET_DYN (shared object or PIE)", 4: "ET_CORE"}


@dataclass(frozen=True)
class ElfSegment:
    index: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int


@dataclass(frozen=True)
class ElfFile:
    """The parts of a validated ELF executable that loading needs."""

    elf_class: int            # ELFCLASS32 or ELFCLASS64
    machine: int
    entry: int                # e_entry, virtual
    segments: tuple[ElfSegment, ...]

    @property
    def bits(self) -> int:
        return 32 if self.elf_class == ELFCLASS32 else 64

    @property
    def default_mode(self) -> str:
        return "protected" if self.elf_class == ELFCLASS32 else "long"

    def physical_entry(self) -> int:
        """e_entry translated into the physical address it is loaded at."""
        for seg in self.segments:
            if seg.vaddr <= self.entry < seg.vaddr + seg.memsz:
                return self.entry - seg.vaddr + seg.paddr
        raise BadInputError(f"ELF entry point {self.entry:#x} is outside the loadable segments")


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def parse_elf(data: bytes) -> ElfFile:
    """Parse and validate an x86 ELF executable (``BadInputError`` on anything unusable)."""
    if len(data) < 16 or data[:4] != ELF_MAGIC:
        raise BadInputError("not an ELF file (bad magic)")
    elf_class, encoding, version = data[4], data[5], data[6]
    if elf_class not in _EHDR:
        raise BadInputError(f"unsupported ELF class {elf_class} (expected 1 = ELF32 or 2 = ELF64)")
    if encoding != ELFDATA2LSB:
        raise BadInputError(f"ELF data encoding {encoding} is not little-endian")
    if version != EV_CURRENT:
        raise BadInputError(f"unsupported ELF identification version {version}")
    ehdr = _EHDR[elf_class]
    if len(data) < ehdr.size:
        raise BadInputError(f"truncated ELF header ({len(data)} of {ehdr.size} bytes)")
    (_, e_type, e_machine, e_version, e_entry, e_phoff, _shoff, _flags, _ehsize,
     e_phentsize, e_phnum, _shentsize, _shnum, _shstrndx) = ehdr.unpack_from(data)
    if e_type != ET_EXEC:
        raise BadInputError(f"ELF type {_TYPE_NAMES.get(e_type, e_type)} is not an executable (ET_EXEC)")
    want, want_name = _MACHINE[elf_class]
    if e_machine != want:
        raise BadInputError(f"unsupported ELF machine {e_machine} for ELF{32 if elf_class == 1 else 64} "
                            f"(expected {want} = {want_name})")
    if e_version != EV_CURRENT:
        raise BadInputError(f"unsupported ELF version {e_version}")
    phdr = _PHDR32 if elf_class == ELFCLASS32 else _PHDR64
    if e_phnum == 0:
        raise BadInputError("ELF file has no program headers")
    if e_phnum == PN_XNUM:
        raise BadInputError("ELF files with 65535 or more program headers are not supported")
    if e_phentsize < phdr.size:
        raise BadInputError(f"ELF program header size {e_phentsize} is smaller than {phdr.size}")
    if e_phoff > len(data) or e_phoff + e_phnum * e_phentsize > len(data):
        raise BadInputError(f"ELF program header table ({e_phnum} x {e_phentsize} bytes at {e_phoff:#x}) "
                            f"extends past the end of the file ({len(data):#x} bytes)")
    addr_limit = 1 << (32 if elf_class == ELFCLASS32 else 64)
    segments = []
    for i in range(e_phnum):
        fields = phdr.unpack_from(data, e_phoff + i * e_phentsize)
        if elf_class == ELFCLASS32:
            p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, _ = fields
        else:
            p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _ = fields
        if p_type == PT_INTERP:
            raise BadInputError("dynamically linked ELF executables (PT_INTERP) are not supported")
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        if p_filesz > p_memsz:
            raise BadInputError(f"ELF segment {i}: file size {p_filesz:#x} exceeds memory size {p_memsz:#x}")
        if p_offset + p_filesz > len(data):
            raise BadInputError(f"ELF segment {i}: data {p_offset:#x}+{p_filesz:#x} extends past the end "
                                f"of the file ({len(data):#x} bytes)")
        if p_paddr + p_memsz > addr_limit or p_vaddr + p_memsz > addr_limit:
            raise BadInputError(f"ELF segment {i}: {p_paddr:#x}+{p_memsz:#x} wraps around the address space")
        segments.append(ElfSegment(i, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags))
    if not segments:
        raise BadInputError("ELF file has no loadable (PT_LOAD) segments")
    ordered = sorted(segments, key=lambda s: s.paddr)
    for a, b in zip(ordered, ordered[1:]):
        if b.paddr < a.paddr + a.memsz:
            raise BadInputError(f"ELF segments {a.index} ({a.paddr:#x}+{a.memsz:#x}) and {b.index} "
                                f"({b.paddr:#x}+{b.memsz:#x}) overlap")
    elf = ElfFile(elf_class, e_machine, e_entry, tuple(segments))
    elf.physical_entry()          # validates the entry point
    return elf


PT_NOTE = 4
_NOTE = struct.Struct("<III")            # namesz descsz type


def iter_notes(data: bytes):
    """(owner, type, desc) of every note in the PT_NOTE segments of an ELF file that
    ``parse_elf`` accepts; a note running past its segment raises ``BadInputError``."""
    elf_class = data[4]
    ehdr = _EHDR[elf_class]
    fields = ehdr.unpack_from(data)
    e_phoff, e_phentsize, e_phnum = fields[5], fields[9], fields[10]
    phdr = _PHDR32 if elf_class == ELFCLASS32 else _PHDR64
    for i in range(e_phnum):
        ph = phdr.unpack_from(data, e_phoff + i * e_phentsize)
        p_type, p_offset, p_filesz = (ph[0], ph[1], ph[4]) if elf_class == ELFCLASS32 else (ph[0], ph[2], ph[5])
        if p_type != PT_NOTE:
            continue
        if p_offset + p_filesz > len(data):
            raise BadInputError(f"ELF note segment {i} ({p_offset:#x}+{p_filesz:#x}) extends past the end of the file")
        pos, end = p_offset, p_offset + p_filesz
        while pos + _NOTE.size <= end:
            namesz, descsz, n_type = _NOTE.unpack_from(data, pos)
            name_at = pos + _NOTE.size
            desc_at = name_at + _pad4(namesz)
            pos = desc_at + _pad4(descsz)
            if desc_at + descsz > end:
                raise BadInputError(f"ELF note segment {i}: a note at {name_at - _NOTE.size:#x} runs past "
                                    "the end of its segment")
            yield bytes(data[name_at:name_at + namesz]).rstrip(b"\0"), n_type, bytes(data[desc_at:desc_at + descsz])


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def plan_segments(plan: LoadPlan, elf: ElfFile, data: bytes) -> None:
    """Add every PT_LOAD segment of ``elf`` (file bytes + zero fill) to ``plan``."""
    view = memoryview(data)
    for seg in elf.segments:
        plan.add_image(seg.paddr, view[seg.offset:seg.offset + seg.filesz], seg.memsz,
                       what=f"ELF segment {seg.index}")


def load(memory, data: bytes, mode: str | None = None, load_addr: int | None = None,
         entry: int | None = None) -> BootImage:
    """Load an ELF executable. ``mode`` defaults by class; ``entry`` overrides e_entry (physical)."""
    if load_addr is not None:
        raise BadInputError("a load address does not apply to ELF images (segments go to p_paddr)")
    elf = parse_elf(data)
    mode = check_mode(mode or elf.default_mode)
    if mode == "real":
        raise BadInputError("ELF images cannot start in real mode (use protected or long)")
    plan = LoadPlan(mode)
    plan_segments(plan, elf, data)
    add_mode_structures(plan, memory)
    start = elf.physical_entry() if entry is None else entry
    if not plan.covers(start):
        raise BadInputError(f"entry point {start:#x} is outside the loaded segments")
    ranges = plan.apply(memory)
    return BootImage("elf", mode, start, ranges, {})
