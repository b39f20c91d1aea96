"""Struct layouts and ioctl numbers against the kernel's own headers (no /dev/kvm needed).

The expected values come from two independent places: constants published in
``<linux/kvm.h>`` (hard-coded below, as the x86-64 ABI fixes them) and, where a C
compiler and the kernel headers are installed, a C program compiled against them.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pykvm.kvm import ioctls as K
from pykvm.kvm._ffi import ffi
from pykvm.kvm.exits import IO_HEADER, IO_HEADER_OFFSET

STRUCT_SIZES = {
    "kvm_run": 2352, "kvm_regs": 144, "kvm_sregs": 312, "kvm_segment": 24, "kvm_dtable": 16,
    "kvm_fpu": 416, "kvm_msrs": 8, "kvm_msr_entry": 16, "kvm_userspace_memory_region": 32,
    "kvm_guest_debug": 72, "kvm_cpuid2": 8, "kvm_cpuid_entry2": 40, "kvm_mp_state": 4,
    "kvm_vcpu_events": 64, "kvm_sync_regs": 520, "kvm_translation": 24,
}

# Values as the kernel headers define them for x86-64.
IOCTL_NUMBERS = {
    "KVM_GET_API_VERSION": 0xAE00, "KVM_CREATE_VM": 0xAE01, "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04, "KVM_GET_SUPPORTED_CPUID": 0xC008AE05, "KVM_CREATE_VCPU": 0xAE41,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46, "KVM_RUN": 0xAE80, "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_REGS": 0x4090AE82, "KVM_GET_SREGS": 0x8138AE83, "KVM_SET_SREGS": 0x4138AE84,
    "KVM_GET_MSRS": 0xC008AE88, "KVM_SET_MSRS": 0x4008AE89, "KVM_GET_FPU": 0x81A0AE8C,
    "KVM_SET_FPU": 0x41A0AE8D, "KVM_SET_CPUID2": 0x4008AE90, "KVM_GET_MP_STATE": 0x8004AE98,
    "KVM_SET_MP_STATE": 0x4004AE99, "KVM_SET_GUEST_DEBUG": 0x4048AE9B, "KVM_GET_VCPU_EVENTS": 0x8040AE9F,
    "KVM_SET_VCPU_EVENTS": 0x4040AEA0, "KVM_TRANSLATE": 0xC018AE85,
}


@pytest.mark.parametrize("name,size", sorted(STRUCT_SIZES.items()))
def test_struct_size_matches_the_kernel_abi(name, size):
    assert ffi.sizeof(f"struct {name}") == size


@pytest.mark.parametrize("name,number", sorted(IOCTL_NUMBERS.items()))
def test_ioctl_number_matches_the_kernel_headers(name, number):
    assert getattr(K, name) == number


def test_kvm_run_offsets():
    assert ffi.offsetof("struct kvm_run", "exit_reason") == 8
    assert ffi.offsetof("struct kvm_run", "io") == IO_HEADER_OFFSET == 32
    assert IO_HEADER.size == ffi.sizeof(ffi.typeof(ffi.new("struct kvm_run *").io))
    assert ffi.offsetof("struct kvm_run", "kvm_valid_regs") == 288
    assert ffi.offsetof("struct kvm_run", "s") == 304


def _compile_and_run(source: str) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not Path("/usr/include/linux/kvm.h").exists():
        pytest.skip("needs a C compiler and the kernel headers (linux/kvm.h)")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp, "probe.c"), Path(tmp, "probe")
        src.write_text(source)
        subprocess.run([cc, "-o", str(exe), str(src)], check=True, capture_output=True)
        return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout


def test_layouts_and_numbers_against_a_program_compiled_with_the_headers():
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <linux/kvm.h>', 'int main(void) {']
    for name in STRUCT_SIZES:
        lines.append(f'printf("{name} %zu\\n", sizeof(struct {name}));')
    for name in IOCTL_NUMBERS:
        lines.append(f'printf("{name} %lu\\n", (unsigned long){name});')
    lines.append('printf("io_offset %zu\\n", offsetof(struct kvm_run, io));')
    lines.append('return 0; }')
    values = dict(line.split() for line in _compile_and_run("\n".join(lines)).splitlines())
    for name in STRUCT_SIZES:
        assert ffi.sizeof(f"struct {name}") == int(values[name]), name
    for name in IOCTL_NUMBERS:
        assert getattr(K, name) == int(values[name]), name
    assert int(values["io_offset"]) == IO_HEADER_OFFSET
