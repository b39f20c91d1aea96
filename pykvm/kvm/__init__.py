"""The KVM userspace API and nothing else: cffi structs, ioctl numbers, Kvm → Vm → Vcpu, typed exits."""

from pykvm.kvm.exits import ExitReason
from pykvm.kvm.system import Kvm
from pykvm.kvm.vcpu import Vcpu
from pykvm.kvm.vm import Vm

__all__ = ["Kvm", "Vm", "Vcpu", "ExitReason"]
