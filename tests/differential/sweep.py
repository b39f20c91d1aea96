"""A generated differential sweep: every opcode form, in every mode, with every operand- and
address-size prefix, on pykvm's emulator against the host kernel's emulator and unicorn.

What runs (``Sweep.run``)
  A case (``sweep_cases.make_case``: one random instance of a form; see there for how forms,
  modes and cases are built) runs on pykvm's ``Emulator`` for exactly one instruction, under
  the undefined-state tracker (``undefined.py``). Guest RAM is HLT everywhere but the tables,
  and every vector's handler is a HLT, so whatever the instruction does (fall through, branch,
  fault, INT n) it normally lands on a HLT, which the emulator then steps too.

  * The kernel oracle: the same RAM and state go to the host kernel's emulator (``KVM_RUN``
    on a vCPU in non-PVM mode: one ``Machine(emulator="kernel")``'s vCPU and RAM reused across
    cases, driven by a minimal exit loop: port I/O and MMIO go to a logging device that answers
    every port and every address past RAM, HLT ends the run whatever IF is; nothing pending is
    left between cases). Its run counts when the emulator landed on a HLT (or halted, or shut
    down), or when the kernel stopped in a handler whose frame holds the instruction's own EIP
    (a fault the emulator missed). Compared: GPRs, RIP, RFLAGS, segment registers with their
    hidden parts, GDTR/IDTR, CR0/2/3/4, EFER, the MSRs that travel with a vCPU, all of RAM, and
    the port and MMIO traffic.
  * The unicorn oracle, where the kernel's run does not count: it refused (internal emulation
    error), timed out, did not stop after one instruction, or a ``DEPARTURES`` entry says the
    kernel departs from the SDM there (an entry may instead leave out just the field it gets
    wrong). So do cases that leave TF set (the HLT would be single-stepped). unicorn runs
    exactly one instruction over the same RAM (mapped in place) and devices; it shows
    selectors only, splits unaligned MMIO (so MMIO is compared as the bytes written), and
    stops at an exception instead of delivering it: then the emulator's delivery is undone
    from the frame it pushed (EIP, CS, EFLAGS and ESP before the delivery, the frame's bytes
    put back) and that state is compared, with the vector.

Verdicts, per case: ``agree`` (with the oracle named); ``refuse`` (pykvm raised its
EmulationError "cannot emulate ...": what is expected of forms it does not claim; for a
claimed form an oracle is asked whether the CPU raises an exception on it instead, which makes
the refusal a difference, unless ``UNSUPPORTED`` names it as a feature pykvm refuses by design,
such as user-mode tasks); ``differ``; ``pending`` (a difference matching
``PENDING_PYKVM_FIXES``: known pykvm bugs waiting for their fix, each one line); ``explained``
(a difference an ``ORACLE_ERRATA`` entry attributes to the oracle, quoting the SDM);
``no oracle`` (neither oracle could run it, e.g. a branch out of RAM); ``crash`` (the emulator
raised something else). Flags and values the SDM leaves undefined are never compared (the
tracker); ``nondeterministic`` names the outputs that differ between any two runs (the TSC).
The tables are separate on purpose: ``DEPARTURES`` and ``ORACLE_ERRATA`` say an oracle is
wrong (and why, by the SDM), ``PENDING_PYKVM_FIXES`` says pykvm is (empty once every bug the
sweep found is fixed), ``UNSUPPORTED`` what pykvm refuses by design.

Budget: ``cases(seed, scale)`` makes ``scale`` instances of every (form, mode, prefix) of the
claimed forms and one of the others (optionally without prefixes only: they are refused
whatever the prefix). Measured on this 2-core host: ~1,200 cases/s overall (refusals cost one
emulator step, ~0.3 ms; a kernel comparison ~1.4 ms); the default test (~15,000 cases) takes
~20 s. ``PYKVM_DIFF_SCALE`` multiplies the instances; seeds derive from (seed, form, mode,
prefix, instance), and a case id (printed with every difference) replays one case:
``scripts/diff_sweep.py --case ID``.
"""

from __future__ import annotations

import ctypes
import random
import re
import signal
import zlib
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace

import iced_x86 as X

from pykvm.devices.bus import Bus
from pykvm.emulator import Emulator, TripleFault
from pykvm.emulator.features import BASE as BASE_FEATURES
from pykvm.emulator.features import HINTS as HINT_FEATURES
from pykvm.errors import EmulationError
from pykvm.kvm._ffi import ffi
from pykvm.kvm.cpu_state import SYNCED_MSRS, load_state, store_state
from pykvm.kvm.exits import ExitReason
from pykvm.kvm.vcpu import MsrBackend
from pykvm.memory import GuestMemory
from pykvm.x86.bits import FLAG_RF, FLAG_TF
from pykvm.x86.descriptors import decode_descriptor
from pykvm.x86.state import CS, SS, CpuState
from tests.differential.accesses import memory_accesses, memory_bytes, register_value
from tests.differential.flags import ARITH
from tests.differential.harness import Ignore, differences, snapshot
from tests.differential.sweep_cases import (CODE_BASE, FORMS, FORMS_BY_NAME, GDT, HLT, LDT, MEMORY_SIZE, MODES, Case, Form,
                                            claims, handler, initial_state, make_case, memory_template,
                                            mnemonic, prefixes_for)
from tests.differential.undefined import Tracker

KERNEL_TIMEOUT = 0.5          # seconds; a case that lands on a HLT needs microseconds
_LIBC = ctypes.CDLL(None)
_LIBC.memcmp.restype = ctypes.c_int
_LIBC.memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


# -- devices: every port and every address past RAM, logged -------------------------------------
class LoggingDevice:
    """Logs every access, so port and MMIO traffic compare exactly. Port reads answer a value
    that depends on the port, the size and how many reads came before; MMIO reads answer
    bytes that depend only on their address (like memory that ignores writes), so an access
    that an oracle splits into pieces (QEMU does, for unaligned MMIO) reads the same bytes."""

    def __init__(self, kind: str):
        self.kind = kind
        self.log: list[tuple] = []

    def reset(self) -> None:
        self.log = []

    def read(self, offset: int, size: int) -> int:
        if self.kind == "mmio":
            value = int.from_bytes(bytes(_mmio_byte(offset + i) for i in range(size)), "little")
        else:
            value = (0x5A + 0x11 * offset + 0x01020304 * len(self.log)) & ((1 << (8 * size)) - 1)
        self.log.append((self.kind, "r", offset, size, value))
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append((self.kind, "w", offset, size, value))


def _mmio_byte(offset: int) -> int:
    return (offset * 0x9E3779B1 >> 11) & 0xFF


def _undefined_mmio(run) -> set:
    """MMIO offsets of bytes the tracker found undefined (written past RAM's end)."""
    return {a - MEMORY_SIZE for a in (run.undefined.memory if run.undefined else ()) if a >= MEMORY_SIZE}


def mmio_written(log: tuple) -> dict:
    """{MMIO offset: byte} of the writes in ``log``, whatever the access widths."""
    written = {}
    for kind, op, offset, size, value in log:
        if kind == "mmio" and op == "w":
            for i in range(size):
                written[offset + i] = value >> (8 * i) & 0xFF
    return written


def bytewise(log: tuple, drop=frozenset()) -> tuple:
    """``log`` for comparing with unicorn, which splits unaligned MMIO accesses into aligned
    ones (reading bytes nobody asked for): port traffic as is, MMIO as the bytes written
    (but those at offsets in ``drop``)."""
    ports = tuple(entry for entry in log if entry[0] == "port")
    written = tuple((a, v) for a, v in sorted(mmio_written(log).items()) if a not in drop)
    return ports + (("mmio written", written),)


class Devices:
    def __init__(self):
        self.ports = LoggingDevice("port")
        self.mmio = LoggingDevice("mmio")
        self.bus = Bus()
        self.bus.pio.register(0, 0x10000, self.ports)
        self.bus.mmio.register(MEMORY_SIZE, (1 << 32) - MEMORY_SIZE, self.mmio)

    def reset(self) -> None:
        self.ports.reset()
        self.mmio.reset()

    @property
    def log(self) -> tuple:
        return tuple(self.ports.log) + tuple(self.mmio.log)


# -- the tables ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pending:
    """A pykvm bug the sweep finds, waiting for its fix: differing cases of forms whose name
    matches ``form`` (a regex), in ``modes``, with ``prefixes`` (None: any) and, if given,
    for which ``when(case, diffs)`` holds, count as "pending"."""

    form: str
    description: str
    modes: tuple | None = None
    prefixes: tuple | None = None
    when: object = None

    def matches(self, case: Case, diffs: list[str]) -> bool:
        return (re.search(self.form, case.form.name) is not None
                and (self.modes is None or case.mode.name in self.modes)
                and (self.prefixes is None or (case.prefix or "-") in self.prefixes)
                and (self.when is None or self.when(case, diffs)))


