"""Guests as pytest items: ``pytest guests/`` runs every guest of the library as a test.

Installed with pykvm (the ``pytest11`` entry point ``pykvm``: on by default, off with
``-p no:pykvm``). It collects

* a guest source of pykvm's ``guests/`` directory (``.S``, ``.c``) whose header comment holds a
  ``pykvm-test:`` section: TOML saying what each guest built from it must do, one table per
  guest (``timer.c`` builds ``timer16``, ``timer32`` and ``timer64``), or plain keys for the one
  guest named after the file;
* any image with a sidecar ``IMAGE.toml`` beside it (``kernel.elf`` + ``kernel.elf.toml``),
  the same TOML, its keys passed to ``pykvm run`` as options.

Each item runs in its own VM in a subprocess, ``python -m pykvm run --json ...`` with the item's
``--timeout``, and checks the record (``pykvm/record.py``): the exit status, the image format
and entry mode, lines of serial output, the executors used. A failure reads like a VMM's crash
report: what was expected, the status and its meaning, the tail of the serial output, and the
vCPU where it stopped (mode, CS:RIP, bytes, disassembly, registers). Hosts without a usable
``/dev/kvm`` skip every item with the reason. Items are independent: ``pytest -n auto``
(pytest-xdist) runs them in parallel, ``--dist loadgroup`` keeps an item's ``group`` on one worker.

This module is imported by every pytest session where pykvm is installed: it imports nothing
of pykvm until a guest item is collected.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

HEADER_MARK = "pykvm-test:"
SOURCE_SUFFIXES = (".S", ".s", ".c")
SIDECAR_SUFFIX = ".toml"
DEFAULT_TIMEOUT = 60.0
#: Seconds past its own --timeout after which a pykvm that has not ended is killed.
KILL_GRACE = 20.0
#: Lines of serial output (and of pykvm's stderr) a failure report shows.
REPORT_TAIL = 30
MODES = ("real", "protected", "long")
FORMATS = ("flat", "bootsector", "elf", "multiboot", "multiboot2", "pvh", "bios")
EXECUTORS = ("emu", "kvm")
_NAME = re.compile(r"[A-Za-z0-9_.+-]+\Z")
# The line that opens the pykvm-test section of a source's header comment.
_HEADER_LINE = re.compile(r"^[ \t]*(?:/\*+|\*|//|#)?[ \t]*" + re.escape(HEADER_MARK) + r"[ \t]*$", re.M)
_STAR = re.compile(r"^[ \t]*\*(?!/)")          # a block comment's leading "*"


class SpecError(Exception):
    """A pykvm-test header or sidecar that says something wrong: a collection error."""


@dataclass(frozen=True)
class GuestSpec:
    """What one guest item must do, from a header or a sidecar."""

    name: str
    guest: str | None = None            # sources: the library guest (default: name)
    format: str | None = None
    mode: str | None = None
    memory: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    status: int = 1
    serial: tuple[str, ...] = ()
    serial_match: tuple[str, ...] = ()
    testdev: bool | None = None
    cmdline: str | None = None
    emulator: str | None = None
    args: tuple[str, ...] = ()
    group: str | None = None
    executors: tuple[str, ...] | None = None
    xfail: str | None = None
    line: int = 0                       # where the spec starts (0-based), for reports

    @property
    def expected_executors(self) -> tuple[str, ...] | None:
        """Declared, else what the entry mode implies (nothing for an undeclared mode)."""
        if self.executors is not None:
            return self.executors
        if self.mode is None or self.emulator == "kernel":
            return None
        return ("kvm",) if self.mode == "long" else ("emu",)


def _text(value, key):
    if not isinstance(value, str):
        raise SpecError(f"{key} must be a string, not {value!r}")
    return value


def _choice(choices):
    def check(value, key):
        if value not in choices:
            raise SpecError(f"{key} must be one of {', '.join(choices)}, not {value!r}")
        return value
    return check


def _strings(value, key):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"{key} must be a list of strings, not {value!r}")
    return tuple(value)


def _patterns(value, key):
    patterns = _strings(value, key)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise SpecError(f"{key}: {pattern!r} is not a regular expression: {e}") from None
    return patterns


def _executors(value, key):
    names = _strings(value, key)
    for name in names:
        _choice(EXECUTORS)(name, key)
    return tuple(sorted(set(names)))


def _seconds(value, key):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
        raise SpecError(f"{key} must be a positive number of seconds, not {value!r}")
    return float(value)


def _status(value, key):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(f"{key} must be an exit status (an integer >= 0), not {value!r}")
    return value


def _flag(value, key):
    if not isinstance(value, bool):
        raise SpecError(f"{key} must be true or false, not {value!r}")
    return value


def _name(value, key):
    if not _NAME.match(_text(value, key)):
        raise SpecError(f"{key} {value!r}: use letters, digits and _ . + - only")
    return value


_KEYS = {
    "guest": _name, "format": _choice(FORMATS), "mode": _choice(MODES), "memory": _text,
    "timeout": _seconds, "status": _status, "serial": _strings, "serial_match": _patterns,
    "testdev": _flag, "cmdline": _text, "emulator": _choice(("userspace", "kernel")), "args": _strings,
    "group": _name, "executors": _executors, "xfail": _text,
}


def parse_specs(text: str, default_name: str, first_line: int = 0) -> list[GuestSpec]:
    """The items a header section or sidecar (TOML ``text``) declares: one per table, keys at the
    top level applying to all; without tables, one item named ``default_name``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"not valid TOML: {e}") from None
    defaults = {k: v for k, v in document.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in document.items() if isinstance(v, dict)}
    if not tables:
        tables = {default_name: {}}
    specs = []
    for name, table in tables.items():
        _name(name, "an item's name")
        fields = {}
        for key, value in {**defaults, **table}.items():
            check = _KEYS.get(key)
            if check is None:
                raise SpecError(f"[{name}]: unknown key {key!r} (known: {', '.join(_KEYS)})")
            try:
                fields[key] = check(value, key)
            except SpecError as e:
                raise SpecError(f"[{name}]: {e}") from None
        specs.append(GuestSpec(name, line=_line_of(text, name, first_line), **fields))
    return specs


