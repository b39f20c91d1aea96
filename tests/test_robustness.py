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
from tests.children import die_with_parent
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
    kw["preexec_fn"] = die_with_parent(kw.get("preexec_fn"))
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.Popen([sys.executable, *flags, "-m", "pykvm", *args], **kw)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[bytes, bytes]:
    """``communicate`` that kills the process if it does not end in ``timeout`` seconds."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def wait_for_line(proc: subprocess.Popen, marker: str) -> None:
    """Read stderr until a line holds ``marker``: with ``-v``, "mode: real mode" says the
    emulator starts the guest; with ``importtime``, "pykvm.quickrun" says pykvm's own signal
    handling is in place and the command line is still being started (quickrun is the first
    module main() imports)."""
    deadline = time.monotonic() + 30
    while marker not in (line := proc.stderr.readline().decode()):
        if not line or time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"pykvm never said {marker!r}")


def error_lines(stderr: bytes) -> list[str]:
    """stderr without ``-X importtime``'s lines."""
    return [line for line in stderr.decode().splitlines() if not line.startswith("import time:")]


def one_error_line(stderr: bytes, *words: str) -> None:
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("pykvm: error: "), lines
    assert all(word in lines[0] for word in words), lines


# -- item 2: write errors on the output ------------------------------------------------------------
@pytest.mark.kvm
@pytest.mark.parametrize("command", [["run", "--timeout", "20"], ["step", "-n", "100000", "--no-regs"]])
def test_a_closed_pipe_on_stdout_ends_quietly_by_sigpipe(image, command):
    """`pykvm run | head -c 1`: no message, no "Exception ignored", ends as if by SIGPIPE."""
    proc = start(*command, image(PRINT_FOREVER))
    assert proc.stdout.read(1)
    proc.stdout.close()
    _, err = finish(proc, 20)
    assert proc.returncode == -signal.SIGPIPE and err == b""


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
        _, err = finish(proc, 60)
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
    wait_for_line(proc, "mode: real mode")
    time.sleep(0.3)         # the line comes as the emulator starts: the three OUTs take microseconds
    proc.send_signal(signum)
    sent = time.monotonic()
    out, err = finish(proc, 30)
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
    wait_for_line(proc, "mode: real mode")
    proc.send_signal(signum)
    _, err = finish(proc, 30)
    assert proc.returncode == 10
    one_error_line(err, "--timeout")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_during_startup_is_one_line_never_a_traceback_nor_status_1(signum):
    """While the CLI is still being imported (before any run handles signals)."""
    proc = start("run", "--mode", "long", "guests/hello64.S", importtime=True)
    wait_for_line(proc, "pykvm.quickrun")
    proc.send_signal(signum)
    _, err = finish(proc, 30)
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
        _, err = finish(proc, 30)
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
        wait_for_line(proc, "mode: real mode")
        started = time.monotonic()
        _, err = finish(proc, 30)
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


# -- item 4: inputs that exited 14 or hung --------------------------------------------------------
def _host_can_map(size: int) -> bool:
    import mmap

    try:
        mmap.mmap(-1, size).close()
    except OSError:
        return False
    return True


@pytest.mark.kvm
def test_more_guest_ram_than_the_host_can_map_is_a_host_error_with_status_4():
    if _host_can_map(64 << 30):
        pytest.skip("this host maps 64 GiB of anonymous memory (overcommit)")
    result = invoke("run", "--mem", "64G", "--mode", "long", "guests/hello64.S")
    assert result.exit_code == 4
    assert result.stderr == ("pykvm: error: cannot map 0x1000000000 bytes of guest RAM: Cannot allocate memory "
                             "(more memory than this host can give)\n")


def test_a_failed_guest_ram_mapping_is_a_host_error(monkeypatch):
    import mmap

    from pykvm.errors import HostError
    from pykvm.memory import GuestMemory

    def no_memory(*args, **kw):
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(mmap, "mmap", no_memory)
    with pytest.raises(HostError, match="Cannot allocate memory"):
        GuestMemory(1 << 20)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "1e400", "soon"])
def test_a_timeout_that_is_not_a_positive_finite_number_is_a_usage_error(value):
    result = invoke("run", "--timeout", value, "--mode", "long", "guests/hello64.S")
    assert result.exit_code == 2
    assert result.stderr.startswith("pykvm: error: Invalid value for '--timeout'")
    assert len(result.stderr.splitlines()) == 1


def test_a_command_line_that_is_not_utf8_reaches_the_guest_as_its_bytes():
    """argv bytes that are not UTF-8 arrive as surrogate escapes; the guest gets the bytes."""
    from pykvm.loaders import multiboot
    from pykvm.memory import GuestMemory
    from tests.loaders.test_loader_multiboot import aout_kernel

    with GuestMemory(4 << 20) as mem:
        multiboot.load(mem, aout_kernel(), cmdline=b"root=\xff\xfe quiet".decode("utf-8", "surrogateescape"))
        assert mem.read(mem.read_u32(multiboot.INFO_ADDR + 16), 14) == b"root=\xff\xfe quiet\0"


