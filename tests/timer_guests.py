"""The timer guests (guests/timer.c) as the tests run them: processes whose console lines are
timestamped as they arrive, so a test can time the guest's 200 ticks on the host's clock."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.children import die_with_parent

REPO = Path(__file__).resolve().parents[1]
COUNTING = "info: counting 200 PIT ticks"
COUNTED = "PASS: 200 PIT ticks at 100 Hz"


@dataclass(frozen=True)
class TimerGuest:
    name: str
    mode: str
    testdev: bool
    executor: str          # where its interrupts are delivered: "emulator" or "kvm"
    checks: int            # PASS lines it prints when everything works


GUESTS = {g.name: g for g in (
    TimerGuest("timer16", "real", False, "emulator", 11),
    TimerGuest("timer32", "protected", True, "emulator", 22),
    TimerGuest("timer64", "long", True, "kvm", 15),
)}


@dataclass
class TimedRun:
    """A finished process: exit status, stdout lines with their arrival times, stderr."""
    status: int
    lines: list[tuple[float, str]] = field(default_factory=list)
    stderr: str = ""

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def time_of(self, prefix: str) -> float:
        """Seconds from the start to the first line starting with ``prefix``."""
        for at, line in self.lines:
            if line.startswith(prefix):
                return at
        raise AssertionError(f"no line starting with {prefix!r} in:\n{self.output[-3000:]}")

    def summary(self) -> tuple[int, int]:
        found = re.search(r"^SUMMARY: (\d+) passed, (\d+) failed$", self.output, re.M)
        assert found, f"no SUMMARY line in:\n{self.output[-3000:]}\n{self.stderr[-2000:]}"
        return int(found.group(1)), int(found.group(2))

    def problems(self) -> str:
        return "\n".join(line for _, line in self.lines if line.startswith("FAIL")) or self.output[-3000:]


class TimedProcess:
    """Start ``command`` now; ``result()`` waits for it and returns a TimedRun."""

    def __init__(self, command: list[str], timeout: float = 120):
        self.timeout = timeout
        self.start = time.monotonic()
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, errors="replace", preexec_fn=die_with_parent())
        self.run = TimedRun(status=-1)
        self._stderr: list[str] = []
        self._threads = [threading.Thread(target=self._read_lines, daemon=True),
                         threading.Thread(target=lambda: self._stderr.append(self.proc.stderr.read()),
                                          daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read_lines(self) -> None:
        for line in self.proc.stdout:
            self.run.lines.append((time.monotonic() - self.start, line.rstrip("\n")))

    def result(self) -> TimedRun:
        try:
            self.run.status = self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        for thread in self._threads:
            thread.join()
        self.run.stderr = "".join(self._stderr)
        return self.run


def pykvm_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pykvm", "run", *args]


def pykvm_args(guest: TimerGuest, *extra: str) -> list[str]:
    """The command line a user types for ``guest`` (its source is built first, as needed)."""
    args = [f"guests/{guest.name}.S", "--mode", guest.mode]
    return args + (["--testdev"] if guest.testdev else []) + list(extra)