def _line_of(text: str, name: str, default: int) -> int:
    match = re.search(r"^[ \t]*\[[ \t]*" + re.escape(name) + r"[ \t]*\]", text, re.M)
    return text.count("\n", 0, match.start()) if match else default


def header_section(text: str) -> tuple[str, int] | None:
    """The TOML of a source's ``pykvm-test:`` section, comment leaders (``*``, ``//``, ``#``)
    removed, padded with empty lines so TOML errors name the file's own line numbers; and the
    section's first line (0-based). None if the source has no such section. The section runs to
    the end of its comment: ``*/``, or the last line with the marker line's leader."""
    match = _HEADER_LINE.search(text)
    if match is None:
        return None
    start = text.count("\n", 0, match.start())
    lines = text.splitlines()
    marker = lines[start].strip()
    line_comment = marker.startswith(("//", "#"))
    leader = "//" if marker.startswith("//") else "#"
    body = []
    for line in lines[start + 1:]:
        if line_comment:
            if not line.lstrip().startswith(leader):
                break
            body.append(line.lstrip()[len(leader):])
            continue
        end = line.find("*/")
        if end >= 0:
            body.append(_STAR.sub("", line[:end], count=1))
            break
        body.append(_STAR.sub("", line, count=1))
    else:
        if not line_comment:
            raise SpecError(f"line {start + 1}: the {HEADER_MARK} section's comment never ends")
    return "\n" * (start + 1) + "\n".join(body) + "\n", start


# -- collection ---------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pykvm", "pykvm guests as tests")
    group.addoption("--pykvm-device", default="/dev/kvm", metavar="PATH",
                    help="The KVM device the guests run on (pykvm run --device); without a usable one "
                         "they are skipped. Default: /dev/kvm.")


