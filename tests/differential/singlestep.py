"""Hardware-captured single-instruction tests (SingleStepTests' 80286 real-mode suite, read by
``tests.differential.moo``) run on pykvm's emulator in real mode.

Each test gives a 286's registers and the RAM bytes it touched before one instruction and what
changed after it, captured from a real CPU; the CPU then ran a HLT (the one after the
instruction, or one injected at the first fetch after a jump or an exception), so the final IP
is one past where the instruction left it. pykvm runs the instruction (and the delivery of a
fault it raises, through the test's IVT) one step under the undefined-state tracker
(``tests.differential.undefined``), so flags the SDM leaves undefined are never compared, and
checks every register and every changed byte.

Where the 286 and the processors pykvm models differ by design (the SDM's notes on earlier
processors), ``DEPARTURES`` says so and the case is not compared.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from pykvm.devices.bus import Bus
from pykvm.emulator import Emulator
from pykvm.memory import GuestMemory
from pykvm.x86.state import CS, CpuState, Segment
from tests.differential import moo
from tests.differential.undefined import Tracker, UndefinedRead

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "singlestep-80286" / "sample.jsonl.gz"
MEMORY = 0x1100000                 # real mode reaches 0x10FFEF (FFFF:FFFF); the 286 has 24 address lines
_SEGMENTS = ("es", "cs", "ss", "ds")               # pykvm's segment register order (then fs, gs)
_GPRS = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")
# FLAGS bits compared: the six status flags, TF, IF, DF. Bits 12-15 (IOPL, NT) cannot be set in
# a 286's real mode; the tests' initial images may hold them anyway (its README says to mask
# them), and bits 1/3/5 are fixed.
FLAGS_COMPARED = 0x0FD5


_PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0xF0, 0xF2, 0xF3))
# Port input: the value a 286 read came from the test rig's data bus (only in the cycle traces).
NOT_COMPARED = {0x6C: "INSB", 0x6D: "INSW", 0xE4: "IN", 0xE5: "IN", 0xEC: "IN", 0xED: "IN"}


def _split(code: bytes) -> tuple[bytes, int, bytes]:
    """(prefixes, opcode, the rest) of a test's bytes (the trailing HLT dropped)."""
    body = code[:-1] if code.endswith(b"\xf4") else code
    i = 0
    while i < len(body) and body[i] in _PREFIXES:
        i += 1
    return body[:i], body[i] if i < len(body) else -1, body[i + 1:]


def _cpu_vector(test) -> int | None:
    """The exception the 286 raised, if any."""
    return test.exception[0] if test.exception else None


def _lock_ud(test, prefixes, opcode, rest, vector) -> bool:
    return 0xF0 in prefixes and vector == 6 and _cpu_vector(test) != 6


def _too_long(test, prefixes, opcode, rest, vector) -> bool:
    return len(prefixes) + 1 + len(rest) > 10 and _cpu_vector(test) == 13


def _fs_gs(test, prefixes, opcode, rest, vector) -> bool:
    return opcode in (0x8C, 0x8E) and rest and rest[0] >> 3 & 7 in (4, 5) and _cpu_vector(test) == 6


def _string_fault(test, prefixes, opcode, rest, vector) -> bool:
    return (opcode in (0x6E, 0x6F, 0xA4, 0xA5, 0xA6, 0xA7, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF)
            and vector in (12, 13) and _cpu_vector(test) in (12, 13))


def _pop_to_memory_fault(test, prefixes, opcode, rest, vector) -> bool:
    return opcode == 0x8F and vector is not None and _cpu_vector(test) is not None


def _words_wrap(test, prefixes, opcode, rest, vector) -> bool:
    return (opcode in (0x62, 0xC4, 0xC5, 0xFF, 0x0F) and vector in (12, 13)
            and _cpu_vector(test) not in (12, 13))


def _stack_overrun(test, prefixes, opcode, rest, vector) -> bool:
    return vector == 12 and _cpu_vector(test) == 13


# Where the 286 and the processors pykvm models (the vCPU's, SDM vol. 2 and 3) differ by design.
DEPARTURES = (
    ("LOCK with an instruction that cannot take it: #UD from the 80386 on (SDM LOCK: \"an "
     "invalid-opcode exception is generated\"); the 80286 runs the instruction", _lock_ud),
    ("an instruction longer than 10 bytes: #GP(0) on the 80286; the limit is 15 bytes from the "
     "80386 on (SDM vol. 2, 2.3.11)", _too_long),
    ("MOV to or from FS/GS (sreg 4, 5): the 80286 has no FS and GS and raises #UD", _fs_gs),
    ("a string instruction faulting at the segment end: the 80286 has already advanced SI/DI; "
     "from the 80386 on a fault leaves them as they were (SDM vol. 3, 6.5)", _string_fault),
    ("an access through SS past its limit in real mode: interrupt 13 (segment overrun) on the "
     "80286 whatever the segment; #SS, vector 12, from the 80386 on (SDM, real-address-mode "
     "exceptions: \"#SS If a memory operand effective address is outside the SS segment limit\")",
     _stack_overrun),
    ("an operand of two words (BOUND, LDS/LES, far pointers, descriptor-table images) crossing "
     "offset 0xFFFF: the 80286 reads each word on its own, the second from offset 0; from the "
     "80386 on the whole operand is checked against the limit (#GP/#SS)", _words_wrap),
    ("POP to memory faulting on its destination: the 80286 has already incremented SP; from "
     "the 80386 on a fault leaves SP as it was (SDM vol. 3, 6.5)", _pop_to_memory_fault),
)


