"""fds owned by objects that may be dropped without ``close()``: closed when the owner is
collected (or at interpreter exit), with a ``ResourceWarning``, as Python does for files."""

from __future__ import annotations

import os
import warnings
import weakref


def own_fd(owner, fd: int, what: str) -> weakref.finalize:
    """Close ``fd`` when ``owner`` is collected; the owner's ``close()`` calls ``detach()`` on the
    returned finalizer and closes the fd itself."""
    return weakref.finalize(owner, _close_dropped, fd, what)


def warn_unclosed(what: str) -> None:
    warnings.warn(f"unclosed {what}: close it, or use it as a context manager", ResourceWarning, stacklevel=3)


def _close_dropped(fd: int, what: str) -> None:
    warn_unclosed(f"{what} (fd {fd})")
    try:
        os.close(fd)
    except OSError:
        pass
