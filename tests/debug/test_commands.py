"""pykvm step (--json, --break, --until, --syntax), pykvm run --trace and pykvm debug from stdin,
checked against the default guest's own objdump listing across real → protected → long → PVM."""

from __future__ import annotations

import io
import json
import re

import pytest

from pykvm.debug.trace import Folder, RunTracer
from tests.debug.listing import boot_machine, objdump_listing, same_mnemonic, symbols
from tests.test_cli import invoke

FIELDS = {"n": int, "executor": str, "mode": str, "cs": int, "rip": int, "linear": int, "bytes": str, "asm": str,
          "changed": dict}


def _records(stdout: str) -> list[dict]:
    records = [json.loads(line) for line in stdout.splitlines()]
    for r in records:
        assert {k: type(r[k]) for k in FIELDS} == FIELDS, r
        assert r["executor"] in ("emu", "kvm") and all(isinstance(v, int) for v in r["changed"].values())
        bytes.fromhex(r["bytes"])
    return records


def _matches_listing(linear: int, code: bytes, asm: str) -> None:
    listed = objdump_listing().get(linear)
    assert listed is not None, f"{linear:#x} is not an instruction of the listing"
    assert listed.code == code and same_mnemonic(listed.mnemonic, asm.split()[0]), (hex(linear), listed, asm)


@pytest.mark.kvm
def test_step_json_of_the_whole_run_matches_objdump():
    result = invoke("step", "--json", "--syntax", "att", "-n", "100000")
    assert result.exit_code == 1, result.output
    records = _records(result.stdout)
    for r in records:
        _matches_listing(r["linear"], bytes.fromhex(r["bytes"]), r["asm"])
    assert [r["n"] for r in records] == list(range(len(records)))
    path = []
    for r in records:
        if not path or path[-1] != (r["executor"], r["mode"]):
            path.append((r["executor"], r["mode"]))
    assert path == [("emu", "real mode"), ("emu", "protected mode (16-bit)"), ("emu", "protected mode (32-bit)"),
                    ("emu", "long mode (compat 32-bit)"), ("kvm", "long mode (64-bit)")]
    assert b"[long] 64-bit" in result.stderr_bytes                   # the serial output: apart
    assert "guest ended with status 1" in result.stderr


@pytest.mark.kvm
def test_step_json_records_what_changed():
    records = _records(invoke("step", "--json", "-n", "3").stdout)
    assert [r["asm"] for r in records] == ["cli", "cld", "xor ax,ax"]
    assert records[2]["changed"] == {"rflags": 0x46} and records[0]["changed"] == {}


@pytest.mark.kvm
@pytest.mark.parametrize("where,executor", [("protected_start", "emu"), ("long_start", "kvm"),
                                            ("0000:7c12", "emu")])
def test_step_break_runs_there_at_full_speed_then_steps(where, executor):
    result = invoke("step", "--json", "--break", where, "--break", "0x7d0b", "-n", "4")
    assert result.exit_code == 0, result.output
    records = _records(result.stdout)
    start = symbols().get(where, 0x7C12)
    assert records[0]["linear"] == start and len(records) == 4
    assert {r["executor"] for r in records} == {executor}
    assert f"breakpoint at {start:#x}" in result.stderr


@pytest.mark.kvm
def test_step_until_stops_before_the_address_and_text_mode_keeps_serial_lines_apart():
    result = invoke("step", "--break", "protected_start", "--until", "long_start", "--no-regs")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    trace = [line for line in lines if re.match(r"^\s+\d+ (emu|kvm) ", line)]
    assert f" 0008:{symbols()['protected_start']:08x} " in trace[0]
    assert trace[-1].split()[-1] == "cs=0x18"                       # the far jump into 64-bit code
    assert f"reached {symbols()['long_start']:#x}" in lines[-1]
    assert "serial| [protected] 32-bit protected mode, flat 4 GiB segments" in lines


@pytest.mark.kvm
def test_step_syntax_att():
    result = invoke("step", "--syntax", "att", "-n", "3", "--no-regs")
    assert "xor %ax,%ax" in result.stdout


@pytest.mark.kvm
def test_step_bad_break_address_is_a_one_line_error():
    result = invoke("step", "--break", "nowhere")
    assert result.exit_code == 2 and "not an address" in result.stderr


@pytest.mark.kvm
def test_run_tracer_lines_match_objdump_and_every_exit_has_its_line():
    out = io.StringIO()
    with boot_machine() as m:
        tracer = RunTracer(m, out, fold=False, syntax="att")
        assert m.run(timeout=60) == 1
        tracer.finish()
        lines = out.getvalue().splitlines()
        emulated = [line for line in lines if re.match(r"^\s+\d+ emu ", line)]
        exits = [line for line in lines if " kvm exit " in line]
        assert len(emulated) == m.stats.emulated_instructions
        assert len(exits) == m.stats.kvm_exits == 111
        for line in emulated:
            m_ = re.search(r"([0-9a-f]{4}):([0-9a-f]{8})  ((?:[0-9a-f]{2} )*[0-9a-f]{2}) +(\S+)", line)
            cs, ip, code, mnemonic = int(m_[1], 16), int(m_[2], 16), bytes.fromhex(m_[3]), m_[4]
            _matches_listing(ip, code, {"jmp": "ljmp"}.get(mnemonic, mnemonic) if code[0] == 0xEA else mnemonic)
        summary = tracer.summary()
        assert any(line.split() == ["io", "111"] for line in summary)


