"""``Kvm``: the /dev/kvm system fd — API version, capabilities, supported CPUID, VM creation."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pykvm.errors import HostError, KvmIoctlError
from pykvm.kvm import ioctls as K
from pykvm.kvm._ffi import ffi
from pykvm.kvm._owned import own_fd
from pykvm.kvm._syscall import ioctl, ioctl_int

KVM_API_VERSION = 12
DEFAULT_DEVICE = "/dev/kvm"
_MAX_CPUID_ENTRIES = 256
_PVM_MODULE = Path("/sys/module/kvm_pvm")


def open_kvm_device(path: str) -> int:
    """Open the KVM device, turning each way it can fail into a one-line HostError."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HostError(f"{path} does not exist: this host has no KVM (is the kvm module loaded?)") from None
    except PermissionError:
        raise HostError(f"no permission to open {path}: run as root or join the group that owns it") from None
    except OSError as e:
        raise HostError(f"cannot open {path}: {e.strerror}") from None


class Kvm:
    """The KVM system: open once per process, create VMs from it. A context manager."""

    def __init__(self, path: str = DEFAULT_DEVICE):
        self.path = path
        self.fd = open_kvm_device(path)
        self._finalizer = own_fd(self, self.fd, f"Kvm {path}")
        try:
            self.api_version = ioctl_int(self.fd, K.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
            if self.api_version != KVM_API_VERSION:
                raise HostError(f"{path} speaks KVM API version {self.api_version}, pykvm needs {KVM_API_VERSION}")
            self.vcpu_mmap_size = ioctl_int(self.fd, K.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
        except BaseException:
            self.close()
            raise
        self._supported_cpuid = None

    def check_extension(self, capability: int) -> int:
        """KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific positive value."""
        return ioctl_int(self.fd, K.KVM_CHECK_EXTENSION, capability, "KVM_CHECK_EXTENSION")

    def capabilities(self) -> dict[str, int]:
        return {name: self.check_extension(cap) for name, cap in K.CAPABILITY_NAMES.items()}

    @staticmethod
    def is_pvm_host() -> bool:
        """Whether the PVM hypervisor backs KVM here (its module is loaded)."""
        return _PVM_MODULE.exists()

    def supported_cpuid(self):
        """KVM_GET_SUPPORTED_CPUID, as a cdata ``struct kvm_cpuid2 *`` (cached; pass it to Vcpu.set_cpuid)."""
        if self._supported_cpuid is None:
            cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": _MAX_CPUID_ENTRIES,
                                                   "entries": _MAX_CPUID_ENTRIES})
            cpuid.nent = _MAX_CPUID_ENTRIES
            try:
                ioctl(self.fd, K.KVM_GET_SUPPORTED_CPUID, cpuid, "KVM_GET_SUPPORTED_CPUID")
            except KvmIoctlError as e:
                if e.errno == errno.E2BIG:
                    raise HostError("KVM reports more CPUID entries than pykvm expects") from None
                raise
            self._supported_cpuid = cpuid
        return self._supported_cpuid

    def create_vm(self):
        from pykvm.kvm.vm import Vm

        fd = ioctl_int(self.fd, K.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        return Vm(self, fd)

    def close(self) -> None:
        """Close the system fd (again: nothing)."""
        self._finalizer.detach()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Kvm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
