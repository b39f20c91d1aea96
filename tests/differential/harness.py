"""Run one x86 snippet under an oracle and return a snapshot that compares field by field.

Three runners take the same ``Snippet`` (Intel-syntax source, mode, initial
registers and memory) and return a ``Snapshot``:

* ``run_kernel``    — a ``Machine(emulator="kernel")``: the state is written to KVM and
  ``KVM_RUN`` lets the host kernel's own emulator execute non-PVM mode;
* ``run_userspace`` — pykvm's ``Emulator`` on a ``Machine(emulator="userspace")``'s RAM,
  bus and CPUID (driven directly, so the PVM conversion's CR0/EFER/STAR side effects do
  not mask what the emulator itself computed), one instruction at a time under the
  tracker of what the SDM leaves undefined (``undefined.py``): its snapshot carries that,
  and ``differences`` never compares it, in RFLAGS, registers or pushed flag images;
* ``run_unicorn``   — unicorn (QEMU's TCG), the oracle for what the kernel cannot run
  (paging outside long mode); see ``unicorn_oracle.py``.

Every snippet ends in ``hlt`` with IF=0 (the harness appends it), and starts from the
loader's boot state for its mode (``pykvm.x86.boot``): real mode at 0:0x7c00 with
SS:SP = 0:0x7c00, or flat 32-bit protected mode (loader GDT at 0x500) at 0x10000 with
ESP = 0x80000. The whole of guest RAM is part of the snapshot, so any stray write shows.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pykvm import pvm
from pykvm.x86.state import CS, GPR_NAMES, SEGMENT_NAMES, CpuState, Segment
from pykvm.errors import EmulationError, GuestShutdownError, GuestTimeoutError
from pykvm.x86 import boot
from pykvm.x86.bits import FLAG_FIXED
from tests.differential.undefined import Tracker, Undefined

MEMORY_SIZE = 2 << 20
REAL_CODE = 0x7C00
PROTECTED_CODE = 0x10000
DATA = 0x9000                 # scratch data both modes reach with DS = 0 / flat DS
MAX_INSTRUCTIONS = 200_000    # a snippet that runs longer than this is a runaway
KERNEL_TIMEOUT = 2.0
HLT = 0xF4

# The scratch I/O device's ports (free on the Machine's bus: COM1 is 0x3f8, debug-exit 0xf4).
SCRATCH_PORT = 0x700
SCRATCH_PORTS = 16

_SEGMENT_FIELDS = ("selector", "base", "limit", "type", "present", "dpl", "db", "s", "l", "g", "avl",
                   "unusable")


def examples(default: int) -> int:
    """A hypothesis ``max_examples``: ``default`` times $PYKVM_DIFF_SCALE (1 unless set), so a
    longer bug hunt is one environment variable away while the suite stays fast."""
    return default * int(os.environ.get("PYKVM_DIFF_SCALE", "1"))


# -- assembling at the load address --------------------------------------------------------
@functools.lru_cache(maxsize=None)
def assemble_at(source: str, bits: int, address: int) -> bytes:
    """Flat machine code of ``source`` linked to run at ``address``.

    ``tests/asm.assemble`` links at 0, which is fine for relative branches; snippets
    here also use absolute label addresses (far jumps, ``lgdt [gdtr]``), so they are
    linked with ``ld -Ttext`` at the address the runner places them.
    """
    if shutil.which("as") is None or shutil.which("ld") is None or shutil.which("objcopy") is None:
        pytest.skip("GNU as/ld/objcopy not installed")
    directive = {16: ".code16", 32: ".code32"}[bits]
    text = f".intel_syntax noprefix\n.text\n{directive}\n{source}\n"
    with tempfile.TemporaryDirectory() as tmp:
        src, obj, elf, out = (Path(tmp, n) for n in ("s.S", "s.o", "s.elf", "s.bin"))
        src.write_text(text)
        for cmd in (["as", "--32", "-o", str(obj), str(src)],
                    ["ld", "-m", "elf_i386", "-Ttext", hex(address), "-e", hex(address), "-o", str(elf),
                     str(obj)],
                    ["objcopy", "-O", "binary", "-j", ".text", str(elf), str(out)]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise AssertionError(f"{cmd[0]} failed on the snippet:\n{done.stderr}\n{text}")
        return out.read_bytes()


# -- what to run -----------------------------------------------------------------------------
@dataclass
class Snippet:
    """An instruction sequence and the state it starts from.

    ``bits`` is 16 (real mode) or 32 (flat protected mode). ``regs`` maps GPR names to
    initial values; ``memory`` is a list of (guest-physical address, bytes) written before
    the run; ``rflags`` is the initial RFLAGS (IF must stay 0 so ``hlt`` ends the run).
    ``setup(state)``, if given, adjusts the initial ``CpuState`` further (segments, CRs).
    """

    source: str
    bits: int = 16
    regs: dict = field(default_factory=dict)
    rflags: int = FLAG_FIXED
    memory: list = field(default_factory=list)
    setup: object = None

    @property
    def code_address(self) -> int:
        return REAL_CODE if self.bits == 16 else PROTECTED_CODE

    @property
    def code(self) -> bytes:
        return assemble_at(self.source + "\nhlt\n", self.bits, self.code_address)

    def initial_state(self) -> CpuState:
        mode = "real" if self.bits == 16 else "protected"
        # Registers are 32 bits wide outside long mode (the SDM leaves the upper halves
        # undefined there), so initial values are given as 32-bit quantities.
        regs = {name: value & 0xFFFFFFFF for name, value in self.regs.items()}
        state = boot.initial_state(mode, self.code_address, registers=regs)
        state.rflags = self.rflags | FLAG_FIXED
        if self.setup is not None:
            self.setup(state)
        return state

    def prepare(self, memory) -> None:
        """Lay out guest RAM: boot structures, the code, then the snippet's own data."""
        boot.prepare_memory("real" if self.bits == 16 else "protected", memory)
        memory.write(self.code_address, self.code)
        for addr, data in self.memory:
            memory.write(addr, bytes(data))


