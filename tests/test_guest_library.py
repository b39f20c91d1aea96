"""Every guest of the library starts with ``pykvm run guests/NAME`` alone (no --mode, --format,
--testdev, --bios: its image says how it starts, its recipe what its machine needs) and does
what the same image does on QEMU 7.2: the same checks and results, the same exit status.

QEMU gets each guest the way it can start it: a ROM with -bios; a multiboot or PVH kernel
with -kernel; a flat image, or the flat image of an ELF guest, appended to the multiboot
shim, which enters it in pykvm's state for its mode (guests/mbshim.S).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pykvm.guests import build_guest, build_script, runnable
from tests.reference import needs_qemu, pykvm, qemu, qemu_run

pytestmark = pytest.mark.kvm

REPO = Path(__file__).resolve().parents[1]
RECIPES = build_script().RECIPES
GUESTS = [name for name, recipe in RECIPES.items() if recipe.runs_alone]       # not mbshim: it starts others
SHIM_MODE = {16: "real", 32: "protected", 64: "long"}
# The line of assert32's failing GUEST_ASSERT.
ASSERT_LINE = next(n for n, line in enumerate((REPO / "guests" / "assert32.c").read_text().splitlines(), 1)
                   if "GUEST_ASSERT(answer == 42)" in line)
HALTS = {"exits64"}                 # ends in cli; hlt: pykvm's status 0, QEMU stays halted
# QEMU's TCG departs from the SDM here (guests/README.md, "How they were checked"): it does
# not enforce data-segment limits or null-selector accesses, which hardware does.
TCG_DEPARTURES = {"selftest32": ("read past a segment limit", "access through a null")}
# multiboot32 prints what its loader gave: the magic must agree, the info flags and memory
# sizes are the loader's (QEMU's multiboot ROM reports SeaBIOS's 639 KiB and more flags). The
# idle benchmark's wake-up count depends on the host's load (missed ticks are coalesced).
OWN_LINES = {"multiboot32": lambda run: [line.split(" flags=")[0] for line in run.output.splitlines()
                                         if "eax=" in line]}
for _idle in ("idle16", "idle64"):
    OWN_LINES[_idle] = lambda run: [line.split(", ")[0] for line in run.compared]


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
    """Every guest on pykvm and, with QEMU installed, on QEMU, two at a time (the timer guests
    count ticks against the host clock: more would load two cores too much)."""
    tmp = tmp_path_factory.mktemp("library")
    for name in GUESTS:
        runnable(name)                # built before the timed runs
    jobs = {(name, "pykvm"): (pykvm, (f"guests/{name}", "--timeout", "60")) for name in GUESTS}
    if qemu_run.qemu_path() is not None:
        jobs.update({(name, "qemu"): (qemu, (qemu_command(name, tmp), 10 if name in HALTS else 60))
                     for name in GUESTS})
    with ThreadPoolExecutor(2) as pool:
        futures = {key: pool.submit(fn, *args) for key, (fn, args) in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def test_the_shim_is_not_run_alone():
    assert "mbshim" not in GUESTS
    result = pykvm("guests/mbshim")
    assert result.status == 2 and "'mbshim' is not a guest to run alone" in result.stderr


@pytest.mark.parametrize("name", GUESTS)
def test_each_guest_runs_without_options(runs, name):
    run = runs[name, "pykvm"]
    assert run.status is not None, f"{name} still running at the timeout"
    assert "error" not in run.stderr, run.stderr
    if name in HALTS:
        assert run.status == 0
    elif name == "assert32":
        assert run.status == 255 and run.compared == [f"ASSERT FAILED: assert32.c:{ASSERT_LINE}: answer == 42"]
    else:
        assert run.status == 1, run.output[-500:]
        assert not [line for line in run.compared if line.startswith("FAIL")]


def _agreeing(name: str, run) -> list[str]:
    """The lines both must print where TCG departs from the SDM: not those checks, nor the summary."""
    return [line for line in run.compared
            if not line.startswith("SUMMARY") and not any(what in line for what in TCG_DEPARTURES[name])]


@needs_qemu
@pytest.mark.parametrize("name", GUESTS)
def test_each_guest_does_what_it_does_under_qemu(runs, name):
    ours, theirs = runs[name, "pykvm"], runs[name, "qemu"]
    lines = OWN_LINES.get(name, lambda run: run.compared)
    assert lines(ours) or name in HALTS, f"{name}: nothing to compare"
    if name in HALTS:
        assert theirs.status is None and theirs.output == ours.output == ""
        return
    if name in TCG_DEPARTURES:
        assert _agreeing(name, theirs) == _agreeing(name, ours)
        return
    assert theirs.status == ours.status, theirs.output[-1000:]
    assert lines(theirs) == lines(ours)