# Known pykvm bugs waiting for their fix, one entry per bug: emptied as the fixes land.
PENDING_PYKVM_FIXES: list[Pending] = []

# What pykvm deliberately does not emulate and refuses with a clear error (exit status 8) where
# the CPU would do something: the claimed instructions' cases that reach it count as refused.
UNSUPPORTED: list[Pending] = [
    Pending(r"^(FF /[35] .*\[mem\]|9A |EA |CF )", "task switches to a 16-bit TSS, or to a task at CPL 3 or in "
            "virtual-8086 mode (user mode, which PVM runs only in PVM mode), end the run with a clear "
            "emulation error where the CPU switches tasks",
            when=lambda case, diffs: any("refused (a task switch to" in d for d in diffs)),
]


def _truncated_rip(diff: str) -> bool:
    """A "rip: <oracle> != <emulator>" difference where the emulator's is the oracle's mod 64 KiB."""
    match = re.fullmatch(r"rip: (0x[0-9a-f]+) != (0x[0-9a-f]+)", diff)
    return bool(match) and int(match[1], 16) > 0xFFFF and int(match[2], 16) == int(match[1], 16) & 0xFFFF


def _shift_count(case: Case) -> int:
    """The count operand of a shift or rotate (1 for the D0/D1 forms)."""
    ins = case.ins
    k = ins.op_count - 1
    if ins.op_kind(k) == X.OpKind.REGISTER:
        return case.state.gpr[1] & 0xFF
    return ins.immediate(k)


def delivered(case: Case, state: CpuState | None) -> bool:
    """Whether ``state`` (after the case, HLT included) sits right after a vector's handler."""
    if state is None:
        return False
    cs, ip = handler(case.mode, case.gate16, 0)
    return state.seg[CS].selector == cs and ip < state.rip <= ip + 256


def _any_delivery(case: Case, run, kernel) -> bool:
    return bool(run.deliveries) or delivered(case, kernel.state)


def _frame_outside_ram(case: Case, run, kernel) -> bool:
    """A delivery whose frame lies (at least partly) outside RAM."""
    if not _any_delivery(case, run, kernel) or case.mode.real:
        return False
    sp = case.state.gpr[4] & (0xFFFFFFFF if case.state.seg[SS].db else 0xFFFF)
    bottom = case.state.seg[SS].base + sp - 20
    return not 0 <= bottom < MEMORY_SIZE - 20


def operand_value(case: Case, k: int) -> int:
    """The value of operand ``k`` of the case's instruction before it runs (registers, or
    the bytes the case put in memory: the mode's template with the case's writes)."""
    ins = case.ins
    if ins.op_kind(k) == X.OpKind.REGISTER:
        return register_value(case.state, ins.op_register(k))
    explicit = [a for a in memory_accesses(ins, case.state, case.mode.stack == 32) if not a.implicit_stack]
    if not explicit or explicit[0].linear + explicit[0].size > MEMORY_SIZE:
        return 0xFFFFFFFF
    acc = explicit[0]
    data = bytearray(memory_template(case.mode, case.gate16)[acc.linear:acc.linear + acc.size])
    for address, chunk in case.writes:
        for i in range(acc.size):
            if address <= acc.linear + i < address + len(chunk):
                data[i] = chunk[acc.linear + i - address]
    return int.from_bytes(data, "little")


def _wraps_4gib(case: Case) -> bool:
    return any(acc.offset + acc.size > 1 << 32 for acc in memory_accesses(case.ins, case.state,
                                                                           case.mode.stack == 32))


@dataclass(frozen=True)
class Departure:
    """Cases the kernel's emulator is known to run differently from the SDM:
    ``applies(case, emulator_run, kernel_run)`` decides; ``reason`` quotes the SDM. Such a
    case goes to unicorn, or, if ``ignore(case, emulator_run)`` is given, is compared with
    the kernel leaving out just what that ``Ignore`` names."""

    name: str
    applies: object
    reason: str
    ignore: object = None