# -- a deterministic I/O device ----------------------------------------------------------------
class ScratchPorts:
    """Ports SCRATCH_PORT..+15: reads return a value that depends on the port, size and how
    many reads came before; every access is logged, so IN/OUT/INS/OUTS compare exactly."""

    def __init__(self):
        self.log: list[tuple[str, int, int, int]] = []
        self.reads = 0

    def read(self, offset: int, size: int) -> int:
        value = (0x5A + 0x11 * offset + 0x0102_0304 * self.reads) & ((1 << (8 * size)) - 1)
        self.reads += 1
        self.log.append(("in", offset, size, value))
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("out", offset, size, value))


# -- what comes out ---------------------------------------------------------------------------
@dataclass
class Snapshot:
    """The architectural state after a run, in comparable form."""

    outcome: str                 # "halted", or "shutdown" for a triple fault
    gpr: tuple                   # RAX..RDI (no R8-R15 outside long mode)
    rip: int
    rflags: int
    segments: tuple              # ES..GS, LDTR, TR as tuples of _SEGMENT_FIELDS
    gdt: tuple
    idt: tuple
    cr0: int
    cr2: int
    cr3: int
    cr4: int
    efer: int
    memory: bytes
    io: tuple = ()
    state: CpuState | None = None   # the full final state, for test-specific checks
    undefined: Undefined = field(default_factory=Undefined)   # what the SDM leaves open (undefined.py)

    def reg(self, name: str) -> int:
        return self.gpr[GPR_NAMES.index(name)]

    def segment(self, name: str) -> dict:
        return dict(zip(_SEGMENT_FIELDS, self.segments[SEGMENT_NAMES.index(name)]))


def _segment_tuple(seg: Segment) -> tuple:
    return tuple(getattr(seg, f) for f in _SEGMENT_FIELDS)


def snapshot(state: CpuState, memory, outcome: str, io_log=(), undefined: Undefined | None = None) -> Snapshot:
    return Snapshot(outcome=outcome, gpr=tuple(state.gpr[:8]), rip=state.rip, rflags=state.rflags,
                    segments=tuple(_segment_tuple(s) for s in state.seg),
                    gdt=(state.gdt.base, state.gdt.limit), idt=(state.idt.base, state.idt.limit),
                    cr0=state.cr0, cr2=state.cr2, cr3=state.cr3, cr4=state.cr4, efer=state.efer,
                    memory=bytes(memory.view), io=tuple(io_log), state=state.copy(),
                    undefined=undefined or Undefined())


