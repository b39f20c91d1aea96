"""What running a guest from the command line takes, without click: the image options turned
into a loaded ``Machine``, errors turned into one line and a status. ``pykvm.cli`` (click) and
``pykvm.quickrun`` (the start of a plain ``pykvm run``) both use it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from pathlib import Path

from pykvm.errors import (INTERNAL_BUG_EXIT, BadInputError, InterruptedByUser, PykvmError, output_error,
                          signal_error)
from pykvm.process import ErrorExit, Stop, report
from pykvm.x86.memmap import ROM_MAX

MEMORY_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """'64M', '512K', '1G' or a plain byte count."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in MEMORY_UNITS else ""
    number = t[:-1] if unit else t
    try:
        value = int(number, 0) * MEMORY_UNITS[unit]
    except ValueError:
        raise BadInputError(f"--mem {text!r}: expected a size like 64M, 512K or 1G") from None
    if value < (64 << 10) or value > (64 << 30) or value % 4096:
        raise BadInputError(f"--mem {text}: must be a multiple of 4 KiB between 64 KiB and 64 GiB")
    return value


def fail(error: PykvmError) -> None:
    """End with ``error``: its one line on stderr (none for a quiet one), its status."""
    if not getattr(error, "quiet", False):
        report(str(error))
    raise ErrorExit(error)


def guarded(body):
    """Run a command body so that anything going wrong ends in one line and a documented status."""
    try:
        return body()
    except PykvmError as e:
        fail(e)
    except Stop as e:
        fail(signal_error(e.signum))
    except KeyboardInterrupt:
        fail(InterruptedByUser())
    except Exception as e:  # a bug in pykvm: still one line; -vv shows the traceback
        logging.getLogger("pykvm").debug("internal error", exc_info=True)
        report(f"{type(e).__name__}: {e} (rerun with -vv for the traceback)", prefix="pykvm: internal error: ")
        sys.exit(INTERNAL_BUG_EXIT)


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="pykvm: %(message)s", stream=sys.stderr, force=True)


def open_serial(serial: str, stdio=None):
    """The serial output: stdout (or ``stdio`` in its place), or the file ``serial``, opened without
    waiting (a FIFO nobody reads yet is refused rather than blocking pykvm before the run) and
    unbuffered (the UART flushes whole lines, and nothing is left buffered to fail at close)."""
    if serial == "stdio":
        return (sys.stdout.buffer if stdio is None else stdio), False
    try:
        out = open(serial, "wb", buffering=0, opener=lambda path, flags: os.open(path, flags | os.O_NONBLOCK, 0o666))
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise BadInputError(f"--serial {serial}: nothing is reading it (a FIFO needs its reader "
                                "before pykvm starts)") from None
        raise BadInputError(f"--serial {serial}: {e.strerror}") from None
    os.set_blocking(out.fileno(), True)
    return out, True


def read_modules(specs, limit: int) -> list:
    """``--module PATH[,CMDLINE]`` values: the file's bytes, CMDLINE (None without a comma), PATH."""
    from pykvm.guests import read_image
    from pykvm.loaders import Module

    modules = []
    for spec in specs:
        path, comma, cmdline = spec.partition(",")
        if not path:
            raise BadInputError(f"--module {spec!r}: expected PATH[,CMDLINE]")
        modules.append(Module(read_image(Path(path), limit), cmdline if comma else None, path))
    return modules


def kernel_command_line(data: bytes, fmt: str, path, cmdline: str) -> str:
    """A Multiboot 1 kernel's command line starts with its own name, as GRUB and QEMU pass it
    (kvm-unit-tests take argv[0] from it, and read the rest as the tests to run)."""
    from pykvm.loaders.auto import detect

    if (detect(data) if fmt == "auto" else fmt) != "multiboot":
        return cmdline
    return f"{path} {cmdline}" if cmdline else str(path)


@contextlib.contextmanager
def guest_machine(image, fmt, mode, load_addr, entry, mem, cmdline, modules, bios, serial, emulator,
                  emul_batch, device, testdev, stdio=None, run_record=None):
    """A Machine with IMAGE loaded as the image options say (or the ``--bios`` firmware at the
    reset vector); closes it and the serial file after. ``stdio``: where ``--serial stdio`` goes
    instead of stdout (a debugger keeps it apart, ``--json`` keeps it for ``run_record``)."""
    from pykvm.guests import read_image, resolve
    from pykvm.machine import Machine

    memory_size = parse_size(mem)
    if bios is not None:
        if image is not None:
            raise BadInputError("--bios starts the firmware at the reset vector and takes no IMAGE "
                                "(pykvm has no fw_cfg to hand one over)")
        rom_path, image_data = Path(bios), None
    else:
        path, defaults = resolve(image)      # the library's guests say how they start
        testdev = defaults.get("testdev", False) if testdev is None else testdev
        rom_path, image_data = (path, None) if defaults.get("rom") else (None, read_image(path, memory_size))
    if rom_path is not None:
        given = [name for name, value in (("--format", fmt != "auto"), ("--mode", mode), ("--load-addr", load_addr),
                                          ("--entry", entry), ("--cmdline", cmdline), ("--module", modules))
                 if value not in (None, False, "", ())]
        if given:
            raise BadInputError(f"{', '.join(given)} do not apply to firmware started at the reset vector")
        rom = read_image(rom_path, ROM_MAX, limit_what="a firmware ROM may hold (64 KiB to 16 MiB)")
        if run_record is not None:
            run_record.path = str(rom_path)
    else:
        rom = None
        if image is None and mode is None:
            mode = "real"
        if run_record is not None:
            run_record.path = str(path)
    module_list = read_modules(modules, memory_size)
    serial_out, close_serial = open_serial(serial, stdio)
    try:
        with Machine(memory_size, serial_output=serial_out, emulator=emulator, emul_batch=emul_batch,
                     kvm_path=device, testdev=bool(testdev), bios=rom) as machine:
            if image_data is not None:
                machine.load(image_data, fmt, mode=mode, load_addr=load_addr, entry=entry,
                             cmdline=kernel_command_line(image_data, fmt, path, cmdline), modules=module_list)
            yield machine
    finally:
        if close_serial:
            serial_out.close()
