"""The boot paths of issue 14 end to end: a firmware ROM at the reset vector (--bios), a PVH
kernel, a Multiboot 2 kernel with a module; each on pykvm and, where QEMU is installed, on
QEMU 7.2 (-bios, -kernel, -initrd, -append), which must print the same checks and results."""

from __future__ import annotations

import re
import zlib

import pytest

from pykvm.guests import build_guest
from tests.reference import needs_qemu, pykvm, qemu, qemu_run

pytestmark = pytest.mark.kvm

ROM_CHECKS = "SUMMARY: 19 passed, 0 failed"
MODULE = bytes((i * 37 + (i >> 7)) & 0xFF for i in range(5000))
CMDLINE = f"console=ttyS0 crc32={zlib.crc32(MODULE):#010x}"


def test_the_bios_rom_reaches_pvm_mode():
    run = pykvm("--bios", str(build_guest("bios")), "--stats", "-v")
    assert run.status == 1, run.stderr
    assert run.compared[-1] == ROM_CHECKS and "FAIL" not in run.output
    assert "converted to PVM mode" in run.stderr and "1 conversions" in run.stderr
    assert "rom      firmware ROM (alias below 1 MiB)" in run.stderr        # -v shows the map


def test_the_bios_rom_under_the_kernels_own_emulator():
    run = pykvm("--bios", str(build_guest("bios")), "--emulator", "kernel")
    assert (run.status, run.compared[-1]) == (1, ROM_CHECKS), run.stderr


@pytest.mark.parametrize("size", [256 << 10, 16 << 20])
def test_a_bigger_rom_shows_its_top_at_the_reset_vector(tmp_path, size):
    """The ROM's code is in its last 64 KiB: padded in front, it runs the same."""
    rom = tmp_path / "rom.bin"
    rom.write_bytes(bytes(size - 0x10000) + build_guest("bios").read_bytes())
    run = pykvm("--bios", str(rom), "-v")
    assert (run.status, run.compared[-1]) == (1, ROM_CHECKS), run.stderr
    assert "(alias below 1 MiB) (128 KiB)" in run.stderr


def test_rom_writes_are_dropped_in_both_executors_and_shown_at_vv():
    run = pykvm("--bios", str(build_guest("bios")), "-vv")
    assert run.status == 1
    dropped = re.findall(r"ROM write of 0x5a \(1 bytes\) at ROM offset (0x[0-9a-f]+) dropped", run.stderr)
    assert len(dropped) == 5 and len(set(dropped)) == 1          # 2 real mode, 2 protected, 1 long mode
    # The long-mode one under KVM: a read-only slot's write, which KVM queues in the coalesced
    # ring (replayed, and so dropped and shown, at the next exit) or, where nothing is
    # coalesced, makes an MMIO exit of its own.
    assert not re.search(r"exit \d+: mmio write .*0xffff", run.stderr)
    uncoalesced = pykvm("--bios", str(build_guest("bios")), "-vv", env={"PYKVM_COALESCE": "0"})
    assert uncoalesced.status == 1 and len(re.findall(r"ROM write of 0x5a .* dropped", uncoalesced.stderr)) == 5
    assert re.search(r"exit \d+: mmio write .*0xffff", uncoalesced.stderr), uncoalesced.stderr[-2000:]


def test_the_pvh_kernel_prints_its_start_info(tmp_path):
    (tmp_path / "data.bin").write_bytes(MODULE)
    run = pykvm(str(build_guest("pvh")), "--module", "data.bin", "--cmdline", CMDLINE, cwd=tmp_path)
    assert run.status == 1, run.stderr
    assert f'info: command line "{CMDLINE}"' in run.output
    assert f'module 0: 5000 bytes, crc32 {zlib.crc32(MODULE):#010x}, string ""' in run.output
    assert run.compared[-1] == "SUMMARY: 5 passed, 0 failed"


def test_the_mb2_kernel_checksums_its_module(tmp_path):
    (tmp_path / "data.bin").write_bytes(MODULE)
    run = pykvm(str(build_guest("mb2")), "--module", "data.bin", "--cmdline", CMDLINE, cwd=tmp_path)
    assert run.status == 1 and "info: booted by Multiboot 2" in run.output, run.stderr
    assert f'module 0: 5000 bytes, crc32 {zlib.crc32(MODULE):#010x}, string "data.bin"' in run.output
    assert run.compared[-1] == "SUMMARY: 5 passed, 0 failed"
    as_v1 = pykvm(str(build_guest("mb2")), "--format", "multiboot", "--module", "data.bin", "--cmdline", CMDLINE,
                  cwd=tmp_path)
    assert "info: booted by Multiboot 1" in as_v1.output and as_v1.compared == run.compared


@needs_qemu
def test_the_bios_rom_as_under_qemu():
    rom = build_guest("bios")
    ours, theirs = pykvm("--bios", str(rom)), qemu(qemu_run.qemu_command(None, bios=rom))
    assert theirs.status == ours.status == 1
    assert theirs.compared == ours.compared


@needs_qemu
def test_a_256_kib_rom_as_under_qemu(tmp_path):
    rom = tmp_path / "rom.bin"
    rom.write_bytes(bytes(0x30000) + build_guest("bios").read_bytes())
    ours, theirs = pykvm("--bios", str(rom)), qemu(qemu_run.qemu_command(None, bios=rom))
    assert theirs.status == ours.status == 1 and theirs.compared == ours.compared


def _without_module_strings(lines):
    return [re.sub(r', string ".*"$', "", line) for line in lines]


@needs_qemu
def test_the_pvh_kernel_as_under_qemu(tmp_path):
    """QEMU gives its -initrd as the one PVH module, without a command line."""
    (tmp_path / "data.bin").write_bytes(MODULE)
    kernel = build_guest("pvh")
    ours = pykvm(str(kernel), "--module", "data.bin", "--cmdline", CMDLINE, cwd=tmp_path)
    theirs = qemu(qemu_run.qemu_command(kernel, initrd="data.bin", append=CMDLINE), cwd=tmp_path)
    assert theirs.status == ours.status == 1
    assert theirs.compared == ours.compared
    assert f'info: command line "{CMDLINE}"' in theirs.output


@needs_qemu
def test_the_mb2_kernel_as_under_qemu(tmp_path):
    """QEMU's -kernel knows only Multiboot 1: it boots the same file by its Multiboot 1 header,
    with -initrd as the module (whose string is the path as given, as pykvm's)."""
    (tmp_path / "data.bin").write_bytes(MODULE)
    kernel = build_guest("mb2")
    ours = pykvm(str(kernel), "--module", "data.bin", "--cmdline", CMDLINE, cwd=tmp_path)
    theirs = qemu(qemu_run.qemu_command(kernel, initrd="data.bin", append=CMDLINE), cwd=tmp_path)
    assert "info: booted by Multiboot 1" in theirs.output
    assert theirs.status == ours.status == 1
    assert theirs.compared == ours.compared
