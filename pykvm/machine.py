"""A machine: KVM VM + guest RAM + device bus + one vCPU, and the run loop that switches
between the userspace emulator (non-PVM mode) and ``KVM_RUN`` (PVM mode).

State crosses between the two only at mode boundaries: ``store_state`` once on
conversion to PVM mode; ``state_from_kvm`` when an exit shows the vCPU back in non-PVM
mode (regs and sregs from the sync-regs area KVM fills on every exit, MSRs in one GET).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

from pykvm import pvm
from pykvm.control import RunControl
from pykvm.cpuid import CpuidTable, vcpu_cpuid
from pykvm.devices import debug_exit, postcode
from pykvm.devices.bus import Bus
from pykvm.devices.debug_exit import DebugExit, GuestExit
from pykvm.devices.debugcon import DebugCon
from pykvm.devices.serial import Serial16550
from pykvm.x86.state import CS, CpuState
from pykvm.errors import EmulationError, GuestShutdownError, HostError, PykvmError
from pykvm.kvm import Kvm
from pykvm.kvm._owned import warn_unclosed
from pykvm.kvm.cpu_state import SYNCED_MSRS, load_state, state_from_kvm, store_state
from pykvm.kvm.exits import (EXIT_HEADER, EXIT_HEADER_OFFSET, EXIT_KEY, EXIT_KEY_SHIFT, EXIT_OUT, EXIT_PVM, EXIT_REASON,
                              EXIT_SIMPLE, IO_STRUCTS, PIO_DATA, ExitReason)
from pykvm.kvm.vcpu import MsrBackend
from pykvm.devices.rom import Rom
from pykvm.devices.testdev import IOMEM_BASE, IOMEM_SIZE
from pykvm.memory import GuestMemory, MemoryDevice, PhysicalView, RamMappingError
from pykvm.platform import PcPlatform
from pykvm.x86 import boot, memmap
from pykvm.x86.bits import CR0_PE, CR0_PG, EFER_LMA, FLAG_IF

log = logging.getLogger("pykvm")

COM1 = 0x3F8
DEFAULT_MEMORY = 64 << 20
EMULATORS = ("userspace", "kernel")
_EXIT_IO, _EXIT_HLT, _EXIT_MMIO, _EXIT_INTR = ExitReason.IO, ExitReason.HLT, ExitReason.MMIO, ExitReason.INTR
_EXIT_DEBUG, _EXIT_IRQ_WINDOW = ExitReason.DEBUG, ExitReason.IRQ_WINDOW_OPEN
_EXIT_SET_TPR = ExitReason.SET_TPR
STEPPED = -1  # _run_kvm's answer when a single step completed (statuses are >= 0)
HW_BREAKPOINTS = 4  # DR0-DR3: what KVM_SET_GUEST_DEBUG offers in PVM mode (software INT3 fails there)
_DR6_HITS = 0xF     # DR6.B0-B3: which hardware breakpoint a debug exit reports
# Single steps spent on one interrupt the guest holds off (IF = 0) before falling back to
# PVM's late interrupt-window exit (see Machine._hold_off).
WINDOW_STEP_BUDGET = 1000
# A flat image failing within this many emulated instructions (and KVM exits) gets the hint
# that it may have been entered in the wrong mode (Machine._name_the_mode).
FEW_INSTRUCTIONS = 64
# Instructions one call of the emulator may run at most: --emul-batch is the bound that matters
# (the emulator looks for events and device accesses every --emul-batch instructions and
# returns for them); this one only keeps the counts small.
EMULATOR_BUDGET = 1 << 30


def describe_mode(state: CpuState) -> str:
    """A short name for the vCPU's operating mode, for logs and the debugger."""
    cs = state.seg[CS]
    return mode_name(state.cr0, state.efer, cs.l, cs.db)


def mode_name(cr0: int, efer: int, cs_l: int, cs_db: int) -> str:
    """``describe_mode`` from the four values it looks at (e.g. KVM's sync sregs at an exit)."""
    if efer & EFER_LMA:
        return "long mode (64-bit)" if cs_l else f"long mode (compat {'32' if cs_db else '16'}-bit)"
    if not cr0 & CR0_PE:
        return "real mode"
    return f"protected mode ({'32' if cs_db else '16'}-bit{', paging' if cr0 & CR0_PG else ''})"


@dataclass
class RunStats:
    emulated_instructions: int = 0
    kvm_exits: int = 0
    conversions: int = 0
    reentries: int = 0          # exits that found the vCPU back in non-PVM mode
    interrupts_emulated: int = 0    # external interrupts the emulator delivered
    interrupts_injected: int = 0    # ... and KVM_INTERRUPT injected
    seconds: float = 0.0
    emulator_seconds: float = 0.0   # of which in the emulator ...
    kvm_seconds: float = 0.0        # ... under KVM (KVM_RUN with the exits handled inline) ...
    halted_seconds: float = 0.0     # ... and asleep in HLT
    # KVM exits other than port I/O, by reason: counted off the I/O fast path, so counting costs
    # it nothing (the I/O exits are the rest of kvm_exits).
    other_exits: Counter = field(default_factory=Counter)

    def exits_by_reason(self) -> dict[str, int]:
        """KVM exits by reason ("io", "hlt", "mmio", ...), most frequent first."""
        counts = Counter({_exit_name(reason): n for reason, n in self.other_exits.items()})
        io = self.kvm_exits - sum(self.other_exits.values())
        if io:
            counts["io"] = io
        return dict(counts.most_common())


def _exit_name(reason: int) -> str:
    try:
        return ExitReason(reason).name.lower()
    except ValueError:
        return str(reason)


@dataclass(frozen=True)
class DebugStop:
    """Why ``Machine.run`` returned None: a debugger's breakpoint ("breakpoint", at linear
    ``address``), a mode change ("mode"), a conversion to PVM mode ("conversion"), or a request
    from outside ("interrupt", e.g. Ctrl-C in gdb)."""

    reason: str
    address: int | None = None


