"""``pykvm run`` without click, for the plain command lines that need nothing else.

Importing click (and what it imports: inspect, typing, uuid, gettext, ...) costs about as much
as starting Python itself, which is most of what a short guest run costs. So ``pykvm.process``
first offers the arguments to ``parse`` here: a command line of ``run``, at most one IMAGE and
options from ``SIMPLE`` only, each spelled and valued as ``pykvm.cli`` would accept it, runs
exactly as ``pykvm.cli``'s ``run`` runs it (``run``). Anything else — another command, another
option, ``--help``, a value click would refuse or convert differently, an option given twice —
returns None and goes to click, whose behaviour and messages stay the reference
(``tests/test_quickrun.py`` compares what both make of the same command lines).
"""

from __future__ import annotations

import math
import sys

# Option -> (parameter name, kind). Kinds: "str" as given, "choice:<set>" one of a set, "int1" a
# decimal integer >= 1, "addr" int(value, 0), "seconds" a positive finite float.
_MODES = ("real", "protected", "long")                        # pykvm.x86.boot.MODES
_FORMATS = ("auto", "flat", "bootsector", "elf", "multiboot", "multiboot2", "pvh")   # pykvm.loaders.FORMATS
_EMULATORS = ("userspace", "kernel")                          # pykvm.machine.EMULATORS
SIMPLE = {
    "--format": ("fmt", _FORMATS),
    "--mode": ("mode", _MODES),
    "--emulator": ("emulator", _EMULATORS),
    "--mem": ("mem", "str"),
    "--serial": ("serial", "str"),
    "--device": ("device", "str"),
    "--emul-batch": ("emul_batch", "int1"),
    "--load-addr": ("load_addr", "addr"),
    "--entry": ("entry", "addr"),
    "--timeout": ("timeout", "seconds"),
}
FLAGS = {"--testdev": ("testdev", True), "--no-testdev": ("testdev", False)}
DEFAULT_BATCH = 130                                           # pykvm.pvm.DEFAULT_BATCH


def defaults() -> dict:
    """What click's ``run`` passes for the options not given (the image options, then the run's)."""
    return {"image": None, "fmt": "auto", "mode": None, "load_addr": None, "entry": None, "mem": "64M",
            "cmdline": "", "modules": (), "bios": None, "serial": "stdio", "emulator": "userspace",
            "emul_batch": DEFAULT_BATCH, "device": "/dev/kvm", "testdev": None,
            "verbose": 0, "timeout": None, "stats": False, "syntax": "intel", "trace": None,
            "trace_exits": False, "gdb": None, "as_json": False}


def _convert(kind, value: str):
    """The value as click would convert it, or None where click might see it otherwise."""
    if value.startswith("-") or not value:
        return None
    if isinstance(kind, tuple):
        return value if value in kind else None
    if kind == "str":
        return value
    if kind == "int1":
        return int(value) if value.isdigit() and value.isascii() and int(value) >= 1 else None
    if kind == "addr":
        try:
            return int(value, 0)
        except ValueError:
            return None
    try:                                   # "seconds"
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def parse(argv: list[str]) -> dict | None:
    """The parameters click's ``run`` would get for ``argv`` (after ``pykvm``), or None."""
    if not argv or argv[0] != "run":
        return None
    params = defaults()
    seen = set()
    image_given = False
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-v", "-vv", "-vvv", "--verbose"):
            params["verbose"] += 1 if arg == "--verbose" else len(arg) - 1
            continue
        if not arg.startswith("-"):
            if image_given:
                return None
            params["image"], image_given = arg, True
            continue
        if arg in FLAGS:
            name, value = FLAGS[arg]
            if name in seen:
                return None
            seen.add(name)
            params[name] = value
            continue
        option, eq, value = arg.partition("=")
        if option not in SIMPLE:
            return None
        if not eq:
            if i >= len(args):
                return None
            value = args[i]
            i += 1
        name, kind = SIMPLE[option]
        converted = _convert(kind, value)
        if converted is None or name in seen:
            return None
        seen.add(name)
        params[name] = converted
    return params


def main(argv: list[str]) -> bool:
    """Run ``argv`` here if it is simple (ending the process like ``pykvm.cli`` would);
    False if it is not, for click to take it."""
    params = parse(argv)
    if params is None:
        return False
    from pykvm.process import raise_if_stop_noted
    from pykvm.runner import guarded, guest_machine, setup_logging

    raise_if_stop_noted()
    for unused in ("stats", "syntax", "trace", "trace_exits", "gdb", "as_json"):
        del params[unused]
    verbose, timeout = params.pop("verbose"), params.pop("timeout")
    setup_logging(verbose)

    def body() -> int:
        with guest_machine(**params) as machine:
            return machine.run(timeout=timeout)

    sys.exit(guarded(body))
