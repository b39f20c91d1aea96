"""Build-time script (setuptools ``cffi_modules``, see ``setup.py``): generates and compiles
``pykvm.kvm._kvm_api``, the out-of-line API-mode module ``_ffi.py`` imports.

It is run by path, before pykvm is importable, so it reads ``cdef.py`` by path too. The
extension is optional: without a C compiler the install goes on, and ``_ffi.py`` falls back
to in-line ABI mode. ``python pykvm/kvm/_ffi_build.py`` builds it in place by hand.
"""

import os
import runpy

import cffi

_HERE = os.path.dirname(os.path.abspath(__file__))
_DECLS = runpy.run_path(os.path.join(_HERE, "cdef.py"))

ffibuilder = cffi.FFI()
# The CRC of the declarations it was built from: ``_ffi.py`` uses the module only while they match.
ffibuilder.cdef(_DECLS["CDEF"] + _DECLS["API_FUNCTIONS"] + "#define PYKVM_CDEF_CRC ...\n")
ffibuilder.set_source("pykvm.kvm._kvm_api", _DECLS["C_SOURCE"] + f"#define PYKVM_CDEF_CRC {_DECLS['crc']()}u\n",
                      optional=True)

if __name__ == "__main__":
    os.chdir(os.path.dirname(os.path.dirname(_HERE)))
    ffibuilder.compile(verbose=True)
