"""Instruction and exit records for ``pykvm step`` and ``pykvm run --trace``, and the tracer of a run.

One record per instruction, whichever executor ran it: where it was (executor, mode, CS:RIP,
linear address), what it was (bytes, disassembly) and which registers it changed. Text lines
for people, JSON objects (one per line) for scripts. ``RunTracer`` hooks into
``Machine.run``: the emulator then runs one instruction at a time and each becomes a line,
every KVM exit becomes a line, loops are folded, and ``summary()`` explains the run.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field

from pykvm.debug.disasm import disassemble_at, pc_linear
from pykvm.kvm.exits import ExitReason
from pykvm.x86.state import CS, FS, GS, GPR_NAMES, SEGMENT_NAMES, CpuState

# What "the registers it changed" compares (RIP is the record's own field).
REGISTER_NAMES = (*GPR_NAMES, "rflags", *SEGMENT_NAMES[:6], "fs_base", "gs_base", "cr0", "cr2", "cr3", "cr4",
                  "efer")


def snapshot(state: CpuState) -> tuple[int, ...]:
    """The values of REGISTER_NAMES in ``state``."""
    seg = state.seg
    return (*state.gpr, state.rflags, *(s.selector for s in seg[:6]), seg[FS].base, seg[GS].base,
            state.cr0, state.cr2, state.cr3, state.cr4, state.efer)


def changes(before: tuple[int, ...], after: tuple[int, ...]) -> dict[str, int]:
    return {name: a for name, b, a in zip(REGISTER_NAMES, before, after) if a != b}


@dataclass
class InstructionRecord:
    """One executed instruction (``event`` None), or a step that executed none: "interrupt"
    (the step delivered an external interrupt instead; CS:RIP is where it struck)."""

    n: int
    executor: str         # "emu" or "kvm"
    mode: str
    cs: int
    rip: int
    linear: int
    code: bytes
    asm: str
    changed: dict[str, int] = field(default_factory=dict)
    event: str | None = None

    def line(self) -> str:
        text = f"{self.code.hex(' '):<24} {self.asm}" if self.event is None else f"<{self.event}>"
        regs = " ".join(f"{k}={v:#x}" for k, v in self.changed.items())
        head = f"{self.n:>6} {self.executor} {self.mode:<28} {self.cs:04x}:{self.rip:08x}  {text}"
        return f"{head:<100} {regs}".rstrip() if regs else head

    def as_json(self) -> str:
        obj = {"n": self.n, "executor": self.executor, "mode": self.mode, "cs": self.cs, "rip": self.rip,
               "linear": self.linear, "bytes": self.code.hex(), "asm": self.asm, "changed": self.changed}
        if self.event is not None:
            obj["event"] = self.event
        return json.dumps(obj)


class Pending:
    """What is known of an instruction before it runs: its place, bytes, text and the registers."""

    __slots__ = ("executor", "mode", "cs", "rip", "linear", "code", "asm", "regs")

    def __init__(self, state: CpuState, memory, executor: str, mode: str, syntax: str = "intel"):
        decoded = disassemble_at(memory, state, 1, syntax)
        self.executor, self.mode = executor, mode
        self.cs, self.rip, self.linear = state.seg[CS].selector, state.rip, pc_linear(state)
        self.code, self.asm = (decoded[0].code, decoded[0].text) if decoded else (b"", "<no code>")
        self.regs = snapshot(state)

    def record(self, n: int, after: CpuState, event: str | None = None) -> InstructionRecord:
        return InstructionRecord(n, self.executor, self.mode, self.cs, self.rip, self.linear,
                                 self.code if event is None else b"", self.asm if event is None else "",
                                 changes(self.regs, snapshot(after)), event)


def describe_exit(vcpu, reason: int) -> str:
    """One exit as a trace shows it: reason, port or address, size, data."""
    record = vcpu.exit_record(reason)
    if reason == ExitReason.IO:
        values = record.values()
        data = " ".join(f"{v:#0{2 + 2 * record.size}x}" for v in values[:8]) + (" ..." if len(values) > 8 else "")
        text = f"io {'out' if record.is_out else 'in '} port={record.port:#06x} size={record.size} data={data}"
        if record.is_out and record.size == 1 and len(values) == 1 and 0x20 <= values[0] < 0x7F:
            text += f" {chr(values[0])!r}"
        return text
    if reason == ExitReason.MMIO:
        return f"{record.describe()} data={record.value:#x}"
    if reason == ExitReason.DEBUG:
        dr6 = record.dr6
        what = "single step" if dr6 & 0x4000 else ", ".join(f"DR{i}" for i in range(4) if dr6 >> i & 1)
        return f"debug ({what or 'unknown'}) pc={record.pc:#x}"
    return record.describe()


class Folder:
    """Folds repetition out of a stream of (key, line). When a key equals the one P back
    (P ≤ ``window``, the smallest such), the lines that follow are held while they repeat the
    keys P back; once a whole period has repeated, it and every further repetition are counted,
    not written, until the stream leaves the loop; then one line says how many were folded. So a
    loop shows its first pass and one line. A repetition that breaks off early is written out."""

    def __init__(self, write, window: int = 64):
        self.write = write
        self.keys: deque = deque(maxlen=window)
        self.period = 0
        self.held: list[tuple[str, str]] = []     # (line, text) of a repetition not yet whole
        self.folding = False
        self.folded = 0
        self.text: list[str] = []

    def add(self, key, line: str, text: str = "") -> None:
        """``text``: what a folded line contributes to the fold line (a character printed)."""
        keys = self.keys
        if self.period:
            if keys[-self.period] == key:
                keys.append(key)
                self._repeat(line, text)
                return
            self.flush()
        for p in range(1, len(keys) + 1):
            if keys[-p] == key:
                self.period = p
                keys.append(key)
                self._repeat(line, text)
                return
        keys.append(key)
        self.write(line)

    def _repeat(self, line: str, text: str) -> None:
        if self.folding:
            self.folded += 1
            self.text.append(text)
            return
        self.held.append((line, text))
        if len(self.held) == self.period:         # a whole pass repeated: fold from here on
            self.folding = True
            self.folded = len(self.held)
            self.text = [t for _, t in self.held]
            self.held = []

    def flush(self) -> None:
        if self.folding:
            p = self.period
            what = "line" if p == 1 else f"{p} lines"
            printed = "".join(self.text)
            self.write(f"{'':>6} ... the {what} above repeated {self.folded // p} more times "
                       f"({self.folded} lines folded){f', printing {printed!r}' if printed else ''}")
        for line, _ in self.held:
            self.write(line)
        self.period = self.folded = 0
        self.folding = False
        self.held = []
        self.text = []


class RunTracer:
    """``Machine.run`` with a trace: its ``instruction_tracer`` (``before``/``after`` each emulated
    instruction) and ``exit_tracer`` (called per KVM exit; ``timed`` wraps KVM_RUN's ioctl)."""

    def __init__(self, machine, out, instructions: bool = True, fold: bool = True, syntax: str = "intel"):
        from pykvm.machine import describe_mode, mode_name

        self.machine = machine
        self.out = out
        self.syntax = syntax
        self.describe_mode, self.mode_name = describe_mode, mode_name
        self.folder = Folder(self._write) if fold else None
        self.kvm_run_seconds = 0.0
        self.instructions = 0
        self.mode_changes: list[str] = []
        self._mode = None
        self._in_kvm = None
        self._exit_number = 0
        self.started = time.perf_counter()
        machine.exit_tracer = self
        machine.instruction_tracer = self if instructions else None

    def detach(self) -> None:
        self.machine.exit_tracer = self.machine.instruction_tracer = None

    # -- output -------------------------------------------------------------------------------
    def _write(self, line: str) -> None:
        self.out.write(line + "\n")

    def _emit(self, key, line: str, text: str = "") -> None:
        if self.folder is None:
            self._write(line)
        else:
            self.folder.add(key, line, text)

    def _section(self, text: str) -> None:
        if self.folder is not None:
            self.folder.flush()
        self._write(f"--- {text}")

    def _note_mode(self, mode: str, in_kvm: bool, where: int) -> None:
        if in_kvm != self._in_kvm:
            if in_kvm and self.machine.emulator_kind == "userspace":
                self._section(f"PVM mode: KVM runs the guest from {where:#x} (one line per exit)")
            elif not in_kvm:
                self._section(f"non-PVM mode: pykvm's emulator from {where:#x} (one line per instruction)")
            self._in_kvm = in_kvm
        if mode != self._mode:
            self.mode_changes.append(f"{mode} at {where:#x}")
            self._section(mode)
            self._mode = mode

    # -- the emulator's instructions ------------------------------------------------------------
    def before(self, machine) -> tuple[Pending, int, int]:
        state = machine.state
        mode = self.describe_mode(state)
        pending = Pending(state, machine.physical, "emu", mode, self.syntax)
        self._note_mode(mode, False, pending.linear)
        return pending, machine.emulator.instructions_executed, machine.emulator.interrupts_delivered

    def after(self, machine, before: tuple[Pending, int, int]) -> None:
        pending, executed, delivered = before
        emulator = machine.emulator
        if emulator.instructions_executed > executed:
            self.instructions += 1
            record = pending.record(self.instructions - 1, machine.state)
        elif emulator.interrupts_delivered > delivered:
            record = pending.record(self.instructions, machine.state, "interrupt")
        else:
            if machine.next_instruction_in_kvm:      # nothing ran: converting to PVM mode
                self._note_mode(pending.mode, True, pending.linear)
            return
        self._emit(record.linear, record.line())

    # -- KVM exits --------------------------------------------------------------------------------
    def timed(self, run):
        """``run`` (the run loop's KVM_RUN call), timing what it spends."""
        clock = time.perf_counter

        def timed_run(*args):
            t = clock()
            try:
                return run(*args)
            finally:
                self.kvm_run_seconds += clock() - t
        return timed_run

    def __call__(self, reason: int) -> None:
        vcpu = self.machine.vcpu
        self._exit_number += 1
        sync = vcpu.sync_regs
        rip, sregs = sync.regs.rip, sync.sregs
        self._note_mode(self.mode_name(sregs.cr0, sregs.efer, sregs.cs.l, sregs.cs.db), True, rip)
        text = describe_exit(vcpu, reason)
        line = f"{'':>6} kvm exit {self._exit_number:<6} rip={rip:#x}  {text}"
        printed = ""
        port = None
        if reason == ExitReason.IO:
            record = vcpu.exit_record(reason)
            port = record.port
            if record.is_out and record.size == 1 and record.count == 1:
                printed = chr(record.values()[0])
        self._emit((rip, reason, port), line, printed)

    # -- the end ------------------------------------------------------------------------------------
    def finish(self) -> None:
        """End the trace: the exit whose handling ended the run (a write to the debug-exit port
        raises out of the run loop before its line) gets its line, folded lines their summary."""
        m = self.machine
        if m.in_pvm_mode and m.stats.kvm_exits == self._exit_number + 1:
            self(m.vcpu.kvm_run.exit_reason)
        if self.folder is not None:
            self.folder.flush()

    def summary(self) -> list[str]:
        """The run in a few lines: instructions emulated, exits by reason, where the time went."""
        m = self.machine
        s = m.stats
        wall = time.perf_counter() - self.started
        lines = ["--- summary",
                 f"  instructions emulated   {s.emulated_instructions:>10,}   {s.emulator_seconds:8.3f} s in the emulator",
                 f"  KVM exits               {s.kvm_exits:>10,}   {s.kvm_seconds:8.3f} s under KVM"
                 + (f" ({self.kvm_run_seconds:.3f} s inside KVM_RUN)" if s.kvm_exits else "")]
        for name, count in s.exits_by_reason().items():   # the machine counts them, traced or not
            lines.append(f"    {name:<21} {count:>10,}")
        if s.halted_seconds:
            lines.append(f"  {'':<34}{s.halted_seconds:8.3f} s asleep in HLT")
        lines += [f"  conversions to PVM mode {s.conversions:>10,}",
                  f"  back in non-PVM mode    {s.reentries:>10,}",
                  f"  interrupts              {s.interrupts_emulated:>10,} emulated, {s.interrupts_injected:,} injected"]
        if self.mode_changes:
            lines.append("  modes: " + " -> ".join(self.mode_changes))
        lines.append(f"  wall time               {wall:10.3f} s")
        return lines
