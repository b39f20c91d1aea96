#!/usr/bin/env python3
"""Build pykvm's guest images from ``guests/`` into ``guests/build/``.

Every guest is a small program in GNU assembler (or freestanding C plus a tiny
``crt0``) linked with a linker script that fixes its load address.  The build
keeps two outputs per guest:

* ``<name>.elf`` -- the linked ELF, for symbol lookup and the ELF/multiboot loaders;
* ``<name>.bin`` -- the flat image (``objcopy -O binary``) that ``--mode real``,
  ``--mode protected`` and ``--mode long`` load verbatim at the guest's load address.

Builds are incremental: a guest is rebuilt only when an output is missing or older
than one of its inputs (sources, the headers they include -- taken from the
compiler's own dependency files --, the linker script, and this script, which
holds the recipes and compiler flags).  Each build compiles into a temporary
directory of its own (no object file is shared between guests or builds) and
renames the outputs into place, so a reader never sees a half-written image;
and one guest is built by one process at a time (a lock file per guest in the
output directory), so concurrent builds of the same guest (pytest-xdist
workers, several ``pykvm run``) wait for the first and find it fresh, never
mixing one build's ELF with another's flat image.

This file is deliberately self-contained (standard library plus ``pykvm.errors``)
so that tests, benchmarks and the ``pykvm`` package can import it by path.

Usage: ``python scripts/build_guests.py [--force] [--list] [names...]``
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

try:
    from pykvm.errors import BadInputError
except ImportError:  # run as a plain script from a checkout without pykvm installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pykvm.errors import BadInputError

REPO_ROOT = Path(__file__).resolve().parents[1]
GUESTS_DIR = REPO_ROOT / "guests"
BUILD_DIR = GUESTS_DIR / "build"

#: Offset of the 8-byte little-endian iteration count in ``exits64`` and ``loop32``;
#: both images start with a short ``jmp`` over it so the host can patch it.
COUNT_OFFSET = 8


class GuestBuildError(BadInputError):
    """A guest could not be built: unknown name, missing toolchain, or a failing tool.

    The message carries the failing command and the tool's stderr, because that is
    what a user needs to fix a broken guest source.
    """


@dataclass(frozen=True)
class Recipe:
    """How one guest is built.

    ``sources`` and ``linker_script`` are relative to the guests directory.  ``bits``
    selects the toolchain flavour: 16 and 32 both use the i386 assembler and linker,
    64 uses x86-64.  At 16 bits gcc gets ``-m16``, so C comes out as ``.code16gcc``
    (32-bit operands and addresses behind 66h/67h prefixes, for real mode);
    16-bit assembly guests say ``.code16`` themselves.  ``flat`` guests also get a
    ``.bin``; ``bootsector`` ones must come out as exactly 512 bytes ending in 55 AA.
    """

    name: str
    sources: tuple[str, ...]
    linker_script: str
    bits: int
    flat: bool = True
    bootsector: bool = False
    description: str = ""
    extra_cflags: tuple[str, ...] = field(default=())
    rom: bool = False
    machine: tuple[tuple[str, bool], ...] = ()
    runs_alone: bool = True        # False: a tool for other guests (mbshim), not something to run

    @property
    def primary_suffix(self) -> str:
        return ".bin" if self.flat else ".elf"

    @property
    def runnable_suffix(self) -> str:
        """The output ``pykvm run`` starts without options: one that says how it starts.

        32- and 64-bit guests run as their ELF (ELF32 enters protected mode, ELF64 long mode,
        a multiboot header or PVH note its own protocol); 16-bit guests as the flat image,
        which pykvm enters in real mode at 0x7c00 by default (a boot sector is detected as one);
        a ROM is a flat firmware image for ``--bios``.
        """
        return ".bin" if self.flat and (self.bits == 16 or self.rom) else ".elf"


# The timer guests: one C source built for each mode (guests/timer.c), with the PIC/PIT/CMOS
# drivers and interrupt bookkeeping of lib/irq.c.
_TIMER_C = ("timer.c", "lib/irq.c", "lib/printf.c", "lib/string.c")
_IDLE_C = ("idle.c",) + _TIMER_C[1:]

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("hello64", ("hello64.S",), "ld/flat64.ld", 64,
               description="64-bit hello world, exits 0"),
        Recipe("exits64", ("exits64.S",), "ld/flat64.ld", 64,
               description="exit benchmark: N outb to port 0x80 (N at offset 8), one inb, hlt"),
        Recipe("boot16to64", ("boot16to64.S",), "ld/real16.ld", 16,
               description="default guest: real -> protected -> long mode, one line per mode"),
        Recipe("bootsector", ("bootsector.S",), "ld/real16.ld", 16, bootsector=True,
               description="boot16to64 as a 512-byte boot sector with the 55 AA signature"),
        Recipe("selftest16", ("selftest16.S",), "ld/real16.ld", 16,
               description="self-checking real-mode instruction suite"),
        Recipe("selftest32", ("selftest32.S", "lib/serial32.S"), "ld/flat32.ld", 32,
               description="self-checking protected-mode suite (IDT, faults, paging)"),
        Recipe("loop32", ("loop32.S", "lib/serial32.S"), "ld/flat32.ld", 32,
               description="emulator benchmark: ALU/memory/branch loop (count at offset 8), rep movsd/stosd"),
        Recipe("cwork32", ("lib/crt0_32.S", "cwork32.c", "lib/printf.c", "lib/string.c"),
               "ld/flat32.ld", 32,
               description="freestanding C: CRC-32, quicksort, sieve, printf; self-checking"),
        Recipe("cwork16", ("lib/crt0_16.S", "cwork32.c", "lib/printf.c", "lib/string.c"),
               "ld/real16.ld", 16, extra_cflags=("-DCWORK16",),
               description="cwork32.c built with gcc -m16 for real mode, smaller inputs; self-checking"),
        Recipe("assert32", ("lib/crt0_32.S", "assert32.c", "lib/printf.c", "lib/string.c"),
               "ld/flat32.ld", 32,
               description="freestanding C guest whose GUEST_ASSERT fails on purpose"),
        Recipe("multiboot32", ("multiboot32.S", "lib/serial32.S"), "ld/multiboot32.ld", 32, flat=False,
               description="multiboot v1 ELF kernel printing EAX magic and mem_lower/upper"),
        Recipe("bios", ("bios.S", "bios.c", "lib/checks.c", "lib/printf.c", "lib/string.c"), "ld/bios.ld", 32,
               rom=True,
               description="BIOS-replacement ROM: reset vector -> real, protected, long mode; checks the reset "
                           "state and that the ROM is read-only (pykvm run --bios, qemu -bios)"),
        Recipe("pvh", ("lib/crt0_kernel.S", "pvh.c", "lib/checks.c", "lib/printf.c", "lib/string.c"),
               "ld/kernel32.ld", 32, flat=False,
               description="PVH kernel in C: prints and checks its hvm_start_info, CRC-32 of its modules"),
        Recipe("mb2", ("lib/crt0_kernel.S", "mb2.c", "lib/checks.c", "lib/printf.c", "lib/string.c"),
               "ld/kernel32.ld", 32, flat=False,
               description="Multiboot 2 kernel (and Multiboot 1, for QEMU) in C: CRC-32 of its modules"),
        Recipe("mbshim", ("mbshim.S",), "ld/mbshim.ld", 32, runs_alone=False,
               description="multiboot kernel that enters an appended flat guest as pykvm's loader would"),
        Recipe("timer16", ("lib/crt0_16.S", "lib/vectors16.S") + _TIMER_C, "ld/real16.ld", 16,
               extra_cflags=("-DTIMER16",),
               description="real mode: 200 PIT ticks in sti; hlt, STI shadow, PIT mode 0 on masked IRQ 0, RTC"),
        Recipe("timer32", ("lib/crt0_32.S", "lib/vectors32.S") + _TIMER_C, "ld/flat32.ld", 32,
               extra_cflags=("-DTIMER32",), machine=(("testdev", True),),
               description="protected mode: 200 PIT ticks, STI shadow, PIC priorities/EOI, PIT read-back, CMOS size"),
        Recipe("timer64", ("lib/crt0_64.S", "lib/vectors64.S") + _TIMER_C, "ld/flat64.ld", 64,
               extra_cflags=("-DTIMER64", "-mno-red-zone"), machine=(("testdev", True),),
               description="PVM mode: 200 PIT ticks injected by KVM_INTERRUPT, STI shadow, PIC priorities/EOI"),
        Recipe("idle16", ("lib/crt0_16.S", "lib/vectors16.S") + _IDLE_C, "ld/real16.ld", 16,
               description="real mode: 300 PIT ticks at 100 Hz in sti; hlt, nothing else (bench_idle.py)"),
        Recipe("idle64", ("lib/crt0_64.S", "lib/vectors64.S") + _IDLE_C, "ld/flat64.ld", 64,
               extra_cflags=("-mno-red-zone",),
               description="PVM mode: 300 PIT ticks at 100 Hz in sti; hlt, nothing else (bench_idle.py)"),
    )
}

# gcc's machine flag per Recipe.bits, for C and assembly alike.  -m16 only changes
# C (cc1 emits .code16gcc); assembly input assembles exactly as with -m32.
_MACHINE_FLAGS = {16: ("-m16",), 32: ("-m32",), 64: ("-m64",)}
_LD_EMULATION = {16: "elf_i386", 32: "elf_i386", 64: "elf_x86_64"}
# Freestanding, no FPU/SSE (the emulator and PVM mode need nothing beyond integer
# code), no library calls gcc would invent for loops (it would turn memset's own
# loop into a call to memset).
_CFLAGS = (
    "-ffreestanding", "-fno-pic", "-fno-pie", "-fno-stack-protector", "-nostdlib", "-O2",
    "-mgeneral-regs-only", "-fno-tree-loop-distribute-patterns",
    "-fno-asynchronous-unwind-tables", "-fno-unwind-tables",
    "-Wall", "-Wextra", "-std=gnu11",
)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise GuestBuildError(
            f"cannot build guests: '{name}' is not on PATH "
            "(install GNU binutils and gcc with 32-bit support, e.g. gcc-multilib)"
        )
    return path


def _run(cmd: list[str], cwd: Path) -> None:
    """Run one toolchain command; a failure becomes a GuestBuildError with stderr."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except OSError as exc:
        raise GuestBuildError(f"cannot run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        output = (proc.stderr + proc.stdout).strip()
        raise GuestBuildError(
            f"guest build failed: {shlex.join(cmd)}\n{output}"
        )


def _parse_depfile(text: str) -> list[str]:
    """Return the prerequisites of a make-style dependency file written by gcc -MD."""
    text = text.replace("\\\n", " ")
    deps: list[str] = []
    for line in text.splitlines():
        if ":" not in line:
            continue
        _, _, rest = line.partition(":")
        # gcc escapes spaces in file names as '\ '.
        tokens = rest.replace("\\ ", "\0").split()
        deps.extend(t.replace("\0", " ") for t in tokens)
    return deps


def recipe(name: str) -> Recipe:
    """Look up a guest's recipe, with a clear error listing the known guests."""
    try:
        return RECIPES[name]
    except KeyError:
        known = ", ".join(sorted(RECIPES))
        raise GuestBuildError(f"unknown guest '{name}' (known guests: {known})") from None


def outputs(name: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Return (primary image, ELF) paths of a guest without building it."""
    r = recipe(name)
    out = Path(out_dir) if out_dir is not None else BUILD_DIR
    return out / f"{name}{r.primary_suffix}", out / f"{name}.elf"


def _deps_file(out: Path, name: str) -> Path:
    return out / f"{name}.deps"


def _is_fresh(r: Recipe, src: Path, out: Path) -> bool:
    primary, elf = outputs(r.name, out)
    deps_path = _deps_file(out, r.name)
    try:
        built = min(primary.stat().st_mtime_ns, elf.stat().st_mtime_ns)
        deps = deps_path.read_text().splitlines()
    except OSError:
        return False
    if not deps:
        return False
    # This script holds the recipes and flags: editing it rebuilds everything.
    if Path(__file__).stat().st_mtime_ns > built:
        return False
    for dep in deps:
        try:
            if (src / dep).stat().st_mtime_ns > built:
                return False
        except OSError:  # a dependency disappeared: rebuild (and get the real error)
            return False
    return True


def _check_bootsector(image: Path) -> None:
    data = image.read_bytes()
    if len(data) != 512 or data[510:] != b"\x55\xaa":
        raise GuestBuildError(
            f"{image.name}: a boot sector must be 512 bytes ending in 55 AA "
            f"(got {len(data)} bytes ending in {data[-2:].hex(' ')})"
        )


def _check_rom(image: Path) -> None:
    size = image.stat().st_size
    if not 64 << 10 <= size <= 16 << 20 or size % (64 << 10):
        raise GuestBuildError(f"{image.name}: a firmware ROM must be 64 KiB to 16 MiB in multiples of "
                              f"64 KiB (got {size} bytes)")


def build(name: str, *, src_dir: Path | None = None, out_dir: Path | None = None,
          force: bool = False) -> Path:
    """Build guest ``name`` if needed and return its primary output.

    The primary output is the flat image ``<name>.bin`` for flat guests and the ELF
    for ELF-only guests (multiboot); the ELF is always kept beside it.  ``src_dir``
    and ``out_dir`` default to the repository's ``guests/`` and ``guests/build/``
    (tests point them elsewhere).  Raises GuestBuildError on any failure.
    """
    r = recipe(name)
    src = Path(src_dir) if src_dir is not None else GUESTS_DIR
    out = Path(out_dir) if out_dir is not None else BUILD_DIR
    primary, _ = outputs(name, out)
    if not force and _is_fresh(r, src, out):
        return primary
    for source in r.sources + (r.linker_script,):
        if not (src / source).is_file():
            raise GuestBuildError(f"guest '{name}': missing input {src / source}")
    with _build_lock(out, name):
        if force or not _is_fresh(r, src, out):    # unless whoever held the lock just built it
            _build(r, src, out)
    return primary


@contextlib.contextmanager
def _build_lock(out: Path, name: str):
    """Hold the lock of guest ``name``'s outputs in ``out`` (released when its file closes)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f".{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(r: Recipe, src: Path, out: Path) -> None:
    """Compile, link and check guest ``r`` into ``out`` (the caller holds its lock)."""
    name = r.name
    primary, elf = outputs(name, out)
    gcc, ld, objcopy = _tool("gcc"), _tool("ld"), _tool("objcopy")
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=out) as tmp_name:
        tmp = Path(tmp_name)
        objects: list[str] = []
        deps: list[str] = [r.linker_script]
        for i, source in enumerate(r.sources):
            obj = tmp / f"{i}-{Path(source).stem}.o"
            depfile = tmp / f"{i}.d"
            # Run from the guests directory with relative paths so that __FILE__
            # (GUEST_ASSERT messages) and debug info carry no host paths.
            cmd = [gcc, *_MACHINE_FLAGS[r.bits], "-Iinclude", "-MD", "-MF", str(depfile)]
            if source.endswith(".c"):
                cmd += [*_CFLAGS]
            cmd += [*r.extra_cflags, "-c", source, "-o", str(obj)]
            _run(cmd, src)
            objects.append(str(obj))
            for dep in _parse_depfile(depfile.read_text()):
                if dep not in deps:
                    deps.append(dep)

        tmp_elf = tmp / "image.elf"
        _run([ld, "-m", _LD_EMULATION[r.bits], "-T", r.linker_script, "-nostdlib",
              "--build-id=none", "-z", "noexecstack", "--no-warn-rwx-segments",
              "-o", str(tmp_elf), *objects], src)
        tmp_bin = tmp / "image.bin"
        if r.flat:
            _run([objcopy, "-O", "binary", str(tmp_elf), str(tmp_bin)], src)
            if tmp_bin.stat().st_size == 0:
                raise GuestBuildError(f"guest '{name}': flat image is empty")
            if r.bootsector:
                _check_bootsector(tmp_bin)
            if r.rom:
                _check_rom(tmp_bin)

        # ELF first, primary last: freshness needs both, so a reader racing us
        # sees either the old pair or the new one as stale and rebuilds.
        deps_tmp = tmp / "deps"
        deps_tmp.write_text("\n".join(deps) + "\n")
        os.replace(tmp_elf, elf)
        if r.flat:
            os.replace(tmp_bin, primary)
        os.replace(deps_tmp, _deps_file(out, name))


def build_runnable(name: str, **kwargs) -> Path:
    """Build guest ``name`` if needed; return the output ``pykvm run`` starts (``runnable_suffix``)."""
    if not recipe(name).runs_alone:
        raise GuestBuildError(f"'{name}' is not a guest to run alone: {recipe(name).description}")
    primary = build(name, **kwargs)
    return primary.with_suffix(recipe(name).runnable_suffix)


def build_all(*, src_dir: Path | None = None, out_dir: Path | None = None,
              force: bool = False) -> dict[str, Path]:
    """Build every known guest; return name -> primary output."""
    return {name: build(name, src_dir=src_dir, out_dir=out_dir, force=force)
            for name in RECIPES}


def with_count(image: bytes, count: int) -> bytes:
    """Return a copy of a counted image (exits64, loop32) with its count patched.

    The count is the 8-byte little-endian value at COUNT_OFFSET.
    """
    if not 0 <= count < 1 << 64:
        raise BadInputError(f"count {count} does not fit in 64 bits")
    patched = bytearray(image)
    patched[COUNT_OFFSET:COUNT_OFFSET + 8] = count.to_bytes(8, "little")
    return bytes(patched)


def loop32_checksum(count: int) -> int:
    """The checksum loop32 prints for ``count`` iterations (a model of guests/loop32.S).

    Lets a benchmark check that an emulator that ran the guest fast also ran it right.
    """
    mask = 0xFFFFFFFF

    def rol(value: int, n: int) -> int:
        return ((value << n) | (value >> (32 - n))) & mask

    array = [0] * 256
    total, state = 0, 0x12345678
    for i in range(count & mask):
        state = (state * 1103515245 + 12345) & mask
        index = i & 255
        value = rol(array[index] ^ state, 5)
        array[index] = value
        total = (total + value) & mask
        if state & 0x10000:
            total = (total - index) & mask
    fill = total                      # REP STOSD value, copied by REP MOVSD
    for _ in range(256):              # one sampled dword per 4 KiB of the copy
        total = (rol(total, 1) + fill) & mask
    for value in array:
        total = rol(total, 3) ^ value
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build pykvm guest images into guests/build/.")
    parser.add_argument("names", nargs="*", help="guests to build (default: all)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--list", action="store_true", help="list the guests and exit")
    args = parser.parse_args(argv)
    if args.list:
        for r in RECIPES.values():
            print(f"{r.name:12} {r.description}")
        return 0
    try:
        for name in args.names or list(RECIPES):
            path = build(name, force=args.force)
            try:
                shown = path.relative_to(Path.cwd())
            except ValueError:
                shown = path
            print(shown)
    except BadInputError as exc:
        print(f"build_guests: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
