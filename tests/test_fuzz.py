"""Fuzzing the documented outcomes (issue 15): whatever the options, the guest code or the
signal, a run ends with a documented status (never 14, "a bug in pykvm"), at most one line
on stderr and no traceback, within a second of its deadline or signal.

Sizes stay small by default (a few seconds); ``PYKVM_FUZZ_SCALE=N`` multiplies every test's
examples for a longer hunt.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from tests.test_cli import invoke
from tests.test_robustness import finish, start, wait_for_line

pytestmark = pytest.mark.kvm

SCALE = int(os.environ.get("PYKVM_FUZZ_SCALE", "1"))
# Every status the README documents: the guest's (0, odd) and pykvm's own, but never 14.
PYKVM_STATUSES = {2, 4, 6, 8, 10, 12, 130, 141}
GRACE = 1.0                     # "within a second of its deadline"


def fuzz_settings(examples: int):
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def documented(status: int) -> bool:
    return status == 0 or status % 2 == 1 or status in PYKVM_STATUSES


def check_outcome(result, started: float, timeout: float | None) -> None:
    """The documented outcome of one in-process run (click's runner)."""
    elapsed = time.monotonic() - started
    event(f"status {result.exit_code}")
    assert result.exit_code != 14, result.stderr
    assert documented(result.exit_code), (result.exit_code, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) <= 1, lines
    assert all(line.startswith("pykvm: error: ") for line in lines), lines
    if timeout is not None:
        assert elapsed < timeout + GRACE, f"{elapsed:.2f}s for --timeout {timeout}"


# -- the CLI's options ------------------------------------------------------------------------------
junk = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["", "-1", "0", "0x", "nan", "inf", "1e999", "\udcff\udcfe"])


def mostly(valid):
    """A value from ``valid`` three times in four, junk otherwise (so most runs get to run)."""
    return st.sampled_from([valid, valid, valid, junk]).flatmap(lambda strategy: strategy)


OPTIONS = {
    "--format": mostly(st.sampled_from(["auto", "flat", "bootsector", "elf", "multiboot"])),
    "--mode": mostly(st.sampled_from(["real", "protected", "long"])),
    "--load-addr": mostly(st.sampled_from([0x7C00, 0x100000, 0x200000]).map(hex) | st.integers(0, 1 << 33).map(hex)),
    "--entry": mostly(st.integers(0, 1 << 33).map(hex)),
    "--mem": mostly(st.sampled_from(["64K", "1M", "2M", "64M", "64G", "65G", "1", "4095", "3M", "0x100000"])),
    "--cmdline": mostly(st.text(max_size=40).map(lambda t: t.replace("\0", ""))),
    "--serial": st.sampled_from(["stdio", "/dev/null", "/dev/full", "/nonexistent/dir/out", "/"]),
    "--emulator": mostly(st.sampled_from(["userspace", "kernel"])),
    "--emul-batch": mostly(st.integers(-5, 10_000).map(str)),
}
# Images: random bytes, a built guest, or nothing usable.
images = st.one_of(
    st.binary(min_size=1, max_size=600),
    st.binary(min_size=1, max_size=600),
    st.sampled_from(["guests/hello64.S", "guests/multiboot32.S", "guests/selftest16.S"]),
    st.sampled_from(["/nonexistent.bin", "/dev/null", "guests", ""]),
)


@fuzz_settings(40)
@given(image=images, options=st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.none(), max_size=5).flatmap(
    lambda keys: st.fixed_dictionaries({k: OPTIONS[k] for k in keys})),
    testdev=st.booleans(), timeout=mostly(st.floats(0.05, 0.4)))
def test_any_options_end_as_documented(tmp_path_factory, image, options, testdev, timeout):
    if isinstance(image, bytes):
        path = tmp_path_factory.mktemp("fuzz") / "image.bin"
        path.write_bytes(image)
        image = str(path)
    args = ["run", image, "--timeout", timeout if isinstance(timeout, str) else f"{timeout:.3f}"]
    for name, value in options.items():
        args += [name, value]
    if testdev:
        args.append("--testdev")
    started = time.monotonic()
    result = invoke(*args)
    check_outcome(result, started, None if isinstance(timeout, str) else timeout)


# -- random guest code in every mode ----------------------------------------------------------------
# Random bytes, salted with instructions that reach the interesting places: port I/O (the UART,
# the debug-exit port, the PIC/PIT), HLT with and without interrupts, mode switches, REP strings.
SALT = [b"\xf4", b"\xfa\xf4", b"\xfb\xf4", b"\xe6\xf4", b"\xe7\xf4", b"\xee", b"\xec", b"\xe6\x80",
        b"\xf3\xaa", b"\xf3\xa5", b"\xf3\xac", b"\x0f\x22\xc0", b"\x0f\x01\x16", b"\xcd\x10", b"\xea", b"\xcf",
        b"\x0f\x0b", b"\x00\x00", b"\xff\xff", b"\xeb\xfe", b"\xb0\x00\xe6\x43\xe6\x40\xe6\x40"]
code = st.lists(st.binary(min_size=1, max_size=8) | st.sampled_from(SALT), min_size=1, max_size=40).map(b"".join)


@fuzz_settings(30)
@given(data=code, mode=st.sampled_from(["real", "protected", "long"]), emulator=st.sampled_from(["userspace", "kernel"]),
       timeout=st.floats(0.05, 0.3))
def test_random_guest_code_in_every_mode_ends_as_documented(tmp_path_factory, data, mode, emulator, timeout):
    assume(not (mode == "long" and emulator == "kernel"))      # the same KVM_RUN as userspace's
    path = tmp_path_factory.mktemp("fuzz") / "code.bin"
    path.write_bytes(data)
    started = time.monotonic()
    result = invoke("run", str(path), "--mode", mode, "--emulator", emulator, "--timeout", f"{timeout:.3f}",
                    "--mem", "4M", "--serial", "/dev/null")
    check_outcome(result, started, timeout)


# -- signals at any moment --------------------------------------------------------------------------
SPIN = b"\xeb\xfe"


@fuzz_settings(4)
@given(signum=st.sampled_from([signal.SIGINT, signal.SIGTERM, signal.SIGHUP]), delay=st.floats(0.0, 0.6),
       mode=st.sampled_from(["real", "long"]))
def test_a_stop_signal_at_any_moment_ends_as_documented(tmp_path_factory, signum, delay, mode):
    """From the CLI's import on (the interpreter's own start-up is Python's), through building
    the machine, loading and running a guest that never ends."""
    path = tmp_path_factory.mktemp("fuzz") / "spin.bin"
    path.write_bytes(SPIN)
    proc = start("run", str(path), "--mode", mode, importtime=True)
    wait_for_line(proc, "pykvm.quickrun")
    time.sleep(delay)
    proc.send_signal(signum)
    sent = time.monotonic()
    _, err = finish(proc, 30)
    assert time.monotonic() - sent < GRACE
    assert proc.returncode == (130 if signum == signal.SIGINT else -signum)
    lines = [line for line in err.decode().splitlines() if not line.startswith("import time:")]
    assert len(lines) == 1 and lines[0].startswith("pykvm: error: "), lines
