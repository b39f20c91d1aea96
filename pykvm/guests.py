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
    return resolve(path)[0]


def resolve(path: str | None) -> tuple[Path, dict]:
    """IMAGE as given on the command line, and how the machine must start it.

    None → the default guest; ``guests/NAME.S`` (``.c``, or a guest's name in ``guests/``
    without a suffix) → that guest, built first, as the image that says how it starts (an
    ELF, a multiboot or PVH kernel, a real-mode flat image, a firmware ROM) with what else its
    machine needs (``{"testdev": True}``, ``{"rom": True}``: the image is a ``--bios`` ROM).
    Any other path is used as it is, with no defaults.
    """
    if path is None:
        return runnable(DEFAULT_GUEST)
    p = Path(path)
    guests_dir = REPO_ROOT / "guests"
    if p.suffix in (".S", ".s", ".c"):
        if p.resolve().parent != guests_dir.resolve():
            raise BadInputError(f"{path}: only sources in the guests/ directory can be built "
                                "(they need its linker scripts); build others yourself")
        return runnable(p.stem)
    if not p.exists():
        if not p.suffix and p.resolve().parent == guests_dir.resolve() and p.name in build_script().RECIPES:
            return runnable(p.name)
        raise BadInputError(f"{path}: no such file")
    return p, {}


def runnable(name: str) -> tuple[Path, dict]:
    """Guest ``name`` built, as the image ``pykvm run`` starts, and its machine's needs."""
    script = build_script()
    recipe = script.recipe(name)
    machine = dict(recipe.machine, rom=True) if recipe.rom else dict(recipe.machine)
    return Path(script.build_runnable(name)), machine


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_image(path: Path, limit: int, limit_what: str | None = None) -> bytes:
    """The bytes of the image file ``path``, refused before anything is read when it is not a
    regular file (a FIFO, /dev/zero) or holds more than ``limit`` bytes (guest RAM, or what
    ``limit_what`` says); reads no more than the file's size and one byte (a file that grows
    meanwhile is refused too)."""
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
            what = limit_what or f"guest RAM ({limit:#x} bytes, --mem)"
            raise BadInputError(f"{path} holds {st.st_size:#x} bytes, more than {what}")
        with open(fd, "rb", closefd=False) as f:
            data = f.read(st.st_size + 1)
    except OSError as e:
        raise BadInputError(f"{path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) != st.st_size:
        raise BadInputError(f"{path} changed size while pykvm read it")
    return data
