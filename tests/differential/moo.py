"""A reader for the ``MOO`` files of the SingleStepTests CPU test suites (hardware-captured
single-instruction tests, https://github.com/SingleStepTests): a chunked little-endian format.

File: ``b"MOO "``, a header length and header (version, test count, CPU name), then chunks
(4-byte tag, 4-byte length). A ``TEST`` chunk holds its index and sub-chunks: ``NAME`` (the
disassembly), ``BYTS`` (the instruction's bytes), ``INIT``/``FINA`` (CPU states: ``REGS`` with a
bit mask of the registers present, in ``REGISTERS`` order, and ``RAM `` address/byte pairs),
``EXCP`` (the exception raised and where its FLAGS image went) and ``HASH``. Cycle traces
(``CYCL``) are skipped: pykvm does not model bus cycles.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass, field

# The 16-bit register file of the 8086-80286 suites, in the order a REGS mask counts it.
REGISTERS = ("ax", "bx", "cx", "dx", "cs", "ss", "ds", "es", "sp", "bp", "si", "di", "ip", "flags")

_U32 = struct.Struct("<I")
_RAM = struct.Struct("<IB")


@dataclass
class CpuState:
    regs: dict = field(default_factory=dict)
    ram: list = field(default_factory=list)       # (address, byte)


@dataclass
class Test:
    index: int
    name: str = ""
    code: bytes = b""
    initial: CpuState = field(default_factory=CpuState)
    final: CpuState = field(default_factory=CpuState)
    exception: tuple[int, int] | None = None      # (vector, address of the pushed FLAGS)
    hash: str = ""


def _chunks(data, start: int, end: int):
    while start < end:
        tag = bytes(data[start:start + 4])
        length = _U32.unpack_from(data, start + 4)[0]
        yield tag, start + 8, length
        start += 8 + length


def _state(data, start: int, length: int) -> CpuState:
    state = CpuState()
    for tag, at, size in _chunks(data, start, start + length):
        if tag == b"REGS":
            mask = struct.unpack_from("<H", data, at)[0]
            at += 2
            for bit, name in enumerate(REGISTERS):
                if mask >> bit & 1:
                    state.regs[name] = struct.unpack_from("<H", data, at)[0]
                    at += 2
        elif tag == b"RAM ":
            count = _U32.unpack_from(data, at)[0]
            state.ram = [_RAM.unpack_from(data, at + 4 + 5 * i) for i in range(count)]
    return state


def read(path) -> tuple[str, list[Test]]:
    """(CPU name, tests) of a ``.MOO`` or ``.MOO.gz`` file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data[:4] != b"MOO ":
        raise ValueError(f"{path}: not a MOO file")
    header_length = _U32.unpack_from(data, 4)[0]
    header = data[8:8 + header_length]
    cpu = header[8:12].decode("ascii").strip()
    tests = []
    for tag, at, length in _chunks(data, 8 + header_length, len(data)):
        if tag != b"TEST":
            continue
        test = Test(_U32.unpack_from(data, at)[0])
        for sub, sat, slen in _chunks(data, at + 4, at + length):
            if sub == b"NAME":
                test.name = data[sat + 4:sat + 4 + _U32.unpack_from(data, sat)[0]].decode()
            elif sub == b"BYTS":
                test.code = bytes(data[sat + 4:sat + 4 + _U32.unpack_from(data, sat)[0]])
            elif sub in (b"INIT", b"FINA"):
                state = _state(data, sat, slen)
                if sub == b"INIT":
                    test.initial = state
                else:
                    test.final = state
            elif sub == b"EXCP":
                test.exception = (data[sat], _U32.unpack_from(data, sat + 1)[0])
            elif sub == b"HASH":
                test.hash = data[sat:sat + slen].hex()
        tests.append(test)
    return cpu, tests
