"""The default guest as the debugger tests see it: its symbols, and its own ``objdump -d``
listing, each region disassembled in the mode it runs in (boot16to64.S switches with .code16,
.code32 and .code64, which objdump cannot know)."""

from __future__ import annotations

import functools
import io
import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest

from pykvm.debug.symbols import image_symbols
from pykvm.guests import build_guest
from pykvm.machine import Machine

_LINE = re.compile(r"^\s+([0-9a-f]+):\t([0-9a-f ]+?)\s*\t(\S+)\s*(.*)$")


@dataclass(frozen=True)
class Listed:
    code: bytes
    mnemonic: str
    operands: str


def boot_image():
    return build_guest("boot16to64")


@functools.lru_cache(maxsize=1)
def symbols() -> dict[str, int]:
    return image_symbols(boot_image())


@functools.lru_cache(maxsize=1)
def objdump_listing() -> dict[int, Listed]:
    """Address -> instruction, from objdump (AT&T syntax, as ``--syntax att``)."""
    if shutil.which("objdump") is None:
        pytest.skip("objdump (GNU binutils) not installed")
    s = symbols()
    elf = str(boot_image().with_suffix(".elf"))
    regions = [(["-M", "i8086"], s["_start"], s["protected_start"]),
               ([], s["protected_start"], s["long_start"]),
               (["-m", "i386:x86-64"], s["long_start"], s["gdt"])]
    listing = {}
    for flags, start, stop in regions:
        out = subprocess.run(["objdump", "-d", "--insn-width=16", f"--start-address={start:#x}",
                              f"--stop-address={stop:#x}", *flags, elf], capture_output=True, text=True, check=True)
        for line in out.stdout.splitlines():
            m = _LINE.match(line)
            if m:
                listing[int(m[1], 16)] = Listed(bytes.fromhex(m[2].replace(" ", "")), m[3], m[4])
    return listing


def same_mnemonic(objdump: str, ours: str) -> bool:
    """objdump adds an operand-size suffix where iced-x86's AT&T output has none (lgdtw / lgdt)."""
    return ours == objdump or (objdump[-1:] in "bwlq" and ours == objdump[:-1])


def boot_machine(**kw) -> Machine:
    """The default guest loaded as ``pykvm run`` loads it; its serial output in ``.serial_out``."""
    out = io.BytesIO()
    machine = Machine(serial_output=out, **kw)
    machine.serial_out = out
    machine.load(boot_image().read_bytes(), mode="real")
    return machine
