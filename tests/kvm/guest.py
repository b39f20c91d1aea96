"""A raw KVM guest for the KVM-layer tests: one VM, RAM, one vCPU in the mode asked for.

Built from the package's own pieces (boot-state builders, state sync) but without the
Machine's run loop, so each test sees KVM's exits exactly as the KVM layer reports them.
"""

from __future__ import annotations

import contextlib

from pykvm.kvm import Kvm
from pykvm.kvm.cpu_state import store_state
from pykvm.x86 import boot

CODE_ADDR = 0x100000
MEMORY = 4 << 20


@contextlib.contextmanager
def raw_guest(code: bytes, mode: str = "long", memory: int = MEMORY, entry: int | None = None):
    """Yield (kvm, vm, mem, vcpu) with ``code`` at CODE_ADDR (0x7c00 in real mode) ready to KVM_RUN."""
    addr = 0x7C00 if mode == "real" else CODE_ADDR
    with Kvm() as kvm, kvm.create_vm() as vm:
        mem = vm.create_memory(memory)
        mem.write(addr, code)
        boot.prepare_memory(mode, mem)
        vcpu = vm.create_vcpu()
        vcpu.set_cpuid(kvm.supported_cpuid())
        vcpu.enable_sync_regs()
        store_state(vcpu, boot.initial_state(mode, addr if entry is None else entry))
        yield kvm, vm, mem, vcpu
