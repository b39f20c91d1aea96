"""How this host's PVM honours KVM's userspace-irqchip pattern, measured with small 64-bit guests.

The pattern (Documentation/virt/kvm/api.rst): without an in-kernel irqchip, userspace sets
``kvm_run.request_interrupt_window`` while it has an interrupt the guest cannot take yet,
KVM exits with KVM_EXIT_IRQ_WINDOW_OPEN as soon as it can, and ``ready_for_interrupt_injection``
and ``if_flag`` say on every exit whether KVM_INTERRUPT may inject now. The window guest
(``run_window``) raises pc-testdev IRQ 3 with IF = 0, then runs ``body``; its handler reports
ECX, which the body increments. tests/test_injection.py uses it; run this module for the facts:

    python -m tests.pvm_irq_probe
"""

from __future__ import annotations

import io
import logging
import resource
import time
from collections import Counter
from unittest import mock

from pykvm import machine as machine_module
from pykvm.guests import build_guest
from pykvm.kvm.exits import ExitReason
from pykvm.machine import Machine
from tests.asm import assemble

REPORT_PORT = 0x2100         # unclaimed by pykvm: the probe claims it to collect ECX at delivery

WINDOW_GUEST = """
    mov rsp, 0x80000
    lea rdi, [rip + idt]
    lea rax, [rip + handler]
    mov word ptr [rdi + 0x23*16], ax
    mov bx, cs
    mov word ptr [rdi + 0x23*16 + 2], bx
    mov word ptr [rdi + 0x23*16 + 4], 0x8e00
    shr rax, 16
    mov word ptr [rdi + 0x23*16 + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 0x23*16 + 8], eax
    lidt [rip + idtr]
    mov al, 0x11            # master PIC: vectors 0x20-0x27, only IRQ 3 open
    out 0x20, al
    mov al, 0x20
    out 0x21, al
    mov al, 4
    out 0x21, al
    mov al, 1
    out 0x21, al
    mov al, 0xf7
    out 0x21, al
    mov esi, {repeat}
again:
    cli
    mov dx, 0x2003          # pulse IRQ 3: pending, held off by IF = 0
    mov al, 1
    out dx, al
    mov al, 0
    out dx, al
    xor ecx, ecx
    mov qword ptr [rip + hit], -1
    {body}
    cli
    mov rax, [rip + hit]
    mov dx, {report}
    out dx, eax
    dec esi
    jnz again
    cli
    hlt
handler:
    mov [rip + hit], rcx
    push rax
    mov al, 0x20
    out 0x20, al
    pop rax
    iretq
    .balign 8
hit: .quad 0
idtr: .word 4095
    .quad idt
    .balign 16
idt: .space 4096
"""


class _Reports:
    """Port REPORT_PORT: what ECX held when the interrupt came (-1: it did not come)."""

    def __init__(self):
        self.values: list[int] = []

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.values.append(value - (1 << 32) if value >> 31 else value)


def window_image(body: str, repeat: int) -> bytes:
    return assemble(WINDOW_GUEST.format(body=body, repeat=repeat, report=REPORT_PORT), bits=64, org=0x100000)


def run_window(body: str, repeat: int = 10, step_budget: int | None = None) -> tuple[int, list[int], Machine]:
    """Run the window guest through Machine; ``step_budget=0`` turns pykvm's single steps off."""
    reports = _Reports()
    budget = machine_module.WINDOW_STEP_BUDGET if step_budget is None else step_budget
    with mock.patch.object(machine_module, "WINDOW_STEP_BUDGET", budget), \
            Machine(64 << 20, serial_output=io.BytesIO(), testdev=True) as machine:
        machine.bus.pio.register(REPORT_PORT, 4, reports)
        machine.load(window_image(body, repeat), "flat", mode="long")
        status = machine.run(timeout=60)
    return status, reports.values, machine


# -- the facts ------------------------------------------------------------------------------------