# -- the runners -------------------------------------------------------------------------------
def _machine(kind: str):
    from pykvm.machine import Machine

    # coalesce=False: the oracle records every port write as an exit, port 0x80 too.
    machine = Machine(memory_size=MEMORY_SIZE, serial_output=io.BytesIO(), emulator=kind, coalesce=False)
    ports = ScratchPorts()
    machine.bus.pio.register(SCRATCH_PORT, SCRATCH_PORTS, ports)
    return machine, ports


def run_kernel(snippet: Snippet) -> Snapshot:
    """Run ``snippet`` on the host kernel's emulator (KVM_RUN in non-PVM mode) until ``hlt``."""
    machine, ports = _machine("kernel")
    with machine:
        snippet.prepare(machine.memory)
        machine.set_state(snippet.initial_state())
        try:
            machine.run(timeout=KERNEL_TIMEOUT)
            outcome = "halted"
        except GuestShutdownError:
            outcome = "shutdown"
        except GuestTimeoutError:
            outcome = "kernel timeout"
        except EmulationError as e:
            # Caught here, while the vCPU is open: the traceback's frames hold exit records
            # that point into the mmap'd kvm_run, which must not be touched after close.
            outcome = f"kernel emulation error: {e}"
        return snapshot(machine.current_state(), machine.memory, outcome, ports.log)


def run_userspace(snippet: Snippet) -> Snapshot:
    """Run ``snippet`` on pykvm's userspace emulator until ``hlt``.

    If the snippet reaches a state PVM would convert (long mode, CS.L=1), the rest is
    64-bit code that the Machine would hand to KVM; the harness requires that rest to be
    a single ``hlt`` and steps over it itself, so the snapshot is exactly the state the
    emulator produced.
    """
    machine, ports = _machine("userspace")
    with machine:
        snippet.prepare(machine.memory)
        machine.set_state(snippet.initial_state())
        return _drive(machine.emulator, machine.memory, ports.log)


def run_emulator(snippet: Snippet, cpuid=None) -> Snapshot:
    """``run_userspace`` without KVM: the emulator on plain ``GuestMemory`` and a fresh bus
    (for the unicorn comparisons, which must run where /dev/kvm is absent)."""
    from pykvm.devices.bus import Bus
    from pykvm.emulator import Emulator
    from pykvm.memory import GuestMemory

    ports = ScratchPorts()
    bus = Bus()
    bus.pio.register(SCRATCH_PORT, SCRATCH_PORTS, ports)
    with GuestMemory(MEMORY_SIZE) as memory:
        snippet.prepare(memory)
        return _drive(Emulator(snippet.initial_state(), memory, bus, cpuid=cpuid), memory, ports.log)


def _drive(emulator, memory, io_log) -> Snapshot:
    """Step the emulator to ``hlt`` under the undefined-state tracker (``undefined.py``), so
    the snapshot carries what the SDM leaves undefined along the way."""
    from pykvm.emulator import TripleFault

    state = emulator.state
    tracker = Tracker(emulator, memory)
    executed = 0
    outcome = "halted"
    try:
        while not state.halted:
            if pvm.may_convert(state):
                _step_over_64bit_hlt(state, memory)
                break
            executed += tracker.step()
            if executed >= MAX_INSTRUCTIONS:
                raise AssertionError(f"runaway snippet: {executed} instructions without hlt, "
                                     f"rip={state.rip:#x}")
    except TripleFault:
        outcome = "shutdown"
    return snapshot(emulator.state, memory, outcome, io_log, tracker.result())


def _step_over_64bit_hlt(state: CpuState, memory) -> None:
    """Stand in for PVM mode's one instruction: the identity-mapped ``hlt`` at RIP."""
    linear = state.seg[CS].base + state.rip
    if memory.read(linear, 1)[0] != HLT:
        raise AssertionError(f"the snippet reached 64-bit code at {linear:#x} that is not a lone hlt")
    state.rip += 1
    state.halted = True


# -- comparing ---------------------------------------------------------------------------------
@dataclass
class Ignore:
    """What a comparison leaves out beyond what the SDM leaves undefined (which each
    emulator snapshot carries in ``undefined`` and ``differences`` always masks), each with
    its reason in the test that asks for it: an oracle's known departure, a value the two
    sides legitimately compute at different times.

    ``flags`` is a mask of RFLAGS bits; ``gprs`` names registers; ``memory`` lists
    (address, length) ranges.
    """

    flags: int = 0
    gprs: tuple = ()
    memory: tuple = ()


