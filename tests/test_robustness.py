"""Every run ends as documented (issue 15): write errors, signals, bad inputs, usage errors.

Each test here backs a row of docs/robustness.md. Runs that involve signals, closed pipes or
the interpreter's exit are real ``pykvm`` processes; the rest go through click's runner.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import time

import pytest

from pykvm import process
from pykvm.devices.serial import Serial16550
from pykvm.errors import OutputClosed, OutputError
from tests.test_cli import invoke

# mov dx, 0x3f8; mov al, 'a'; out dx, al; jmp short back: prints "a" forever (real mode).
PRINT_FOREVER = b"\xba\xf8\x03\xb0\x61\xee\xeb\xfd"
# Prints "abc" (no newline: it stays in the UART's buffer) and spins (real mode).
ABC_THEN_SPIN = b"\xba\xf8\x03\xb0\x61\xee\xb0\x62\xee\xb0\x63\xee\xeb\xfe"
SPIN = b"\xeb\xfe"


@pytest.fixture
def image(tmp_path):
    def write(data: bytes, name: str = "guest.bin") -> str:
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)
    return write


def start(*args, importtime: bool = False, **kw) -> subprocess.Popen:
    """``python -m pykvm ARGS`` as a real process (stdout and stderr pipes unless given)."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.Popen([sys.executable, *flags, "-m", "pykvm", *args], **kw)


def wait_for_startup(proc: subprocess.Popen, marker: str = "click") -> None:
    """With ``importtime``: return once the process has imported ``marker`` (so pykvm's own
    signal handling is in place, and the CLI is still being imported)."""
    deadline = time.monotonic() + 30
    while marker not in (line := proc.stderr.readline().decode()):
        assert line and time.monotonic() < deadline, "pykvm did not start"


def error_lines(stderr: bytes) -> list[str]:
    """stderr without ``-X importtime``'s lines."""
    return [line for line in stderr.decode().splitlines() if not line.startswith("import time:")]


def one_error_line(stderr: bytes, *words: str) -> None:
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("pykvm: error: "), lines
    assert all(word in lines[0] for word in words), lines


# -- item 2: write errors on the output ------------------------------------------------------------
@pytest.mark.kvm
def test_a_closed_pipe_on_stdout_ends_quietly_by_sigpipe(image):
    """`pykvm run | head -c 1`: no message, no "Exception ignored", ends as if by SIGPIPE."""
    proc = start("run", image(PRINT_FOREVER), "--timeout", "20")
    assert proc.stdout.read(1) == b"a"
    proc.stdout.close()
    assert proc.wait(timeout=20) == -signal.SIGPIPE
    assert proc.stderr.read() == b""


@pytest.mark.kvm
def test_a_closed_pipe_on_the_steppers_output_ends_quietly_by_sigpipe(image):
    proc = start("step", "-n", "100000", "--no-regs", image(SPIN))
    assert proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=20) == -signal.SIGPIPE
    assert proc.stderr.read() == b""


@pytest.mark.kvm
def test_serial_to_a_full_device_is_one_line_with_status_12(image):
    result = invoke("run", image(PRINT_FOREVER), "--serial", "/dev/full", "--timeout", "20")
    assert result.exit_code == 12
    assert result.stderr == "pykvm: error: cannot write to /dev/full: No space left on device\n"


@pytest.mark.kvm
@pytest.mark.parametrize("command", [["run", "--mode", "long", "guests/hello64.S"],
                                     ["step", "-n", "3", "--mode", "long", "guests/hello64.S"]])
def test_stdout_on_a_full_device_is_one_line_with_status_12(command):
    with open("/dev/full", "wb") as full:
        proc = start(*command, stdout=full)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 12
    one_error_line(err, "cannot write to stdout: No space left on device")


class FailingOutput(io.RawIOBase):
    """An output whose writes fail with ``errno``, counting them."""

    def __init__(self, error: int):
        self.error = error
        self.attempts = 0

    def writable(self):
        return True

    def write(self, data):
        self.attempts += 1
        raise OSError(self.error, os.strerror(self.error))


@pytest.mark.parametrize("error,kind", [(errno.EIO, OutputError), (errno.ENOSPC, OutputError),
                                        (errno.EPIPE, OutputClosed)])
def test_a_failed_output_write_is_raised_once_then_output_is_dropped(error, kind):
    out = FailingOutput(error)
    uart = Serial16550(out)
    uart.write(0, 1, ord("h"))
    with pytest.raises(kind):
        uart.write(0, 1, ord("\n"))             # a line is written out
    uart.write(0, 1, ord("\n"))
    uart.flush()
    uart.close()                                   # the run's end and close: no second error
    assert out.attempts == 1


@pytest.mark.parametrize("error,status,line", [
    (errno.EIO, 12, "pykvm: error: cannot write to stdout: Input/output error\n"),
    (errno.EPIPE, 141, ""),
])
def test_a_write_error_at_the_last_flush_of_stdout_is_a_status_not_exception_ignored(
        monkeypatch, capsys, error, status, line):
    """What is still buffered for stdout is flushed before the interpreter exits, where a
    failure would print "Exception ignored"; the flush's error becomes the end."""

    class Stdout:
        def flush(self):
            raise OSError(error, os.strerror(error))

    silenced = []
    monkeypatch.setattr(sys, "stdout", Stdout())
    monkeypatch.setattr(process, "_silence_stdout", lambda: silenced.append(True))
    monkeypatch.setattr(process, "_reported", False)
    saved = {s: signal.getsignal(s) for s in (*process.STOP_SIGNALS, signal.SIGALRM)}
    try:
        ended_with = process._flush_stdout(None)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert ended_with.exit_code == status and silenced
    assert capsys.readouterr().err == line


