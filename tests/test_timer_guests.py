"""Interrupts and timers end to end, through the ``pykvm run`` command line as a user runs it.

The timer guests (guests/README.md) each count 200 PIT ticks at 100 Hz in ``sti; hlt`` and
check the STI shadow and more of the platform's interrupt behaviour from inside. Here the
host checks what the guest cannot: that the ticks took their 2 s of host time (a property of
a PIT on the host clock: a lower bound only, never an upper one), and that ``-v`` names the
executor that delivered them. Then a halted vCPU: with IF = 1 and no interrupt source it
sleeps until ``--timeout``, with IF = 0 it ends the run, and Ctrl-C ends the sleep.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from pykvm.guests import build_guest
from tests.children import die_with_parent
from tests.timer_guests import COUNTED, COUNTING, GUESTS, REPO, TimedProcess, pykvm_args, pykvm_command

pytestmark = pytest.mark.kvm

INTERRUPTS = re.compile(r"interrupts delivered: (\d+) by the emulator, (\d+) injected into KVM")
TICKS_SECONDS = 1.9        # 200 ticks at 100 Hz: 2 s, less a little for timestamping a pipe
MEMORY = {"timer32": "96M"}  # not the default: the guest must find it in the CMOS and in RAM


@pytest.fixture(scope="module")
def timer_runs():
    """All the runs at once (the guests spend their time asleep in HLT): each guest, and
    timer32 without the test device it needs."""
    for name in GUESTS:
        build_guest(name)           # not inside the timed runs
    commands = {name: pykvm_command(*pykvm_args(guest, "--mem", MEMORY.get(name, "64M"), "--timeout", "60", "-v"))
                for name, guest in GUESTS.items()}
    commands["timer32 without --testdev"] = pykvm_command("guests/timer32.S", "--no-testdev",
                                                          "--timeout", "60")
    started = {name: TimedProcess(command) for name, command in commands.items()}
    return {name: process.result() for name, process in started.items()}


@pytest.mark.parametrize("name", GUESTS)
def test_timer_guest_passes_every_check(timer_runs, name):
    run = timer_runs[name]
    assert run.summary() == (GUESTS[name].checks, 0), run.problems()
    assert run.status == 1, run.stderr


@pytest.mark.parametrize("name", GUESTS)
def test_200_ticks_at_100_hz_take_2_s_of_host_time(timer_runs, name):
    run = timer_runs[name]
    elapsed = run.time_of(COUNTED) - run.time_of(COUNTING)
    assert elapsed >= TICKS_SECONDS, f"200 ticks in {elapsed:.3f} s"


@pytest.mark.parametrize("name", GUESTS)
def test_verbose_log_names_the_executor_that_delivered_the_ticks(timer_runs, name):
    found = INTERRUPTS.search(timer_runs[name].stderr)
    assert found, timer_runs[name].stderr
    emulated, injected = int(found.group(1)), int(found.group(2))
    if GUESTS[name].executor == "emulator":
        assert emulated >= 200 and injected == 0
    else:
        assert injected >= 200 and emulated == 0


@pytest.mark.parametrize("name", ["timer32", "timer64"])
def test_an_irq_raised_by_out_is_taken_at_the_next_boundary(timer_runs, name):
    # Not a guest check (QEMU takes it later): pykvm's own promise, in both executors.
    assert "info: an IRQ raised by OUT with IF = 1 is taken right after the OUT" in timer_runs[name].output


def test_the_guest_finds_the_memory_size_in_the_cmos(timer_runs):
    assert "info: CMOS memory size: 98304 KiB" in timer_runs["timer32"].output


def test_timer32_without_the_test_device_says_so(timer_runs):
    run = timer_runs["timer32 without --testdev"]
    assert "FAIL: pc-testdev present (pykvm run --testdev)" in run.output
    assert run.status == (1 << 1) | 1            # the one failure


# -- a halted vCPU -------------------------------------------------------------------------------

EXECUTORS = {"emulator": ("real", "mode: real mode"), "kvm": ("long", "converted to PVM mode")}
STI_HLT = bytes([0xFB, 0xF4, 0xEB, 0xFD])         # 1: sti; hlt; jmp 1b (any mode)
CLI_HLT = bytes([0xFA, 0xF4])                     # cli; hlt


@pytest.mark.parametrize("executor", EXECUTORS)
def test_hlt_with_interrupts_on_and_nothing_to_wake_it_sleeps_until_the_timeout(tmp_path, executor):
    image = tmp_path / "sti_hlt.bin"
    image.write_bytes(STI_HLT)
    started = time.monotonic()
    result = subprocess.run(pykvm_command(str(image), "--mode", EXECUTORS[executor][0], "--timeout", "1"),
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 10, result.stderr
    assert "timeout" in result.stderr
    assert time.monotonic() - started >= 1


@pytest.mark.parametrize("executor", EXECUTORS)
def test_hlt_with_interrupts_off_ends_the_run(tmp_path, executor):
    image = tmp_path / "cli_hlt.bin"
    image.write_bytes(CLI_HLT)
    result = subprocess.run(pykvm_command(str(image), "--mode", EXECUTORS[executor][0], "--timeout", "30"),
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("executor", EXECUTORS)
def test_ctrl_c_ends_a_guest_asleep_in_hlt(tmp_path, executor):
    image = tmp_path / "sti_hlt.bin"
    image.write_bytes(STI_HLT)
    mode, started = EXECUTORS[executor]
    proc = subprocess.Popen([sys.executable, "-m", "pykvm", "run", str(image), "--mode", mode, "-v"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=die_with_parent())
    deadline = time.monotonic() + 30
    while started not in (line := proc.stderr.readline()):   # until it really runs
        assert line and time.monotonic() < deadline, "pykvm did not start the guest"
    time.sleep(0.5)                                           # and has gone to sleep in HLT
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
