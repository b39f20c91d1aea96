"""Every guest of the library starts with ``pykvm run guests/NAME`` alone (no --mode, --format,
--testdev, --bios: its image says how it starts, its recipe what its machine needs) and does
what the same image does on QEMU 7.2: the same checks and results, the same exit status.

QEMU gets each guest the way it can start it: a ROM with -bios; a multiboot or PVH kernel
with -kernel; a flat image, or the flat image of an ELF guest, appended to the multiboot
shim, which enters it in pykvm's state for its mode (guests/mbshim.S).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from pykvm.guests import build_guest, build_script, runnable
from tests.reference import needs_qemu, pykvm, qemu, qemu_run

pytestmark = pytest.mark.kvm

RECIPES = build_script().RECIPES
GUESTS = [name for name in RECIPES if name != "mbshim"]       # the shim starts others
SHIM_MODE = {16: "real", 32: "protected", 64: "long"}
HALTS = {"exits64"}                 # ends in cli; hlt: pykvm's status 0, QEMU stays halted
# QEMU's TCG departs from the SDM here (guests/README.md, "How they were checked"): it does
# not enforce data-segment limits or null-selector accesses, which hardware does.
TCG_DEPARTURES = {"selftest32": ("read past a segment limit", "access through a null")}


def qemu_command(name: str, tmp_path):
    recipe = RECIPES[name]
    image, machine = runnable(name)
    testdev = machine.get("testdev", False)
    if recipe.rom:
        return qemu_run.qemu_command(None, testdev=testdev, bios=image)
    if image.suffix == ".elf" and name in ("multiboot32", "pvh", "mb2"):
        return qemu_run.qemu_command(image, testdev=testdev)
    kernel = tmp_path / f"{name}.mb"
    kernel.write_bytes(qemu_run.multiboot_image(build_guest(name).read_bytes(), SHIM_MODE[recipe.bits]))
    return qemu_run.qemu_command(kernel, testdev=testdev)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every guest on pykvm and, with QEMU installed, on QEMU, a few at a time."""
    tmp = tmp_path_factory.mktemp("library")
    for name in GUESTS:
        runnable(name)                # built before the timed runs
    jobs = {(name, "pykvm"): (pykvm, (f"guests/{name}", "--timeout", "60")) for name in GUESTS}
    if qemu_run.qemu_path() is not None:
        jobs.update({(name, "qemu"): (qemu, (qemu_command(name, tmp), 10 if name in HALTS else 60))
                     for name in GUESTS})
    with ThreadPoolExecutor(3) as pool:
        futures = {key: pool.submit(fn, *args) for key, (fn, args) in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


@pytest.mark.parametrize("name", GUESTS)
def test_each_guest_runs_without_options(runs, name):
    run = runs[name, "pykvm"]
    assert run.status is not None, f"{name} still running at the timeout"
    assert "error" not in run.stderr, run.stderr
    if name in HALTS:
        assert run.status == 0
    elif name == "assert32":
        assert run.status == 255 and run.compared == ["ASSERT FAILED: assert32.c:16: answer == 42"]
    else:
        assert run.status == 1, run.output[-500:]
        assert not [line for line in run.compared if line.startswith("FAIL")]


def _departing(name: str, line: str) -> bool:
    return any(what in line for what in TCG_DEPARTURES.get(name, ()))


@needs_qemu
@pytest.mark.parametrize("name", GUESTS)
def test_each_guest_does_what_it_does_under_qemu(runs, name):
    ours, theirs = runs[name, "pykvm"], runs[name, "qemu"]
    assert ours.compared or name in HALTS, f"{name}: nothing to compare"
    if name in HALTS:
        assert theirs.status is None and theirs.output == ours.output == ""
        return
    if name in TCG_DEPARTURES:
        ours_lines = [line for line in ours.compared if not _departing(name, line) and not line.startswith("SUMMARY")]
        theirs_lines = [line for line in theirs.compared if not _departing(name, line) and not line.startswith("SUMMARY")]
        assert theirs_lines == ours_lines
        return
    assert theirs.status == ours.status, theirs.output[-1000:]
    assert theirs.compared == ours.compared
