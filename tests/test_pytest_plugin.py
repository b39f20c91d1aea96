"""pykvm's pytest plugin (pykvm/pytest_plugin.py): guests and images with sidecars as test items.

The plugin's own runs go through ``pytester`` in throwaway directories, with images copied
from the library's builds; the library itself runs once with ``-n 2`` (pytest-xdist).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pykvm import pytest_plugin
from pykvm.guests import build_script, runnable
from pykvm.pytest_plugin import SpecError, header_section, parse_specs

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def guest_image(pytester):
    """``guest_image(name, sidecar)``: the library guest ``name``'s image copied into the
    pytester directory, with ``sidecar`` as its IMAGE.toml."""
    def make(name: str, sidecar: str, as_name: str | None = None) -> Path:
        built, _ = runnable(name)
        image = pytester.path / (as_name or built.name)
        shutil.copyfile(built, image)
        image.with_name(image.name + ".toml").write_text(sidecar)
        return image
    return make


def raw_image(pytester, data: bytes, sidecar: str, name: str = "guest.bin") -> Path:
    image = pytester.path / name
    image.write_bytes(data)
    image.with_name(name + ".toml").write_text(sidecar)
    return image


def outcomes(result) -> dict[str, int]:
    return {k: v for k, v in result.parseoutcomes().items() if k not in ("seconds",)}


# -- headers and sidecars ---------------------------------------------------------------------------
def test_a_header_section_is_the_rest_of_its_comment_with_file_line_numbers():
    text = "/* x.S - a guest\n *\n * pykvm-test:\n *   mode = \"long\"\n *   [a]\n *   status = 3 */\ncode\n"
    toml, start = header_section(text)
    assert start == 2 and toml.splitlines()[3:] == ['   mode = "long"', "   [a]", "   status = 3 "]
    assert [(s.name, s.mode, s.status, s.line) for s in parse_specs(toml, "x", start)] == [("a", "long", 3, 4)]
    for leader in ("//", "#"):
        text = f"{leader} pykvm-test:\n{leader}   status = 255\n{leader}   timeout = 2\nint x;\n"
        spec, = parse_specs(*header_section(text)[:1], "x")
        assert (spec.name, spec.status, spec.timeout) == ("x", 255, 2.0)
    assert header_section("/* no section here */\nint pykvm_test;\n") is None


@pytest.mark.parametrize("toml,message", [
    ("status = 'one'", "[x]: status must be an exit status"),
    ("tiemout = 3", "[x]: unknown key 'tiemout'"),
    ("mode = 'unreal'", "mode must be one of real, protected, long"),
    ("serial = 'SUMMARY'", "serial must be a list of strings"),
    ("serial_match = ['(']", "is not a regular expression"),
    ("executors = ['cpu']", "executors must be one of emu, kvm"),
    ("timeout = 0", "timeout must be a positive number of seconds"),
    ('["a::b"]\nstatus = 1', "use letters, digits"),
    ("status = ", "not valid TOML"),
])
def test_a_bad_spec_says_what_is_wrong(toml, message):
    with pytest.raises(SpecError) as e:
        parse_specs(toml, "x")
    assert message in str(e.value)


def test_a_library_source_declares_exactly_the_guests_built_from_it():
    timer = REPO / "guests" / "timer.c"
    with pytest.raises(SpecError, match="builds timer16, timer32, timer64: no item for timer64"):
        pytest_plugin._check_library(timer, parse_specs("[timer16]\n[timer32]", "timer"))
    with pytest.raises(SpecError, match="'cwork32' is not a guest built from timer.c"):
        pytest_plugin._check_library(timer, parse_specs("[cwork32]", "timer"))


def test_every_runnable_guest_of_the_library_is_an_item():
    result = subprocess.run([sys.executable, "-m", "pytest", "guests/", "--collect-only", "-q", "-p", "no:cacheprovider"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    items = {line.split("::")[1] for line in result.stdout.splitlines() if "::" in line}
    runnable_guests = {name for name, r in build_script().RECIPES.items() if r.runs_alone}
    assert runnable_guests <= items and items - runnable_guests == {"assert32-crash-report"}


# -- collection -------------------------------------------------------------------------------------------
def test_sidecar_tables_are_items_with_markers_by_mode_and_executor(pytester):
    raw_image(pytester, b"\xf4", "timeout = 5\n[in-real]\nmode = 'real'\n[in-long]\nmode = 'long'\n"
                                 "[both]\nmode = 'real'\nexecutors = ['emu', 'kvm']\ngroup = 'heavy'\n")
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["guest.bin::in-real", "guest.bin::in-long", "guest.bin::both"])
    for expression, names in [("pykvm_long", ["in-long"]), ("pykvm_emu and not pykvm_kvm", ["in-real"]),
                              ("pykvm_kvm", ["in-long", "both"]), ("xdist_group", ["both"])]:
        result = pytester.runpytest("--collect-only", "-q", "-m", expression)
        assert [line.split("::")[1] for line in result.stdout.lines if "::" in line] == names, expression


def test_an_image_with_only_top_level_keys_is_one_item_named_after_it(pytester):
    raw_image(pytester, b"\xf4", "mode = 'long'\n", name="kernel.img")
    pytester.path.joinpath("other.bin").write_bytes(b"\xf4")     # no sidecar: not a test
    result = pytester.runpytest("--collect-only", "-q")
    assert [line for line in result.stdout.lines if "::" in line] == ["kernel.img::kernel.img"]


def test_header_and_sidecar_errors_are_collection_errors(pytester):
    pytester.makefile(".S", bad="/* bad.S\n * pykvm-test:\n *   status = = 1\n */\n")
    pytester.makefile(".c", elsewhere="/* elsewhere.c\n * pykvm-test:\n *   status = 1\n */\n")
    raw_image(pytester, b"\xf4", "[x]\nstatus = 'one'\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED and outcomes(result) == {"errors": 3}
    result.stdout.fnmatch_lines([
        "*bad.S: pykvm-test: header: not valid TOML: * (at line 3, column *)",
        "*elsewhere.c: pykvm-test: header: only sources in pykvm's guests/ directory*sidecar IMAGE.toml",
        "*guest.bin.toml: [[]x]: status must be an exit status (an integer >= 0), not 'one'",
    ])


def test_the_plugin_is_off_with_p_no_pykvm(pytester):
    raw_image(pytester, b"\xf4", "mode = 'long'\n")
    assert pytester.runpytest("--collect-only", "-q", "-p", "no:pykvm").ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_without_a_usable_kvm_device_every_item_skips_with_the_reason(pytester):
    raw_image(pytester, b"\xf4", "mode = 'long'\n")
    result = pytester.runpytest("-rs", f"--pykvm-device={pytester.path / 'kvm'}")
    assert outcomes(result) == {"skipped": 1}
    result.stdout.fnmatch_lines(["SKIPPED*needs a usable KVM device: *kvm does not exist*"])


# -- runs ----------------------------------------------------------------------------------------------------
@pytest.mark.kvm
def test_passing_images_pass_with_their_record_in_junit_xml(pytester, guest_image):
    guest_image("hello64", "format = 'elf'\nmode = 'long'\nserial = ['Hello from a 64-bit pykvm guest!']\n")
    guest_image("bios", "format = 'bios'\nexecutors = ['emu', 'kvm']\nserial = ['SUMMARY: 19 passed, 0 failed']\n")
    guest_image("selftest16", "mode = 'real'\nserial_match = ['^SUMMARY: \\d+ passed, 0 failed$']\n")
    result = pytester.runpytest("--junitxml=out.xml")
    assert outcomes(result) == {"passed": 3}, result.stdout.str()
    cases = ET.parse(pytester.path / "out.xml").getroot().iter("testcase")
    properties = {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")} for case in cases}
    assert properties["hello64.elf"]["status"] == "1" and properties["bios.bin"]["outcome"] == "debug-exit"


@pytest.mark.kvm
def test_a_failing_guest_reads_like_a_crash_report(pytester, guest_image):
    guest_image("assert32", "mode = 'protected'\nserial = ['SUMMARY: 1 passed, 0 failed']\n")
    result = pytester.runpytest("--junitxml=out.xml")
    assert outcomes(result) == {"failed": 1}
    result.stdout.fnmatch_lines([
        "pykvm guest assert32.elf (assert32.elf) failed:",
        "  - exit status 255 (debug-exit), expected 1",
        "  - no line 'SUMMARY: 1 passed, 0 failed' in the serial output",
        "command: * -m pykvm run --json *assert32.elf --timeout 60 *",
        "status:  255 (debug-exit): the guest wrote 0x7f to the debug-exit port 0xf4",
        "image:   *assert32.elf (elf, entered in protected mode)",
        "ran:     * instructions emulated, 0 KVM exits, 0 conversions to PVM mode, *",
        "serial output:",
        "  | assert32: about to fail an assertion",
        "  | ASSERT FAILED: assert32.c:*: answer == 42",
        "vCPU in protected mode (32-bit) (pykvm's emulator) at 0008:*, linear 0x*:",
        "  code: *",
        "  => *",
        "*rax=000000000000007f*",
    ])
    failure = ET.parse(pytester.path / "out.xml").getroot().find(".//failure")
    assert "ASSERT FAILED" in failure.text and "vCPU in protected mode" in failure.text


@pytest.mark.kvm
def test_a_guest_that_runs_past_its_timeout_fails_with_where_it_spun(pytester):
    raw_image(pytester, b"\xeb\xfe", "mode = 'long'\ntimeout = 0.5\n")
    result = pytester.runpytest()
    assert outcomes(result) == {"failed": 1}
    result.stdout.fnmatch_lines([
        "  - exit status 10 (timeout), expected 1",
        "status:  10 (timeout): --timeout expired",
        "error:   guest still running after --timeout 0.5s",
        "vCPU in long mode (64-bit) (KVM) at 0018:00100000, linear 0x100000:",
        "  => 00100000  eb fe * jmp *",
    ])


@pytest.mark.kvm
def test_a_guest_run_by_the_wrong_executor_fails(pytester, guest_image):
    guest_image("hello64", "[hello64]\nexecutors = ['emu']\n[long]\nmode = 'long'\n")
    result = pytester.runpytest()
    assert outcomes(result) == {"failed": 1, "passed": 1}
    result.stdout.fnmatch_lines(["  - ran in kvm, expected emu (emu: pykvm's emulator, kvm: KVM_RUN)"])


def test_the_checks_of_a_record():
    spec, = parse_specs("format = 'elf'\nmode = 'long'\nserial = ['done']\nserial_match = ['^SUM.*0 failed$']", "g")
    good = {"status": 1, "debug_exit": 0, "outcome": "debug-exit", "format": "elf", "entry_mode": "long",
            "serial": "x\ndone  \nSUMMARY: 3 passed, 0 failed\n", "instructions_emulated": 0, "kvm_exits": 9}
    assert pytest_plugin.check(spec, good) == []
    bad = dict(good, status=1, debug_exit=0x80, format="flat", entry_mode="real", serial="done?\n",
               instructions_emulated=5)
    assert pytest_plugin.check(spec, bad) == [
        "exit status 257 (debug-exit), expected 1",          # 0x80 << 1 | 1: the process's status 1 is cut
        "format flat, expected elf", "mode real, expected long",
        "no line 'done' in the serial output", "no line matching '^SUM.*0 failed$' in the serial output",
        "ran in emu and kvm, expected kvm (emu: pykvm's emulator, kvm: KVM_RUN)"]


@pytest.mark.kvm
def test_an_xfail_item_shows_its_crash_report_with_runxfail(pytester, guest_image):
    guest_image("assert32", "xfail = 'fails on purpose'\n")
    assert outcomes(pytester.runpytest()) == {"xfailed": 1}
    result = pytester.runpytest("--runxfail")
    assert outcomes(result) == {"failed": 1}
    result.stdout.fnmatch_lines(["*ASSERT FAILED*"])


@pytest.mark.kvm
def test_the_guest_library_runs_green_in_parallel_with_junit_xml(tmp_path):
    """What CI runs: ``pytest guests/ -n 2 --junitxml=...``."""
    junit = tmp_path / "guests.xml"
    result = subprocess.run([sys.executable, "-m", "pytest", "guests/", "-n", "2", f"--junitxml={junit}",
                             "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("tests")) >= 20 and suite.get("failures") == suite.get("errors") == "0"
    assert int(suite.get("skipped")) == 1           # assert32-crash-report, an xfail
