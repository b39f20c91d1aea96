"""PVM's policy for non-PVM mode, done in userspace (see ../shared/PVM.md and the RFC patch it cites).

PVM runs only *PVM mode* on the hardware: long mode with a 64-bit CS, or 32-bit
compatibility code outside supervisor mode. Everything else is *non-PVM mode*,
which pykvm emulates here instruction by instruction, in bounded batches, and
leaves as soon as the conversion rule allows.
"""

from __future__ import annotations

import enum

from pykvm.x86.state import CS, CpuState
from pykvm.errors import EmulationError
from pykvm.x86.bits import (CR0_AM, CR0_CD, CR0_NE, CR0_NW, CR0_PE, CR0_PG, CR0_WP, EFER_LMA,
                            EFER_SCE, MSR_STAR, USER32_CS)

DEFAULT_BATCH = 130  # the patch's `count`: instructions emulated per call before the caller loops again

CONVERT_CR0_OFF = CR0_NW | CR0_CD
CONVERT_CR0_ON = CR0_NE | CR0_AM | CR0_WP | CR0_PG | CR0_PE


def is_supervisor(state: CpuState) -> bool:
    """PVM's *smod*: CPL 0."""
    return state.cpl == 0


def conversion_allowed(efer: int, cs_l: int, cs_db: int, supervisor: bool) -> bool:
    """The conversion rule: long mode, and CS.L=1 — or CS.D/B=1 outside supervisor mode (compat user).

    Taken apart so the run loop can apply it to KVM's sync regs without building a CpuState.
    """
    if not efer & EFER_LMA:
        return False
    return bool(cs_l) or (bool(cs_db) and not supervisor)


def may_convert(state: CpuState) -> bool:
    """``conversion_allowed`` for a CpuState."""
    cs = state.seg[CS]
    return conversion_allowed(state.efer, cs.l, cs.db, is_supervisor(state))


def kernel_cs_by_msr(star: int) -> int:
    """The kernel CS selector MSR_STAR holds in bits 47:32, RPL forced to 0 (0 means none)."""
    return (star >> 32) & 0xFFFC


def try_to_convert_to_pvm_mode(state: CpuState) -> bool:
    """Convert to PVM mode if the rule allows, exactly as the patch does; return whether it did.

    On success: EFER.SCE is set; CR0 loses NW|CD and gains NE|AM|WP|PG|PE; MSR_STAR
    gets ``CS.selector << 32 | USER32_CS << 48`` unless it already names a kernel CS.
    """
    if not may_convert(state):
        return False
    state.efer |= EFER_SCE
    state.cr0 = (state.cr0 & ~CONVERT_CR0_OFF) | CONVERT_CR0_ON
    if not kernel_cs_by_msr(state.msrs.get(MSR_STAR, 0)):
        state.msrs[MSR_STAR] = (state.seg[CS].selector << 32) | (USER32_CS << 48)
    return True


class Outcome(enum.Enum):
    """Why ``handle_non_pvm_mode`` returned."""

    CONVERTED = "converted to PVM mode"
    HALTED = "halted"
    BUDGET_USED = "batch used up"
    EVENT_PENDING = "event pending"


class Events:
    """Requests that make the bounded loop return early (set from signal handlers or a debugger)."""

    __slots__ = ("pending",)

    def __init__(self):
        self.pending = False


def handle_non_pvm_mode(emulator, budget: int = DEFAULT_BATCH, events: Events | None = None,
                        observer=None, batch: int | None = None) -> tuple[Outcome, int]:
    """Emulate at most ``budget`` instructions of non-PVM mode; return (outcome, instructions executed).

    Mirrors the patch's loop: convert first if allowed; then per step, return if an
    event is pending, convert if allowed, emulate. The emulator's ``run()`` stops right
    after any instruction that can change what the rule looks at (CS loads, CR0/CR4/EFER
    writes, CPL changes) or that halts, so checking between its chunks is the same as
    checking before every instruction. A switch to user mode in non-PVM mode is an
    emulation error, as in the patch. ``observer(state, done)``, if given, is called before
    the first chunk and after each (the machine logs mode transitions with it: the mode the
    vCPU starts in is known before a long chunk).

    With ``batch`` the bound is checked by the emulator itself (``Emulator.run``): every
    ``batch`` instructions it looks for an event or a device access, as this loop would, and
    returns only for one; ``budget`` is then only an upper bound per call.
    """
    state = emulator.state
    if try_to_convert_to_pvm_mode(state):
        return Outcome.CONVERTED, 0
    done = 0
    if observer is not None:
        observer(state, 0)
    while done < budget:
        if events is not None and events.pending:
            return Outcome.EVENT_PENDING, done
        if try_to_convert_to_pvm_mode(state):
            return Outcome.CONVERTED, done
        done += emulator.run(budget - done, batch) if batch else emulator.run(budget - done)
        if observer is not None:
            observer(state, done)
        if not is_supervisor(state):
            raise EmulationError("guest switched to user mode outside PVM mode", rip=state.rip)
        if state.halted:
            return Outcome.HALTED, done
        if batch:
            break               # the emulator returned for the run loop (or stopped): let it look
    return Outcome.BUDGET_USED, done