DEPARTURES: list[Departure] = [
    Departure("kernel: AAD/AAM flags from AX",
              lambda case, run, kernel: case.form.mnemonics in (("AAD",), ("AAM",)),
              "SDM AAD/AAM: \"The SF, ZF, and PF flags are set according to the resulting binary value "
              "in the AL register\"; the kernel computes them from AX (../shared/PVM.md)."),
    Departure("kernel: ENTER pushes (E)BP with the stack size",
              lambda case, run, kernel: case.form.mnemonics == ("ENTER",),
              "SDM ENTER: \"Push(EBP)\" or \"Push(BP)\" by operand size (OperandSize = 32 / 16); the "
              "kernel pushes with the stack-address size (../shared/PVM.md)."),
    Departure("kernel: real-mode delivery clears ESP[31:16]",
              lambda case, run, kernel: case.mode.real and case.state.gpr[4] >> 16 and _any_delivery(case, run, kernel),
              "SDM INT n, real-address-mode operation: FLAGS, CS and IP are pushed as words through SP "
              "(a 16-bit stack), so ESP[31:16] stays; the kernel clears it (../shared/PVM.md)."),
    Departure("kernel: protected-mode delivery ignores SS.base",
              lambda case, run, kernel: not case.mode.real and case.state.seg[SS].base and _any_delivery(case, run, kernel),
              "SDM vol. 3, 6.12.1: with no privilege change the handler uses the current stack, SS:ESP, "
              "so the frame goes to SS.base + ESP; the kernel pushes at linear ESP (../shared/PVM.md)."),
    Departure("kernel: 286 gates push a 32-bit frame",
              lambda case, run, kernel: case.gate16 and _any_delivery(case, run, kernel),
              "SDM vol. 3, 6.11 and 6.12.1: the gate's size (D) selects a 16- or 32-bit frame, so a 286 "
              "(16-bit) interrupt gate pushes FLAGS, CS and IP as words; the kernel pushes dwords "
              "(measured here)."),
    Departure("kernel: protected-mode delivery on a 16-bit stack uses ESP[31:16]",
              lambda case, run, kernel: (not case.mode.real and not case.state.seg[SS].db
                                         and case.state.gpr[4] >> 16
                                         and (_any_delivery(case, run, kernel) or kernel.outcome == "shutdown")),
              "SDM vol. 3, 6.12.1 and vol. 1, 6.2.3: with SS.B = 0 pushes use SP; the kernel pushes at "
              "ESP, 4 GiB away, and escalates to a triple fault (measured here)."),
    Departure("kernel: exception frame outside RAM",
              _frame_outside_ram,
              "SDM vol. 3, 6.12.1: the frame is written to SS:ESP like any store (outside RAM: the bus); "
              "the kernel cannot push it there and shuts the vCPU down (measured here)."),
    Departure("kernel: real-mode INT n with an operand-size prefix pushes a 32-bit frame",
              lambda case, run, kernel: case.mode.real and "66" in case.prefix.split()
              and set(case.form.mnemonics) & {"INT", "INT1", "INT3", "INTO"},
              "SDM INT n, real-address-mode operation: FLAGS, CS and IP are pushed as words whatever the "
              "operand size; the kernel pushes EFLAGS, CS and EIP as dwords (measured here)."),
    Departure("kernel: several MMIO accesses in one instruction",
              lambda case, run, kernel: sum(1 for e in run.io if e[0] == "mmio") > 1,
              "SDM: an instruction's memory accesses happen once each; under PVM's non-PVM-mode "
              "emulation each MMIO exit re-runs the instruction and its side effects (a POPAD from MMIO "
              "moved ESP by 0x84, measured here)."),
    Departure("kernel: REP INS in batches",
              lambda case, run, kernel: set(case.form.mnemonics) & {"INSB", "INSW", "INSD"}
              and case.prefix.split()[-1:] in (["F3"], ["F2"]),
              "SDM REP: after a fault \"the source and destination registers point to the next string "
              "elements to be operated on\", and with a 16-bit address size DI wraps at 64 KiB; the "
              "kernel reads the port for a whole batch first, commits none of it at a fault and does "
              "not wrap DI (measured here and in test_kernel_random)."),
    Departure("kernel: INS reads the port before a faulting store",
              lambda case, run, kernel: set(case.form.mnemonics) & {"INSB", "INSW", "INSD"}
              and _any_delivery(case, run, kernel),
              "SDM vol. 3, 6.5: a fault \"allows the program to be restarted with no loss of continuity\", "
              "so a faulting INS must not have consumed a port read; the kernel reads the port, then "
              "faults on the store."),
    Departure("kernel: a faulting REPE/REPNE CMPS/SCAS restores EFLAGS of its last restart",
              lambda case, run, kernel: set(case.form.mnemonics) & {"CMPSB", "CMPSW", "CMPSD", "SCASB", "SCASW",
                                                                    "SCASD"}
              and case.prefix.split()[-1:] in (["F3"], ["F2"]) and run.deliveries,
              "SDM REP: \"When a fault occurs during the execution of a CMPS or SCAS instruction that is "
              "prefixed with REPE or REPNE, the EFLAGS value is restored to the state prior to the "
              "execution of the instruction\"; the kernel runs long REPs in chunks and restores the flags "
              "of the last chunk's start (the arithmetic flags, in RFLAGS and in the pushed image).",
              ignore=lambda case, run: Ignore(flags=ARITH, memory=((run.deliveries[0][1], 2),))),
    Departure("kernel: accesses wrapping past 4 GiB do not fault",
              lambda case, run, kernel: _wraps_4gib(case),
              "SDM vol. 3, 5.3 (limit checking): #GP (#SS) for a word at an offset greater than the "
              "effective limit - 1, a doubleword at one greater than the effective limit - 3, so with a "
              "4 GiB limit an access crossing 4 GiB faults; the kernel wraps it around to address 0."),
    Departure("kernel: LTR/LLDT of an LDT selector push error code 0",
              lambda case, run, kernel: mnemonic(case.ins) in ("LTR", "LLDT") and run.deliveries
              and run.deliveries[0][0] == 13 and operand_value(case, 0) & 4,
              "SDM LTR: \"#GP(selector) ... If the selector points to LDT or is beyond the GDT limit\" (LLDT: "
              "likewise for a selector that does not point into the GDT), the error code holding the "
              "selector (vol. 3, 6.13); the kernel pushes 0.",
              ignore=lambda case, run: Ignore(memory=((run.deliveries[0][1] - 3 * run.deliveries[0][2],
                                                      run.deliveries[0][2]),))),
    Departure("kernel: reads the memory operand of a store-only or flush instruction",
              lambda case, run, kernel: mnemonic(case.ins) in ("SLDT", "STR", "SMSW", "CLFLUSH", "CLFLUSHOPT")
              and case.form.operands == "mem" and any(e[0] == "mmio" for e in kernel.io + run.io),
              "SDM SLDT/STR/SMSW only store to their memory operand, and CLFLUSH(OPT) reads no data (it is "
              "checked like a load); the kernel reads the operand first (visible on MMIO)."),
    Departure("kernel: real-mode stack accesses wrap at 64 KiB",
              lambda case, run, kernel: case.mode.real and (case.state.gpr[4] & 0xFFFF) in (1, 3, 5, 0xFFFF, 0xFFFD, 0xFFFB)
              and (first_vector(run) is not None or kernel.outcome == "shutdown" or _any_delivery(case, run, kernel)),
              "SDM vol. 3, 20.1 (22.x in newer editions), Segment Wraparound: the Intel386 and later \"in "
              "real-address mode generate an exception ... A stack-fault exception (#SS) if the segment is a "
              "stack segment ... If a stack operation wraps around the address limit, shutdown occurs\"; the "
              "kernel wraps the word at SP = 0xffff."),
    Departure("kernel: SLDT/STR/SMSW m16 with a 32-bit operand size write 4 bytes",
              lambda case, run, kernel: mnemonic(case.ins) in ("SLDT", "STR", "SMSW") and case.form.operands == "mem"
              and ("66" in case.prefix.split()) != (case.mode.code == 32),
              "SDM SLDT/STR/SMSW: with a memory destination the selector (or MSW) is stored as a 16-bit "
              "quantity whatever the operand size; the kernel checks and writes 4 bytes (measured: #SS "
              "at the top of a 16-bit stack)."),
    Departure("kernel: software interrupts in protected mode",
              lambda case, run, kernel: not case.mode.real and mnemonic(case.ins) in ("INT", "INT3", "INTO", "INT1"),
              "SDM INT n/INTO/INT3/INT1: delivery through the IDT gate like any interrupt; the kernel's "
              "non-PVM emulation refuses them (../shared/PVM.md: KVM_EXIT_INTERNAL_ERROR) and, with 66 67 "
              "prefixes, raises #GP instead (measured here)."),
    Departure("kernel: ignores 67 in the 0F 18-1F hint space",
              lambda case, run, kernel: "67" in case.prefix.split() and case.form.operands == "mem"
              and case.ins.op_code().table == X.OpCodeTableKind.T0F and 0x18 <= case.ins.op_code().op_code <= 0x1F,
              "SDM vol. 2, 2.1.1 and 2.1.5: the address-size prefix selects the other addressing form of "
              "the ModR/M byte (16-bit [BX+SI]-style addressing in 32-bit code), which changes how many "
              "displacement bytes follow; the kernel decodes these NOPs and hints with the default address "
              "size, so it runs a different instruction length (measured here)."),
    Departure("kernel: does not check CPUID before executing",
              lambda case, run, kernel: _cpuid_gated(case) and not _offered(case, run) and first_vector(run) == 6,
              "SDM vol. 2 (e.g. SERIALIZE, XSUSLDTRK, WBNOINVD): \"#UD If CPUID.<leaf>:<reg>.<feature>[bit] = "
              "0\"; the kernel's emulator runs them although the vCPU's CPUID table (KVM_GET_CPUID2) does not "
              "report the feature."),
    Departure("kernel: MOVBE is #UD although CPUID reports it",
              lambda case, run, kernel: mnemonic(case.ins) == "MOVBE" and _offered(case, run),
              "SDM MOVBE: \"#UD If CPUID.01H:ECX.MOVBE[bit 22] = 0\" (and for a register source); the vCPU's "
              "table reports MOVBE and the kernel raises #UD for the memory forms anyway (measured here)."),
    Departure("kernel: TZCNT runs as BSF whatever CPUID says",
              lambda case, run, kernel: mnemonic(case.ins) == "TZCNT" and _offered(case, run),
              "SDM TZCNT: F3 0F BC is TZCNT where CPUID.(EAX=07H, ECX=0):EBX.BMI1[bit 3] = 1 (it counts trailing "
              "zeros and sets CF for a zero source; only processors without BMI1 run it as BSF); the kernel's "
              "emulator runs BSF although the vCPU's table reports BMI1."),
    Departure("kernel: decodes an instruction that crosses the CS limit",
              lambda case, run, kernel: case.state.rip + len(case.code) - 1 > case.state.seg[CS].limit
              and first_vector(run) == 13,
              "SDM vol. 3, 6.9 (priority among simultaneous exceptions): a code-segment limit violation while "
              "fetching the instruction (priority 7) comes before the faults of decoding it (priority 8: "
              "invalid opcode); the kernel raises #UD for an invalid instruction whose bytes run past the "
              "limit."),
    Departure("kernel: SYSRET outside 64-bit mode",
              lambda case, run, kernel: mnemonic(case.ins) == "SYSRET" and kernel.outcome == "shutdown",
              "SDM SYSRET: \"#UD If IA32_EFER.SCE = 0\" (and on Intel CPUs whenever not in 64-bit mode), "
              "delivered like any #UD; the kernel's emulator shuts the vCPU down instead (measured here)."),
    Departure("kernel: no paging outside long mode",
              lambda case, run, kernel: run.state is not None and run.state.cr0 & 0x80000001 == 0x80000001,
              "SDM vol. 3, 4.1.1: setting CR0.PG with CR0.PE enables 32-bit (or PAE) paging; the kernel's "
              "non-PVM emulation raises #GP instead (../shared/PVM.md)."),
]

def nondeterministic(case: Case) -> Ignore:
    """Outputs that legitimately differ between two runs of the same case: the time-stamp
    counter moves between them (RDTSC, RDTSCP, RDMSR of IA32_TSC)."""
    m = mnemonic(case.ins)
    if m in ("RDTSC", "RDTSCP") or (m == "RDMSR" and case.state.gpr[1] == 0x10):
        return Ignore(gprs=("rax", "rdx"))
    return Ignore()


@dataclass(frozen=True)
class Erratum:
    """A difference an oracle is wrong about: a differing case of ``oracle`` for which
    ``applies(case, emulator_run, oracle_snapshot, diffs)`` holds is "explained", with the SDM's words."""

    oracle: str
    name: str
    applies: object
    reason: str


def _segment_violation(case: Case, run) -> bool:
    """The emulator raised #GP/#SS, and the instruction's bytes or one of its memory accesses
    break a segment rule: beyond the limit (at or below it for expand-down segments), through
    a null segment, a write to a code or read-only segment, a read of execute-only code."""
    if first_vector(run) not in (12, 13):
        return False
    state = case.state
    if state.rip + len(case.code) - 1 > state.seg[CS].limit:
        return True
    for acc in memory_accesses(case.ins, state, case.mode.stack == 32):
        seg = state.seg[acc.segment]
        last = acc.offset + acc.size - 1
        wraps = last >> acc.address_bits        # a REP range that wraps around to offset 0
        if seg.type & 0xC == 0x4:
            top = 0xFFFFFFFF if seg.db else 0xFFFF
            if min(acc.offset, acc.first) <= seg.limit or last > top or wraps:
                return True
        elif last > seg.limit or acc.first + acc.size // max(1, _elements(case, acc)) - 1 > seg.limit:
            return True
        if case.mode.real:
            continue
        writes = acc.access != "r"
        code = bool(seg.type & 8)
        if seg.unusable or (writes and (code or not seg.type & 2)) or (code and not seg.type & 2):
            return True
    return False