def _raw_steps(body: str, steps: int) -> list[str]:
    """Drive the vCPU by hand (no Machine loop): KVM_RUN, one line per exit with what KVM reports;
    single-step from the moment IRQ 3 is up, inject when KVM says ready."""
    lines = []
    with Machine(64 << 20, serial_output=io.BytesIO(), testdev=True) as m:
        m.load(window_image(body, 1), "flat", mode="long")
        vcpu, run = m.vcpu, m.vcpu.kvm_run
        stepping = False
        for _ in range(steps):
            note = ""
            if m.platform.intr and not stepping:
                vcpu.set_guest_debug(enable=True, single_step=True)
                stepping = True
            if m.platform.intr and run.ready_for_interrupt_injection and run.if_flag:
                vcpu.interrupt(m.platform.acknowledge())
                note = "  <- KVM_INTERRUPT before this run"
            elif m.platform.intr:
                run.request_interrupt_window = 1
            exit_ = vcpu.run()
            regs, events = vcpu.sync_regs.regs, vcpu.sync_regs.events
            lines.append(f"{exit_.describe().split(' dr6=')[0]:34} rip={regs.rip:#x} IF={regs.rflags >> 9 & 1} "
                         f"if_flag={run.if_flag} ready={run.ready_for_interrupt_injection} "
                         f"shadow={events.interrupt.shadow} ecx={regs.rcx}{note}")
            if exit_.reason == ExitReason.IO:
                if exit_.is_out:
                    for value in exit_.values():
                        m.bus.pio.write(exit_.port, exit_.size, value)
                else:
                    exit_.set_values([m.bus.pio.read(exit_.port, exit_.size)] * exit_.count)
            elif exit_.reason == ExitReason.HLT:
                break
    return lines


class _ExitCounter(logging.Handler):
    def __init__(self):
        super().__init__()
        self.reasons: Counter = Counter()

    def emit(self, record):
        text = record.getMessage()
        if text.startswith("exit "):
            self.reasons[text.split(": ", 1)[1].split(" at rip")[0].split(" size=")[0]] += 1


def main() -> None:
    print("1. An interrupt pending with IF = 0, window requested, then 'sti; inc ecx x3; cli'")
    print("   (ECX when the interrupt came, -1: not before CLI; 10 rounds):")
    for label, budget in (("request_interrupt_window alone", 0), ("pykvm single-stepping (_hold_off)", None)):
        _, seen, _ = run_window("sti\n inc ecx\n inc ecx\n inc ecx\n", step_budget=budget)
        print(f"   {label:36} {seen}")
    print("2. The same with a long window, 'sti; 1: inc ecx; cmp ecx, 200000; jb 1b' (3 instructions")
    print("   per iteration), request_interrupt_window alone: the window exit comes after ECX iterations:")
    _, seen, _ = run_window("sti\n 2: inc ecx\n cmp ecx, 200000\n jb 2b\n", repeat=20, step_budget=0)
    print(f"   {seen}")
    print("3. What KVM reports per exit (single-stepping once IRQ 3 is up), 'sti; inc ecx x3':")
    for line in _raw_steps("sti\n inc ecx\n inc ecx\n inc ecx\n", 16)[5:]:
        print("   " + line)
    print("4. Exits per tick: guests/idle64 (300 ticks at 100 Hz in sti; hlt):")
    counter = _ExitCounter()
    logger = logging.getLogger("pykvm")
    logger.addHandler(counter)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with Machine(64 << 20, serial_output=io.BytesIO()) as m:
            m.load(build_guest("idle64").read_bytes(), "flat", mode="long")
            m.run(timeout=60)
    finally:
        logger.removeHandler(counter)
        logger.setLevel(old_level)
    for reason, n in counter.reasons.most_common(6):
        print(f"   {n:5}  {reason}")
    print("5. Guest code under KVM_RUN in PVM mode: 1,000,000 x 'dec ecx; jnz' (2 M instructions):")
    image = assemble("mov ecx, 1000000\n 2: dec ecx\n jnz 2b\n cli\n hlt\n", bits=64, org=0x100000)
    with Machine(64 << 20, serial_output=io.BytesIO()) as m:
        m.load(image, "flat", mode="long")
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        m.run(timeout=120)
        wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    print(f"   {wall:.2f} s wall, {after.ru_utime - before.ru_utime:.2f} s user, "
          f"{after.ru_stime - before.ru_stime:.2f} s system: {2e6 / wall / 1e6:.2f} M instructions/s")
    for text in ("popcnt eax, ecx", "crc32 eax, ecx", "andn eax, ebx, ecx"):
        with Machine(64 << 20, serial_output=io.BytesIO()) as m:
            m.load(assemble(f"{text}\n cli\n hlt\n", bits=64, org=0x100000), "flat", mode="long")
            try:
                m.run(timeout=60)
                outcome = "ran"
            except Exception as e:          # noqa: BLE001 - the point is to show what happens
                outcome = str(e)
        print(f"   {text:20} {outcome}")


if __name__ == "__main__":
    main()
