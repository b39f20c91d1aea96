"""The bodies of ``pykvm step``, ``pykvm run --trace`` / ``--gdb`` and ``pykvm debug`` (cli.py
declares the options and calls these with a loaded ``Machine``). Output goes through
``emit(line)`` (the trace: stdout) and ``note(line)`` (messages: stderr, or stdout in text mode)."""

from __future__ import annotations

import sys
from typing import Callable, TextIO

from pykvm.debug.core import Debugger, Stop
from pykvm.debug.dump import format_registers

Writer = Callable[[str], None]


def _finish(stop: Stop) -> int:
    """The exit status of a run that ``stop`` ended; an error ends it as ``pykvm run`` would."""
    if stop.error is not None:
        raise stop.error
    return stop.status


def step(debugger: Debugger, emit: Writer, note: Writer, count: int | None, breaks: list[int],
         until: int | None, as_json: bool, regs: bool, every: bool) -> int:
    """Run at full speed to the first of ``breaks`` (if any), then step ``count`` instructions
    (or until ``until``), one record each: text lines or JSON objects."""
    for address in breaks:
        debugger.add_breakpoint(address)
    if breaks:
        stop = debugger.cont()
        if stop.exited:
            note(f"guest ended with status {_finish(stop)} before reaching a breakpoint")
            return stop.status
        where = debugger.symbolize(stop.address)
        m = debugger.machine
        note(f"{stop.reason} at {stop.address:#x}{f' ({where})' if where else ''} in {debugger.mode()}, after "
             f"{m.stats.emulated_instructions} emulated instructions and {m.stats.kvm_exits} KVM exits")
        for address in breaks:
            debugger.remove_breakpoint(address)
    done = 0
    while count is None or done < count:
        if until is not None and debugger.pc() == until:
            note(f"reached {until:#x}")
            break
        record, stop = debugger.step_record()
        if record is not None:
            emit(record.as_json() if as_json else record.line())
            if record.event is None:
                done += 1
        if every and not as_json:
            emit(format_registers(debugger.state()))
        if stop.exited:
            note(f"guest ended with status {_finish(stop)}")
            return stop.status
    if regs and not every and not as_json:
        emit(format_registers(debugger.state()))
    return 0


def run_traced(machine, timeout: float | None, out: TextIO, instructions: bool, syntax: str) -> int:
    """``pykvm run --trace``: the run as usual, with one line per emulated instruction (unless
    ``instructions`` is False) and per KVM exit, loops folded, and a summary at the end."""
    from pykvm.debug.trace import RunTracer

    tracer = RunTracer(machine, out, instructions=instructions, syntax=syntax)
    try:
        return machine.run(timeout=timeout)
    finally:
        tracer.finish()
        tracer.detach()
        for line in tracer.summary():
            out.write(line + "\n")
        out.flush()


def run_gdb(machine, spec: str, timeout: float | None, symbols: dict[str, int]) -> int:
    """``pykvm run --gdb tcp::PORT``: wait for gdb before the first instruction, then serve it."""
    from pykvm.debug.gdbstub import listen, serve_gdb

    server = listen(spec)
    debugger = Debugger(machine, timeout, symbols)

    def announce(text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    try:
        return _finish(serve_gdb(debugger, server, announce))
    finally:
        server.close()


def debug(debugger: Debugger, stdin: TextIO, stdout: TextIO) -> int:
    """``pykvm debug``: the interactive prompt (scripted when stdin is not a terminal). Its status:
    the guest's, if it ended; 0 if the debugger was left with the guest stopped."""
    from pykvm.debug.prompt import DebugShell

    DebugShell(debugger, stdin, stdout).run()
    if debugger.ended is not None:
        return _finish(debugger.ended)
    return 0


class SerialLines:
    """The guest's serial output as lines of their own between a trace's lines: each starts with
    "serial| ". The UART hands over whole lines, and at a stop whatever it has: such a partial
    line is ended here, and its rest, when it comes, starts with "serial+ "."""

    def __init__(self, stream):
        self.stream = stream
        self.name = getattr(stream, "name", "<stdout>")
        self._prefix = b"serial| "

    def __call__(self, data: bytes) -> None:
        out = bytearray()
        for line in data.splitlines(keepends=True):
            out += self._prefix + line
            self._prefix = b"serial| "
        if out and not out.endswith(b"\n"):
            out += b"\n"
            self._prefix = b"serial+ "
        self.stream.write(bytes(out))
        self.stream.flush()
