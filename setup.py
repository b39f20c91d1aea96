"""Only for what pyproject.toml cannot say: cffi's build step of the compiled KVM API module."""

from setuptools import setup

setup(cffi_modules=["pykvm/kvm/_ffi_build.py:ffibuilder"])
