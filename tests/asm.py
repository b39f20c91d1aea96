"""Assemble small x86 snippets with the host's GNU as, for tests (cached per source text)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def have_gnu_as() -> bool:
    return shutil.which("as") is not None and shutil.which("objcopy") is not None


@functools.lru_cache(maxsize=None)
def assemble(source: str, bits: int = 64) -> bytes:
    """Flat machine code of ``source`` (Intel syntax, no prefix) for a ``bits``-bit mode."""
    if not have_gnu_as():
        pytest.skip("GNU as/objcopy not installed")
    directive = {16: ".code16", 32: ".code32", 64: ".code64"}[bits]
    text = f".intel_syntax noprefix\n{directive}\n{source}\n"
    with tempfile.TemporaryDirectory() as tmp:
        src, obj, out = Path(tmp, "s.S"), Path(tmp, "s.o"), Path(tmp, "s.bin")
        src.write_text(text)
        arch = "--64" if bits == 64 else "--32"
        subprocess.run(["as", arch, "-o", str(obj), str(src)], check=True, capture_output=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(out)], check=True,
                       capture_output=True)
        return out.read_bytes()
