"""The guests behave as documented on an independent x86 model (unicorn / QEMU TCG).

This checks the guests themselves -- their expected values, their output protocol,
their exit values -- without pykvm's emulator or KVM, so a failure here is a guest
bug, not a VMM bug.  A tiny harness stands in for pykvm's loader and devices: it
maps RAM, writes the image where the loader would, answers COM1's LSR with "THR
empty", collects THR bytes and stops at the debug-exit write.

Unicorn hands every exception to a hook instead of delivering it, so for the
real-mode self-test the harness delivers them through the guest's IVT itself
(the same way pykvm's emulator must).
selftest32 is not run here: delivering protected-mode faults needs their error
codes, which unicorn does not expose.
"""

from __future__ import annotations

import importlib.util
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

unicorn = pytest.importorskip("unicorn")
from unicorn import x86_const as X  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the guests")

RAM_SIZE = 32 << 20
COM1_THR, COM1_LSR, DEBUG_EXIT, POST = 0x3F8, 0x3FD, 0xF4, 0x80
MODES = {"real": unicorn.UC_MODE_16, "protected": unicorn.UC_MODE_32, "long": unicorn.UC_MODE_64}


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_guests_for_unicorn",
                                                  REPO / "scripts" / "build_guests.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bg = _load_build_script()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return bg.build_all(out_dir=tmp_path_factory.mktemp("guests-unicorn"))


@dataclass
class Run:
    serial: bytearray = field(default_factory=bytearray)
    exit_value: int | None = None
    post_writes: int = 0
    post_reads: int = 0
    halted: bool = False
    pending_interrupt: tuple[int, int] | None = None  # (vector, ip at the hook)

    @property
    def text(self) -> str:
        return self.serial.decode()

    def lines(self) -> list[str]:
        return self.text.splitlines()


def run_guest(image: bytes, mode: str, load: int, *, regs: dict[int, int] | None = None,
              extra: dict[int, bytes] | None = None, entry: int | None = None,
              budget: int = 50_000_000) -> Run:
    """Run a guest to its debug-exit write (or HLT) and return what it did."""
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, MODES[mode])
    uc.mem_map(0, RAM_SIZE)
    uc.mem_write(load, image)
    for address, data in (extra or {}).items():
        uc.mem_write(address, data)
    run = Run()

    def on_out(uc, port, size, value, _):
        if port == COM1_THR:
            run.serial.append(value & 0xFF)
        elif port == DEBUG_EXIT:
            run.exit_value = value
            uc.emu_stop()
        elif port == POST:
            run.post_writes += 1

    def on_in(uc, port, size, _):
        if port == POST:
            run.post_reads += 1
        return 0x20 if port == COM1_LSR else 0

    def on_interrupt(uc, vector, _):
        run.pending_interrupt = (vector, uc.reg_read(X.UC_X86_REG_EIP))
        uc.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_INSN, on_out, None, 1, 0, X.UC_X86_INS_OUT)
    uc.hook_add(unicorn.UC_HOOK_INSN, on_in, None, 1, 0, X.UC_X86_INS_IN)
    uc.hook_add(unicorn.UC_HOOK_INTR, on_interrupt)
    stack = {"real": X.UC_X86_REG_SP, "protected": X.UC_X86_REG_ESP, "long": X.UC_X86_REG_RSP}
    uc.reg_write(stack[mode], 0x7C00 if mode == "real" else 0x80000)
    for reg, value in (regs or {}).items():
        uc.reg_write(reg, value)

    pristine = uc.context_save()
    pc = load if entry is None else entry
    for _ in range(10_000):
        uc.emu_start(pc, 1 << 40, count=budget)
        if run.exit_value is not None:
            return run
        if run.pending_interrupt is None:
            run.halted = True  # unicorn returns on HLT
            return run
        vector, ip = run.pending_interrupt
        run.pending_interrupt = None
        assert mode == "real", f"unexpected exception {vector} at {ip:#x} in {mode} mode"
        pc = _deliver_real_mode(uc, pristine, vector, ip)
    raise AssertionError("the guest took too many interrupts")


_REAL_MODE_STATE = (
    X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX, X.UC_X86_REG_ESP,
    X.UC_X86_REG_EBP, X.UC_X86_REG_ESI, X.UC_X86_REG_EDI, X.UC_X86_REG_EFLAGS,
    X.UC_X86_REG_CS, X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS,
    X.UC_X86_REG_SS,
)


