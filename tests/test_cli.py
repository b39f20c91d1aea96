"""The pykvm command: exit statuses through click's runner and as a real process (incl. Ctrl-C)."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from pykvm.cli import main, parse_size
from pykvm.errors import BadInputError
from pykvm.guests import build_guest
from tests.asm import assemble
from tests.children import die_with_parent


def invoke(*args):
    try:
        return CliRunner().invoke(main, list(args))
    finally:
        # The command configured logging onto the runner's (now closed) stderr: undo it, so
        # later tests in this process neither log there nor run with -v/-vv's slower paths.
        root = logging.getLogger()
        root.handlers.clear()
        root.setLevel(logging.WARNING)


@pytest.mark.parametrize("text,value", [("64M", 64 << 20), ("512K", 512 << 10), ("1G", 1 << 30),
                                        ("2MiB", 2 << 20), ("0x200000", 0x200000)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["abc", "1K", "3", "100G", "65537"])
def test_parse_size_rejects(text):
    with pytest.raises(BadInputError):
        parse_size(text)


@pytest.fixture
def spin_image(tmp_path):
    path = tmp_path / "spin.bin"
    path.write_bytes(assemble("spin: jmp spin"))
    return path


@pytest.mark.kvm
def test_info_reports_a_usable_host():
    result = invoke("info")
    assert result.exit_code == 0
    assert "API version 12" in result.output and "SET_GUEST_DEBUG" in result.output


def test_info_without_the_device_fails_with_status_4(tmp_path):
    result = invoke("info", "--device", str(tmp_path / "kvm"))
    assert result.exit_code == 4
    assert "does not exist" in result.output


@pytest.mark.kvm
def test_run_hello64():
    result = invoke("run", "--mode", "long", str(build_guest("hello64")))
    assert "Hello from a 64-bit pykvm guest!" in result.output
    assert result.exit_code == 1


@pytest.mark.kvm
def test_run_builds_a_guest_source_first():
    result = invoke("run", "--mode", "long", "guests/hello64.S")
    assert result.exit_code == 1 and "Hello" in result.output


@pytest.mark.parametrize("args,status,message", [
    (["run", "/nonexistent/image"], 2, "no such file"),
    (["run", "--mem", "12", "x"], 2, "--mem"),
    (["run", "--mode", "sideways"], 2, "sideways"),
    (["run", "--load-addr", "zz"], 2, "not an address"),
])
def test_bad_input_is_status_2_with_one_line(args, status, message):
    result = invoke(*args)
    assert result.exit_code == status
    assert message in result.output
    assert "Traceback" not in result.output


def test_image_too_big_for_ram_is_bad_input(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x90" * (3 << 20))
    result = invoke("run", "--mem", "2M", "--mode", "long", str(big))
    assert result.exit_code == 2, result.output


@pytest.mark.kvm
def test_timeout_is_status_10(spin_image):
    result = invoke("run", "--mode", "long", "--timeout", "0.2", str(spin_image))
    assert result.exit_code == 10
    assert "timeout" in result.output


@pytest.mark.kvm
def test_timeout_stops_a_runaway_guest_in_the_emulator(tmp_path):
    path = tmp_path / "spin16.bin"
    path.write_bytes(b"\xeb\xfe")  # jmp $ in real mode: never leaves the userspace emulator
    result = invoke("run", "--mode", "real", "--timeout", "0.2", str(path))
    assert result.exit_code == 10 and "timeout" in result.output


# mov ecx, 0xffffffff; mov esi, 0x200000; rep lodsb; hlt: four billion loads in one instruction.
ENDLESS_REP = b"\xb9\xff\xff\xff\xff\xbe\x00\x00\x20\x00\xf3\xac\xf4"


@pytest.mark.kvm
def test_timeout_stops_a_guest_inside_one_long_rep_instruction(tmp_path):
    path = tmp_path / "rep.bin"
    path.write_bytes(ENDLESS_REP)
    started = time.monotonic()
    result = invoke("run", "--mode", "protected", "--mem", "4M", "--timeout", "0.3", str(path))
    assert result.exit_code == 10 and "timeout" in result.output
    assert time.monotonic() - started < 0.3 + 1.0      # the deadline is kept (within a second)


@pytest.mark.kvm
def test_triple_fault_is_status_6(tmp_path):
    path = tmp_path / "ud2.bin"
    path.write_bytes(assemble("ud2"))
    result = invoke("run", "--mode", "long", str(path))
    assert result.exit_code == 6 and "triple fault" in result.output


@pytest.mark.kvm
def test_serial_to_a_file(tmp_path):
    out = tmp_path / "serial.txt"
    result = invoke("run", "--mode", "long", "--serial", str(out), str(build_guest("hello64")))
    assert result.exit_code == 1
    assert out.read_text() == "Hello from a 64-bit pykvm guest!\n"


def _pykvm(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "pykvm", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent(), **kw)


@pytest.mark.kvm
def test_real_process_exit_status_is_the_guests():
    proc = _pykvm("run", "--mode", "long", str(build_guest("hello64")))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert out == "Hello from a 64-bit pykvm guest!\n"


@pytest.mark.kvm
@pytest.mark.parametrize("mode,started,code", [("long", "converted to PVM mode", b"\xeb\xfe"),
                                               ("real", "mode: real mode", b"\xeb\xfe"),
                                               ("protected", None, ENDLESS_REP)])
def test_ctrl_c_stops_a_runaway_guest_with_status_130(tmp_path, mode, started, code):
    """Under KVM_RUN (long mode), in the userspace emulator (real mode), and inside one REP."""
    image = tmp_path / "spin.bin"
    image.write_bytes(code)  # jmp $ in every mode, or an endless REP LODSB
    proc = _pykvm("run", "--mode", mode, "-v", str(image))
    deadline = time.monotonic() + 30
    if started is None:                 # inside one instruction nothing is logged: give it time
        time.sleep(1.5)
    while started and started not in (line := proc.stderr.readline()):  # wait until it really runs
        assert line and time.monotonic() < deadline, "pykvm did not start the guest"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err


@pytest.mark.kvm
def test_process_leaves_no_fds_behind(spin_image):
    """A timed-out run inside one process closes what it opened (CliRunner shares our fd table)."""
    before = len(os.listdir("/proc/self/fd"))
    invoke("run", "--mode", "long", "--timeout", "0.1", str(spin_image))
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.kvm
def test_step_prints_each_instruction_and_the_registers():
    result = invoke("step", "--mode", "long", "-n", "3", str(build_guest("hello64")))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[1] == "kvm" and "lea rsi" in lines[0]
    assert len([line for line in lines if "long mode (64-bit)" in line]) == 3
    assert "Registers:" in result.output and "Segment registers:" in result.output


@pytest.mark.kvm
def test_kernel_emulation_failure_is_status_8_naming_rip_bytes_and_mnemonic():
    """The host kernel cannot IRET in protected mode (../shared/PVM.md): one line names it all."""
    result = invoke("run", "--emulator", "kernel", "--mode", "protected", "guests/selftest32.S")
    if result.exit_code == 1:
        pytest.skip("this host's kernel emulates protected-mode IRET")
    assert result.exit_code == 8
    last = result.output.strip().splitlines()[-1]
    assert re.search(r"rip=0x[0-9a-f]+ bytes=cf \(iretd\)$", last), last


@pytest.mark.kvm
def test_unemulated_instruction_is_status_8_naming_it(tmp_path):
    path = tmp_path / "fld1.bin"
    path.write_bytes(b"\xd9\xe8")          # x87 is out of the emulator's scope
    result = invoke("run", "--mode", "protected", str(path))
    assert result.exit_code == 8
    assert "rip=0x100000 bytes=d9 e8 (fld1)" in result.output


def test_run_without_the_device_is_status_4(tmp_path):
    result = invoke("run", "--device", str(tmp_path / "kvm"), "--mode", "long", "guests/hello64.S")
    assert result.exit_code == 4
    assert result.output.strip().splitlines()[-1].endswith("(is the kvm module loaded?)")


@pytest.mark.kvm
def test_emulated_triple_fault_is_status_6(tmp_path):
    """#UD with no IDT in protected mode: #GP while delivering, #DF, then shutdown — all in pykvm."""
    path = tmp_path / "ud2.bin"
    path.write_bytes(b"\x0f\x0b")
    result = invoke("run", "--mode", "protected", str(path))
    assert result.exit_code == 6
    assert "triple fault" in result.output and "#DF" in result.output


@pytest.mark.kvm
def test_very_verbose_logs_every_exit_and_mode_switch():
    result = invoke("run", "-vv", "--mode", "real", "guests/boot16to64.S")
    assert result.exit_code == 1
    assert "mode: protected mode (32-bit)" in result.output
    assert "converted to PVM mode after" in result.output
    assert re.search(r"exit \d+: io out port=0x3f8 size=1 count=1 at rip=0x[0-9a-f]+", result.output)