@pytest.mark.kvm
def test_a_command_line_that_is_not_utf8_runs_the_multiboot_guest():
    proc = start("run", "--cmdline", b"\xff\xfe console=ttyS0", "guests/multiboot32.S")
    out, err = finish(proc, 60)
    assert proc.returncode == 1, err
    assert b"multiboot32: eax=0x2badb002" in out and err == b""


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "directory"])
def test_an_image_that_is_not_a_regular_file_is_refused_without_reading_or_waiting(tmp_path, kind):
    """A FIFO nobody writes would block the open, /dev/zero never ends."""
    if kind == "fifo":
        path = tmp_path / "image.fifo"
        os.mkfifo(path)
    else:
        path = tmp_path if kind == "directory" else kind
    proc = start("run", "--mem", "1M", str(path))
    _, err = finish(proc, 60)
    assert proc.returncode == 2
    one_error_line(err, {"fifo": "is a FIFO", "/dev/zero": "is a character device",
                         "directory": "is a directory"}[kind], "must be a regular file")


def test_an_image_bigger_than_guest_ram_is_refused_before_it_is_read(tmp_path):
    """A 64 GiB (sparse) image with 1 MiB of RAM: refused from its size, nothing read."""
    path = tmp_path / "huge.bin"
    with open(path, "wb") as f:
        f.truncate(64 << 30)
    result = invoke("run", "--mem", "1M", str(path))
    assert result.exit_code == 2
    assert result.stderr == (f"pykvm: error: {path} holds 0x1000000000 bytes, more than guest RAM "
                             "(0x100000 bytes, --mem)\n")


def test_read_image_refuses_a_file_that_changes_size_while_read(tmp_path, monkeypatch):
    from pykvm.errors import BadInputError
    from pykvm.guests import read_image

    path = tmp_path / "growing.bin"
    path.write_bytes(b"\x90" * 100)
    real_fstat = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 50, *real_fstat(fd)[7:])))
    with pytest.raises(BadInputError, match="changed size"):
        read_image(path, 1 << 20)


def test_a_fifo_nobody_reads_as_serial_output_is_refused_instead_of_blocking(tmp_path):
    fifo = tmp_path / "serial.fifo"
    os.mkfifo(fifo)
    proc = start("run", "--serial", str(fifo), "--mode", "long", "guests/hello64.S")
    _, err = finish(proc, 60)
    assert proc.returncode == 2
    one_error_line(err, "nothing is reading it")


@pytest.mark.kvm
def test_a_fifo_with_a_reader_takes_the_serial_output(tmp_path):
    fifo = tmp_path / "serial.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)    # a reader (Linux allows O_RDWR on a FIFO)
    try:
        result = invoke("run", "--serial", str(fifo), "--mode", "long", "guests/hello64.S")
        assert result.exit_code == 1, result.output
        assert os.read(reader, 4096) == b"Hello from a 64-bit pykvm guest!\n"
    finally:
        os.close(reader)


@pytest.mark.parametrize("device", ["/dev/null", "fifo", "/nonexistent/kvm"])
def test_a_device_that_is_not_kvm_is_a_host_error_with_status_4(tmp_path, device):
    """--device /dev/null, a FIFO (opened read-write: no waiting), a missing path."""
    if device == "fifo":
        device = str(tmp_path / "kvm.fifo")
        os.mkfifo(device)
    proc = start("run", "--device", device, "--mode", "long", "guests/hello64.S")
    _, err = finish(proc, 60)
    assert proc.returncode == 4
    one_error_line(err)


@pytest.mark.parametrize("serial,words", [("/nonexistent/dir/out", "No such file or directory"),
                                          ("/", "Is a directory")])
def test_a_serial_path_that_cannot_be_opened_is_bad_input(serial, words):
    result = invoke("run", "--serial", serial, "--mode", "long", "guests/hello64.S")
    assert result.exit_code == 2
    assert result.stderr == f"pykvm: error: --serial {serial}: {words}\n"


def test_an_empty_image_is_bad_input(image):
    result = invoke("run", image(b""))
    assert result.exit_code == 2 and result.stderr == "pykvm: error: flat image is empty\n"


@pytest.mark.kvm
def test_a_bug_in_pykvm_is_one_line_with_status_14(monkeypatch):
    from pykvm.machine import Machine

    def broken(self, timeout=None):
        raise RuntimeError("an invariant broke")

    monkeypatch.setattr(Machine, "run", broken)
    result = invoke("run", "--mode", "long", "guests/hello64.S")
    assert result.exit_code == 14
    assert result.stderr == ("pykvm: internal error: RuntimeError: an invariant broke "
                             "(rerun with -vv for the traceback)\n")
