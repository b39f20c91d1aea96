"""Assemble small x86 snippets with the host's GNU as and ld into flat binaries (cached per source)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

HAVE_GNU_AS = shutil.which("as") is not None and shutil.which("ld") is not None


@functools.lru_cache(maxsize=None)
def assemble(source: str, bits: int = 64, org: int = 0, intel: bool = True) -> bytes:
    """Machine code of ``source`` for a ``bits``-bit mode, linked to run at ``org``.

    Intel syntax without prefixes unless ``intel`` is False (AT&T). Linking at ``org``
    makes absolute references to labels right where the code is loaded.
    """
    if not HAVE_GNU_AS:
        pytest.skip("GNU as/ld not installed")
    directive = {16: ".code16", 32: ".code32", 64: ".code64"}[bits]
    if intel:
        directive = ".intel_syntax noprefix\n" + directive
    text = f"{directive}\n.text\n.globl _start\n_start:\n{source}\n"
    as_flag, emulation = ("--64", "elf_x86_64") if bits == 64 else ("--32", "elf_i386")
    with tempfile.TemporaryDirectory() as tmp:
        src, obj, out = Path(tmp, "s.S"), Path(tmp, "s.o"), Path(tmp, "s.bin")
        src.write_text(text)
        subprocess.run(["as", as_flag, "-o", str(obj), str(src)], check=True, capture_output=True, text=True)
        subprocess.run(["ld", "-m", emulation, "-Ttext", hex(org), "--oformat", "binary", "-e", "_start",
                        "-o", str(out), str(obj)], check=True, capture_output=True, text=True)
        return out.read_bytes()
