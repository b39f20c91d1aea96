"""Loaded images really start under KVM: each format runs to a debug-exit write with the expected value.

The host kernel runs long mode on the hardware and emulates real and protected mode
itself, so this checks the loaders' placement and ``initial_state`` against the CPU
(GDT, identity map, multiboot registers and info struct, a boot sector's DL).
"""

from __future__ import annotations

import pytest

from pykvm.kvm import Kvm
from pykvm.kvm.cpu_state import load_state, store_state
from pykvm.kvm.exits import IoExit
from pykvm.loaders import load
from pykvm.x86 import boot
from tests.asm import assemble
from tests.loaders.loader_images import Seg, aout_kernel, elf, mb_header

pytestmark = pytest.mark.kvm

MIB = 1 << 20


def run_to_debug_exit(image: bytes, fmt: str = "auto", **kwargs):
    """Load ``image`` into a fresh VM, start it as the loader says; return (value written to 0xf4, state)."""
    with Kvm() as kvm, kvm.create_vm() as vm:
        mem = vm.create_memory(8 * MIB)
        img = load(mem, image, fmt, **kwargs)
        vcpu = vm.create_vcpu()
        vcpu.set_cpuid(kvm.supported_cpuid())
        store_state(vcpu, img.initial_state())
        for _ in range(100):
            exit_ = vcpu.run()
            if isinstance(exit_, IoExit) and exit_.is_out and exit_.port == 0xF4:
                return exit_.values()[0], load_state(vcpu), bytes(mem.view[:0x8000])
        pytest.fail(f"guest never wrote to the debug-exit port; last exit {exit_!r}")


def test_bootsector_gets_dl_0x80():
    code = assemble("mov al, dl\nout 0xf4, al", 16)
    value, _, _ = run_to_debug_exit(code.ljust(510, b"\xf4") + b"\x55\xaa")
    assert value == 0x80


def test_flat_real_mode_high_entry():
    code = assemble("mov ax, cs\nout 0xf4, ax", 16)
    value, _, _ = run_to_debug_exit(b"\xf4" * 5 + code, "flat", load_addr=0x12340, entry=0x12345)
    assert value == 0x1000


def test_flat_protected_mode_reloads_gdt_selectors():
    code = assemble("mov ax, 0x10\nmov ds, ax\nmov eax, [0x100100]\nout 0xf4, eax", 32)
    value, state, low = run_to_debug_exit(code.ljust(0x100, b"\xf4") + b"\x78\x56\x34\x12", "flat",
                                          mode="protected")
    assert value == 0x12345678
    assert low[boot.GDT_ADDR:boot.GDT_ADDR + 48] == boot.build_gdt()      # accessed bits preset: no writes


def test_elf64_long_mode_uses_identity_map_and_gdt():
    # Touch memory at 6 MiB (a later 2 MiB page) and reload DS/FS from the loader GDT.
    code = assemble("mov ax, 0x10\nmov ds, ax\nmov ax, 0x28\nmov fs, ax\n"
                    "mov rax, 0x600000\nmov dword ptr [rax], 0xabcd\nmov eax, [rax]\nout 0xf4, eax", 64)
    value, state, low = run_to_debug_exit(elf(64, [Seg(0x200000, code + b"\xf4")], 0x200000))
    assert value == 0xABCD
    for index, selector in ((3, 0x10), (4, 0x28)):       # DS, FS
        want = boot.gdt_segment(selector)
        got = state.seg[index]
        assert (got.selector, got.base, got.type, got.s, got.dpl, got.present, got.l) == \
            (want.selector, want.base, want.type, want.s, want.dpl, want.present, want.l)
    assert low[boot.GDT_ADDR:boot.GDT_ADDR + 48] == boot.build_gdt()


def test_multiboot_registers_and_info():
    # EAX must be the magic; report mem_lower from the info struct EBX points to.
    code = assemble("cmp eax, 0x2badb002\njne 1f\nmov eax, [ebx + 4]\nout 0xf4, eax\n1: hlt", 32)
    image = aout_kernel(code=code)
    value, state, _ = run_to_debug_exit(image, cmdline="x=1")
    assert value == 640


def test_multiboot_elf_kernel():
    code = assemble("mov eax, [ebx + 8]\nout 0xf4, eax", 32)
    image = elf(32, [Seg(0x100000, code + b"\xf4")], 0x100000, prefix=mb_header(0x2))
    value, _, _ = run_to_debug_exit(image)
    assert value == 7 * 1024            # mem_upper: 8 MiB RAM minus the first MiB, in KiB
