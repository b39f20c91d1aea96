"""``pykvm run --json``: one result record per run, for CI and the pytest plugin.

The record is one JSON object on one line of stdout, whatever ended the run: the guest
(a halt, a debug-exit value), an error (bad input, the host, emulation, a shutdown, the
timeout, the output) or a signal. Its fields are described in ``run-record.schema.json``
beside this module (``SCHEMA_VERSION``) and in the README (*Results as JSON*).

This module imports nothing heavy, and only ``--json`` and errors import it: the CLI writes the
record of a command line it refuses, ``pykvm.process`` that of a run that ended before its
command began (a stop signal while pykvm starts).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from pykvm.errors import INTERNAL_BUG_EXIT

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("run-record.schema.json")
#: Serial output kept in the record: its last SERIAL_LIMIT bytes (``serial_dropped`` counts the rest).
SERIAL_LIMIT = 1 << 20
#: Instructions disassembled from CS:RIP in the vCPU state of a failed run.
DISASSEMBLED = 4
#: Statuses that mean the guest ended as it meant to (halted with interrupts off, or wrote 0 to
#: the debug-exit port); any other status is a failure, whose record carries the vCPU state.
SUCCESS = (0, 1)

# pykvm's own statuses (pykvm.errors) and what they mean.
_OUTCOMES = {
    0: ("halted", "the guest halted with interrupts off"),
    2: ("bad-input", "bad input: an unusable image, option or file"),
    4: ("host-error", "host problem: /dev/kvm missing or unusable, or a failing ioctl"),
    6: ("shutdown", "the guest shut down (triple fault) or asked for a reset"),
    8: ("emulation-error", "an instruction pykvm cannot emulate, or a KVM internal error / failed entry"),
    10: ("timeout", "--timeout expired"),
    12: ("output-error", "writing the output failed"),
    INTERNAL_BUG_EXIT: ("internal-error", "a bug in pykvm"),
}
_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP",
                 signal.SIGPIPE: "SIGPIPE: the output's reader went away"}

_emitted = False       # this process's record is out


def requested(argv) -> bool:
    """Whether the command line ``argv`` (without the program) is ``run ... --json``."""
    argv = list(argv)
    if not argv or argv[0] != "run":
        return False
    end = argv.index("--") if "--" in argv else len(argv)
    return "--json" in argv[1:end]


def meaning(status: int, error: BaseException | None = None, debug_exit: int | None = None) -> tuple[str, str]:
    """(outcome, meaning) of a run that ended with ``status`` (and ``error``, if one ended it)."""
    signum = getattr(error, "signum", None)
    if signum is not None:
        return ("interrupted" if signum == signal.SIGINT else "signal",
                f"stopped by {_SIGNAL_NAMES.get(signum, f'signal {signum}')}")
    if debug_exit is not None:
        passed = " (a self-checking guest: all checks passed)" if debug_exit == 0 else ""
        return "debug-exit", f"the guest wrote {debug_exit:#x} to the debug-exit port 0xf4{passed}"
    return _OUTCOMES.get(status, ("unknown", f"status {status}"))


class SerialCapture:
    """The guest's serial output kept for the record (a binary stream for the UART): the last
    ``limit`` bytes, and how many were dropped before them."""

    name = "the record"

    def __init__(self, limit: int | None = None):
        self.limit = SERIAL_LIMIT if limit is None else limit
        self.data = bytearray()
        self.dropped = 0

    def write(self, data: bytes) -> int:
        self.data += data
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.dropped += excess
        return len(data)

    def flush(self) -> None:
        pass


def vcpu_state(machine) -> dict:
    """Where the vCPU is: executor, mode, CS:RIP, the code there disassembled, the registers."""
    from pykvm.debug.disasm import disassemble_at, pc_linear, read_code
    from pykvm.machine import describe_mode
    from pykvm.x86.state import CS, GPR_NAMES

    state = machine.current_state()
    memory = machine.physical
    registers = dict(zip(GPR_NAMES, state.gpr))
    registers.update(rip=state.rip, rflags=state.rflags, cr0=state.cr0, cr2=state.cr2, cr3=state.cr3,
                     cr4=state.cr4, efer=state.efer)
    return {
        "executor": "kvm" if machine.in_pvm_mode else "emu",
        "mode": describe_mode(state),
        "cs": state.seg[CS].selector,
        "rip": state.rip,
        "linear": pc_linear(state),
        "bytes": read_code(memory, state, 16).hex(),
        "disassembly": [{"address": d.address, "bytes": d.code.hex(), "text": d.text}
                        for d in disassemble_at(memory, state, DISASSEMBLED)],
        "registers": registers,
    }


class RunRecord:
    """What ``pykvm run --json`` learns about a run, filled in as it goes."""

    def __init__(self, image: str | None, serial: SerialCapture | None):
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        self.image = image
        self.path: str | None = None      # the file run (a library guest's built image)
        self.serial = serial              # None: the serial output went to --serial PATH
        self.machine_facts: dict = {}
        self.vcpu: dict | None = None
        self.vcpu_error: str | None = None

    def loaded(self, machine) -> None:
        """The machine is built and its image loaded: how it starts."""
        image = machine.image
        if image is not None:
            self.machine_facts.update(format=image.format, entry_mode=image.mode)
        elif machine.rom is not None:
            self.machine_facts.update(format="bios", entry_mode="real")

    def ran(self, machine, status: int | None) -> None:
        """The run ended (``status``, or None for an error): what it did, and after a failure
        where the vCPU is. Must not raise: the error that ended the run matters more."""
        s = machine.stats
        self.machine_facts.update(
            instructions_emulated=s.emulated_instructions,
            kvm_exits=s.kvm_exits,
            exits_by_reason=s.exits_by_reason(),
            conversions=s.conversions,
            reentries=s.reentries,
            interrupts={"emu": s.interrupts_emulated, "kvm": s.interrupts_injected},
            run_seconds={"total": s.seconds, "emulator": s.emulator_seconds, "kvm": s.kvm_seconds,
                         "halted": s.halted_seconds},
        )
        if status in SUCCESS:
            return
        try:
            self.vcpu = vcpu_state(machine)
        except Exception as e:  # noqa: BLE001 - a state that cannot be read is reported, not raised
            self.vcpu_error = f"{type(e).__name__}: {e}"

    def result(self, status: int, run_status: int | None = None, error: BaseException | None = None,
               message: str | None = None) -> dict:
        """The record: the process's ``status``; ``run_status`` what the run returned (a
        debug-exit status before the process's 8 bits cut it), ``error`` what ended it."""
        debug_exit = run_status >> 1 if run_status is not None and run_status & 1 else None
        outcome, text = meaning(status, error, debug_exit)
        if message is None and error is not None:
            message = str(error)
        record = {
            "schema_version": SCHEMA_VERSION,
            "image": self.image,
            "path": self.path,
            "format": None,
            "entry_mode": None,
            "status": status,
            "outcome": outcome,
            "meaning": text,
            "error": message,
            "signal": getattr(error, "signum", None),
            "debug_exit": debug_exit,
            "serial": None if self.serial is None else self.serial.data.decode("utf-8", "replace"),
            "serial_dropped": 0 if self.serial is None else self.serial.dropped,
            "instructions_emulated": 0,
            "kvm_exits": 0,
            "exits_by_reason": {},
            "conversions": 0,
            "reentries": 0,
            "interrupts": {"emu": 0, "kvm": 0},
            "run_seconds": {"total": 0.0, "emulator": 0.0, "kvm": 0.0, "halted": 0.0},
            "wall_seconds": time.perf_counter() - self.started,
            "cpu_seconds": time.process_time() - self.cpu_started,
            "vcpu": self.vcpu,
        }
        record.update(self.machine_facts)
        if self.vcpu_error is not None:
            record["vcpu_error"] = self.vcpu_error
        return record


def emit(record: dict, write) -> None:
    """Write ``record`` as one line with ``write``."""
    global _emitted
    _emitted = True
    write(json.dumps(record))


def before_run(status: int, error: BaseException | None) -> dict:
    """The record of a run that ended before its command began: only how it ended is known."""
    return RunRecord(None, None).result(status, error=error)


def emit_missing(argv, status: int, error: BaseException | None, write) -> None:
    """The end of the ``pykvm`` process: ``run --json`` (``argv``) whose record is not out yet
    (a stop signal while pykvm started) gets what is known."""
    if not _emitted and requested(argv):
        emit(before_run(status, error), write)


def stdout_line(text: str) -> None:
    sys.stdout.write(text + "\n")
