"""Finding and building the guest images of a pykvm checkout (``guests/``, built by
``scripts/build_guests.py``, which is loaded by path so it stays a standalone script)."""

from __future__ import annotations

import importlib.util
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
