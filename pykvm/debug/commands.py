"""The bodies of ``pykvm step``, ``pykvm run --trace`` / ``--gdb`` and ``pykvm debug`` (cli.py
declares the options and calls these with a loaded ``Machine``)."""

from __future__ import annotations

import sys
from typing import TextIO

from pykvm.debug.core import Debugger, Stop
from pykvm.debug.dump import format_registers


def _finish(stop: Stop) -> int:
    """The exit status of a run that ``stop`` ended; an error ends it as ``pykvm run`` would."""
    if stop.error is not None:
        raise stop.error
    return stop.status


def step(debugger: Debugger, out: TextIO, info: TextIO, count: int | None, breaks: list[int],
         until: int | None, as_json: bool, regs: bool, every: bool) -> int:
    """Run at full speed to the first of ``breaks`` (if any), then step ``count`` instructions
    (or until ``until``), one record each: text lines or JSON objects on ``out``."""
    for address in breaks:
        debugger.add_breakpoint(address)
    if breaks:
        stop = debugger.cont()
        if stop.exited:
            info.write(f"guest ended with status {_finish(stop)} before reaching a breakpoint\n")
            return stop.status
        where = debugger.symbolize(stop.address)
        info.write(f"{stop.reason} at {stop.address:#x}{f' ({where})' if where else ''} in {debugger.mode()}, "
                   f"after {debugger.machine.stats.emulated_instructions} emulated instructions and "
                   f"{debugger.machine.stats.kvm_exits} KVM exits\n")
        for address in breaks:
            debugger.remove_breakpoint(address)
    done = 0
    while count is None or done < count:
        if until is not None and debugger.pc() == until:
            info.write(f"reached {until:#x}\n")
            break
        record, stop = debugger.step_record()
        if record is not None:
            out.write((record.as_json() if as_json else record.line()) + "\n")
            if record.event is None:
                done += 1
        if every and not as_json:
            out.write(format_registers(debugger.state()) + "\n")
        if stop.exited:
            (info if as_json else out).write(f"guest ended with status {_finish(stop)}\n")
            return stop.status
    if regs and not every and not as_json:
        out.write(format_registers(debugger.state()) + "\n")
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
    """``pykvm debug``: the interactive prompt (scripted when stdin is not a terminal)."""
    from pykvm.debug.prompt import DebugShell

    shell = DebugShell(debugger, stdin, stdout)
    shell.run()
    if debugger.ended is not None:
        return _finish(debugger.ended)
    return 0
