"""Child processes that die with the test run: a pytest killed mid-run (Ctrl-C twice, a CI
timeout) must not leave a guest spinning in a `pykvm run` that has no --timeout."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(then=None):
    """A ``preexec_fn``: SIGKILL this child when its parent goes; ``then`` runs after, in the child."""
    def preexec():
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if then is not None:
            then()
    return preexec
