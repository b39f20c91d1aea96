"""Shared test fixtures: the ``kvm`` marker skips (with the reason) where /dev/kvm is unusable."""

from __future__ import annotations

import os

import pytest


def _kvm_unusable_reason() -> str | None:
    from pykvm.errors import HostError
    from pykvm.kvm import Kvm

    try:
        Kvm().close()
    except HostError as e:
        return str(e)
    return None


_REASON = _kvm_unusable_reason()


def pytest_collection_modifyitems(config, items):
    if _REASON is None:
        return
    skip = pytest.mark.skip(reason=f"needs /dev/kvm: {_REASON}")
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def open_fds():
    """The number of fds this process has open (for leak checks)."""
    return lambda: len(os.listdir("/proc/self/fd"))
