"""cffi's view of the KVM userspace API, declared once for the whole package: ``ffi`` (the
structs of ``cdef.py``) and ``libc`` (``ioctl``; ``ffi.errno`` gives its error).

Normally both come from ``pykvm.kvm._kvm_api``, a C extension that cffi generated and the C
compiler built when pykvm was installed (out-of-line API mode, ``_ffi_build.py``): importing it
parses nothing, and a call to ``ioctl`` is a direct C call (~0.35 us against ~0.8 in ABI mode).
Where it was not built (no C compiler at install time, a source tree used as is), the same
declarations are parsed here at import (in-line ABI mode, with pycparser) and ``ioctl`` comes
from the C library by ``dlopen``. ``MODE`` says which ("api" or "abi"); the environment variable
``PYKVM_CFFI=abi`` forces the fallback (the tests run both), ``PYKVM_CFFI=api`` refuses it. A
compiled module built from other declarations than ``cdef.py``'s (an edited source tree not
reinstalled) is not used either.
"""

from __future__ import annotations

import os


def _load():
    wanted = os.environ.get("PYKVM_CFFI", "")
    if wanted != "abi":
        try:
            from pykvm.kvm._kvm_api import ffi, lib
        except ImportError:
            if wanted == "api":
                raise
        else:
            from pykvm.kvm import cdef

            if lib.PYKVM_CDEF_CRC == cdef.crc():
                return ffi, lib, "api"
            if wanted == "api":              # built from other declarations: rebuild it
                raise ImportError("pykvm.kvm._kvm_api is out of date with pykvm/kvm/cdef.py: "
                                  "reinstall pykvm (or run python pykvm/kvm/_ffi_build.py)")
    import cffi

    from pykvm.kvm.cdef import CDEF

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    return ffi, ffi.dlopen(None), "abi"


ffi, libc, MODE = _load()
