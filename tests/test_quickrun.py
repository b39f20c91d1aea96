"""``pykvm run`` without click (pykvm.quickrun): the same parameters click would pass, or none.

The fast path may only take a command line click would take, and must make of it exactly what
click makes; everything else goes to click. So each command line here is parsed both ways.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pykvm import quickrun
from pykvm.cli import main

TAKEN = [
    ["run"],
    ["run", "image.bin"],
    ["run", "image.bin", "--mode", "long"],
    ["run", "--mode=protected", "image.bin"],
    ["run", "image.bin", "--format", "flat", "--mem", "128M", "--serial", "out.txt"],
    ["run", "image.bin", "--emulator", "kernel", "--emul-batch", "1000", "--device", "/dev/kvm"],
    ["run", "image.bin", "--load-addr", "0x7c00", "--entry=0x7c10", "--timeout", "2.5"],
    ["run", "image.bin", "--testdev", "-v"],
    ["run", "--no-testdev", "-vv", "image.bin", "--verbose"],
    ["run", "guests/cwork32", "--timeout=60"],
]

REFUSED = [
    [],
    ["info"],
    ["step", "image.bin"],
    ["--version"],
    ["run", "--help"],
    ["run", "-h"],
    ["run", "image.bin", "--stats"],
    ["run", "image.bin", "--trace"],
    ["run", "image.bin", "--gdb", "tcp::1234"],
    ["run", "image.bin", "--module", "m.bin"],
    ["run", "--bios", "rom.bin"],
    ["run", "image.bin", "other.bin"],                 # click: an error
    ["run", "image.bin", "--mode", "long", "--mode", "real"],   # given twice
    ["run", "image.bin", "--mode", "sideways"],         # click: an error
    ["run", "image.bin", "--mode"],                     # click: an error
    ["run", "image.bin", "--emul-batch", "0"],          # click: out of range
    ["run", "image.bin", "--emul-batch", "1_000"],      # click's int() takes it: leave it to click
    ["run", "image.bin", "--timeout", "nan"],
    ["run", "image.bin", "--timeout", "-1"],
    ["run", "image.bin", "--load-addr", "zero"],
    ["run", "image.bin", "--serial", "-"],
    ["run", "image.bin", "--", "x"],
    ["run", "image.bin", "-x"],
    ["run", "image.bin", "--mo", "long"],
    ["run", "image.bin", "--no-such-option"],
]


def click_params(argv: list[str]) -> dict:
    """What click's ``run`` command receives for ``pykvm run ...``."""
    ctx = main.make_context("pykvm", list(argv))
    with ctx:
        command = main.get_command(ctx, argv[0])
        sub = command.make_context(argv[0], list(argv[1:]), parent=ctx)
        return dict(sub.params)


@pytest.mark.parametrize("argv", TAKEN, ids=" ".join)
def test_the_fast_path_makes_what_click_makes(argv):
    params = quickrun.parse(argv)
    assert params is not None
    assert params == click_params(argv)


@pytest.mark.parametrize("argv", REFUSED, ids=lambda a: " ".join(a) or "nothing")
def test_anything_else_goes_to_click(argv):
    assert quickrun.parse(argv) is None


def test_the_fast_path_knows_every_option_by_clicks_spelling():
    """Options and defaults as click's ``run`` declares them (a renamed or re-typed option in
    pykvm.cli shows here)."""
    run = main.commands["run"]
    by_opt = {opt: p for p in run.params for opt in p.opts + p.secondary_opts}
    for option, (name, kind) in quickrun.SIMPLE.items():
        assert by_opt[option].name == name, option
        if isinstance(kind, tuple):
            assert tuple(by_opt[option].type.choices) == kind, option
    for flag, (name, _) in quickrun.FLAGS.items():
        assert by_opt[flag].name == name
    # What click passes when nothing is given (its declared defaults are not always what it
    # passes: an empty multiple option becomes (), a count 0, an unset flag its own sentinel).
    assert quickrun.defaults() == click_params(["run"])


def run_without_click(*args) -> tuple[int, list[str]]:
    """A real ``pykvm`` process: its status and stderr lines, the last one naming which of click,
    the debugger, the emulator and pycparser it imported."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: sys.stderr.write(' '.join(m for m in ('click', 'pykvm.debug', "
            "'pykvm.emulator', 'pycparser') if m in sys.modules) + '|imported\\n'))\n"
            f"sys.argv = ['pykvm', *{list(args)!r}]\n"
            "from pykvm.process import main\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYKVM_CFFI": ""})
    return done.returncode, done.stderr.strip().splitlines()


@pytest.mark.kvm
def test_a_plain_run_of_a_64_bit_guest_imports_no_click_debugger_emulator_or_parser(tmp_path):
    image = tmp_path / "hlt.bin"
    image.write_bytes(b"\xf4")
    status, stderr = run_without_click("run", str(image), "--mode", "long")
    assert status == 0
    assert stderr == ["|imported"]


@pytest.mark.kvm
def test_an_error_on_the_fast_path_is_the_same_one_line(tmp_path):
    status, stderr = run_without_click("run", str(tmp_path / "missing.bin"), "--mode", "long")
    via_click = subprocess.run([sys.executable, "-m", "pykvm", "run", str(tmp_path / "missing.bin"),
                                "--mode", "long", "--stats"], capture_output=True, text=True, timeout=60)
    assert status == via_click.returncode != 0
    assert stderr[:-1] == via_click.stderr.strip().splitlines()
    assert "click" not in stderr[-1]
