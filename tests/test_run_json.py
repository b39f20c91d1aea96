"""``pykvm run --json``: one record on stdout for every way a run ends, valid against the schema."""

from __future__ import annotations

import json
import signal

import jsonschema
import pytest

from pykvm import record
from tests.asm import assemble
from tests.test_cli import invoke
from tests.test_robustness import PRINT_FOREVER, SPIN, finish, image, start, wait_for_line  # noqa: F401 (image: a fixture)

SCHEMA = json.loads(record.SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def valid(stdout: str) -> dict:
    """The one record ``stdout`` holds, checked against the schema."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout[-2000:]
    run = json.loads(lines[0])
    VALIDATOR.validate(run)
    assert run["schema_version"] == record.SCHEMA_VERSION
    assert sum(run["exits_by_reason"].values()) == run["kvm_exits"]
    return run


def run_json(*args) -> tuple[int, dict, str]:
    """``pykvm run --json ARGS`` through click's runner: (status, record, stderr)."""
    result = invoke("run", "--json", *args)
    return result.exit_code, valid(result.stdout), result.stderr


def test_the_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.kvm
def test_a_passing_guest_records_its_output_and_counts_and_no_vcpu_state():
    status, run, stderr = run_json("guests/hello64")
    assert status == 1 and stderr == ""
    assert run["outcome"] == "debug-exit" and run["debug_exit"] == 0 and run["error"] is None
    assert run["serial"] == "Hello from a 64-bit pykvm guest!\n"
    assert (run["image"], run["format"], run["entry_mode"]) == ("guests/hello64", "elf", "long")
    assert run["path"].endswith("hello64.elf")
    assert run["exits_by_reason"] == {"io": run["kvm_exits"]} and run["kvm_exits"] > 30
    assert run["vcpu"] is None


@pytest.mark.kvm
def test_the_default_guest_records_both_executors():
    status, run, _ = run_json("--emul-batch", "7")
    assert status == 1 and run["image"] is None and run["entry_mode"] == "real"
    assert run["instructions_emulated"] > 100 and run["conversions"] == 1 and run["kvm_exits"] > 0
    assert run["serial"].splitlines()[0].startswith("[real]")


@pytest.mark.kvm
def test_a_halt_with_interrupts_off_is_status_0_with_exits_by_reason(image):
    # (not port 0x80: its writes are coalesced, no exit)
    status, run, _ = run_json("--mode", "long", image(assemble("mov dx, 0x81\nout dx, al\ncli\nhlt")))
    assert status == 0 and run["outcome"] == "halted" and run["debug_exit"] is None
    assert run["exits_by_reason"] == {"io": 1, "hlt": 1}


@pytest.mark.kvm
def test_the_timer_guest_records_interrupts_per_executor():
    status, run, _ = run_json("guests/timer64")
    assert status == 1, run["serial"]
    assert run["interrupts"]["kvm"] >= 200 and run["interrupts"]["emu"] == 0
    assert run["run_seconds"]["halted"] > 1 and run["cpu_seconds"] < run["wall_seconds"]
    assert run["exits_by_reason"]["hlt"] >= 200


@pytest.mark.kvm
def test_a_failing_guest_records_its_vcpu_state():
    status, run, _ = run_json("guests/assert32")
    assert status == 255 and run["debug_exit"] == 0x7F and run["outcome"] == "debug-exit"
    assert "ASSERT FAILED: assert32.c:" in run["serial"]
    vcpu = run["vcpu"]
    assert vcpu["executor"] == "emu" and vcpu["mode"] == "protected mode (32-bit)" and vcpu["cs"] == 8
    assert vcpu["linear"] == vcpu["rip"] and vcpu["registers"]["rip"] == vcpu["rip"]
    assert vcpu["disassembly"][0]["address"] == vcpu["rip"]
    assert vcpu["bytes"].startswith(vcpu["disassembly"][0]["bytes"])


@pytest.mark.kvm
@pytest.mark.parametrize("args,code,status,outcome,vcpu", [
    (["--mode", "long"], "ud2", 6, "shutdown", ("kvm", "ud2")),
    (["--mode", "protected"], "fld1", 8, "emulation-error", ("emu", "fld1")),
    (["--mode", "real", "--timeout", "0.3"], "spin: jmp spin", 10, "timeout", ("emu", "jmp")),
    (["--mode", "long", "--timeout", "0.3"], "spin: jmp spin", 10, "timeout", ("kvm", "jmp")),
])
def test_each_failure_of_the_guest_records_where_the_vcpu_was(image, args, code, status, outcome, vcpu):
    bits = {"real": 16, "protected": 32, "long": 64}[args[1]]
    got, run, stderr = run_json(*args, image(assemble(code, bits=bits)))
    assert got == status and run["outcome"] == outcome
    assert run["error"] and stderr == f"pykvm: error: {run['error']}\n"
    executor, mnemonic = vcpu
    assert run["vcpu"]["executor"] == executor
    assert run["vcpu"]["disassembly"][0]["text"].startswith(mnemonic)


@pytest.mark.parametrize("args,status,outcome,words", [
    (["/nonexistent/image"], 2, "bad-input", "no such file"),
    (["--timeout", "nan", "x"], 2, "bad-input", "--timeout"),
    (["--bogus"], 2, "bad-input", "--bogus"),
    (["--mem", "12", "x"], 2, "bad-input", "--mem"),
    (["--device", "/nonexistent/kvm", "guests/hello64"], 4, "host-error", "does not exist"),
])
def test_errors_before_the_guest_runs_still_give_a_record(args, status, outcome, words):
    got, run, stderr = run_json(*args)
    assert got == status == run["status"] and run["outcome"] == outcome
    assert words in run["error"] and stderr.count("\n") == 1
    assert run["vcpu"] is None and run["kvm_exits"] == 0


@pytest.mark.kvm
def test_an_output_error_is_status_12_with_a_record(image):
    status, run, _ = run_json("--serial", "/dev/full", "--timeout", "20", image(PRINT_FOREVER))
    assert status == 12 and run["outcome"] == "output-error" and "/dev/full" in run["error"]
    assert run["serial"] is None


@pytest.mark.kvm
def test_serial_to_a_file_stays_out_of_the_record(tmp_path):
    out = tmp_path / "serial.txt"
    status, run, _ = run_json("--serial", str(out), "guests/hello64")
    assert status == 1 and run["serial"] is None and out.read_text().startswith("Hello")


@pytest.mark.kvm
def test_the_record_keeps_the_tail_of_long_serial_output(image, monkeypatch):
    monkeypatch.setattr(record, "SERIAL_LIMIT", 1000)
    status, run, _ = run_json("--timeout", "0.5", image(PRINT_FOREVER))
    assert status == 10 and run["serial"] == "a" * 1000 and run["serial_dropped"] > 0


@pytest.mark.kvm
def test_a_bug_in_pykvm_is_status_14_with_a_record(monkeypatch):
    from pykvm.machine import Machine

    def broken(self, timeout=None):
        raise RuntimeError("an invariant broke")

    monkeypatch.setattr(Machine, "run", broken)
    status, run, _ = run_json("guests/hello64")
    assert status == 14 and run["outcome"] == "internal-error"
    assert run["error"] == "internal error: RuntimeError: an invariant broke"
    assert run["vcpu"]["executor"] == "kvm"


@pytest.mark.kvm
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_during_the_run_gives_a_record(image, signum):
    proc = start("run", "--json", "-v", "--timeout", "60", image(SPIN))
    wait_for_line(proc, "mode: real mode")
    proc.send_signal(signum)
    out, err = finish(proc, 30)
    assert proc.returncode == -signum
    run = valid(out.decode())
    assert run["status"] == 128 + signum and run["signal"] == signum and run["outcome"] == "signal"
    assert run["vcpu"]["disassembly"][0]["text"].startswith("jmp")


@pytest.mark.kvm
def test_ctrl_c_during_the_run_gives_a_record(image):
    proc = start("run", "--json", "-v", "--timeout", "60", image(SPIN),
                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_line(proc, "mode: real mode")
    proc.send_signal(signal.SIGINT)
    out, _ = finish(proc, 30)
    assert proc.returncode == 130
    run = valid(out.decode())
    assert run["status"] == 130 and run["outcome"] == "interrupted" and run["signal"] == signal.SIGINT


def test_a_stop_signal_while_pykvm_starts_still_gives_a_record():
    proc = start("run", "--json", "guests/hello64", importtime=True)
    wait_for_line(proc, "click")
    proc.send_signal(signal.SIGTERM)
    out, _ = finish(proc, 30)
    assert proc.returncode == -signal.SIGTERM
    run = valid(out.decode())
    assert run["status"] == 143 and run["outcome"] == "signal" and run["image"] is None


def test_only_run_with_json_asks_for_a_record():
    assert record.requested(["run", "x", "--json"])
    assert not record.requested(["step", "--json"])
    assert not record.requested(["run", "--", "--json"])
    assert not record.requested([])