class Machine:
    """Owns every fd and mapping of one guest; use as a context manager."""

    def __init__(self, memory_size: int = DEFAULT_MEMORY, serial_output: BinaryIO | None = None,
                 emulator: str = "userspace", emul_batch: int = pvm.DEFAULT_BATCH, kvm_path: str = "/dev/kvm",
                 testdev: bool = False, bios: bytes | None = None, coalesce: bool | None = None):
        if emulator not in EMULATORS:
            raise ValueError(f"emulator must be one of {EMULATORS}")
        if emul_batch < 1:
            raise ValueError("the emulation batch must be at least 1 instruction")
        self.closed = False
        self.emulator_kind = emulator
        self.emul_batch = emul_batch
        self.stats = RunStats()
        self.events = pvm.Events()
        # Everything about the address space follows from the map (checked before any fd is open).
        mmio = ((IOMEM_BASE, IOMEM_SIZE, "pc-testdev MMIO scratch"),) if testdev else ()
        self.memory_map = memmap.pc_memory_map(memory_size, len(bios) if bios is not None else 0, mmio)
        self.rom = Rom(bios) if bios is not None else None
        self.high_memory = None
        try:
            self.kvm = Kvm(kvm_path)
        except BaseException:
            self._close_mappings()
            raise
        try:
            self.vm = self.kvm.create_vm()
            self._map_memory(memory_size)
            self.vcpu = self.vm.create_vcpu()
            self.vcpu.set_cpuid(vcpu_cpuid(self.kvm.supported_cpuid(), self.vcpu.index))
            # What the vCPU really reports (PVM adjusts the table it is given): the emulator
            # must answer the same, so a guest sees one processor across the PVM conversion.
            self._cpuid = self.vcpu.get_cpuid()
            self.vcpu.enable_sync_regs()
            self.bus = Bus()
            self.serial = Serial16550(serial_output if serial_output is not None else sys.stdout.buffer)
            self.bus.pio.register(COM1, 8, self.serial)
            self.bus.pio.register(debug_exit.PORT, debug_exit.LENGTH, DebugExit())
            if self.rom is not None:
                self.rom.attach(self.bus)
            if self.high_memory is not None:
                self.bus.mmio.register(self.high_memory.base, self.high_memory.size, MemoryDevice(self.high_memory))
            self.platform = PcPlatform(self.bus, self.memory_map, testdev=testdev)
            if not testdev:                  # pc-testdev's scratch register is at 0xe8-0xeb
                DebugCon(self.serial.emit).attach(self.bus)
            self._ring = None
            if coalesce if coalesce is not None else os.environ.get("PYKVM_COALESCE", "1") != "0":
                self._coalesce()
        except BaseException:
            self.close()
            raise
        # A Machine dropped without close() is closed when collected, with one ResourceWarning.
        self._finalizer = weakref.finalize(self, _close_dropped, self.serial, self.vm, self.kvm)
        self.platform.on_intr_change = self._intr_changed
        self.platform.on_nmi = self._nmi
        self._kvm_nmi = (False, False)  # (pending, blocked) as KVM last had them
        self._control: RunControl | None = None
        self.state: CpuState | None = None
        self.in_pvm_mode = False      # True while KVM holds the authoritative vCPU state
        self._emulator = None
        self.cpuid = CpuidTable(self._cpuid)   # what the emulator's CPUID answers
        self._single_stepping = False
        self._steps_left = None       # single steps left for an interrupt held off (_hold_off)
        self._window_stepping = False  # single-stepping for _hold_off
        self._sync_valid = False      # the sync-regs area holds the state of the last KVM exit
        self._in_step = False
        self._last_mode = None     # for -v: the mode last logged
        self.image = None
        # -- debugging (pykvm.debug): all off unless a debugger sets them
        self.debug_stop: DebugStop | None = None   # why run() returned None (until take_stop())
        self.stop_on_mode_change = False
        self.stop_on_conversion = False
        self.breakpoints: tuple[int, ...] = ()     # linear addresses (set_breakpoints)
        self._hw_breakpoints: tuple[int, ...] = ()  # the ones in DR0-DR3 for KVM
        # RFLAGS of a vCPU KVM has taken past a HLT that still sleeps (a step onto HLT, or a sleep
        # a debugger's stop cut short): the next run() or step() sleeps first.
        self._halted_rflags = None
        # Called after each KVM exit with its reason (I/O and MMIO once handled), and with
        # the state before/after each emulated instruction (then the emulator runs one at a
        # time); -vv logs the exits through the first.
        self.exit_tracer = None
        self.instruction_tracer = None
        self._mode_observer = None
        if log.isEnabledFor(logging.INFO):
            log.info("memory map:")
            for line in self.memory_map.describe():
                log.info("  %s", line)
        if self.rom is not None:
            self.set_state(boot.reset_state(self.cpuid_signature))

    def _map_memory(self, memory_size: int) -> None:
        """RAM below the PCI hole in one mapping, the rest at 4 GiB, the ROM in two read-only slots.

        The legacy hole is reserved in the map (loaders put nothing there, the guest's memory map
        says so), but backed by RAM like the shadow RAM a PC has there, except where the ROM's
        alias shows: that range is a hole in the mapping, for KVM (no RAM slot covers it) and
        for the emulator (``GuestMemory.hole``).
        """
        low = min(memory_size, memmap.PCI_HOLE_START)
        hole = (self.rom.alias_base, memmap.HIGH_RAM_START) if self.rom is not None else None
        try:
            self.memory = GuestMemory(low, hole=hole)
            if memory_size > low:
                self.high_memory = GuestMemory(memory_size - low, base=memmap.FOUR_GIB)
        except RamMappingError as e:            # one message for all of RAM, whichever part failed
            raise RamMappingError(memory_size, e.reason) from None
        self.memory.memory_map = self.memory_map
        lo, hi = self.memory.hole_start, self.memory.hole_end
        ranges = [(0, 0, lo), (hi, hi, low - hi)] if hi else [(0, 0, low)]
        self.vm.map_memory(self.memory, ranges=[r for r in ranges if r[2]])
        if self.high_memory is not None:
            self.vm.map_memory(self.high_memory)
        if self.rom is not None:
            self.vm.map_memory(self.rom.memory, readonly=True, ranges=self.rom.slots)

    def _close_mappings(self) -> None:
        """RAM and ROM: normally the Vm's, closed with it; closed here if never mapped (idempotent)."""
        for memory in (getattr(self, "memory", None), self.high_memory, self.rom and self.rom.memory):
            if memory is not None:
                memory.close()

    def _coalesce(self) -> None:
        """Let KVM queue the writes that need no answer instead of exiting for each: port 0x80
        (POST codes, the I/O delay Linux and BIOSes write) and a ROM's MMIO ranges (where writes
        are dropped and only logged). They are replayed in order at the next exit
        (``_drain_coalesced``), before that exit is handled, so every device still sees the
        guest's accesses in the guest's order; a read of port 0x80 exits, and so finds the last
        code written. Nothing is coalesced where the host does not offer it."""
        registered = self.vm.register_coalesced(postcode.PORT, 1, pio=True)
        if self.rom is not None:
            for gpa, _offset, size in self.rom.slots:
                registered = self.vm.register_coalesced(gpa, size, pio=False) or registered
        if registered:
            self._ring = self.vcpu.coalesced_ring()

    def _drain_coalesced(self) -> None:
        self._ring.drain(self.bus.pio.write, self.bus.mmio.write)

    @property
    def cpuid_signature(self) -> int:
        """CPUID leaf 1 EAX (family, model, stepping): EDX at reset."""
        return self.cpuid(1, 0)[0]

    @cached_property
    def physical(self) -> PhysicalView:
        """Guest-physical RAM and ROM, for reading code where it is (disassembly, HLT checks)."""
        view = PhysicalView()
        for part in (self.memory, self.high_memory):
            if part is not None:
                view.add(part)
        if self.rom is not None:
            for gpa, offset, size in self.rom.slots:
                view.add(self.rom.memory, gpa, offset, size)
        return view

    # -- setup ------------------------------------------------------------------------------
    def load(self, data: bytes, fmt: str = "auto", mode: str | None = None, load_addr: int | None = None,
             entry: int | None = None, cmdline: str = "", modules=()):
        """Load an image (and its ``modules``) into guest RAM and set the vCPU's entry state."""
        from pykvm.loaders import load as load_image

        # The loader writes the image and the boot structures its mode needs (GDT, page tables,
        # multiboot or PVH boot information), after validating all of them against the map.
        image = load_image(self.memory, data, fmt, mode=mode, load_addr=load_addr, entry=entry, cmdline=cmdline,
                           modules=modules)
        self.set_state(image.initial_state())
        self.image = image
        return image

    def set_state(self, state: CpuState) -> None:
        """Start the vCPU from ``state`` (in the emulator or in KVM, whichever its mode calls for)."""
        self.state = state
        self.in_pvm_mode = False
        self.platform.lapic.cpu = state
        self.platform.lapic.sync()
        if self._emulator is not None:
            self._emulator.state = state  # also drops its translations: guest memory was rewritten
        if self.emulator_kind == "kernel" or pvm.may_convert(state):
            self._enter_kvm()

    @property
    def emulator(self):
        if self._emulator is None:
            from pykvm.emulator import Emulator

            self._emulator = emulator = Emulator(self.state, self.memory, self.bus, cpuid=self.cpuid)
            emulator.interrupt_controller = self.platform
            emulator.set_intr(self.platform.intr)
            emulator.events = self.events
            emulator.msr_backend = MsrBackend(self.vcpu)
            emulator.apic_base_observer = self.platform.lapic.sync
            emulator.breakpoint_observer = self._emulator_breakpoint
            if self.breakpoints:
                emulator.set_breakpoints(self.breakpoints)
        return self._emulator

    def _intr_changed(self, level: bool) -> None:
        """The processor's INTR input changed: the emulator takes it at its next instruction boundary;
        under KVM the run loop injects it before the next KVM_RUN."""
        if self._emulator is not None:
            self._emulator.set_intr(level)

    def _nmi(self) -> None:
        """An NMI for the vCPU (the local APIC's NMI IPI): KVM_NMI under KVM, else latched for
        the emulator. Either way it is taken at an instruction boundary once no NMI handler
        is running (blocked from one NMI's delivery until the next IRET)."""
        if self.in_pvm_mode:
            self.vcpu.nmi()
        elif self._emulator is not None:
            self._emulator.raise_nmi()
        elif self.state is not None:
            self.state.nmi_pending = True

    # -- switching --------------------------------------------------------------------------
    def _enter_kvm(self) -> None:
        """Hand the vCPU to KVM: one SET of sregs, regs and MSRs."""
        if self.emulator_kind == "userspace":
            if not pvm.try_to_convert_to_pvm_mode(self.state):
                raise EmulationError("cannot convert to PVM mode", rip=self.state.rip)
            self.stats.conversions += 1
            log.info("converted to PVM mode after %d emulated instructions: %s, rip=%#x",
                     self.stats.emulated_instructions, describe_mode(self.state), self.state.rip)
            if self.stop_on_conversion and not self._in_step:
                self.request_stop(DebugStop("conversion"))
        store_state(self.vcpu, self.state)
        nmi = (self.state.nmi_pending, self.state.nmi_blocked)
        if nmi != self._kvm_nmi:
            self.vcpu.set_nmi_state(*nmi)
        kvm_run = self.vcpu.kvm_run
        kvm_run.cr8 = self.state.cr8             # KVM_RUN loads CR8 from here (no in-kernel APIC)
        kvm_run.apic_base = self.state.apic_base
        self.platform.lapic.cpu = kvm_run        # KVM reports both here at every exit
        # Stale from before the emulator ran: inject only after KVM has said it can take one.
        kvm_run.ready_for_interrupt_injection = 0
        self._sync_valid = False
        self.in_pvm_mode = True
        if len(self.breakpoints) > HW_BREAKPOINTS:
            log.warning("PVM mode has %d hardware breakpoints and software ones are not possible "
                        "(KVM_GUESTDBG_USE_SW_BP ends in a KVM internal error here): only %s are armed",
                        HW_BREAKPOINTS, ", ".join(f"{a:#x}" for a in self._hw_breakpoints))

    def _leave_kvm(self) -> None:
        """Take the vCPU back from KVM for the userspace emulator (state from the sync-regs area)."""
        if self._ring is not None and self._ring.pending():
            self._drain_coalesced()
        sync = self.vcpu.sync_regs
        self.state = state_from_kvm(sync.regs, sync.sregs, self.vcpu.get_msrs(SYNCED_MSRS), self.state)
        self.state.nmi_pending = bool(sync.events.nmi.pending)
        self.state.nmi_blocked = bool(sync.events.nmi.masked)
        self._kvm_nmi = (self.state.nmi_pending, self.state.nmi_blocked)
        self.in_pvm_mode = False
        self.platform.lapic.cpu = self.state
        self.stats.reentries += 1
        self._end_hold_off()
        if self._emulator is not None:
            self._emulator.state = self.state
            self._emulator.invalidate_code_cache()
        log.info("back in non-PVM mode: %s, rip=%#x", describe_mode(self.state), self.state.rip)
        self._observe_mode(self.state, 0)

    def _kvm_in_non_pvm_mode(self) -> bool:
        """PVM's rule applied to the state KVM left in the sync-regs area at this exit (CPL = SS.DPL)."""
        sregs = self.vcpu.sync_regs.sregs
        return not pvm.conversion_allowed(sregs.efer, sregs.cs.l, sregs.cs.db, sregs.ss.dpl == 0)

    # -- running ----------------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> int:
        """Run until the guest ends; return the process exit status (debug-exit status, or 0 on halt).

        Raises a ``PykvmError`` for triple faults, emulation failures, timeouts and Ctrl-C.
        """
        self._check_open()
        if self.state is None:
            raise HostError("nothing loaded: call load() or set_state() first")
        started = time.perf_counter()
        self.events.pending = self.debug_stop is not None   # a stop asked for already: at once
        self._set_single_step(False)
        if self.stop_on_mode_change:
            self._last_mode = describe_mode(self.current_state())   # the mode changes from this one
        self._mode_observer = (self._observe_mode if self.stop_on_mode_change or log.isEnabledFor(logging.INFO)
                               else None)
        platform = self.platform
        control = self._control = RunControl(self.events, [self.vcpu], timeout)
        armed = None
        try:
            self.serial.write_section = control.writing_output
            with control:
                try:
                    if self._halted_rflags is not None:
                        rflags, self._halted_rflags = self._halted_rflags, None
                        status = self._halted(rflags, "KVM")
                        if status is not None or self.debug_stop is not None:
                            return status
                        self._ready_after_hlt()
                    while True:
                        if self.events.pending and self._handle_events():
                            return None
                        platform.poll()
                        deadline = platform.next_deadline_ns()
                        if deadline != armed:
                            control.arm(deadline)
                            armed = deadline
                        if self.in_pvm_mode:
                            status = self._run_kvm()
                        else:
                            status = self._run_emulator()
                        if status is not None:
                            return status
                except GuestExit as e:
                    log.info("guest wrote %#x to the debug-exit port", e.value)
                    return e.status
                except (EmulationError, GuestShutdownError) as e:
                    self._name_the_mode(e)
                    raise
                finally:
                    # Still under the run's signal handling: a write that blocks is abandoned.
                    self.serial.flush()
        finally:
            self._control = None
            self.serial.write_section = contextlib.nullcontext
            self.vcpu.immediate_exit = False
            self.stats.seconds += time.perf_counter() - started
            self._count_interrupts()

    def _name_the_mode(self, error: PykvmError) -> None:
        """A flat image that fails within its first few instructions was most likely entered in
        the wrong mode (nothing in it says which): the error says how to choose another."""
        image, stats = self.image, self.stats
        if (image is None or image.format != "flat" or stats.emulated_instructions > FEW_INSTRUCTIONS
                or stats.kvm_exits > FEW_INSTRUCTIONS):
            return
        others = " or ".join(f"--mode {mode}" for mode in boot.MODES if mode != image.mode)
        error.args = (f"{error.args[0]}; this flat image was entered in {image.mode} mode (--mode {image.mode}) "
                      f"and failed at once: if its code is for another mode, run it with {others}",)

    def _handle_events(self) -> bool:
        """A stop request (Ctrl-C, --timeout) ends the run; a debugger's stop returns True;
        anything else was a timer kick."""
        self._control.raise_if_stopped()
        self.events.pending = False
        self.vcpu.immediate_exit = False
        return self.debug_stop is not None

    def request_stop(self, stop: DebugStop) -> None:
        """Make ``run()`` return None at the next instruction boundary (at once if it has not
        started yet), with ``debug_stop`` saying why, until ``take_stop()``. Callable from another
        thread (a gdb connection's Ctrl-C): KVM_RUN then comes back at the watchdog's next tick
        (``RunControl.TICK``), a HLT sleep at once."""
        if self.debug_stop is None:
            self.debug_stop = stop
        self.events.pending = True
        if self.vcpu.fd >= 0:
            self.vcpu.immediate_exit = True
        control = self._control
        if control is not None:
            control.wake()

    def take_stop(self) -> DebugStop | None:
        """The stop that ended the last run() or step() (None if none), which is then forgotten."""
        stop, self.debug_stop = self.debug_stop, None
        self.events.pending = False
        self.vcpu.immediate_exit = False
        return stop

    def _count_interrupts(self) -> None:
        stats = self.stats
        if self._emulator is not None:
            stats.interrupts_emulated = self._emulator.interrupts_delivered
        if stats.interrupts_emulated or stats.interrupts_injected:
            log.info("interrupts delivered: %d by the emulator, %d injected into KVM",
                     stats.interrupts_emulated, stats.interrupts_injected)

    def _halted(self, rflags: int, where: str) -> int | None:
        """HLT: with interrupts off the run is over (status 0); with them on, the vCPU sleeps
        until the interrupt controller raises INTR (a timer, a device), or the run is stopped.

        The sleep is a ``select`` until the next timer deadline: an idle guest costs next to no
        CPU. A step onto HLT ends at the halted vCPU; the next step sleeps (``_sleep_in_halt``).
        """
        if not rflags & FLAG_IF:
            log.info("guest halted with interrupts off (%s)", where)
            return 0
        if self._in_step or self._control is None:
            return None
        platform = self.platform
        started = time.perf_counter()
        try:
            while not platform.intr:
                if self.events.pending and self._handle_events():
                    if self.in_pvm_mode:
                        self._halted_rflags = rflags     # KVM is past the HLT: sleep on when resumed
                    return None
                self._control.sleep_until(platform.next_deadline_ns())
                platform.poll()
            return None
        finally:
            self.stats.halted_seconds += time.perf_counter() - started

    def _run_emulator(self) -> int | None:
        emulator = self.emulator
        tracer = self.instruction_tracer
        before = tracer.before(self) if tracer is not None else None
        started = time.perf_counter()
        try:
            if tracer is None:
                outcome, _ = pvm.handle_non_pvm_mode(emulator, EMULATOR_BUDGET, self.events,
                                                     observer=self._mode_observer, batch=self.emul_batch)
            else:
                outcome, _ = pvm.handle_non_pvm_mode(emulator, 1, self.events, observer=self._mode_observer)
        finally:
            # The emulator's own count: a batch cut short by a debug-exit write still counts.
            self.stats.emulated_instructions = emulator.instructions_executed
            self.stats.emulator_seconds += time.perf_counter() - started
            if tracer is not None:
                tracer.after(self, before)
        if outcome is pvm.Outcome.CONVERTED:
            self._enter_kvm()
        elif outcome is pvm.Outcome.HALTED:
            # The vCPU stays halted: the emulator delivers the interrupt that wakes it.
            return self._halted(self.state.rflags, "emulator")
        return None

    def _observe_mode(self, state: CpuState, count: int) -> None:
        mode = describe_mode(state)
        if mode != self._last_mode:
            log.info("mode: %s at rip=%#x after %d emulated instructions", mode, state.rip,
                     self._emulator.instructions_executed if self._emulator else 0)
            if self.stop_on_mode_change and self._last_mode is not None and not self._in_step:
                self.request_stop(DebugStop("mode"))
            self._last_mode = mode

    def _emulator_breakpoint(self, address: int) -> None:
        self.request_stop(DebugStop("breakpoint", address))

    def _io_left_pvm_mode(self) -> bool:
        """After a port I/O exit whose sync regs do not show 64-bit code: whether the vCPU left
        PVM mode; if so its I/O is completed and the emulator takes the vCPU back."""
        if not self._kvm_in_non_pvm_mode():
            return False
        self._sync_valid = True
        self.vcpu.complete_pending_io()
        self._leave_kvm()
        return True

    def _run_kvm(self) -> int | None:
        """KVM_RUN until something needs the run loop's attention; port I/O is handled inline.

        This is the exit hot path: one ioctl (cffi API mode), one unpack of the exit header
        straight from the mmap'd ``kvm_run`` (the reason and the I/O fields at once), one call
        of the port's own handler (``writers``/``readers``, cached per port); no records, no
        allocation beyond ints. Writes KVM coalesced (``_coalesce``) are replayed first at
        every exit, so devices see every access in the guest's order.
        """
        vcpu = self.vcpu
        run_exit, fd, run_arg = vcpu.exit_call()
        kvm_run = vcpu.kvm_run
        view = vcpu._view
        view_len = len(view)
        read_header = EXIT_HEADER.unpack_from
        pio = self.bus.pio
        writers, readers = pio.writers, pio.readers
        ring = self._ring
        stats = self.stats
        events = self.events
        check_mode = self.emulator_kind == "userspace"
        exits = 0
        tracer = self.exit_tracer
        if tracer is None and log.isEnabledFor(logging.DEBUG):  # -vv: every exit
            tracer = self._log_exit
        elif tracer is not None:
            run_exit = tracer.timed(run_exit)     # --trace: time spent inside KVM_RUN itself
        platform = self.platform
        started = time.perf_counter()
        halted = stats.halted_seconds
        try:
            while not events.pending:
                if platform.intr:
                    if exits:
                        self._sync_valid = True
                    status = self._inject(kvm_run)
                    if status is not None:
                        return status
                elif view[0]:                 # kvm_run.request_interrupt_window
                    kvm_run.request_interrupt_window = 0
                    self._end_hold_off()
                r = run_exit(fd, run_arg)
                exits += 1
                if r < 0:
                    vcpu.run_failed(-r)
                    r = _EXIT_INTR | EXIT_PVM
                if ring is not None and ring.pending():
                    self._drain_coalesced()
                if r & EXIT_SIMPLE:           # port I/O, one element: the port's own handler
                    key = r >> EXIT_KEY_SHIFT & EXIT_KEY
                    if key & 7 == 1:
                        if r & EXIT_OUT:
                            (writers.get(key) or pio.writer(key >> 3, 1))(view[PIO_DATA])
                        else:
                            view[PIO_DATA] = (readers.get(key) or pio.reader(key >> 3, 1))() & 0xFF
                    elif r & EXIT_OUT:
                        (writers.get(key) or pio.writer(key >> 3, key & 7))(
                            IO_STRUCTS[key & 7].unpack_from(view, PIO_DATA)[0])
                    else:
                        IO_STRUCTS[key & 7].pack_into(view, PIO_DATA, (readers.get(key) or pio.reader(key >> 3, key & 7))())
                    if tracer is not None:
                        tracer(_EXIT_IO)
                    # Still 64-bit long mode (the common case) is one bit; anything else gets
                    # the full rule, and the emulator if the vCPU left PVM mode.
                    if check_mode and not r & EXIT_PVM and self._io_left_pvm_mode():
                        return None
                    continue
                reason = r & EXIT_REASON
                if reason == EXIT_REASON:
                    reason = kvm_run.exit_reason
                if reason == _EXIT_IO:        # several elements (INS/OUTS), or data elsewhere
                    _, direction, size, port, count, off = read_header(view, EXIT_HEADER_OFFSET)
                    st = IO_STRUCTS.get(size)
                    if st is None or off + size * count > view_len:
                        raise EmulationError(f"KVM reported {count}x{size}-byte I/O data at {off:#x} "
                                             "outside kvm_run")
                    if direction:
                        for i in range(count):
                            pio.write(port, size, st.unpack_from(view, off + i * size)[0])
                    else:
                        for i in range(count):
                            st.pack_into(view, off + i * size, pio.read(port, size))
                    if tracer is not None:
                        tracer(reason)
                    if check_mode and not r & EXIT_PVM and self._io_left_pvm_mode():
                        return None
                    continue
                self._sync_valid = True
                stats.other_exits[reason] += 1
                exit_ = vcpu.exit_record(reason)
                if reason == _EXIT_MMIO:
                    platform.lapic.sync()     # a WRMSR under KVM may have moved its page here
                    if exit_.is_write:
                        self.bus.mmio_write(exit_.address, exit_.length, exit_.value)
                    else:
                        exit_.set_value(self.bus.mmio_read(exit_.address, exit_.length))
                    if tracer is not None:
                        tracer(reason)
                    if check_mode and self._kvm_in_non_pvm_mode():
                        vcpu.complete_pending_io()
                        self._leave_kvm()
                        return None
                    continue
                if tracer is not None:
                    tracer(reason)
                if reason == _EXIT_INTR:
                    return None
                if reason == _EXIT_IRQ_WINDOW:
                    continue              # the guest can take the pending interrupt now
                if reason == _EXIT_SET_TPR:
                    platform.lapic.sync()  # CR8 lowered: an interrupt it held back may be due
                    continue
                if reason == _EXIT_DEBUG and exit_.dr6 & _DR6_HITS and not self._single_stepping:
                    # A hardware breakpoint (a fault: the instruction has not run).
                    self.request_stop(DebugStop("breakpoint", exit_.pc))
                    return None
                stepped = reason == _EXIT_DEBUG and self._single_stepping
                window_step = reason == _EXIT_DEBUG and self._window_stepping
                if check_mode and self._kvm_in_non_pvm_mode():
                    self._leave_kvm()
                    if reason == _EXIT_HLT:
                        return self._halted(self.state.rflags, "non-PVM mode under KVM")
                    return STEPPED if stepped else None
                if stepped:
                    return STEPPED
                if window_step:
                    continue              # one instruction closer to the window (_hold_off)
                if reason == _EXIT_HLT:
                    return self._halted(vcpu.sync_regs.regs.rflags, "KVM")
                return self._fatal_exit(exit_)
            return None
        finally:
            if exits:
                self._sync_valid = True
            stats.kvm_exits += exits
            stats.kvm_seconds += time.perf_counter() - started - (stats.halted_seconds - halted)

    def _log_exit(self, reason: int) -> None:
        log.debug("exit %d: %s at rip=%#x", self.stats.kvm_exits + 1, self.vcpu.exit_record(reason).describe(),
                  self.vcpu.sync_regs.regs.rip)

    def _inject(self, kvm_run) -> int | None:
        """INTR is up: inject the interrupt if KVM says the guest can take it now, else ask KVM
        to exit as soon as it can (the KVM API's pattern for a userspace interrupt controller)
        and step towards that moment (``_hold_off``). Returns a status if the guest halted."""
        self.platform.lapic.sync()         # the guest may have moved CR8 or IA32_APIC_BASE under KVM
        if not self.platform.intr:
            kvm_run.request_interrupt_window = 0
            return None
        if kvm_run.ready_for_interrupt_injection and kvm_run.if_flag:
            self._inject_now(kvm_run)
            return None
        kvm_run.request_interrupt_window = 1
        return self._hold_off()

    def _inject_now(self, kvm_run) -> None:
        """KVM_INTERRUPT with the vector INTA gives; ask for a window if another one is waiting."""
        self.vcpu.interrupt(self.platform.acknowledge())
        self.stats.interrupts_injected += 1
        kvm_run.request_interrupt_window = 1 if self.platform.intr else 0
        self._end_hold_off()

    def _hold_off(self) -> int | None:
        """An interrupt is pending but the guest cannot take it (IF = 0, or the shadow of STI or
        MOV SS): single-step until it can, so it is injected at the right instruction boundary.

        PVM reports KVM_EXIT_IRQ_WINDOW_OPEN only at the end of its own batch of about 1,000
        instructions, not after the instruction that follows STI (measured on these hosts: in
        ``sti; nop; cli`` the interrupt is never taken). Under single-step it reports each
        boundary exactly: after STI, IF = 1 with the STI shadow and not ready; one instruction
        later, ready. HLT is never stepped (see below). After WINDOW_STEP_BUDGET steps for one
        interrupt the late window exit is left to deliver it.
        """
        if self._single_stepping:
            return None                    # the debugger steps anyway
        if self._steps_left is None:
            if not self._sync_valid:
                return None                # no exit since entering KVM: nothing to look at yet
            self._steps_left = WINDOW_STEP_BUDGET
        if not self._steps_left:
            if self._window_stepping:
                self._set_window_stepping(False)
                log.debug("interrupt held off for %d single steps: left to PVM's window exit",
                          WINDOW_STEP_BUDGET)
            return None
        self._steps_left -= 1
        from pykvm.debug.disasm import read_code

        sync = self.vcpu.sync_regs
        state = state_from_kvm(sync.regs, sync.sregs)
        code = read_code(self.physical, state, 2)
        if code == b"\x48\xcf" and self._return_from_interrupt(state, sync):
            return None
        if code[:1] == b"\xf4":
            # A step over HLT does not halt (a later KVM_RUN reports the halt wherever the guest
            # is then): KVM_RUN runs it without the step, and with IF = 1 (STI; HLT) its HLT exit
            # is ready for the interrupt. With IF = 0 the guest halts for good.
            self._end_hold_off()
            if sync.regs.rflags & FLAG_IF:
                return None
            regs = self.vcpu.get_regs()
            regs.rip += 1
            self.vcpu.set_regs(regs)
            return self._halted(regs.rflags, "KVM")
        self._set_window_stepping(True)
        return None

    def _return_from_interrupt(self, state, sync) -> bool:
        """IRETQ at the same privilege, done here rather than single-stepped: PVM reports the
        step of an IRETQ one instruction late (after the instruction it returns to), so an
        interrupt held off until the handler's IRET would be taken one instruction too late.
        With the frame's IF set the held-off interrupt is injected at once. Not while an NMI is
        being handled (KVM must see that IRET to unblock NMIs) nor across privilege levels:
        then the step it is. True if it was done."""
        from pykvm.debug.disasm import read_linear

        if sync.events.nmi.masked or state.cpl != 0:
            return False
        frame = read_linear(self.physical, state, sync.regs.rsp, 40)
        if len(frame) != 40:
            return False                  # not all in RAM: let KVM do it
        rip, cs, rflags, new_rsp, ss = struct.unpack("<5Q", frame)
        if cs & 0xFFFF != sync.sregs.cs.selector or ss & 0xFFFF != sync.sregs.ss.selector:
            return False
        regs = self.vcpu.get_regs()
        regs.rip, regs.rsp = rip, new_rsp
        regs.rflags = (rflags & 0x257FD5) | (regs.rflags & 0x1A0000) | 2     # VM, VIF, VIP kept
        self.vcpu.set_regs(regs)
        if not regs.rflags & FLAG_IF:
            return False                  # still held off: step on from the frame's RIP
        self._inject_now(self.vcpu.kvm_run)
        return True

    def _end_hold_off(self) -> None:
        self._steps_left = None
        self._set_window_stepping(False)

    def _set_window_stepping(self, enabled: bool) -> None:
        if enabled != self._window_stepping:
            self._window_stepping = enabled
            if not self._single_stepping:
                self._apply_guest_debug()

    def _fatal_exit(self, exit_) -> int:
        rip = self.vcpu.sync_regs.regs.rip
        reason = exit_.reason
        if reason == ExitReason.SHUTDOWN:
            raise GuestShutdownError(f"guest shut down (triple fault) at rip={rip:#x}")
        if reason == ExitReason.SYSTEM_EVENT:
            raise GuestShutdownError(f"guest requested {exit_.describe()} at rip={rip:#x}")
        if reason == ExitReason.INTERNAL_ERROR:
            code = exit_.instruction_bytes
            mnemonic = ""
            if code:
                from pykvm.debug.disasm import bitness, disassemble

                decoded = disassemble(code, rip, bitness(self.current_state()))
                if decoded:  # KVM hands over 15 fetched bytes; name just the instruction's
                    code, mnemonic = decoded[0].code, decoded[0].text
            raise EmulationError(f"KVM internal error: {exit_.suberror_name}", rip=rip, code=code,
                                 mnemonic=mnemonic)
        raise EmulationError(f"unexpected KVM exit: {exit_.describe()}", rip=rip)

    # -- stepping -----------------------------------------------------------------------------
    @property
    def next_instruction_in_kvm(self) -> bool:
        """Whether the next instruction runs under KVM (PVM mode, or --emulator kernel), not in pykvm."""
        return self.in_pvm_mode or self.emulator_kind == "kernel" or pvm.may_convert(self.state)

    def step(self, timeout: float | None = None) -> int | None:
        """Execute exactly one guest instruction, in the emulator or under KVM single-step; or
        deliver the interrupt one is pending for (then the vCPU is at the handler's first
        instruction and none ran). A vCPU halted by a step onto HLT (IF = 1) first sleeps until
        an interrupt wakes it, as in ``run`` (``timeout``, Ctrl-C and ``request_stop`` end the
        sleep; after a stop request nothing ran and ``debug_stop`` says why, as it does when one
        was asked for before the step).

        Returns the exit status if the guest ended with that instruction (halt with
        interrupts off, debug-exit write), else None.
        """
        self._check_open()
        if self.state is None:
            raise HostError("nothing loaded: call load() or set_state() first")
        if self.debug_stop is not None:
            return None                   # a stop was asked for: nothing runs until take_stop()
        if self._halted_rflags is not None or (not self.in_pvm_mode and self.state.halted):
            status = self._sleep_in_halt(timeout)
            if status is not None or self.debug_stop is not None:
                return status
        self._in_step = True
        try:
            if not self.next_instruction_in_kvm:
                return self._step_emulator()
            if not self.in_pvm_mode:
                self._enter_kvm()
            return self._step_kvm()
        except GuestExit as e:
            return e.status
        finally:
            self._in_step = False

    def _step_emulator(self) -> int | None:
        emulator = self.emulator
        emulator.breakpoints_armed = False      # a step runs the instruction it stands on
        try:
            emulator.step()
        finally:
            emulator.breakpoints_armed = True
            self.stats.emulated_instructions = emulator.instructions_executed
        if not pvm.is_supervisor(self.state):
            raise EmulationError("guest switched to user mode outside PVM mode", rip=self.state.rip)
        if self.state.halted:
            return self._halted(self.state.rflags, "emulator")   # the next step waits for the interrupt
        return None

    def _sleep_in_halt(self, timeout: float | None) -> int | None:
        """``step`` at a vCPU halted with IF = 1: sleep (as ``run`` does) until INTR is up."""
        rflags = self.state.rflags if self._halted_rflags is None else self._halted_rflags
        self._halted_rflags = None
        self.events.pending = False
        control = self._control = RunControl(self.events, [self.vcpu], timeout)
        try:
            with control:
                status = self._halted(rflags, "step")
        finally:
            self._control = None
            self.vcpu.immediate_exit = False
        if status is None and self.debug_stop is None:
            self._ready_after_hlt()
        return status

    def _ready_after_hlt(self) -> None:
        """Past a HLT with IF = 1 there is no interrupt shadow: KVM can take an interrupt, though
        kvm_run still describes the exit before the HLT (maybe STI's shadow, not ready)."""
        if self.in_pvm_mode:
            run = self.vcpu.kvm_run
            run.ready_for_interrupt_injection = run.if_flag = 1

    def _step_kvm(self) -> int | None:
        # Single-stepping HLT under PVM reports a debug exit *after* the HLT and never the halt
        # itself, and a HLT entered right after a single step can be skipped altogether
        # (both measured on these hosts). So a step onto HLT is done here: RIP moves past it
        # and the halt is handled as KVM_EXIT_HLT would be.
        from pykvm.debug.disasm import read_code

        state = self.current_state()
        if read_code(self.physical, state, 1) == b"\xf4":
            regs = self.vcpu.get_regs()
            regs.rip += 1
            self.vcpu.set_regs(regs)
            if regs.rflags & FLAG_IF:
                self._halted_rflags = regs.rflags     # halted: the next step or run sleeps first
            return self._halted(regs.rflags, "KVM")
        self._set_single_step(True)
        while True:
            status = self._run_kvm()
            if status == STEPPED:
                return None
            if status is not None or not self.in_pvm_mode or self.events.pending:
                return status

    def _set_single_step(self, enabled: bool) -> None:
        if enabled != self._single_stepping:
            self._single_stepping = enabled
            self._apply_guest_debug()

    def _apply_guest_debug(self) -> None:
        """KVM_SET_GUEST_DEBUG as stepping and breakpoints need it: a debugger's step runs the
        instruction whatever breakpoint it has (so it also steps off one)."""
        step = self._single_stepping or self._window_stepping
        hw = () if self._single_stepping else self._hw_breakpoints
        self.vcpu.set_guest_debug(enable=bool(step or hw), single_step=step, hw_breakpoints=hw)

    # -- breakpoints --------------------------------------------------------------------------
    def set_breakpoints(self, addresses) -> None:
        """Stop ``run()`` before the instructions at these linear addresses (a DebugStop
        "breakpoint"): any number in the emulator, the first HW_BREAKPOINTS in PVM mode
        (the debug registers: software breakpoints end in a KVM internal error there)."""
        self.breakpoints = tuple(dict.fromkeys(addresses))
        if self._emulator is not None:
            self._emulator.set_breakpoints(self.breakpoints)
        hw = self.breakpoints[:HW_BREAKPOINTS]
        if hw != self._hw_breakpoints:
            self._hw_breakpoints = hw
            self._apply_guest_debug()

    # -- inspection ---------------------------------------------------------------------------
    def current_state(self) -> CpuState:
        """The vCPU's state now, wherever it lives (one GET of regs/sregs/MSRs when in KVM)."""
        if self.in_pvm_mode:
            return load_state(self.vcpu, CpuState())
        return self.state

    def put_state(self, state: CpuState) -> None:
        """Make ``state`` — ``current_state()`` with registers edited by a debugger — the vCPU's state."""
        if self.in_pvm_mode:
            store_state(self.vcpu, state)
            self._sync_valid = False      # the sync-regs area shows the state before the edit
        elif self._emulator is not None:
            self._emulator.sync()

    def guest_memory_changed(self) -> None:
        """Guest RAM was written behind the vCPU's back (a debugger): drop translated code."""
        if self._emulator is not None:
            self._emulator.invalidate_code_cache()

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Flush the guest's output and close every fd and mapping (a failed flush still
        closes). Closing again does nothing; running or stepping a closed Machine is an error."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
        self.closed = True
        try:
            _close(getattr(self, "serial", None), getattr(self, "vm", None), self.kvm)
        finally:
            self._close_mappings()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("the Machine is closed")

    def __enter__(self) -> "Machine":
        self._check_open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close(serial, vm, kvm) -> None:
    try:
        if serial is not None:
            serial.flush()
    finally:
        if vm is not None:
            vm.close()
        kvm.close()


def _close_dropped(serial, vm, kvm) -> None:
    """A Machine was collected without close(): close it now (its output still flushed if the
    output takes it, as Python does for a file)."""
    warn_unclosed("Machine")
    try:
        _close(serial, vm, kvm)
    except PykvmError:
        pass                         # an output that fails: nothing to report it to here