def test_same_mnemonic_allows_objdumps_size_suffix():
    assert same_mnemonic("lgdtw", "lgdt") and same_mnemonic("cli", "cli") and not same_mnemonic("cli", "sti")


@pytest.mark.kvm
def test_run_trace_explains_the_run_in_one_screen():
    result = invoke("run", "--trace")
    assert result.exit_code == 1
    trace = result.stderr.splitlines()
    assert len(trace) < 110
    for section in ("--- real mode", "--- protected mode (32-bit)", "--- long mode (64-bit)",
                    "--- PVM mode: KVM runs the guest from 0x7cdf (one line per exit)", "--- summary"):
        assert section in trace, section
    assert any("repeated 511 more times" in line for line in trace)          # the page-table loop
    assert any("printing 'long] 64-bit long mode" in line for line in trace)  # the 64-bit loop's exits
    assert "conversions to PVM mode          1" in result.stderr
    assert result.stdout.count("\n") == 3                                     # the guest's lines only


@pytest.mark.kvm
def test_run_trace_exits_to_a_file(tmp_path):
    path = tmp_path / "trace.txt"
    result = invoke("run", f"--trace={path}", "--trace-exits")
    assert result.exit_code == 1 and result.stderr == ""
    text = path.read_text()
    assert " emu " not in text and "kvm exit 1 " in text and "instructions emulated        3,310" in text


def test_folder_folds_a_loop_and_says_what_it_printed():
    lines = []
    folder = Folder(lines.append)
    for key in [1, 2] + [3, 4, 5] * 6 + [6]:
        folder.add(key, f"line {key}", "x" if key == 5 else "")
    assert lines == ["line 1", "line 2", "line 3", "line 4", "line 5",
                     "       ... the 3 lines above repeated 5 more times (15 lines folded), printing 'xxxxx'",
                     "line 6"]


def test_folder_writes_out_a_repetition_that_breaks_off():
    lines = []
    folder = Folder(lines.append)
    for key in [1, 2, 3, 1, 2, 4]:
        folder.add(key, f"line {key}")
    folder.flush()
    assert lines == ["line 1", "line 2", "line 3", "line 1", "line 2", "line 4"]


DEBUG_SCRIPT = """\
break protected_start
break 0x7cf9
continue
regs
step 2
x/4b msg_real
mode
continue
sregs
disas 0x7cf9 3
next
delete 1
break
continue
delete
continue
"""


@pytest.mark.kvm
def test_debug_prompt_driven_from_stdin():
    result = invoke_debug(DEBUG_SCRIPT)
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert "breakpoint 1 at 0x7c40" in out and "breakpoint 2 at 0x7cf9" in out
    assert "=> emu 0008:00007c40 <protected_start>" in out
    assert "rip: 0000000000007c40" in out
    assert "0x00007d3e: 5b 72 65 61" in out
    assert "protected mode (32-bit); next instruction in the emulator" in out
    assert "=> kvm 0018:00007cf9 <long_start+0x1a>" in out
    assert "cs        0018" in out
    assert "=> 0x00007cf9" in out and "in al,dx" in out
    assert "deleted the breakpoint at 0x7c40" in out and "  1  0x7cf9 <long_start+0x1a>" in out
    assert out.count("breakpoint 1 at 0x7cf9") == 1                  # the same place, hit again
    assert "serial| [\n" in out and "serial+ long] 64-bit long mode" in out   # a line cut by a stop


def invoke_debug(script: str):
    from click.testing import CliRunner

    from pykvm.cli import main

    return CliRunner().invoke(main, ["debug"], input=script)


@pytest.mark.kvm
def test_debug_prompt_reports_errors_and_goes_on():
    result = invoke_debug("break nowhere\nx/2q 0\nfrobnicate\nstep\nquit\n")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "error: 'nowhere' is not an address" in out
    assert "error: x/2q: the unit is one of b, h, w, g, i" in out
    assert "unknown command 'frobnicate'" in out
    assert "=> emu 0000:00007c01" in out


@pytest.mark.kvm
def test_debug_next_runs_over_a_call():
    from click.testing import CliRunner

    from pykvm.cli import main

    script = "break main\ncontinue\ndisas main 20\n"
    listing = CliRunner().invoke(main, ["debug", "guests/cwork32.c", "--mode", "protected"], input=script).stdout
    call = re.search(r"0x([0-9a-f]+) <main\+0x[0-9a-f]+>\s+e8 (?:[0-9a-f]{2} ){4}\s*call", listing)
    assert call, listing
    after = int(call[1], 16) + 5
    result = CliRunner().invoke(main, ["debug", "guests/cwork32.c", "--mode", "protected"],
                                input=f"break 0x{call[1]}\ncontinue\nnext\nquit\n")
    assert f"=> emu 0008:{after:08x}" in result.stdout
    assert "serial| cwork32: freestanding C guest" in result.stdout      # what the call printed
    assert "breakpoint 2" not in result.stdout                           # the temporary one is gone
