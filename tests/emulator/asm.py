"""The emulator tests' assembler: ``tests.asm.assemble`` with 16-bit code as the default."""

from __future__ import annotations

from tests.asm import HAVE_GNU_AS as HAVE_AS
from tests.asm import assemble as _assemble

__all__ = ["HAVE_AS", "assemble"]


def assemble(source: str, bits: int = 16, org: int = 0, intel: bool = True) -> bytes:
    return _assemble(source, bits, org, intel)