def _branch_beyond_limit(case: Case, run, theirs) -> bool:
    """The emulator raised #GP where the oracle branched to an EIP beyond its CS limit (in
    real mode, 0xffff; in protected mode, the limit of the descriptor the selector names)."""
    if not run.deliveries or run.deliveries[0][0] != 13:
        return False
    selector = theirs.segments[CS][0]
    if case.mode.real:
        limit = 0xFFFF
    else:
        table = LDT if selector & 4 else GDT
        index = selector >> 3
        if index >= len(table):
            return False
        limit = decode_descriptor(table[index]).limit
    return theirs.rip > limit


def first_vector(run) -> int | None:
    """The first exception the emulator raised: delivered, or the first of a triple fault."""
    if run.deliveries:
        return run.deliveries[0][0]
    return run.vectors[0] if run.vectors else None


def _elements(case: Case, acc) -> int:
    """How many string elements the access ``acc`` covers (1 unless REP)."""
    size = max(1, memory_bytes(case.ins.memory_size))
    return max(1, acc.size // size) if case.ins.is_string_instruction else 1


def _invalid_cr0(value: int) -> bool:
    """PG without PE, or NW without CD (SDM MOV to CR0)."""
    return bool(value & 0x80000001 == 0x80000000 or value & 0x60000000 == 0x20000000)


def _frame_wraps(case: Case) -> bool:
    """An exception frame (up to 16 bytes) pushed at SS:SP would run below offset 0."""
    sp = case.state.gpr[4] & (0xFFFFFFFF if case.state.seg[SS].db else 0xFFFF)
    return sp < 16


def _cpuid_gated(case: Case) -> bool:
    """The instruction needs a CPUID feature beyond the base ISA (iced-x86's feature list)."""
    return any(f not in BASE_FEATURES and f not in HINT_FEATURES for f in case.ins.cpuid_features())


def _writes_own_bytes(case: Case) -> bool:
    """One of the instruction's stores overlaps its own bytes or the next instruction's (the
    HLT after it, in the block QEMU translated with it)."""
    start = (case.state.seg[CS].base + case.state.rip) & 0xFFFFFFFF
    end = start + len(case.code) + 1
    return any(acc.access != "r" and acc.linear < end and start < acc.linear + acc.size
               for acc in memory_accesses(case.ins, case.state, case.mode.stack == 32))


def _source_bytes(case: Case) -> int:
    """The size of the instruction's second operand (a register or memory)."""
    ins = case.ins
    if ins.op1_kind == X.OpKind.MEMORY:
        return memory_bytes(ins.memory_size)
    return X.RegisterExt.size(ins.op1_register)


def _offered(case: Case, run) -> bool:
    """The vCPU's CPUID (the table the emulator and the kernel share) offers the instruction."""
    return run.features is not None and run.features.allows(case.ins)


def _vex_space(case: Case) -> bool:
    """C4/C5 with a register ModRM in protected mode: a VEX prefix (SDM vol. 2, 2.3)."""
    code = case.code.lstrip(bytes((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF2, 0xF3)))
    return not case.mode.real and len(code) > 1 and code[0] in (0xC4, 0xC5) and code[1] >= 0xC0


ORACLE_ERRATA: list[Erratum] = [
    Erratum("unicorn", "unicorn: CPUID is QEMU's model",
            lambda case, run, theirs, diffs: "CPUID" in case.form.mnemonics
            and all(d.startswith(("rax", "rbx", "rcx", "rdx")) for d in diffs),
            "unicorn answers CPUID from QEMU's CPU model, the emulator from the KVM CPUID table the kernel "
            "oracle uses (SDM CPUID: the values are the processor's)."),
    Erratum("unicorn", "unicorn: MSRs are QEMU's model",
            lambda case, run, theirs, diffs: mnemonic(case.ins) in ("RDMSR", "WRMSR"),
            "unicorn implements QEMU's MSRs, the emulator and the kernel oracle KVM's (SDM RDMSR/WRMSR: "
            "\"#GP(0) If the value in ECX specifies a reserved or unimplemented MSR address\": which ones "
            "is model-specific)."),
    Erratum("any", "executes an encoding the opcode map leaves undefined",
            lambda case, run, theirs, diffs: case.ins.code == X.Code.INVALID and first_vector(run) == 6
            and not theirs.outcome.startswith("exception"),
            "SDM vol. 2, appendix A: opcodes the opcode map leaves undefined or reserved raise #UD "
            "(iced-x86, built from Intel's and AMD's maps, decodes nothing there: e.g. SWAPGS outside 64-bit "
            "mode, 66 0F AE F8-FF); the oracle executes the bytes."),
    Erratum("unicorn", "unicorn: LTR of a null selector",
            lambda case, run, theirs, diffs: mnemonic(case.ins) == "LTR" and not operand_value(case, 0) & 0xFFFC
            and run.deliveries and run.deliveries[0][0] == 13,
            "SDM LTR: \"#GP(0) ... If the source operand contains a NULL segment selector\"; QEMU loads a "
            "null TR."),
    Erratum("unicorn", "unicorn: no data segment-limit checks",
            lambda case, run, theirs, diffs: _segment_violation(case, run),
            "SDM vol. 2, the protected-mode exceptions of every memory instruction: \"#GP(0) If a memory "
            "operand effective address is outside the CS, DS, ES, FS, or GS segment limit. If the "
            "destination operand is in a non-writable segment. If the DS, ES, FS, or GS register is used "
            "to access memory and it contains a NULL segment selector\" (\"#SS(0)\" for SS; in real mode "
            "#GP/#SS for an operand beyond the 64 KiB limit); QEMU's TCG checks none of these on data "
            "accesses, nor the CS limit on fetches, so unicorn completes the instruction."),
    Erratum("unicorn", "unicorn: VEX encodings with CR4.OSXSAVE = 0",
            lambda case, run, theirs, diffs: _vex_space(case) and first_vector(run) == 6
            and not case.state.cr4 & (1 << 18),
            "SDM vol. 2, 2.8 (VEX-encoded instruction exceptions): \"#UD If CR4.OSXSAVE[bit 18]=0\" (and "
            "for opcodes the VEX map leaves undefined); unicorn executes the bytes."),
    Erratum("unicorn", "unicorn: CLFLUSHOPT is #UD",
            lambda case, run, theirs, diffs: mnemonic(case.ins) == "CLFLUSHOPT" and theirs.outcome == "exception 6",
            "SDM CLFLUSHOPT: \"#UD If CPUID.(EAX=07H, ECX=0H):EBX.CLFLUSHOPT[bit 23] = 0\"; the KVM CPUID table "
            "the emulator and the kernel oracle use has the bit, unicorn's QEMU model does not."),
    Erratum("unicorn", "unicorn: RET imm16 sign-extends the immediate",
            lambda case, run, theirs, diffs: mnemonic(case.ins) in ("RET", "RETF") and case.ins.op_count == 1
            and case.ins.immediate(0) & 0x8000 and diffs and all(d.startswith("rsp") for d in diffs),
            "SDM RET: the imm16 operand is the number of bytes to release, added to (E)SP after the pop "
            "(an unsigned count); unicorn adds it sign-extended (0xba5f releases 0x45a1 bytes fewer than "
            "64 KiB)."),
    Erratum("unicorn", "unicorn: MOV to CR4 with reserved bits",
            lambda case, run, theirs, diffs: mnemonic(case.ins) == "MOV" and case.ins.op0_register == X.Register.CR4
            and first_vector(run) == 13 and theirs.outcome == "done",
            "SDM MOV (control registers): \"#GP(0) If an attempt is made to write a 1 to any reserved bit in "
            "CR4\" (vol. 3, 2.5: bits 15 and 26-31, and the bits of features CPUID does not report, such "
            "as VMXE or LA57 here; the kernel oracle agrees with the emulator); unicorn loads them."),
    Erratum("unicorn", "unicorn: MOV to CR0 keeps reserved bits",
            lambda case, run, theirs, diffs: mnemonic(case.ins) == "MOV" and case.ins.op0_register == X.Register.CR0
            and diffs and all(d.startswith("cr0") for d in diffs),
            "SDM vol. 3, 2.5: \"Attempting to set any reserved bits in CR0[31:0] is ignored\" (the kernel "
            "oracle agrees with the emulator); unicorn stores them."),
    Erratum("unicorn", "unicorn: MOV to CR0 with an invalid combination",
            lambda case, run, theirs, diffs: mnemonic(case.ins) == "MOV" and case.ins.op0_register == X.Register.CR0
            and _invalid_cr0(operand_value(case, 1)) and first_vector(run) == 13,
            "SDM MOV (control registers): \"#GP(0) If an attempt is made to write invalid bit combinations in "
            "CR0 (such as setting the PG flag to 1 when the PE flag is set to 0, or setting the CD flag to 0 "
            "when the NW flag is set to 1)\"; unicorn loads them."),
    Erratum("unicorn", "unicorn: fetches the next instruction under the paging MOV CR0 enabled",
            lambda case, run, theirs, diffs: theirs.outcome == "exception 14" and not run.deliveries
            and run.state is not None and run.state.cr0 & 0x80000000,
            "Not the instruction's doing: unicorn's one-instruction run translates the next instruction, "
            "whose fetch through the new (random) page tables faults (SDM vol. 3, 4.1.1: paging applies from "
            "the instruction after the MOV to CR0)."),
    Erratum("unicorn", "unicorn: far CALL pushes before it faults",
            lambda case, run, theirs, diffs: mnemonic(case.ins) == "CALL"
            and (case.ins.is_call_far or case.ins.is_call_far_indirect) and first_vector(run) is not None and all(d.startswith("memory") for d in diffs),
            "SDM CALL (far, same privilege): the selector, descriptor and target EIP are checked before "
            "CS and EIP are pushed, and a fault leaves no partial effect (vol. 3, 6.5); unicorn has "
            "pushed the return address."),
    Erratum("unicorn", "unicorn: F6/F7 /1 (TEST) is #UD",
            lambda case, run, theirs, diffs: mnemonic(case.ins) == "TEST" and case.form.group == 1
            and theirs.outcome == "exception 6",
            "Intel's opcode map leaves group 3 /1 blank, AMD's APM documents F6 /1 and F7 /1 as TEST (this "
            "host is AMD; KVM, the kernel oracle, runs them as TEST, and so does iced-x86's decoder); "
            "unicorn raises #UD."),
    Erratum("unicorn", "unicorn: INT1 is #UD",
            lambda case, run, theirs, diffs: mnemonic(case.ins) == "INT1" and theirs.outcome == "exception 6",
            "SDM INT1/INT3/INTO/INT n: INT1 (F1, ICEBP) raises a debug exception (#DB, vector 1); "
            "unicorn raises #UD."),
    Erratum("unicorn", "unicorn: a fault loading the new task's segments is pushed through an unloaded SS",
            lambda case, run, theirs, diffs: run.outcome == "shutdown" and run.vectors[:1] in ([10], [11], [12])
            and mnemonic(case.ins) in ("CALL", "JMP", "IRET", "IRETD") and theirs.outcome.startswith("exception"),
            "SDM vol. 3, 8.3 and table 8-2: a fault while loading the new task's segment descriptors is taken "
            "in the new task, whose segment registers then hold its selectors but no loaded descriptors; "
            "how an exception frame is pushed through such an SS is not specified. pykvm (as Bochs) treats "
            "the unloaded descriptors as unusable, so the push faults on to a triple fault; QEMU pushes "
            "through a zero-based SS without a limit check."),
    Erratum("unicorn", "unicorn: no stack-limit check while pushing an exception frame",
            lambda case, run, theirs, diffs: run.outcome == "shutdown" and theirs.outcome.startswith("exception")
            and _frame_wraps(case),
            "SDM vol. 3, 6.12.1 and the #SS description (6.15): pushing the frame past the stack "
            "segment's limit raises #SS (then #DF, then a triple fault at CPL 0); QEMU pushes around the "
            "64 KiB wrap unchecked."),
    Erratum("unicorn", "unicorn: its CPU features are QEMU's model",
            lambda case, run, theirs, diffs: _cpuid_gated(case)
            and (first_vector(run) == 6) != (theirs.outcome == "exception 6")
            and (first_vector(run) == 6) != _offered(case, run),
            "SDM vol. 2, every CPUID-gated instruction: \"#UD If CPUID.<leaf>:<reg>.<feature>[bit] = 0\"; "
            "the emulator follows the vCPU's CPUID table (KVM_GET_CPUID2), unicorn QEMU's own model, which "
            "offers other features (e.g. RTM, RDTSCP and WAITPKG, but not CLWB)."),
    Erratum("unicorn", "unicorn: TZCNT/LZCNT follow QEMU's model",
            lambda case, run, theirs, diffs: mnemonic(case.ins) in ("TZCNT", "LZCNT"),
            "SDM TZCNT/LZCNT: F3 0F BC/BD count zeros where CPUID reports BMI1/LZCNT and are BSF/BSR "
            "elsewhere; the emulator follows the vCPU's CPUID table, unicorn QEMU's model "
            "(tests/differential/test_fidelity.py checks both meanings against the SDM)."),
    Erratum("unicorn", "unicorn: CRC32, POPCNT and MOVBE take the other operand size in 16-bit code",
            lambda case, run, theirs, diffs: mnemonic(case.ins) in ("CRC32", "POPCNT", "MOVBE")
            and case.mode.code == 16,
            "SDM vol. 1, 3.6 and vol. 2, 2.1.1: in 16-bit code the operand size is 16 bits unless 66 makes "
            "it 32 (CRC32 r32, r/m16 accumulates 16 source bits; POPCNT r16 and MOVBE r16/m16 read and write "
            "16); QEMU's TCG uses the 32-bit form without the prefix and the 16-bit one with it."),
    Erratum("unicorn", "unicorn: 66 F2 0F 38 F0 (CRC32 r/m8 with an operand-size prefix) is #UD",
            lambda case, run, theirs, diffs: mnemonic(case.ins) == "CRC32" and _source_bytes(case) == 1
            and "66" in case.prefix.split() and theirs.outcome == "exception 6",
            "SDM CRC32: the operand-size prefix chooses between the r/m16 and r/m32 forms of F1 and does not "
            "apply to F0 (r/m8, destination r32), which iced-x86 (built from Intel's and AMD's maps) decodes "
            "with it; QEMU raises #UD. Unverified on hardware here: the kernel's emulator does not run CRC32."),
    Erratum("unicorn", "unicorn: SYSCALL/SYSRET/SYSENTER/SYSEXIT are unicorn's own",
            lambda case, run, theirs, diffs: mnemonic(case.ins) in ("SYSCALL", "SYSRET", "SYSENTER", "SYSEXIT"),
            "unicorn turns SYSCALL and SYSENTER into hooks for user-mode emulation and does not take the "
            "vCPU's EFER or SYSENTER MSRs from the case; SDM SYSCALL/SYSRET: #UD while EFER.SCE = 0, "
            "SYSENTER/SYSEXIT: #GP(0) in real mode or with IA32_SYSENTER_CS[15:2] = 0 "
            "(tests/differential/test_fidelity.py checks them against the kernel)."),
    Erratum("unicorn", "unicorn: ARPL always stores its destination",
            lambda case, run, theirs, diffs: mnemonic(case.ins) == "ARPL"
            and all(d.startswith(("memory", "port I/O")) for d in diffs),
            "SDM ARPL: \"IF DEST[RPL] < SRC[RPL] THEN ZF := 1; DEST[RPL] := SRC[RPL]; ELSE ZF := 0; FI\": the "
            "destination is written only when its RPL is raised; QEMU writes it back either way."),
    Erratum("unicorn", "unicorn: ENTER's frame pointer on a 16-bit stack keeps ESP[31:16]",
            lambda case, run, theirs, diffs: mnemonic(case.ins) == "ENTER" and not case.state.seg[SS].db
            and ("66" in case.prefix.split()) != (case.mode.code == 32)
            and all(d.startswith(("memory", "rbp")) for d in diffs),
            "SDM ENTER: \"IF StackSize = 32 THEN Push(EBP); FrameTemp := ESP; ELSE Push(BP); FrameTemp := SP\" "
            "and \"IF StackSize = 32 THEN EBP := FrameTemp ELSE BP := FrameTemp\": on a 16-bit stack the frame "
            "pointer is SP, zero-extended when a 32-bit operand pushes it; QEMU pushes and loads ESP with its "
            "upper half."),
    Erratum("unicorn", "unicorn: register forms of 0F 0D and 0F 18 are #UD",
            lambda case, run, theirs, diffs: mnemonic(case.ins) == "RESERVEDNOP" and case.form.operands == "reg"
            and case.ins.op_code().op_code in (0x0D, 0x18) and theirs.outcome == "exception 6",
            "Intel's opcode map (SDM vol. 2, table A-3) puts 0F 0D and 0F 18 in the NOP/prefetch hint space "
            "(\"prefetchw(/1) Ev\", \"Grp 16\", the other encodings reserved NOPs), and iced-x86 decodes their "
            "register forms as reserved NOPs, which the kernel's emulator runs as such; QEMU raises #UD."),
    Erratum("unicorn", "a 16-bit frame cannot hold a return EIP past 0xffff",
            lambda case, run, theirs, diffs: run.deliveries and diffs and all(_truncated_rip(d) for d in diffs),
            "SDM INT n (real-address mode, and 16-bit gates): \"Push(IP)\" pushes 16 bits, so the return "
            "address 0x10000 of an instruction ending at 0xffff is pushed as 0; unicorn stops after the INT "
            "with EIP 0x10000, and the emulator's EIP is read back from the frame it pushed."),
    Erratum("unicorn", "unicorn: an instruction that writes its own bytes (or the next one's) is restarted",
            lambda case, run, theirs, diffs: getattr(theirs, "rip", None) == case.state.rip and _writes_own_bytes(case),
            "QEMU's TCG detects a store into the translated block being run and restarts the instruction, "
            "so unicorn's one-instruction run ends before it; the SDM (vol. 3, 11.6) lets the store take "
            "effect and the instruction complete, as the emulator does."),
    Erratum("unicorn", "unicorn: no CS-limit check on a branch target",
            lambda case, run, theirs, diffs: _branch_beyond_limit(case, run, theirs),
            "SDM JMP/CALL/RET/IRET: #GP(0) when the new instruction pointer is beyond the code segment "
            "limit (real mode: \"If the target operand is beyond the code segment limits\"); unicorn "
            "branches there."),
]


# -- results ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    case: Case
    verdict: str                  # agree / refuse / differ / pending / explained / no oracle / crash
    oracle: str = ""              # kernel / unicorn
    diffs: list = field(default_factory=list)
    note: str = ""

    def report(self) -> str:
        c = self.case
        st = c.state
        regs = " ".join(f"{n}={v:#x}" for n, v in zip(("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"),
                                                           st.gpr))
        segs = " ".join(f"{n}={s.selector:#x}" for n, s in zip(("es", "cs", "ss", "ds", "fs", "gs"), st.seg))
        lines = [f"{self.verdict} ({self.oracle or '-'}): {c.form.name} in {c.mode.name}, prefix {c.prefix or '-'}",
                 f"  bytes {c.code.hex(' ')}  {c.text}",
                 f"  at {st.seg[CS].selector:#x}:{st.rip:#x}  {regs}  eflags={st.rflags:#x}  {segs}",
                 f"  replay: scripts/diff_sweep.py --case '{c.id}'"]
        if self.note:
            lines.append(f"  {self.note}")
        lines += [f"  {d}" for d in self.diffs[:12]]
        return "\n".join(lines)


@dataclass
class EmulatorRun:
    state: CpuState | None = None     # after the instruction (and its delivery), before any HLT
    outcome: str = "stepped"          # stepped / halted / shutdown / refused / crash
    message: str = ""
    deliveries: list = field(default_factory=list)
    vectors: list = field(default_factory=list)   # the faults of a triple fault, in order
    landed: bool = False              # the next instruction is a HLT in RAM
    undefined: object = None
    io: tuple = ()
    features: object = None           # the emulator's FeatureCheck (the vCPU's CPUID)


# -- the sweep ---------------------------------------------------------------------------------
class Sweep:
    """Runs cases; owns the KVM machine (if ``kvm``), the emulator and the unicorn CPUs."""

    def __init__(self, kvm: bool = True, unicorn: bool = True):
        self.templates = {(name, gate16): memory_template(mode, gate16) for name, mode in MODES.items()
                          for gate16 in (False, True)}
        self.machine = None
        cpuid = None
        self.msrs: dict = {}
        if kvm:
            import io

            from pykvm.machine import Machine

            # coalesce=False: every port write is an exit the oracle records, port 0x80 too.
            self.machine = Machine(memory_size=MEMORY_SIZE, serial_output=io.BytesIO(), emulator="kernel",
                                   coalesce=False)
            self.kernel_devices = Devices()
            cpuid = self.machine.cpuid
            vcpu = self.machine.vcpu
            self.msrs = vcpu.get_msrs(SYNCED_MSRS)
            # Nothing pending (exception, NMI, interrupt shadow): restored before every case.
            self.events = bytes(ffi.buffer(vcpu.get_vcpu_events()))
        self.emu_memory = GuestMemory(MEMORY_SIZE)
        self.emu_devices = Devices()
        self.emulator = Emulator(CpuState(), self.emu_memory, self.emu_devices.bus, cpuid=cpuid)
        self.msr_machine = None
        if kvm:
            # The emulator's MSRs beyond its own live in a vCPU of their own, as in a Machine
            # (where they are the guest's vCPU): a second, idle one, so the oracle's stays apart.
            self.msr_machine = Machine(memory_size=1 << 20, serial_output=io.BytesIO())
            self.emulator.msr_backend = MsrBackend(self.msr_machine.vcpu)
        self.unicorn = {}
        if unicorn:
            from tests.differential.unicorn_oracle import UnicornCpu

            self.uc_memory = GuestMemory(MEMORY_SIZE)
            self.uc_devices = Devices()
            for real in (True, False):
                self.unicorn[real] = UnicornCpu(real, self.uc_devices.ports, memory=self.uc_memory,
                                                mmio=self.uc_devices.mmio)
        self._kernel_dirty = False

    def close(self) -> None:
        for machine in (self.machine, self.msr_machine):
            if machine is not None:
                machine.close()
        self.unicorn.clear()
        self.emu_memory.close()
        if hasattr(self, "uc_memory"):
            self.uc_memory.close()

    def __enter__(self) -> "Sweep":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def make(self, form: Form, mode, prefix: str, seed: int) -> Case | None:
        return make_case(form, mode, prefix, seed, self.msrs)

    # -- one case ------------------------------------------------------------------------------
    def run(self, case: Case) -> Result:
        run = self._run_emulator(case)
        if run.outcome == "crash":
            return Result(case, "crash", note=run.message)
        if run.outcome == "refused":
            # Refusing is fine for what the emulator does not claim; for what it does (and for
            # the mod = 3 probes of forms it claims, such as C4/C5 in real mode), a CPU that
            # raises an exception there (#UD, #GP, #TS, ...) makes the refusal a bug.
            if not (claims(case.ins) or (case.form.claimed and case.form.operands == "reg!")):
                return Result(case, "refuse", note=run.message)
            oracle, vector = self._oracle_fault(case)
            if vector is not None:
                return self._verdict(case, oracle, run, [f"outcome: exception {vector} != refused ({run.message})"],
                                     SimpleNamespace(outcome=f"exception {vector}"))
            return Result(case, "refuse", note=run.message)
        note = ""
        if self.machine is not None:
            kernel = self._run_kernel(case)
            if not (run.landed or run.outcome != "stepped" or self._kernel_faulted_at_once(case, kernel)):
                # The emulator went on to something other than a HLT (outside RAM, into seeded
                # data): the kernel's run says nothing unless it stopped at a handler instead.
                kernel.outcome = "did not stop after one instruction"
            applying = [d for d in DEPARTURES if d.applies(case, run, kernel)]
            # A departure that sends the case to unicorn wins over one that masks a field.
            departure = min(applying, key=lambda d: d.ignore is not None, default=None)
            ignore = departure.ignore(case, run) if departure is not None and departure.ignore else None
            if departure is not None and ignore is None:
                note = f"departure: {departure.name}"
            elif kernel.outcome in ("halted", "shutdown"):
                result = self._verdict(case, "kernel", run, *self._compare_kernel(case, run, kernel, ignore))
                result.note = result.note or (f"departure: {departure.name}" if departure else "")
                return result
            else:
                note = f"kernel: {kernel.outcome}"
        if not self.unicorn:
            return Result(case, "no oracle", note=note)
        compared = self._compare_unicorn(case, run)
        if isinstance(compared, str):
            return Result(case, "no oracle", note=f"{note}; {compared}" if note else compared)
        result = self._verdict(case, "unicorn", run, *compared)
        result.note = result.note or note
        return result

    def _verdict(self, case: Case, oracle: str, run, diffs: list[str], theirs) -> Result:
        if not diffs:
            return Result(case, "agree", oracle)
        for erratum in ORACLE_ERRATA:
            if erratum.oracle in (oracle, "any") and erratum.applies(case, run, theirs, diffs):
                return Result(case, "explained", oracle, diffs, f"{erratum.name}: {erratum.reason}")
        for unsupported in UNSUPPORTED:
            if unsupported.matches(case, diffs):
                return Result(case, "refuse", oracle, diffs, unsupported.description)
        for pending in PENDING_PYKVM_FIXES:
            if pending.matches(case, diffs):
                return Result(case, "pending", oracle, diffs, pending.description)
        return Result(case, "differ", oracle, diffs)

    # -- the emulator ------------------------------------------------------------------------------
    def _load(self, memory: GuestMemory, case: Case) -> None:
        view = memory.view
        view[:] = self.templates[(case.mode.name, case.gate16)]
        for address, data in case.writes:
            view[address:address + len(data)] = data

    def _run_emulator(self, case: Case) -> EmulatorRun:
        memory, emu = self.emu_memory, self.emulator
        self._load(memory, case)
        self.emu_devices.reset()
        state = case.state.copy()
        emu.state = state
        emu.reset_side_state()
        tracker = Tracker(emu, memory)
        run = EmulatorRun(features=emu.features)
        try:
            tracker.step()
            # A REP string instruction may stop early (an emulator may split it): finish it.
            for _ in range(64):
                if state.rip != case.state.rip or tracker.deliveries or state.halted or not case.form.string:
                    break
                tracker.step()
            run.deliveries = list(tracker.deliveries)
            run.state = state.copy()
            # With TF set the HLT would be single-stepped (SDM vol. 3, 18.3.1.4), which KVM does not
            # do (it exits on the HLT): such a case goes to unicorn, which runs one instruction.
            run.landed = not state.halted and not state.rflags & FLAG_TF and _at_hlt(state, memory)
            if run.landed:
                tracker.step()
            run.outcome = "halted" if state.halted else "stepped"
        except EmulationError as e:
            run.outcome = "crash" if "internal emulator error" in str(e) else "refused"
            run.message = str(e)
        except TripleFault as e:
            run.outcome = "shutdown"
            run.state = state.copy()
            run.vectors = list(e.vectors)
        except Exception as e:       # noqa: BLE001 - any other exception is an emulator bug
            run.outcome, run.message = "crash", f"{type(e).__name__}: {e}"
        run.undefined = tracker.result()
        run.io = self.emu_devices.log
        return run

    # -- the kernel -----------------------------------------------------------------------------------
    def _run_kernel(self, case: Case) -> SimpleNamespace:
        machine = self.machine
        vcpu = machine.vcpu
        if self._kernel_dirty:
            self._reset_kernel_cpu()
        self._load(machine.memory, case)
        self.kernel_devices.reset()
        self._set_state(vcpu, case.state)
        outcome = self._kernel_loop(vcpu, self.kernel_devices)
        if "DR_REG" in case.form.operand_kinds or set(case.form.mnemonics) & {"FLDCW", "FNINIT", "FNCLEX"}:
            self._kernel_dirty = True
        return SimpleNamespace(outcome=outcome, state=load_state(vcpu), io=self.kernel_devices.log)

    def _set_state(self, vcpu, state: CpuState) -> None:
        events = vcpu.get_vcpu_events()
        ffi.buffer(events)[:] = self.events
        vcpu.set_vcpu_events(events)
        store_state(vcpu, state)

    @staticmethod
    def _kernel_loop(vcpu, devices: Devices) -> str:
        """KVM_RUN to the HLT: port I/O and MMIO to ``devices``; a watchdog for runaways."""
        def expire(*_):
            vcpu.immediate_exit = True

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, KERNEL_TIMEOUT)
        outcome = None
        try:
            outcome = Sweep._kernel_exits(vcpu, devices)
            return outcome
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            vcpu.immediate_exit = False
            if outcome != "halted":
                # An exit left unserved (or cut short) must not complete in the next case. After
                # a shutdown too: measured, a triple fault while pushing a frame to MMIO left an
                # access pending that the next case's KVM_RUN completed into its own instruction.
                vcpu.complete_pending_io()

    @staticmethod
    def _kernel_exits(vcpu, devices: Devices) -> str:
        for _ in range(100_000):
            exit_ = vcpu.run()
            reason = exit_.reason
            if reason == ExitReason.IO:
                if exit_.is_out:
                    for v in exit_.values():
                        devices.ports.write(exit_.port, exit_.size, v)
                else:
                    exit_.set_values([devices.ports.read(exit_.port, exit_.size) for _ in range(exit_.count)])
            elif reason == ExitReason.MMIO:
                # Straight from kvm_run: KVM also reports 3-byte pieces (of an access straddling
                # the end of RAM), which pykvm's MmioExit record refuses.
                mmio = vcpu.kvm_run.mmio
                n = mmio.len
                if not 0 < n <= 8:
                    return f"mmio: {n}-byte exit"
                if mmio.is_write:
                    value = int.from_bytes(bytes(mmio.data[0:n]), "little")
                    devices.mmio.write(mmio.phys_addr - MEMORY_SIZE, n, value)
                else:
                    value = devices.mmio.read(mmio.phys_addr - MEMORY_SIZE, n)
                    for i in range(n):
                        mmio.data[i] = value >> (8 * i) & 0xFF
            elif reason == ExitReason.HLT:
                return "halted"
            elif reason == ExitReason.SHUTDOWN:
                return "shutdown"
            elif reason == ExitReason.INTR:
                return "timeout"
            else:
                return f"exit {exit_.describe()}"
        return "runaway"

    def _kernel_faulted_at_once(self, case: Case, kernel) -> bool:
        """Whether the kernel stopped at a handler whose frame holds the case's own EIP: a
        fault of the first instruction (not of whatever ran after it)."""
        state = kernel.state
        if not delivered(case, state):
            return False
        vector = state.rip - 1 - handler(case.mode, case.gate16, 0)[1]
        size = 2 if case.mode.real or case.gate16 else 4
        sp = state.gpr[4] & (0xFFFFFFFF if state.seg[SS].db else 0xFFFF)
        at = (state.seg[SS].base + sp + (size if vector in (8, 10, 11, 12, 13, 14, 17) else 0)) & 0xFFFFFFFF
        if at + size > MEMORY_SIZE:
            return False
        eip = int.from_bytes(self.machine.memory.view[at:at + size], "little")
        return eip == case.state.rip & ((1 << (8 * size)) - 1)

    def _reset_kernel_cpu(self) -> None:
        """Debug registers and the x87 control state persist in the vCPU: a MOV DRn or FLDCW
        case must not leak into the next. Runs ``mov dr0-3/6/7, 0`` (twice: a DR7.GD left
        set makes the first MOV DR raise #DB, which clears GD), and resets the FPU."""
        machine = self.machine
        code = bytes.fromhex("31c0 0f23c0 0f23c8 0f23d0 0f23d8 0f23f0 0f23f8 f4")
        case_state = make_reset_state()
        for _ in range(2):
            machine.memory.view[:] = self.templates[("pm32-s32", False)]
            machine.memory.view[CODE_BASE:CODE_BASE + len(code)] = code
            self._set_state(machine.vcpu, case_state)
            self._kernel_loop(machine.vcpu, self.kernel_devices)
        fpu = machine.vcpu.get_fpu()
        fpu.fcw, fpu.fsw, fpu.ftwx = 0x37F, 0, 0
        machine.vcpu.set_fpu(fpu)
        self._kernel_dirty = False

    def _compare_kernel(self, case: Case, run: EmulatorRun, kernel, ignore=None) -> tuple[list[str], object]:
        """(differences, the kernel's snapshot)."""
        if run.outcome == "shutdown" or kernel.outcome == "shutdown":
            # A triple fault leaves nothing architectural to compare but the shutdown itself.
            theirs = snapshot(kernel.state, SimpleNamespace(view=b""), kernel.outcome, kernel.io)
            return [] if run.outcome == kernel.outcome else [f"outcome: {kernel.outcome} != {run.outcome}"], theirs
        emu_state = self.emulator.state
        outcome = "halted"
        same_memory = _LIBC.memcmp(self.emu_memory.host_address, self.machine.memory.host_address,
                                   MEMORY_SIZE) == 0
        stub = SimpleNamespace(view=b"")
        ours_io, theirs_io = run.io, kernel.io
        open_mmio = _undefined_mmio(run)
        if open_mmio:     # MMIO bytes the SDM leaves open (the upper half of a PUSH Sreg slot)
            ours_io, theirs_io = bytewise(ours_io, open_mmio), bytewise(theirs_io, open_mmio)
        ours = snapshot(emu_state, stub if same_memory else self.emu_memory, outcome, ours_io, run.undefined)
        theirs = snapshot(kernel.state, stub if same_memory else self.machine.memory, kernel.outcome, theirs_io)
        diffs = differences(theirs, ours, ignore or nondeterministic(case))
        for msr in SYNCED_MSRS:
            a, b = kernel.state.msrs.get(msr), emu_state.msrs.get(msr)
            if a != b:
                diffs.append(f"msr {msr:#x}: {a if a is None else hex(a)} != {b if b is None else hex(b)}")
        return diffs, theirs

    # -- unicorn ---------------------------------------------------------------------------------------
    def _unicorn_run(self, case: Case) -> tuple[str, object]:
        cpu = self.unicorn[case.mode.real]
        self._load(self.uc_memory, case)
        self.uc_devices.reset()
        ins = case.ins
        until, count = 0, 1
        if case.form.string and ins.code != X.Code.INVALID and (ins.has_rep_prefix or ins.has_repne_prefix):
            # QEMU runs a REP string instruction as one iteration per execution of it.
            until, count = (case.linear + len(case.code)) & 0xFFFFFFFF, 1 << 20
        outcome = cpu.run(case.state, count=count, until=until)
        return outcome, cpu

    def _oracle_fault(self, case: Case) -> tuple[str, int | None]:
        """(oracle, vector) of the exception an oracle raises on the first instruction of a
        case pykvm refused (vector None: the oracle runs it, so refusing is a fair answer)."""
        if self.machine is not None:
            kernel = self._run_kernel(case)
            if kernel.outcome == "halted" and self._kernel_faulted_at_once(case, kernel):
                return "kernel", kernel.state.rip - 1 - handler(case.mode, case.gate16, 0)[1]
        if self.unicorn:
            outcome, _ = self._unicorn_run(case)
            if outcome.startswith("exception"):
                return "unicorn", int(outcome.split()[1])
            return "unicorn", None
        return "", None

    def _compare_unicorn(self, case: Case, run: EmulatorRun) -> tuple[list[str], object] | str:
        """(differences, unicorn's snapshot), or why unicorn cannot run the case."""
        outcome, cpu = self._unicorn_run(case)
        if outcome.startswith("unicorn stopped"):
            return outcome
        open_mmio = _undefined_mmio(run)
        ours_outcome, io = "done", bytewise(run.io, open_mmio)
        if run.outcome == "shutdown":
            ours_outcome = "shutdown"
        elif run.deliveries:
            vector, flags_at, size = run.deliveries[0]
            ours_outcome = f"exception {vector}"
            if outcome.startswith("exception"):
                # Undone in place: the emulator's RAM is reloaded for the next case anyway.
                frame = self._undo_delivery(case, run, flags_at, size)
                io = bytewise(run.io, {a - MEMORY_SIZE for a in frame} | open_mmio)
        theirs_outcome = "done" if outcome == "halted" else outcome
        stub = SimpleNamespace(view=b"")
        if ours_outcome != theirs_outcome:
            theirs = cpu.snapshot(theirs_outcome, (), stub)
            return [f"outcome: {theirs_outcome} != {ours_outcome}"], theirs
        same = _LIBC.memcmp(self.emu_memory.host_address, self.uc_memory.host_address, MEMORY_SIZE) == 0
        theirs = cpu.snapshot(theirs_outcome, bytewise(self.uc_devices.log, open_mmio),
                              stub if same else self.uc_memory)
        ours = snapshot(run.state, stub if same else self.emu_memory, ours_outcome, io, run.undefined)
        return differences(theirs, ours, nondeterministic(case)), theirs

    def _undo_delivery(self, case: Case, run, flags_at: int, size: int) -> list[int]:
        """Make ``run.state`` and the emulator's RAM what they were before the emulator
        delivered the exception, from the frame it pushed (unicorn stops there): EIP, CS,
        EFLAGS (less RF), ESP, and the frame's bytes (a frame pushed past RAM's end is read
        back from the MMIO writes). Returns the frame's linear addresses (it may wrap
        around a 16-bit stack)."""
        state, memory = run.state, self.emu_memory.view
        mask = 0xFFFFFFFF if state.seg[SS].db else 0xFFFF
        base = state.seg[SS].base
        sp = state.gpr[4] & mask
        flags_offset = (flags_at - base) & mask
        frame = [(base + ((sp + k) & mask)) & 0xFFFFFFFF for k in range(((flags_offset - sp) & mask) + size)]
        written = mmio_written(run.io)

        def read(offset: int, n: int) -> int:
            addresses = [(base + ((offset + k) & mask)) & 0xFFFFFFFF for k in range(n)]
            return int.from_bytes(bytes(memory[a] if a < MEMORY_SIZE else written.get(a - MEMORY_SIZE, 0)
                                        for a in addresses), "little")

        eip, cs = read(flags_offset - 2 * size, size), read(flags_offset - size, 2)
        eflags = read(flags_offset, size)
        state.gpr[4] = (state.gpr[4] & ~mask) | ((sp + len(frame)) & mask)
        # A 16-bit frame holds IP only: the upper half of EIP is the instruction's.
        state.rip = eip if size == 4 else (case.state.rip & ~0xFFFF) | eip
        state.seg[CS] = case.state.seg[CS].copy()
        state.seg[CS].selector = cs
        upper = case.state.rflags & 0xFFFF0000 if size == 2 else 0     # a 16-bit frame holds FLAGS only
        state.rflags = upper | (eflags & ~FLAG_RF)
        template = self.templates[(case.mode.name, case.gate16)]
        for a in frame:
            if a < MEMORY_SIZE:
                memory[a] = template[a]
        for address, data in case.writes:
            for a in frame:
                if address <= a < address + len(data):
                    memory[a] = data[a - address]
        return frame


