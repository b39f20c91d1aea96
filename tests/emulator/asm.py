"""Assemble test snippets with GNU as/ld into flat binaries (cached per source text)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile

HAVE_AS = shutil.which("as") is not None and shutil.which("ld") is not None


@functools.lru_cache(maxsize=None)
def assemble(source: str, bits: int = 16, org: int = 0, intel: bool = True) -> bytes:
    """Assemble ``source`` (Intel syntax, or AT&T with ``intel=False``) for ``bits`` at ``org``."""
    directive = ".code16" if bits == 16 else ".code32"
    if intel:
        directive = ".intel_syntax noprefix\n" + directive
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.s")
        obj = os.path.join(tmp, "t.o")
        out = os.path.join(tmp, "t.bin")
        with open(src, "w") as f:
            f.write(f"{directive}\n.text\n.globl _start\n_start:\n{source}\n")
        subprocess.run(["as", "--32", "-o", obj, src], check=True, capture_output=True, text=True)
        subprocess.run(["ld", "-m", "elf_i386", "-Ttext", hex(org), "--oformat", "binary", "-e", "_start",
                        "-o", out, obj], check=True, capture_output=True, text=True)
        with open(out, "rb") as f:
            return f.read()