def differences(expected: Snapshot, actual: Snapshot, ignore: Ignore = Ignore()) -> list[str]:
    """Human-readable field-by-field differences between two snapshots (empty if equal).

    What either snapshot's ``undefined`` names (flags, register bits, memory bits the SDM
    leaves undefined along the run that produced it) is never compared."""
    out = []
    undefined = expected.undefined | actual.undefined
    if expected.outcome != actual.outcome:
        out.append(f"outcome: {expected.outcome} != {actual.outcome}")
    for i, (a, b) in enumerate(zip(expected.gpr, actual.gpr)):
        differing = (a ^ b) & ~undefined.gprs.get(i, 0)
        if differing and GPR_NAMES[i] not in ignore.gprs:
            out.append(f"{GPR_NAMES[i]}: {a:#x} != {b:#x}")
    if expected.rip != actual.rip:
        out.append(f"rip: {expected.rip:#x} != {actual.rip:#x}")
    flag_mask = ignore.flags | undefined.flags
    if (expected.rflags ^ actual.rflags) & ~flag_mask:
        out.append(f"rflags: {expected.rflags:#x} != {actual.rflags:#x} "
                   f"(differing bits {(expected.rflags ^ actual.rflags) & ~flag_mask:#x})")
    for name, a, b in zip(SEGMENT_NAMES, expected.segments, actual.segments):
        # None: a field the oracle cannot show (unicorn exposes selectors only). A segment both
        # sides hold unusable (a null selector: "marked invalid", SDM LLDT/MOV) has no
        # meaningful base, limit or attributes left: its selector is all there is to compare.
        unusable = a[-1] and b[-1]
        fields = ", ".join(f"{f} {x:#x} != {y:#x}" for f, x, y in zip(_SEGMENT_FIELDS, a, b)
                           if x != y and x is not None and y is not None and not (unusable and f != "selector"))
        if fields:
            out.append(f"{name}: {fields}")
    for name in ("gdt", "idt", "cr0", "cr2", "cr3", "cr4", "efer"):
        a, b = getattr(expected, name), getattr(actual, name)
        if a != b:
            out.append(f"{name}: {_fmt(a)} != {_fmt(b)}")
    out += _memory_differences(expected.memory, actual.memory, ignore.memory, undefined.memory)
    if expected.io != actual.io:
        out.append(f"port I/O: {expected.io} != {actual.io}")
    return out


def _fmt(value) -> str:
    return f"({value[0]:#x}, {value[1]:#x})" if isinstance(value, tuple) else f"{value:#x}"


def _memory_differences(a: bytes, b: bytes, ignored, undefined_bits=None, limit: int = 8) -> list[str]:
    if a == b:
        return []
    a, b = bytearray(a), bytearray(b)
    for addr, length in ignored:
        a[addr:addr + length] = b[addr:addr + length]
    for addr, bits in (undefined_bits or {}).items():
        if addr < len(a):
            a[addr] = (a[addr] & ~bits) | (b[addr] & bits)
    if a == b:
        return []
    out = []
    i, n = 0, len(a)
    while i < n and len(out) < limit:
        # Skip equal stretches a page at a time, then byte by byte.
        if a[i:i + 4096] == b[i:i + 4096]:
            i += 4096
            continue
        if a[i] == b[i]:
            i += 1
            continue
        j = i
        while j < n and a[j] != b[j] and j - i < 32:
            j += 1
        out.append(f"memory {i:#x}..{j - 1:#x}: {bytes(a[i:j]).hex()} != {bytes(b[i:j]).hex()}")
        i = j
    return out


def assert_same(expected: Snapshot, actual: Snapshot, ignore: Ignore = Ignore(),
                names=("kernel", "emulator")) -> None:
    diffs = differences(expected, actual, ignore)
    if diffs:
        raise AssertionError(f"{names[0]} != {names[1]}:\n  " + "\n  ".join(diffs))


def check_kernel(snippet: Snippet, ignore: Ignore = Ignore()) -> Snapshot:
    """Run ``snippet`` on both the kernel and the userspace emulator, assert they agree, and
    return the kernel's snapshot (for the test's own sanity checks of what was computed)."""
    kernel = run_kernel(snippet)
    assert kernel.outcome == "halted", f"the kernel did not reach hlt ({kernel.outcome}, rip={kernel.rip:#x})"
    assert_same(kernel, run_userspace(snippet), ignore)
    return kernel