def _deliver_real_mode(uc, pristine, vector: int, ip: int) -> int:
    """Deliver an interrupt through the IVT as a real-mode CPU does; return the new linear PC.

    Unicorn never completes a delivery itself, so its CPU model keeps remembering
    the fault and would turn the next one into #DF.  Going back to a context saved
    before the run, then putting the registers back, forgets it: in real mode the
    registers are the whole architectural state.
    """
    state = {reg: uc.reg_read(reg) for reg in _REAL_MODE_STATE}
    uc.context_restore(pristine)
    for reg, value in state.items():
        uc.reg_write(reg, value)
    cs = state[X.UC_X86_REG_CS]
    code = bytes(uc.mem_read(((cs << 4) + ip) & 0xFFFFF, 2))
    if code[0] == 0xCD and code[1] == vector:
        ip += 2  # INT n: return after it; a fault returns to the faulting instruction
    flags = state[X.UC_X86_REG_EFLAGS]
    ss, sp = state[X.UC_X86_REG_SS], state[X.UC_X86_REG_ESP] & 0xFFFF
    for value in (flags & 0xFFFF, cs, ip & 0xFFFF):
        sp = (sp - 2) & 0xFFFF
        uc.mem_write((ss << 4) + sp, struct.pack("<H", value))
    uc.reg_write(X.UC_X86_REG_SP, sp)
    uc.reg_write(X.UC_X86_REG_EFLAGS, flags & ~0x300)  # clear IF and TF
    new_ip, new_cs = struct.unpack("<HH", uc.mem_read(vector * 4, 4))
    uc.reg_write(X.UC_X86_REG_CS, new_cs)
    return (new_cs << 4) + new_ip


def _summary(run: Run) -> tuple[int, int]:
    last = [line for line in run.lines() if line.startswith("SUMMARY: ")]
    assert last, run.text
    words = last[-1].split()
    return int(words[1]), int(words[3])


def test_hello64(images):
    run = run_guest(images["hello64"].read_bytes(), "long", 0x100000)
    assert run.text == "Hello from a 64-bit pykvm guest!\n"
    assert run.exit_value == 0


def test_exits64_does_count_outs_one_in_then_halts(images):
    image = bg.with_count(images["exits64"].read_bytes(), 1000)
    run = run_guest(image, "long", 0x100000)
    assert (run.post_writes, run.post_reads, run.halted) == (1000, 1, True)
    run = run_guest(bg.with_count(image, 0), "long", 0x100000)
    assert (run.post_writes, run.post_reads, run.halted) == (0, 1, True)


@pytest.mark.parametrize("name", ["boot16to64", "bootsector"])
def test_boot16to64_prints_a_line_per_mode(images, name):
    run = run_guest(images[name].read_bytes(), "real", 0x7C00)
    lines = run.lines()
    assert [line.split()[0] for line in lines] == ["[real]", "[protected]", "[long]"]
    assert "PVM mode" in lines[2]
    assert run.exit_value == 0


def test_selftest16_passes(images):
    run = run_guest(images["selftest16"].read_bytes(), "real", 0x7C00)
    failures = [line for line in run.lines() if line.startswith("FAIL")]
    assert failures == []
    passed, failed = _summary(run)
    assert (passed, failed) == (137, 0)
    assert run.exit_value == 0


def test_loop32_checksum_matches_the_model(images):
    image = bg.with_count(images["loop32"].read_bytes(), 500)
    run = run_guest(image, "protected", 0x100000)
    assert run.text == f"loop32: 500 iterations, checksum 0x{bg.loop32_checksum(500):08x}\n"
    assert run.exit_value == 0


def test_cwork32_passes(images):
    run = run_guest(images["cwork32"].read_bytes(), "protected", 0x100000)
    assert [line for line in run.lines() if line.startswith("FAIL")] == []
    assert _summary(run) == (10, 0)
    assert run.exit_value == 0


def test_assert32_reports_file_line_and_condition(images):
    run = run_guest(images["assert32"].read_bytes(), "protected", 0x100000)
    assert run.lines()[-1].startswith("ASSERT FAILED: assert32.c:")
    assert run.lines()[-1].endswith(": answer == 42")
    assert run.exit_value == 0x7F


def _load_elf32(path: Path) -> tuple[dict[int, bytes], int]:
    data = path.read_bytes()
    entry, phoff = struct.unpack_from("<II", data, 24)
    phentsize, phnum = struct.unpack_from("<HH", data, 42)
    segments = {}
    for i in range(phnum):
        p_type, offset, _vaddr, paddr, filesz, memsz = struct.unpack_from(
            "<IIIIII", data, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            segments[paddr] = data[offset:offset + filesz] + bytes(memsz - filesz)
    return segments, entry


@pytest.mark.parametrize("magic, exit_value", [(0x2BADB002, 0), (0x12345678, 1)])
def test_multiboot32_reports_magic_and_memory(images, magic, exit_value):
    segments, entry = _load_elf32(images["multiboot32"])
    info = struct.pack("<III", 0x1, 639, 31 * 1024)  # flags: memory fields valid
    first = min(segments)
    image = b"".join(segments[a] for a in sorted(segments))  # one contiguous segment here
    run = run_guest(image, "protected", first, extra={0x9000: info},
                    regs={X.UC_X86_REG_EAX: magic, X.UC_X86_REG_EBX: 0x9000}, entry=entry)
    assert run.lines()[0].startswith(f"multiboot32: eax=0x{magic:08x}")
    if exit_value == 0:
        assert run.lines()[1] == "multiboot32: mem_lower=639 KiB mem_upper=31744 KiB"
    assert run.exit_value == exit_value
