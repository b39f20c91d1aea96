"""The one place pykvm calls ioctl(2): checked, named, allocation-free."""

from __future__ import annotations

import os

from pykvm.errors import KvmIoctlError
from pykvm.kvm._ffi import ffi, libc

_ioctl = libc.ioctl
NULL = ffi.NULL


def ioctl(fd: int, request: int, arg, name: str) -> int:
    """Issue ``ioctl(fd, request, arg)``; ``arg`` is a preallocated cdata pointer or a cdata integer.

    Returns the ioctl's non-negative result; raises ``KvmIoctlError`` naming the
    request on failure.
    """
    ret = _ioctl(fd, request, arg)
    if ret < 0:
        err = ffi.errno
        raise KvmIoctlError(name, err, os.strerror(err))
    return ret


def ioctl_int(fd: int, request: int, value: int, name: str) -> int:
    """An ioctl whose argument is a plain integer (KVM_CHECK_EXTENSION, KVM_CREATE_VCPU, ...)."""
    return ioctl(fd, request, ffi.cast("void *", value), name)