# -- item 3: signals ------------------------------------------------------------------------------
@pytest.mark.kvm
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stop_signal_stops_the_guest_flushes_its_output_and_ends_with_the_signal(image, signum):
    """The guest printed "abc" without a newline: it reaches stdout. SIGTERM and SIGHUP end
    the process by the signal (the shell shows 143 / 129), Ctrl-C with status 130."""
    proc = start("run", "-v", image(ABC_THEN_SPIN))
    deadline = time.monotonic() + 30
    while "mode: real mode" not in (line := proc.stderr.readline().decode()):
        assert line and time.monotonic() < deadline
    proc.send_signal(signum)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 1.0
    assert out == b"abc"
    assert proc.returncode == (130 if signum == signal.SIGINT else -signum)
    one_error_line(err, {signal.SIGINT: "interrupted by Ctrl-C", signal.SIGTERM: "terminated (SIGTERM)",
                         signal.SIGHUP: "hung up (SIGHUP)"}[signum])


@pytest.mark.kvm
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_a_signal_the_process_inherited_ignored_stays_ignored(image, signum):
    """A background job (SIGINT) or nohup (SIGHUP): the signal does not stop the run."""
    proc = start("run", "-v", "--timeout", "1.5", image(SPIN),
                 preexec_fn=lambda: signal.signal(signum, signal.SIG_IGN))
    deadline = time.monotonic() + 30
    while "mode: real mode" not in (line := proc.stderr.readline().decode()):
        assert line and time.monotonic() < deadline
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 10
    one_error_line(err, "--timeout")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_during_startup_is_one_line_never_a_traceback_nor_status_1(signum):
    """While the CLI is still being imported (before any run handles signals)."""
    proc = start("run", "--mode", "long", "guests/hello64.S", importtime=True)
    wait_for_startup(proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == (130 if signum == signal.SIGINT else -signum)
    assert b"Traceback" not in err
    one_error_line(err)


@pytest.mark.kvm
@pytest.mark.parametrize("command", [["run"], ["step", "-n", "1000000", "--no-regs"]])
def test_a_stop_signal_ends_a_run_whose_output_nobody_reads_within_a_second(image, command):
    """stdout is a pipe nobody reads: the guest's (or the stepper's) writes block."""
    read_end, write_end = os.pipe()
    try:
        proc = start(*command, image(PRINT_FOREVER), stdout=write_end)
        os.close(write_end)
        time.sleep(2)                               # long enough to fill the pipe
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - sent < 1.0
        assert proc.returncode == -signal.SIGTERM
        one_error_line(err, "SIGTERM")
    finally:
        os.close(read_end)


@pytest.mark.kvm
def test_the_timeout_ends_a_run_whose_output_nobody_reads_within_a_second(image):
    read_end, write_end = os.pipe()
    try:
        proc = start("run", "--timeout", "1", "-v", image(PRINT_FOREVER), stdout=write_end)
        os.close(write_end)
        deadline = time.monotonic() + 30
        while "mode: real mode" not in (line := proc.stderr.readline().decode()):
            assert line and time.monotonic() < deadline
        started = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 1 + 1.0
        assert proc.returncode == 10
        one_error_line(err, "--timeout 1s")
    finally:
        os.close(read_end)


@pytest.mark.kvm
def test_sigterm_during_a_run_in_process_raises_its_error_and_restores_the_handler():
    """Machine.run (no CLI): SIGTERM becomes StoppedBySignal, as Ctrl-C becomes InterruptedByUser."""
    import threading

    from pykvm.errors import StoppedBySignal
    from pykvm.machine import Machine

    before = signal.getsignal(signal.SIGTERM)
    with Machine(1 << 20, serial_output=io.BytesIO()) as machine:
        machine.load(SPIN, "flat", mode="real")
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        with pytest.raises(StoppedBySignal) as caught:
            machine.run(timeout=30)
    assert caught.value.exit_code == 143 and str(caught.value) == "terminated (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) is before


# -- item 5: usage errors -------------------------------------------------------------------------
@pytest.mark.parametrize("args,words", [
    (["run", "--bogus"], ["No such option '--bogus'", "run --help'"]),
    (["run", "--mode", "sideways"], ["'sideways' is not one of"]),
    (["run", "--format", "tarball"], ["'tarball' is not one of"]),
    (["run", "--mem"], ["'--mem' requires an argument"]),
    (["run", "--emul-batch", "0"], ["--emul-batch"]),
    (["step", "-n", "x"], ["'x' is not a valid integer"]),
    (["bogus"], ["No such command 'bogus'"]),
    (["run", "a.bin", "b.bin"], ["unexpected extra argument"]),
])
def test_a_usage_error_is_one_line_with_status_2(args, words):
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pykvm: error: "), lines
    assert all(word in lines[0] for word in words), lines


def test_the_usage_stays_available_with_help():
    result = invoke("run", "--help")
    assert result.exit_code == 0 and "Usage:" in result.stdout and "--timeout" in result.stdout