@dataclass
class Outcome:
    test: moo.Test
    differences: list = field(default_factory=list)
    skipped: str = ""


class Runner:
    """One emulator and RAM reused across tests (the bytes a test wrote are cleared after it)."""

    def __init__(self):
        self.memory = GuestMemory(MEMORY)
        self._dirty: set[int] = set()

    def _state(self, regs: dict) -> CpuState:
        st = CpuState()
        for i, name in enumerate(_SEGMENTS + ("fs", "gs")):
            selector = regs.get(name, 0)
            st.seg[i] = Segment(selector=selector, base=selector << 4, limit=0xFFFF, type=0xB if i == CS else 3)
        for i, name in enumerate(_GPRS):
            st.gpr[i] = regs[name]
        st.rip = regs["ip"]
        st.rflags = regs["flags"] & FLAGS_COMPARED | 2
        return st

    def run(self, test: moo.Test) -> Outcome:
        outcome = Outcome(test)
        view = self.memory.view
        for address in self._dirty:
            view[address] = 0
        self._dirty = {a for a, _ in test.initial.ram} | {a for a, _ in test.final.ram}
        for address, byte in test.initial.ram:
            view[address] = byte
        emulator = Emulator(self._state(test.initial.regs), self.memory, Bus())
        tracker = Tracker(emulator, self.memory)
        try:
            tracker.step()
        except UndefinedRead as e:
            outcome.skipped = f"reads what the SDM leaves undefined: {e}"
            return outcome
        except Exception as e:  # noqa: BLE001 - an emulation error is a difference
            outcome.differences.append(f"emulator: {type(e).__name__}: {e}")
            return outcome
        undefined = tracker.result()
        vector = tracker.deliveries[0][0] if tracker.deliveries else None
        prefixes, opcode, rest = _split(test.code)
        if opcode in NOT_COMPARED:
            outcome.skipped = f"{NOT_COMPARED[opcode]}: the port's value is the test rig's"
            return outcome
        for reason, applies in DEPARTURES:
            if applies(test, prefixes, opcode, rest, vector):
                outcome.skipped = reason
                return outcome
        st = emulator.state
        expected = dict(test.initial.regs, **test.final.regs)
        got = {name: st.gpr[i] & 0xFFFF for i, name in enumerate(_GPRS)}
        got.update({name: st.seg[i].selector for i, name in enumerate(_SEGMENTS)})
        got["ip"] = (st.rip + 1) & 0xFFFF            # the HLT after it
        for name, value in got.items():
            mask = 0xFFFF & ~undefined.gprs.get(_GPRS.index(name), 0) if name in _GPRS else 0xFFFF
            if (value ^ expected[name]) & mask:
                outcome.differences.append(f"{name}: 286 {expected[name]:#06x} != pykvm {value:#06x}")
        mask = FLAGS_COMPARED & ~undefined.flags
        if (st.rflags ^ expected["flags"]) & mask:
            outcome.differences.append(f"flags: 286 {expected['flags'] & mask:#06x} != pykvm "
                                       f"{st.rflags & mask:#06x} (compared {mask:#06x})")
        pushed_flags = test.exception[1] if test.exception else None
        for address, byte in test.final.ram:
            bits = 0xFF & ~undefined.memory.get(address, 0)
            if pushed_flags is not None and address - pushed_flags in (0, 1):   # the frame's FLAGS image
                bits &= FLAGS_COMPARED >> (8 * (address - pushed_flags))
            if (view[address] ^ byte) & bits:
                outcome.differences.append(f"memory {address:#x}: 286 {byte:#04x} != pykvm {view[address]:#04x}")
        return outcome


def to_record(form: str, test: moo.Test) -> dict:
    """A test as one JSON object (what ``SAMPLE`` holds), without its bus cycles."""
    return {"form": form, "idx": test.index, "name": test.name, "code": test.code.hex(),
            "initial": {"regs": test.initial.regs, "ram": test.initial.ram},
            "final": {"regs": test.final.regs, "ram": test.final.ram},
            "exception": test.exception, "hash": test.hash}


def from_record(record: dict) -> moo.Test:
    return moo.Test(record["idx"], record["name"], bytes.fromhex(record["code"]),
                    moo.CpuState(record["initial"]["regs"], [tuple(p) for p in record["initial"]["ram"]]),
                    moo.CpuState(record["final"]["regs"], [tuple(p) for p in record["final"]["ram"]]),
                    tuple(record["exception"]) if record["exception"] else None, record["hash"])


def load_sample(path: Path = SAMPLE) -> list[tuple[str, moo.Test]]:
    with gzip.open(path, "rt") as f:
        return [(r["form"], from_record(r)) for r in map(json.loads, f)]