def pytest_configure(config: pytest.Config) -> None:
    for marker, text in [
        ("pykvm", "a pykvm guest run as a test (pykvm's pytest plugin)"),
        *((f"pykvm_{m}", f"a pykvm guest entered in {m} mode") for m in MODES),
        ("pykvm_emu", "a pykvm guest whose code runs in pykvm's emulator (non-PVM mode)"),
        ("pykvm_kvm", "a pykvm guest whose code runs under KVM_RUN (PVM mode)"),
        ("xdist_group(name)", "pytest-xdist --dist loadgroup: run the items of one group on one worker"),
    ]:
        config.addinivalue_line("markers", f"{marker}: {text}")


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix in SOURCE_SUFFIXES:
        if _has_header(file_path):
            return GuestSource.from_parent(parent, path=file_path)
        return None
    if file_path.suffix != SIDECAR_SUFFIX and file_path.with_name(file_path.name + SIDECAR_SUFFIX).is_file():
        return GuestImage.from_parent(parent, path=file_path)
    return None


def _has_header(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return HEADER_MARK in head and _HEADER_LINE.search(head) is not None


class GuestSource(pytest.File):
    """A guest source of pykvm's ``guests/`` whose header declares its guests' items."""

    def collect(self):
        try:
            section = header_section(self.path.read_text(encoding="utf-8", errors="replace"))
            if section is None:
                return
            text, start = section
            specs = parse_specs(text, self.path.stem, start)
            _check_library(self.path, specs)
        except SpecError as e:
            raise self.CollectError(f"{self.path}: {HEADER_MARK} header: {e}") from None
        for spec in specs:
            yield GuestItem.from_parent(self, name=spec.name, spec=spec, source=True)


class GuestImage(pytest.File):
    """An image with a sidecar ``IMAGE.toml`` declaring its items."""

    def collect(self):
        sidecar = self.path.with_name(self.path.name + SIDECAR_SUFFIX)
        try:
            specs = parse_specs(sidecar.read_text(encoding="utf-8"), self.path.name)
            for spec in specs:
                if spec.guest is not None:
                    raise SpecError(f"[{spec.name}]: guest names a library guest; an image is run as it is")
        except (SpecError, OSError, UnicodeDecodeError) as e:
            raise self.CollectError(f"{sidecar}: {e}") from None
        for spec in specs:
            yield GuestItem.from_parent(self, name=spec.name, spec=spec, source=False)


def _check_library(path: Path, specs: list[GuestSpec]) -> None:
    """A source's items name guests built from it (its main source: the first outside lib/),
    and every guest built from it has one."""
    from pykvm.guests import REPO_ROOT, build_script

    guests_dir = (REPO_ROOT / "guests").resolve()
    if path.resolve().parent != guests_dir:
        raise SpecError(f"only sources in pykvm's guests/ directory ({guests_dir}) are built and run; "
                        "give any other image a sidecar IMAGE.toml")
    recipes = build_script().RECIPES
    built_here = [r.name for r in recipes.values()
                  if r.runs_alone and next((s for s in r.sources if not s.startswith("lib/")), None) == path.name]
    declared = set()
    for spec in specs:
        guest = spec.guest or spec.name
        if guest not in built_here:
            raise SpecError(f"[{spec.name}]: {guest!r} is not a guest built from {path.name} "
                            f"(those are: {', '.join(built_here) or 'none'})")
        declared.add(guest)
    missing = [name for name in built_here if name not in declared]
    if missing:
        raise SpecError(f"{path.name} builds {', '.join(built_here)}: no item for {', '.join(missing)}")


# -- running --------------------------------------------------------------------------------------
class GuestFailure(Exception):
    """A guest item's run did not do what its spec says: ``problems``, and what is known."""

    def __init__(self, problems: list[str], record: dict | None, command: list[str], stderr: str,
                 returncode: int | None):
        super().__init__("; ".join(problems))
        self.problems = problems
        self.record = record
        self.command = command
        self.stderr = stderr
        self.returncode = returncode


_kvm_problems: dict[str, str | None] = {}


def kvm_problem(device: str) -> str | None:
    """Why ``device`` cannot run guests (None: it can), asked once per process."""
    if device not in _kvm_problems:
        from pykvm.errors import PykvmError
        from pykvm.kvm import Kvm

        try:
            Kvm(device).close()
            _kvm_problems[device] = None
        except PykvmError as e:
            _kvm_problems[device] = str(e)
    return _kvm_problems[device]


class GuestItem(pytest.Item):
    """One guest, run in its own VM by ``python -m pykvm run --json``."""

    def __init__(self, *, spec: GuestSpec, source: bool, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self.source = source
        self.add_marker("pykvm")
        if spec.mode is not None:
            self.add_marker(f"pykvm_{spec.mode}")
        for executor in spec.expected_executors or ():
            self.add_marker(f"pykvm_{executor}")
        if spec.group is not None:
            self.add_marker(pytest.mark.xdist_group(spec.group))
        if spec.xfail is not None:
            self.add_marker(pytest.mark.xfail(reason=spec.xfail, raises=GuestFailure, strict=True))

    @property
    def image(self) -> str:
        """IMAGE for ``pykvm run``: the library guest (built first) or the image itself."""
        if self.source:
            return str(self.path.parent / (self.spec.guest or self.spec.name))
        return str(self.path)

    def command(self) -> list[str]:
        s = self.spec
        rom = s.format == "bios" and not self.source
        cmd = [sys.executable, "-m", "pykvm", "run", "--json", f"--bios={self.image}" if rom else self.image,
               "--timeout", f"{s.timeout:g}", "--device", self.config.getoption("pykvm_device")]
        if not self.source:            # the library's recipes say how its guests start
            cmd += [f"--format={s.format}"] if s.format is not None and not rom else []
            cmd += [f"--mode={s.mode}"] if s.mode is not None and s.format in (None, "flat") else []
        for option, value in (("--mem", s.memory), ("--cmdline", s.cmdline), ("--emulator", s.emulator)):
            if value is not None:
                cmd.append(f"{option}={value}")
        if s.testdev is not None:
            cmd.append("--testdev" if s.testdev else "--no-testdev")
        return cmd + list(s.args)

    def setup(self) -> None:
        problem = kvm_problem(self.config.getoption("pykvm_device"))
        if problem is not None:
            pytest.skip(f"needs a usable KVM device: {problem}")
        if self.source:
            from pykvm.errors import PykvmError
            from pykvm.guests import runnable

            try:
                runnable(self.spec.guest or self.spec.name)     # built here, not within the timeout
            except PykvmError as e:
                pytest.fail(f"cannot build guest {self.spec.guest or self.spec.name!r}: {e}", pytrace=False)

    def runtest(self) -> None:
        command = self.command()
        try:
            proc = subprocess.run(command, capture_output=True, cwd=self.path.parent,
                                  timeout=self.spec.timeout + KILL_GRACE)
        except subprocess.TimeoutExpired as e:
            raise GuestFailure([f"pykvm did not end within {self.spec.timeout:g} s (--timeout) + {KILL_GRACE:g} s: "
                                "killed"], None, command, _decode(e.stderr), None) from None
        stderr = _decode(proc.stderr)
        try:
            record = json.loads(proc.stdout.splitlines()[-1])
        except (IndexError, ValueError):
            raise GuestFailure([f"pykvm ended with status {proc.returncode} and wrote no JSON record"],
                               None, command, stderr + _decode(proc.stdout), proc.returncode) from None
        self.user_properties += [("status", record["status"]), ("outcome", record["outcome"]),
                                 ("wall_seconds", round(record["wall_seconds"], 3))]
        problems = check(self.spec, record)
        if problems:
            raise GuestFailure(problems, record, command, stderr, proc.returncode)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, GuestFailure):
            return crash_report(self, excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, self.spec.line, f"pykvm guest {self.name}"


def _decode(data) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def full_status(record: dict) -> int:
    """The run's status before the process's 8 bits cut it: (value << 1) | 1 after a debug exit
    (a guest writing 0x80 ends with process status 1 but is not "all passed")."""
    value = record.get("debug_exit")
    return record["status"] if value is None else (value << 1) | 1


def check(spec: GuestSpec, record: dict) -> list[str]:
    """What ``record`` shows the guest did not do as ``spec`` says."""
    problems = []
    status = full_status(record)
    if status != spec.status:
        problems.append(f"exit status {status} ({record['outcome']}), expected {spec.status}")
    for key, field in (("format", "format"), ("mode", "entry_mode")):
        want = getattr(spec, key)
        if want is not None and record.get(field) is not None and record[field] != want:
            problems.append(f"{key} {record[field]}, expected {want}")
    serial = record.get("serial")
    if serial is not None:
        lines = {line.rstrip() for line in serial.splitlines()}
        problems += [f"no line {line!r} in the serial output" for line in spec.serial if line.rstrip() not in lines]
        problems += [f"no line matching {pattern!r} in the serial output" for pattern in spec.serial_match
                     if re.search(pattern, serial, re.M) is None]
    expected = spec.expected_executors
    if expected is not None and record.get("format") is not None:
        used = tuple(name for name, count in (("emu", record["instructions_emulated"]), ("kvm", record["kvm_exits"]))
                     if count)
        if used != expected:
            problems.append(f"ran in {' and '.join(used) or 'neither executor'}, expected {' and '.join(expected)}"
                            " (emu: pykvm's emulator, kvm: KVM_RUN)")
    return problems


def crash_report(item: GuestItem, failure: GuestFailure) -> str:
    """The failure as a VMM reports a crash: what went wrong, the status, the serial output's
    tail, the vCPU state with disassembly, the command to run it again."""
    spec, record = item.spec, failure.record
    where = item.path.name + (f", guest {spec.guest}" if spec.guest and spec.guest != spec.name else "")
    out = [f"pykvm guest {item.name} ({where}) failed:"]
    out += [f"  - {problem}" for problem in failure.problems]
    out += ["", f"command: {shlex.join(failure.command)}"]
    if record is None:
        out += ["", f"pykvm's status: {failure.returncode}"]
        out += _tail("pykvm's output", failure.stderr)
        return "\n".join(out)
    out += [f"status:  {record['status']} ({record['outcome']}): {record['meaning']}"]
    if record.get("error"):
        out.append(f"error:   {record['error']}")
    if record.get("path"):
        out.append(f"image:   {record['path']} ({record.get('format')}, entered in {record.get('entry_mode')} mode)")
    exits = ", ".join(f"{name} {count:,}" for name, count in record["exits_by_reason"].items())
    interrupts = record["interrupts"]
    out.append(f"ran:     {record['instructions_emulated']:,} instructions emulated, {record['kvm_exits']:,} KVM exits"
               f"{f' ({exits})' if exits else ''}, {record['conversions']} conversions to PVM mode, interrupts "
               f"{interrupts['emu']} emulated / {interrupts['kvm']} injected; {record['wall_seconds']:.2f} s wall, "
               f"{record['cpu_seconds']:.2f} s CPU")
    if record.get("serial") is not None:
        dropped = record.get("serial_dropped", 0)
        out += _tail("serial output" + (f" ({dropped:,} earlier bytes dropped)" if dropped else ""), record["serial"])
    out += _vcpu_lines(record)
    stderr = [line for line in failure.stderr.splitlines() if line != f"pykvm: error: {record.get('error')}"]
    if stderr:
        out += _tail("pykvm's stderr", "\n".join(stderr))
    return "\n".join(out)


def _tail(title: str, text: str) -> list[str]:
    lines = text.splitlines()
    if not lines:
        return ["", f"{title}: (none)"]
    shown = lines[-REPORT_TAIL:]
    head = f"{title}, last {len(shown)} of {len(lines)} lines:" if len(shown) < len(lines) else f"{title}:"
    return ["", head] + [f"  | {line}" for line in shown]


def _vcpu_lines(record: dict) -> list[str]:
    vcpu = record.get("vcpu")
    if vcpu is None:
        why = record.get("vcpu_error")
        return ["", f"vCPU: its state could not be read ({why})"] if why else []
    executor = "pykvm's emulator" if vcpu["executor"] == "emu" else "KVM"
    out = ["", f"vCPU in {vcpu['mode']} ({executor}) at {vcpu['cs']:04x}:{vcpu['rip']:08x}, linear {vcpu['linear']:#x}:",
           f"  code: {' '.join(vcpu['bytes'][i:i + 2] for i in range(0, len(vcpu['bytes']), 2)) or '(not readable)'}"]
    for n, d in enumerate(vcpu["disassembly"]):
        code = " ".join(d["bytes"][i:i + 2] for i in range(0, len(d["bytes"]), 2))
        out.append(f"  {'=>' if n == 0 else '  '} {d['address']:08x}  {code:<24} {d['text']}")
    regs = vcpu["registers"]
    names = list(regs)
    for i in range(0, len(names), 4):
        out.append("  " + "  ".join(f"{name:>6}={regs[name]:016x}" for name in names[i:i + 4]))
    return out