def make_reset_state() -> CpuState:
    """Flat 32-bit protected mode at CODE_BASE (for the kernel vCPU's reset snippet)."""
    state = initial_state(MODES["pm32-s32"], random.Random(0), {})
    state.rip = CODE_BASE
    return state


def _at_hlt(state: CpuState, memory: GuestMemory) -> bool:
    linear = (state.seg[CS].base + state.rip) & 0xFFFFFFFF
    return (not state.cr0 & 0x80000000 and linear < MEMORY_SIZE and state.rip <= state.seg[CS].limit
            and memory.view[linear] == HLT)


# -- the whole sweep ----------------------------------------------------------------------------------
def case_seed(seed: int, form: Form, mode, prefix: str, instance: int) -> int:
    return zlib.crc32(f"{seed}|{form.name}|{mode.name}|{prefix}|{instance}".encode())


def cases(seed: int = 0, scale: int = 1, forms=None, modes=None, prefixes=None, unclaimed_prefixes=None):
    """(form, mode, prefix, case seed) of a sweep: ``scale`` instances of every claimed
    (form, mode, prefix) and one of every unclaimed one (only with ``unclaimed_prefixes``,
    if given: they are refused whatever the prefix)."""
    for form in forms or FORMS:
        for mode in (modes or MODES.values()):
            if mode.code not in form.sizes:
                continue
            for prefix in prefixes_for(form):
                if prefixes is not None and prefix not in prefixes:
                    continue
                if not form.claimed and unclaimed_prefixes is not None and prefix not in unclaimed_prefixes:
                    continue
                for instance in range(scale if form.claimed else 1):
                    yield form, mode, prefix, case_seed(seed, form, mode, prefix, instance)


