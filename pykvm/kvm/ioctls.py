"""KVM ioctl request numbers, derived from the struct sizes cffi computed.

Linux encodes an ioctl number as dir(2 bits) | size(14) | type(8) | nr(8)
(``include/uapi/asm-generic/ioctl.h``); KVM's type is 0xAE. Deriving the
numbers from ``ffi.sizeof`` keeps them right by construction; the tests compare
them with the values the kernel headers publish.
"""

from __future__ import annotations

from pykvm.kvm._ffi import ffi

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, ctype: str) -> int:
    return _ioc(_IOC_READ, nr, ffi.sizeof(ctype))


def _iow(nr: int, ctype: str) -> int:
    return _ioc(_IOC_WRITE, nr, ffi.sizeof(ctype))


def _iowr(nr: int, ctype: str) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, ffi.sizeof(ctype))


# System ioctls (on the /dev/kvm fd)
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, "struct kvm_msr_list")
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, "struct kvm_cpuid2")

# VM ioctls
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, "struct kvm_userspace_memory_region")
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, "__u64")
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_REGISTER_COALESCED_MMIO = _iow(0x67, "struct kvm_coalesced_mmio_zone")
KVM_UNREGISTER_COALESCED_MMIO = _iow(0x68, "struct kvm_coalesced_mmio_zone")

# vCPU ioctls
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, "struct kvm_regs")
KVM_SET_REGS = _iow(0x82, "struct kvm_regs")
KVM_GET_SREGS = _ior(0x83, "struct kvm_sregs")
KVM_SET_SREGS = _iow(0x84, "struct kvm_sregs")
KVM_TRANSLATE = _iowr(0x85, "struct kvm_translation")
KVM_INTERRUPT = _iow(0x86, "struct kvm_interrupt")
KVM_GET_MSRS = _iowr(0x88, "struct kvm_msrs")
KVM_SET_MSRS = _iow(0x89, "struct kvm_msrs")
KVM_GET_FPU = _ior(0x8C, "struct kvm_fpu")
KVM_SET_FPU = _iow(0x8D, "struct kvm_fpu")
KVM_SET_CPUID2 = _iow(0x90, "struct kvm_cpuid2")
KVM_GET_CPUID2 = _iowr(0x91, "struct kvm_cpuid2")
KVM_GET_MP_STATE = _ior(0x98, "struct kvm_mp_state")
KVM_SET_MP_STATE = _iow(0x99, "struct kvm_mp_state")
KVM_NMI = _io(0x9A)
KVM_SET_GUEST_DEBUG = _iow(0x9B, "struct kvm_guest_debug")
KVM_GET_VCPU_EVENTS = _ior(0x9F, "struct kvm_vcpu_events")
KVM_SET_VCPU_EVENTS = _iow(0xA0, "struct kvm_vcpu_events")
KVM_VCPUEVENT_VALID_NMI_PENDING = 0x1

# Capabilities (KVM_CHECK_EXTENSION arguments)
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_SYNC_REGS = 74
KVM_CAP_READONLY_MEM = 81
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_COALESCED_MMIO = 15      # the answer is the page of the vCPU mapping that holds the ring
KVM_CAP_COALESCED_PIO = 162

CAPABILITY_NAMES = {
    "IRQCHIP": KVM_CAP_IRQCHIP,
    "HLT": KVM_CAP_HLT,
    "USER_MEMORY": KVM_CAP_USER_MEMORY,
    "EXT_CPUID": KVM_CAP_EXT_CPUID,
    "NR_VCPUS": KVM_CAP_NR_VCPUS,
    "MAX_VCPUS": KVM_CAP_MAX_VCPUS,
    "NR_MEMSLOTS": KVM_CAP_NR_MEMSLOTS,
    "SET_GUEST_DEBUG": KVM_CAP_SET_GUEST_DEBUG,
    "SYNC_REGS": KVM_CAP_SYNC_REGS,
    "READONLY_MEM": KVM_CAP_READONLY_MEM,
    "IMMEDIATE_EXIT": KVM_CAP_IMMEDIATE_EXIT,
    "X86_USER_SPACE_MSR": KVM_CAP_X86_USER_SPACE_MSR,
    "COALESCED_MMIO": KVM_CAP_COALESCED_MMIO,
    "COALESCED_PIO": KVM_CAP_COALESCED_PIO,
}

# Memory-region flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

# kvm_run.kvm_valid_regs / kvm_dirty_regs
KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2

# kvm_guest_debug.control
KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000

# mp_state
KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
