"""The ``pykvm`` command: thin click wrappers over ``Machine``; every PykvmError becomes one line.

Exit status of ``pykvm run``: the guest's debug-exit status ``(value << 1) | 1`` (odd),
0 when the guest halts with interrupts off, else one of pykvm's even codes
(see ``pykvm.errors`` and the README's table).
"""

from __future__ import annotations

import contextlib
import math
import sys

import click

from pykvm import pvm
from pykvm.errors import BadInputError, InterruptedByUser, PykvmError, output_error
from pykvm.loaders import FORMATS
from pykvm.machine import EMULATORS
from pykvm.process import ErrorExit, raise_if_stop_noted
# What a run needs besides click lives in pykvm.runner, which `pykvm run` also uses without
# click when its arguments are simple (pykvm.quickrun).
from pykvm.runner import (MEMORY_UNITS, fail as _fail, guarded as _guarded, guest_machine as _guest_machine,  # noqa: F401
                          open_serial as _open_serial, parse_size, read_modules as _read_modules,
                          setup_logging as _setup_logging)
from pykvm.x86.boot import MODES

class Address(click.ParamType):
    name = "address"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return int(value, 0)
        except ValueError:
            self.fail(f"{value!r} is not an address (use 0x... or decimal)", param, ctx)


class Seconds(click.ParamType):
    """A positive, finite number of seconds (``nan``, ``inf`` and negatives are usage errors)."""

    name = "seconds"

    def convert(self, value, param, ctx):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = math.nan
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r} is not a positive, finite number of seconds", param, ctx)
        return seconds


def _echo(text: str = "", err: bool = False) -> None:
    """click.echo, with a failed write to stdout reported as the guest's output failing would be."""
    try:
        click.echo(text, err=err)
    except OSError as e:
        raise output_error(e, "stderr" if err else "stdout") from None


class _Commands(click.Group):
    """click's group, with its usage errors as one ``pykvm: error:`` line and status 2, like
    every other error (the usage itself stays with ``--help``)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        raise_if_stop_noted()          # a signal while pykvm.process itself ran
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            status = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            e.show()                   # no command at all: the help is the answer
            sys.exit(e.exit_code)
        except click.ClickException as e:
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail_before_run(BadInputError(" ".join(e.format_message().split()) + hint), args)
        except click.Abort:            # Ctrl-C (KeyboardInterrupt) while click was parsing
            _fail_before_run(InterruptedByUser(), args)
        sys.exit(status or 0)


def _fail_before_run(error: PykvmError, args) -> None:
    """``_fail`` for an error of the command line itself; ``run --json`` still gets its record."""
    from pykvm import record

    if record.requested(sys.argv[1:] if args is None else args):
        _emit_record(lambda: record.emit(record.before_run(error.exit_code, error), _echo))
    _fail(error)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pykvm-pvm", prog_name="pykvm")
def main() -> None:
    """pykvm: a VMM in Python over /dev/kvm, emulating PVM's non-PVM mode in userspace."""


@main.command()
@click.option("--device", default="/dev/kvm", show_default=True, help="KVM device to check.")
def info(device: str) -> None:
    """Check that this host can run guests and show what KVM offers."""
    from pykvm.kvm import Kvm

    def body() -> None:
        with Kvm(device) as kvm:
            _echo(f"{device}: usable, KVM API version {kvm.api_version}")
            _echo(f"backend: {'PVM (kvm_pvm loaded)' if kvm.is_pvm_host() else 'not PVM (kvm_pvm not loaded)'}")
            _echo(f"vCPU mmap size: {kvm.vcpu_mmap_size} bytes")
            _echo(f"supported CPUID entries: {kvm.supported_cpuid().nent}")
            _echo("capabilities:")
            for name, value in kvm.capabilities().items():
                _echo(f"  {name:<20} {value}")

    _guarded(body)