def replay(sweep: Sweep, case_id: str) -> Result:
    name, mode, prefix, seed = case_id.split("|")
    case = sweep.make(FORMS_BY_NAME[name], MODES[mode], "" if prefix == "-" else prefix, int(seed))
    return sweep.run(case)


@dataclass
class Coverage:
    """Verdicts by (form name, mode, prefix)."""

    cells: dict = field(default_factory=dict)
    results: list = field(default_factory=list)     # one Result per differing/pending/crash form
    counts: Counter = field(default_factory=Counter)
    not_generated: list = field(default_factory=list)

    def add(self, result: Result) -> None:
        c = result.case
        key = (c.form.name, c.mode.name, c.prefix)
        self.cells.setdefault(key, Counter())[(result.verdict, result.oracle)] += 1
        self.counts[(result.verdict, result.oracle)] += 1
        if result.verdict in ("differ", "crash", "pending", "explained"):
            self.results.append(result)

    def failures(self) -> list[Result]:
        return [r for r in self.results if r.verdict in ("differ", "crash")]


LETTERS = {("agree", "kernel"): "K", ("agree", "unicorn"): "U", ("refuse", ""): "r", ("differ", "kernel"): "D",
           ("differ", "unicorn"): "d", ("pending", "kernel"): "P", ("pending", "unicorn"): "p",
           ("explained", "unicorn"): "e", ("explained", "kernel"): "E", ("no oracle", ""): "-", ("crash", ""): "X"}
_SEVERITY = "XDdPpEe-rUK"


def verdict_letter(verdict: str, oracle: str) -> str:
    return LETTERS.get((verdict, oracle), LETTERS.get((verdict, ""), "?"))


def cell_letter(counter: Counter) -> str:
    """The most severe verdict of a cell (a crash over a difference over agreement)."""
    letters = {verdict_letter(v, o) for v, o in counter}
    return min(letters, key=lambda ch: _SEVERITY.index(ch) if ch in _SEVERITY else -1)


def run_sweep(sweep: Sweep, seed: int = 0, scale: int = 1, forms=None, modes=None, prefixes=None,
              unclaimed_prefixes=None, progress=None) -> Coverage:
    coverage = Coverage()
    for i, (form, mode, prefix, case_seed_) in enumerate(cases(seed, scale, forms, modes, prefixes,
                                                                unclaimed_prefixes)):
        case = sweep.make(form, mode, prefix, case_seed_)
        if case is None:
            coverage.not_generated.append((form.name, mode.name, prefix))
            continue
        coverage.add(sweep.run(case))
        if progress is not None:
            progress(i)
    return coverage
