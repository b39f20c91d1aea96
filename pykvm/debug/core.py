"""The debug core: one debugger over both executors of a ``Machine``.

Whatever runs the next instruction — pykvm's emulator in non-PVM mode, KVM in PVM mode — a
``Debugger`` steps it, continues to a breakpoint, a mode change or a conversion, and reads
and writes registers and guest memory. Breakpoints are linear addresses (``parse_address``
also takes real mode's SEG:OFF, a segment register's SREG:OFF and the image's symbols). In
the emulator they are guards planted in translated blocks (nothing is planted when none is
set); in KVM they are the debug registers (``KVM_SET_GUEST_DEBUG``): four at most, because
this host's PVM ends software INT3 breakpoints in an internal error (docs/pvm-findings.md).
Memory goes through the guest's paging: a page walk on the emulator's state, KVM_TRANSLATE
in KVM. The pykvm step / debug commands and the gdb stub are built on this class.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from pykvm.debug.disasm import linear_mask, page_walk, pc_linear, read_linear
from pykvm.debug.trace import InstructionRecord, Pending, snapshot
from pykvm.errors import BadInputError, GuestTimeoutError, PykvmError
from pykvm.machine import HW_BREAKPOINTS, DebugStop, Machine, describe_mode
from pykvm.x86.state import GPR_NAMES, SEGMENT_NAMES, CpuState


class DebugError(BadInputError):
    """A debugger request that cannot be done (bad address, no breakpoint slot left, ...)."""


@dataclass
class Stop:
    """Why the guest stopped: "step", "breakpoint" (at linear ``address``), "mode" (a mode
    change), "conversion" (to PVM mode), "interrupt" (asked from outside), or "exited" (the
    run is over: ``status`` is pykvm's exit status, ``error`` the PykvmError that ended it)."""

    reason: str
    address: int | None = None
    status: int | None = None
    error: PykvmError | None = None

    @property
    def exited(self) -> bool:
        return self.reason == "exited"


SEGMENT_INDEX = {name: i for i, name in enumerate(SEGMENT_NAMES[:6])}
_SEG_OFF = re.compile(r"^\s*([0-9a-fA-Fx]+|[cdefgs]s)\s*:\s*([0-9a-fA-Fx]+)\s*$")


def _number(text: str) -> int:
    text = text.strip()
    try:
        return int(text, 0)
    except ValueError:
        return int(text, 16)      # SEG:OFF parts are hex without a prefix, as debuggers write them


def parse_address(text: str, state: CpuState | None = None, symbols: dict[str, int] | None = None) -> int:
    """A linear address from ``0x7c00`` / ``31744``, ``SEG:OFF`` (real mode: SEG * 16 + OFF, both
    hex), ``SREG:OFF`` (the segment register's base + OFF, in any mode) or a symbol (``+OFF``)."""
    text = text.strip()
    m = _SEG_OFF.match(text)
    try:
        if m:
            seg, off = m.groups()
            if seg.lower() in SEGMENT_INDEX:
                if state is None:
                    raise DebugError(f"{text}: no vCPU state to take {seg}'s base from")
                return (state.seg[SEGMENT_INDEX[seg.lower()]].base + _number(off)) & linear_mask(state)
            return ((_number(seg) << 4) + _number(off)) & 0xFFFFF
        name, _, offset = text.partition("+")
        if symbols and name.strip() in symbols:
            return symbols[name.strip()] + (_number(offset) if offset else 0)
        return int(text, 0)
    except ValueError:
        raise DebugError(f"{text!r} is not an address (0x..., SEG:OFF, SREG:OFF or a symbol)") from None


class Debugger:
    """Drives one ``Machine`` for a debugger; the machine must be loaded."""

    def __init__(self, machine: Machine, timeout: float | None = None, symbols: dict[str, int] | None = None,
                 syntax: str = "intel"):
        self.machine = machine
        self.symbols = symbols or {}
        self.syntax = syntax
        self.timeout = timeout                # --timeout: seconds the guest may run (stopped time is free)
        self.run_seconds = 0.0
        self.breakpoints: list[int] = []      # linear addresses, in the order they were set
        self.ended: Stop | None = None        # the "exited" stop, once the run is over
        self.steps = 0                        # instructions stepped

    # -- where the guest is ---------------------------------------------------------------------
    def state(self) -> CpuState:
        """The vCPU's state now (the emulator's own object in non-PVM mode: do not keep it)."""
        return self.machine.current_state()

    @property
    def executor(self) -> str:
        """"emu" or "kvm": who runs the next instruction."""
        return "kvm" if self.machine.next_instruction_in_kvm else "emu"

    def mode(self) -> str:
        return describe_mode(self.state())

    def pc(self) -> int:
        """The linear address of the next instruction."""
        return pc_linear(self.state())

    def address(self, text: str) -> int:
        return parse_address(text, self.state(), self.symbols)

    def symbolize(self, address: int) -> str:
        """``name+0x..`` for the nearest symbol at or below ``address`` (or "")."""
        best = max(((v, k) for k, v in self.symbols.items() if v <= address and not k.startswith("__")),
                   default=None)
        if best is None or address - best[0] > 0x10000:
            return ""
        return best[1] if address == best[0] else f"{best[1]}+{address - best[0]:#x}"

    # -- breakpoints ----------------------------------------------------------------------------
    def add_breakpoint(self, address: int) -> None:
        if address in self.breakpoints:
            return
        if self.machine.next_instruction_in_kvm and len(self.breakpoints) >= HW_BREAKPOINTS:
            raise DebugError(f"cannot set a breakpoint at {address:#x}: in PVM mode pykvm has only the "
                             f"{HW_BREAKPOINTS} hardware breakpoints (DR0-DR3); software breakpoints (INT3 with "
                             "KVM_GUESTDBG_USE_SW_BP) end in a KVM internal error on this host. Delete one first.")
        self.breakpoints.append(address)
        self.machine.set_breakpoints(self.breakpoints)

    def remove_breakpoint(self, address: int) -> bool:
        if address not in self.breakpoints:
            return False
        self.breakpoints.remove(address)
        self.machine.set_breakpoints(self.breakpoints)
        return True

    def catch(self, event: str, on: bool = True) -> None:
        """Stop (or not) at every mode change ("mode") or conversion to PVM mode ("conversion")."""
        if event not in ("mode", "conversion"):
            raise DebugError(f"cannot stop at {event!r}: only at a mode change or a conversion")
        setattr(self.machine, "stop_on_mode_change" if event == "mode" else "stop_on_conversion", on)

    # -- running --------------------------------------------------------------------------------
    def _check_running(self) -> None:
        if self.ended is not None:
            raise DebugError(f"the guest is not running any more ({self._ended_text()})")

    def _ended_text(self) -> str:
        e = self.ended
        return str(e.error) if e.error is not None else f"exit status {e.status}"

    def _end(self, status: int | None, error: PykvmError | None = None) -> Stop:
        self.ended = Stop("exited", status=status if error is None else error.exit_code, error=error)
        return self.ended

    def _timed(self, run):
        """``run(timeout=...)`` (Machine.run or step) with what is left of --timeout, counted."""
        started = time.monotonic()
        try:
            return run(timeout=self._remaining())
        finally:
            self.run_seconds += time.monotonic() - started

    def _remaining(self) -> float | None:
        if self.timeout is None:
            return None
        left = self.timeout - self.run_seconds
        if left <= 0:
            raise GuestTimeoutError(f"guest still running after --timeout {self.timeout:g}s")
        return left

    def step(self) -> Stop:
        """Execute one instruction (or deliver one pending interrupt) wherever it runs."""
        return self.step_record()[1]

    def step_record(self) -> tuple[InstructionRecord | None, Stop]:
        """``step`` with the record of what ran: place, bytes, disassembly, registers changed."""
        self._check_running()
        m = self.machine
        state = self.state()
        pending = Pending(state, m.physical, self.executor, describe_mode(state), self.syntax)
        delivered = self._interrupts()
        try:
            m.platform.poll()             # timers keep time while stepping, as when running
            status = self._timed(m.step)
        except PykvmError as e:
            return None, self._end(None, e)
        after = self.state()
        stop = m.take_stop()              # asked to stop (Ctrl-C in gdb) during the step
        if stop is not None and pc_linear(after) == pending.linear and snapshot(after) == pending.regs:
            return None, Stop(stop.reason, pending.linear)    # nothing ran (asleep in HLT)
        if self._interrupts() > delivered:
            # The step delivered an external interrupt and stopped at the handler's first
            # instruction: nothing ran (the emulator's way, and PVM's, measured).
            record = pending.record(self.steps, after, "interrupt")
        else:
            record = pending.record(self.steps, after)
            self.steps += 1
        if status is not None:
            return record, self._end(status)
        return record, Stop("step", self.pc())

    def fpu(self):
        """(``struct kvm_fpu`` of the vCPU, (FCW, FSW) where the emulator keeps its own or None)."""
        m = self.machine
        emu = m._emulator
        control = None if m.in_pvm_mode or emu is None else (emu.fpu_cw, emu.fpu_sw)
        return m.vcpu.get_fpu(), control

    def _interrupts(self) -> int:
        """External interrupts delivered so far, by both executors."""
        m = self.machine
        emu = m._emulator
        return (emu.interrupts_delivered if emu is not None else 0) + m.stats.interrupts_injected

    def cont(self) -> Stop:
        """Run at full speed until a breakpoint, a stop condition, ``interrupt()`` or the end."""
        self._check_running()
        m = self.machine
        try:
            if self.pc() in self.breakpoints:
                stop = self.step()            # off the breakpoint we stand on
                if stop.reason != "step":
                    return stop
            status = self._timed(m.run)
        except PykvmError as e:
            return self._end(None, e)
        if status is not None:
            return self._end(status)
        stop = m.take_stop() or DebugStop("interrupt")
        return Stop(stop.reason, stop.address if stop.address is not None else self.pc())

    def interrupt(self) -> None:
        """Stop a running ``cont()`` soon (callable from another thread)."""
        self.machine.request_stop(DebugStop("interrupt"))

    # -- memory ---------------------------------------------------------------------------------
    def translator(self, state: CpuState | None = None):
        """``translate(linear) -> physical | None``: KVM_TRANSLATE while KVM holds the vCPU,
        a page walk of the emulator's state otherwise."""
        m = self.machine
        if m.in_pvm_mode:
            return m.vcpu.translate
        return page_walk(m.physical, state or m.state)

    def read_memory(self, linear: int, size: int) -> bytes:
        """Guest memory at a linear address; shorter than ``size`` where a page is unmapped or not RAM."""
        state = self.state()
        return read_linear(self.machine.physical, state, linear, size, self.translator(state))

    def write_memory(self, linear: int, data: bytes) -> None:
        """Write guest memory at a linear address (all of it mapped RAM, else DebugError)."""
        state = self.state()
        translate = self.translator(state)
        mask = linear_mask(state)
        memory = self.machine.memory
        done = 0
        pieces = []
        while done < len(data):
            phys = translate((linear + done) & mask) if linear <= mask else None
            take = min(len(data) - done, 0x1000 - (phys & 0xFFF)) if phys is not None else 0
            if phys is None or not memory.contains(phys, take):
                raise DebugError(f"cannot write {len(data)} bytes at {linear:#x}: "
                                 f"{(linear + done) & mask:#x} is not mapped to guest RAM")
            pieces.append((phys, data[done:done + take]))
            done += take
        for phys, piece in pieces:
            memory.write(phys, piece)
        self.machine.guest_memory_changed()

    # -- registers ------------------------------------------------------------------------------
    WRITABLE = (*GPR_NAMES, "rip", "rflags", "eflags")

    def write_registers(self, values: dict[str, int]) -> None:
        """Set general registers, RIP and RFLAGS (``eflags`` is a synonym) by name."""
        unknown = [name for name in values if name not in self.WRITABLE]
        if unknown:
            raise DebugError(f"cannot write {', '.join(unknown)}: only {', '.join(self.WRITABLE)}")
        state = self.state()
        for name, value in values.items():
            value &= 0xFFFFFFFFFFFFFFFF
            if name in ("rflags", "eflags"):
                state.rflags = value | 2
            elif name == "rip":
                state.rip = value
            else:
                state.gpr[GPR_NAMES.index(name)] = value
        self.machine.put_state(state)
