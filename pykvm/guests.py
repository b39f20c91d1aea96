"""Finding and building the guest images of a pykvm checkout (``guests/``, built by
``scripts/build_guests.py``, which is loaded by path so it stays a standalone script)."""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from functools import lru_cache
from pathlib import Path

from pykvm.errors import BadInputError

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_guests.py"
DEFAULT_GUEST = "boot16to64"


@lru_cache(maxsize=1)
def build_script():
    """The ``scripts/build_guests.py`` module of this checkout."""
    if not BUILD_SCRIPT.exists():
        raise BadInputError(f"guest build script not found ({BUILD_SCRIPT.name}); "
                            "the built-in guests need a pykvm source checkout")
    spec = importlib.util.spec_from_file_location("pykvm_build_guests", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def build_guest(name: str) -> Path:
    """Build (if stale) the guest ``name`` from ``guests/`` and return its primary image."""
    return Path(build_script().build(name))


def resolve_image(path: str | None) -> Path:
    """IMAGE as given on the command line: None → the default guest; ``guests/NAME.S`` → built first."""
    if path is None:
        return build_guest(DEFAULT_GUEST)
    p = Path(path)
    if p.suffix in (".S", ".s", ".c"):
        guests_dir = REPO_ROOT / "guests"
        if p.resolve().parent != guests_dir.resolve():
            raise BadInputError(f"{path}: only sources in the guests/ directory can be built "
                                "(they need its linker scripts); build others yourself")
        return build_guest(p.stem)
    if not p.exists():
        raise BadInputError(f"{path}: no such file")
    return p


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_image(path: Path, limit: int) -> bytes:
    """The bytes of the image file ``path``, refused before anything is read when it is not a
    regular file (a FIFO, /dev/zero) or holds more than ``limit`` bytes (guest RAM); reads no
    more than the file's size and one byte (a file that grows meanwhile is refused too)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below anyway).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise BadInputError(f"{path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
            raise BadInputError(f"{path} is {kind}: an image must be a regular file")
        if st.st_size > limit:
            raise BadInputError(f"{path} holds {st.st_size:#x} bytes, more than guest RAM ({limit:#x} bytes, --mem)")
        with open(fd, "rb", closefd=False) as f:
            data = f.read(st.st_size + 1)
    except OSError as e:
        raise BadInputError(f"{path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) != st.st_size:
        raise BadInputError(f"{path} changed size while pykvm read it")
    return data