def _image_options(f):
    options = [
        click.argument("image", required=False),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
                     help="Image format."),
        click.option("--mode", type=click.Choice(MODES), default=None,
                     help="Entry mode of a flat image (default: real)."),
        click.option("--load-addr", type=Address(), default=None, help="Where a flat image is loaded."),
        click.option("--entry", type=Address(), default=None, help="Entry point (default: load address)."),
        click.option("--mem", "mem", default="64M", show_default=True, help="Guest RAM size."),
        click.option("--cmdline", default="", help="Kernel command line (multiboot, PVH)."),
        click.option("--module", "modules", multiple=True, metavar="PATH[,CMDLINE]",
                     help="A boot module for a multiboot or PVH kernel (repeatable), with its command "
                          "line (multiboot's module string: CMDLINE, else PATH as given)."),
        click.option("--bios", default=None, metavar="ROM",
                     help="Firmware image (64 KiB-16 MiB) mapped read-only below 4 GiB and started at "
                          "the reset vector; takes no IMAGE."),
        click.option("--serial", default="stdio", show_default=True, help="Serial output: stdio or a file path."),
        click.option("--emulator", type=click.Choice(EMULATORS), default="userspace",
                     show_default=True, help="Who emulates non-PVM mode: pykvm, or the host kernel."),
        click.option("--emul-batch", type=click.IntRange(1), default=pvm.DEFAULT_BATCH, show_default=True,
                     help="Instructions emulated per batch before checking for events."),
        click.option("-v", "--verbose", count=True,
                     help="Log the memory map, mode switches and conversions (-vv: also every KVM exit, unclaimed "
                          "access and dropped ROM write)."),
        click.option("--device", default="/dev/kvm", show_default=True, help="KVM device to use."),
        click.option("--testdev/--no-testdev", default=None,
                     help="Add QEMU's pc-testdev (ports 0xe0-0xe4, IRQ lines at 0x2000+n), as kvm-unit-tests use "
                          "it (default: only for the guests of guests/ that need it)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _run_options(f):
    """The options of a run, shared by run, step and debug."""
    options = [
        click.option("--timeout", type=Seconds(), default=None,
                     help="Stop the guest after this many seconds (exit status 10)."),
        click.option("--stats", is_flag=True, help="Print run statistics to stderr at the end."),
        click.option("--syntax", type=click.Choice(["intel", "att"]), default="intel", show_default=True,
                     help="Disassembly syntax."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _print_stats(machine) -> None:
    s = machine.stats
    _echo(f"pykvm: {s.emulated_instructions} instructions emulated, {s.kvm_exits} KVM "
          f"exits, {s.conversions} conversions to PVM mode, interrupts {s.interrupts_emulated} "
          f"emulated / {s.interrupts_injected} injected, {s.seconds:.3f}s", err=True)


@contextlib.contextmanager
def _session(image_options, stats: bool, stdio=None, run_record=None):
    """``_guest_machine`` for a command with the run options: --stats printed at the end."""
    with _guest_machine(**image_options, stdio=stdio, run_record=run_record) as machine:
        try:
            yield machine
        finally:
            if stats:
                _print_stats(machine)


def _symbols(image):
    from pykvm.debug.symbols import image_symbols
    from pykvm.guests import resolve_image

    return image_symbols(resolve_image(image))


def _open_trace(trace: str):
    """``--trace``: stderr (the guest's serial output keeps stdout), or ``--trace=FILE``."""
    if trace == "-":
        return contextlib.nullcontext(sys.stderr)
    try:
        return open(trace, "w")
    except OSError as e:
        raise BadInputError(f"--trace={trace}: {e.strerror}") from None


@main.command()
@_image_options
@_run_options
@click.option("--trace", is_flag=False, flag_value="-", default=None, metavar="[=FILE]",
              help="Trace the run on stderr (or FILE): each emulated instruction, each KVM exit, a summary.")
@click.option("--trace-exits", is_flag=True, help="Trace only the KVM exits (the emulator runs at full speed).")
@click.option("--gdb", "gdb", metavar="tcp::PORT", default=None,
              help="Wait for gdb (target remote :PORT) before the first instruction; serve it.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON record of the run on stdout, whatever ended it (the serial output "
                   "goes into it, unless --serial PATH).")
def run(verbose, timeout, stats, syntax, trace, trace_exits, gdb, as_json, **image_options):
    """Run IMAGE (default: the built-in boot16to64 guest) until it exits.

    IMAGE may be a flat binary, a boot sector, an ELF or a multiboot kernel, or a
    guest source in guests/ (built first).
    """
    _setup_logging(verbose)
    run_record = None
    if as_json:
        from pykvm import record

        run_record = record.RunRecord(image_options["image"],
                                      record.SerialCapture() if image_options["serial"] == "stdio" else None)

    def execute(machine) -> int:
        if gdb is None and trace is None and not trace_exits:
            return machine.run(timeout=timeout)
        from pykvm.debug import commands

        if gdb is not None:
            return commands.run_gdb(machine, gdb, timeout, _symbols(image_options["image"]))
        if trace is not None or trace_exits:
            with _open_trace(trace or "-") as out:
                return commands.run_traced(machine, timeout, out, not trace_exits, syntax)

    def body() -> int:
        if gdb is not None:
            from pykvm.debug.gdbstub import parse_listen

            if trace is not None or trace_exits:
                raise BadInputError("--gdb and --trace do not go together")
            parse_listen(gdb)               # a bad --gdb before anything is loaded
        capture = run_record and run_record.serial
        with _session(image_options, stats, capture, run_record) as machine:
            if run_record is None:
                return execute(machine)
            run_record.loaded(machine)
            status = None
            try:
                status = execute(machine)
                return status
            finally:
                run_record.ran(machine, status)    # before the machine closes: the vCPU state

    if run_record is None:
        sys.exit(_guarded(body))
    _run_recorded(body, run_record)


def _run_recorded(body, run_record) -> None:
    """``_guarded(body)`` with the run's record on stdout at the end, whatever ended it."""
    from pykvm import record

    raised = None

    def watched() -> int:
        nonlocal raised
        try:
            return body()
        except BaseException as e:
            raised = e
            raise

    try:
        status = _guarded(watched)
    except SystemExit as e:         # an error, reported: its record, then its status
        error = e.error if isinstance(e, ErrorExit) else raised
        message = None if isinstance(e, ErrorExit) else f"internal error: {type(raised).__name__}: {raised}"
        _emit_record(lambda: record.emit(run_record.result(e.code, error=error, message=message), _echo))
        raise
    _emit_record(lambda: record.emit(run_record.result(status & 0xFF, status), _echo))
    sys.exit(status)


def _emit_record(write) -> None:
    """Write a record; a failing stdout ends pykvm as it would for the guest's output."""
    try:
        write()
    except PykvmError as e:
        _fail(e)


@main.command()
@_image_options
@_run_options
@click.option("-n", "--count", type=click.IntRange(1), default=None,
              help="Instructions to execute (default 20, or no limit with --until).")
@click.option("--regs/--no-regs", default=True, show_default=True, help="Dump the registers at the end.")
@click.option("--every", is_flag=True, help="Dump the registers after every instruction.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per instruction on stdout (the serial output goes to stderr).")
@click.option("--break", "breaks", multiple=True, metavar="ADDR",
              help="Run at full speed to ADDR (0x..., SEG:OFF in real mode, a symbol), then step. Repeatable.")
@click.option("--until", metavar="ADDR", default=None, help="Stop stepping when the next instruction is at ADDR.")
def step(verbose, timeout, stats, syntax, count, regs, every, as_json, breaks, until, **image_options):
    """Execute IMAGE one instruction at a time, printing each (emulated or KVM single-step)."""
    from pykvm.debug import commands
    from pykvm.debug.core import Debugger

    _setup_logging(verbose)
    stdio = sys.stderr.buffer if as_json else commands.SerialLines(sys.stdout.buffer)

    def body() -> int:
        with _session(image_options, stats, stdio) as machine:
            d = Debugger(machine, timeout, _symbols(image_options["image"]), syntax)
            stop_at = d.address(until) if until is not None else None
            limit = count if count is not None else (None if stop_at is not None else 20)
            return commands.step(d, _echo, (lambda t: _echo(t, err=True)) if as_json else _echo, limit,
                                 [d.address(b) for b in breaks], stop_at, as_json, regs, every)

    sys.exit(_guarded(body))


@main.command()
@_image_options
@_run_options
def debug(verbose, timeout, stats, syntax, **image_options):
    """Debug IMAGE at a prompt: step, next, continue, break, delete, regs, sregs, x, disas, mode.

    Commands are read from stdin when it is not a terminal (one per line, echoed).
    """
    from pykvm.debug import commands
    from pykvm.debug.core import Debugger

    _setup_logging(verbose)

    def body() -> int:
        with _session(image_options, stats, commands.SerialLines(sys.stdout.buffer)) as machine:
            d = Debugger(machine, timeout, _symbols(image_options["image"]), syntax)
            return commands.debug(d, sys.stdin, sys.stdout)

    sys.exit(_guarded(body))
