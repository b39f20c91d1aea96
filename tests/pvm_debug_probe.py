"""What this host's PVM offers a debugger, measured on small 64-bit guests driven by hand (no Machine).

KVM_SET_GUEST_DEBUG's three tools (Documentation/virt/kvm/api.rst): single-step
(``KVM_GUESTDBG_SINGLESTEP``), hardware breakpoints in DR0-DR3/DR7 (``KVM_GUESTDBG_USE_HW_BP``)
and software breakpoints, an INT3 planted in guest code that KVM turns into a
``KVM_EXIT_DEBUG`` (``KVM_GUESTDBG_USE_SW_BP``); and ``KVM_TRANSLATE`` for linear addresses.
``tests/debug/test_pvm_debug.py`` asserts these facts; run this module to print them:

    python -m tests.pvm_debug_probe
"""

from __future__ import annotations

from dataclasses import dataclass

from pykvm.kvm.exits import ExitReason
from pykvm.x86 import paging
from tests.asm import assemble
from tests.kvm.guest import CODE_ADDR, raw_guest

DR6_BS = 1 << 14                # single-step trap
DR7_ENABLE = 2                  # G0: DR0 enabled, execute, 1 byte

LOOP = """
    mov ecx, {count}
again:
    nop                         # the breakpoint
    inc rbx
    mov [rip + counter], rbx    # the watched quadword
    dec ecx
    jnz again
    hlt
    .balign 8
counter: .quad 0
"""


def loop_code(count: int = 5) -> bytes:
    return assemble(LOOP.format(count=count), bits=64, org=CODE_ADDR)


def _offset_of(code: bytes, needle: bytes) -> int:
    return code.index(needle)


@dataclass
class Exit:
    reason: str
    rip: int
    dr6: int = 0
    pc: int = 0
    detail: str = ""


def _run(vcpu) -> Exit:
    record = vcpu.run()
    regs = vcpu.sync_regs.regs
    if record.reason == ExitReason.DEBUG:
        return Exit("debug", regs.rip, record.dr6, record.pc)
    return Exit(record.reason.name.lower(), regs.rip, detail=record.describe())


def _set_rf(vcpu) -> None:
    regs = vcpu.get_regs()
    regs.rflags |= 1 << 16
    vcpu.set_regs(regs)


def hardware_breakpoint(count: int = 5, resume: str = "rf") -> list[Exit]:
    """DR0 on the loop's NOP, USE_HW_BP; resumed past each hit with RFLAGS.RF ('rf'), with one
    single step with the breakpoint off ('step') or not at all ('none': the next KVM_RUN)."""
    code = loop_code(count)
    nop = CODE_ADDR + _offset_of(code, b"\x90")
    exits = []
    with raw_guest(code) as (_, _, _, vcpu):
        vcpu.set_guest_debug(hw_breakpoints=(nop,))
        for _ in range(count + 3):
            e = _run(vcpu)
            exits.append(e)
            if e.reason != "debug":
                break
            if resume == "rf":
                _set_rf(vcpu)
            elif resume == "step":
                vcpu.set_guest_debug(single_step=True)
                exits.append(_run(vcpu))
                vcpu.set_guest_debug(hw_breakpoints=(nop,))
    return exits


def single_steps(steps: int = 8) -> tuple[list[int], list[Exit]]:
    """KVM_GUESTDBG_SINGLESTEP: the RIP after each step, and what each step's exit said."""
    code = loop_code(2)
    exits = []
    with raw_guest(code) as (_, _, _, vcpu):
        vcpu.set_guest_debug(single_step=True)
        for _ in range(steps):
            exits.append(_run(vcpu))
    return [e.rip for e in exits], exits


def software_breakpoint() -> Exit:
    """An INT3 over the loop's NOP with KVM_GUESTDBG_USE_SW_BP."""
    from pykvm.kvm import ioctls as K
    from pykvm.kvm._syscall import ioctl

    code = bytearray(loop_code(1))
    code[_offset_of(code, b"\x90")] = 0xCC
    with raw_guest(bytes(code)) as (_, _, _, vcpu):
        dbg = vcpu._debug
        dbg.control = K.KVM_GUESTDBG_ENABLE | K.KVM_GUESTDBG_USE_SW_BP
        for i in range(8):
            dbg.arch.debugreg[i] = 0
        ioctl(vcpu.fd, K.KVM_SET_GUEST_DEBUG, dbg, "KVM_SET_GUEST_DEBUG")
        return _run(vcpu)


def write_watchpoint(count: int = 3) -> list[Exit]:
    """DR0 as an 8-byte write watchpoint (R/W0 = 01, LEN0 = 10) on the loop's counter."""
    from pykvm.kvm import ioctls as K
    from pykvm.kvm._syscall import ioctl

    code = loop_code(count)
    counter = CODE_ADDR + len(code) - 8
    exits = []
    with raw_guest(code) as (_, _, _, vcpu):
        dbg = vcpu._debug
        dbg.control = K.KVM_GUESTDBG_ENABLE | K.KVM_GUESTDBG_USE_HW_BP
        for i in range(8):
            dbg.arch.debugreg[i] = 0
        dbg.arch.debugreg[0] = counter
        dbg.arch.debugreg[7] = DR7_ENABLE | (0b01 << 16) | (0b10 << 18)
        ioctl(vcpu.fd, K.KVM_SET_GUEST_DEBUG, dbg, "KVM_SET_GUEST_DEBUG")
        for _ in range(count + 2):
            e = _run(vcpu)
            exits.append(e)
            if e.reason != "debug":
                break
    return exits


def real_mode_under_kvm(count: int = 3) -> list[Exit]:
    """The same hardware breakpoint (resumed by a step) on real-mode code the host kernel emulates
    (non-PVM mode under KVM_RUN, what ``--emulator kernel`` runs)."""
    code = assemble("mov cx, {}\nagain: nop\ninc bx\ndec cx\njnz again\nhlt".format(count), bits=16, org=0x7C00)
    nop = 0x7C00 + _offset_of(code, b"\x90")
    exits = []
    with raw_guest(code, mode="real") as (_, _, _, vcpu):
        vcpu.set_guest_debug(hw_breakpoints=(nop,))
        for _ in range(count + 1):
            exits.append(_run(vcpu))
            if exits[-1].reason != "debug":
                break
            vcpu.set_guest_debug(single_step=True)
            exits.append(_run(vcpu))
            vcpu.set_guest_debug(hw_breakpoints=(nop,))
    return exits


def translations() -> list[tuple[int, int | None, int | None]]:
    """(linear, KVM_TRANSLATE's answer, pykvm's page walk) for mapped and unmapped addresses."""
    out = []
    with raw_guest(loop_code(1)) as (_, _, mem, vcpu):
        sregs = vcpu.get_sregs()
        for linear in (CODE_ADDR, 0x3FFFFFFF, 1 << 30, 1 << 40, 0xFFFF800000000000):
            try:
                walked = paging.walk(mem, sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, linear).phys
            except paging.PageFault:
                walked = None
            try:
                kvm = vcpu.translate(linear)
            except Exception as e:  # noqa: BLE001 - a probe reports whatever happens
                kvm = f"error: {e}"
            out.append((linear, kvm, walked))
    return out


def main() -> None:
    code = loop_code(5)
    nop = CODE_ADDR + _offset_of(code, b"\x90")
    print(f"1. hardware breakpoint (DR0 = {nop:#x}, 5 iterations), resumed with RFLAGS.RF:")
    for e in hardware_breakpoint(5, "rf"):
        print(f"   {e.reason:<10} rip={e.rip:#x} pc={e.pc:#x} dr6={e.dr6:#x} {e.detail}")
    print("   resumed with one single step (breakpoint off), then re-armed:")
    for e in hardware_breakpoint(3, "step"):
        print(f"   {e.reason:<10} rip={e.rip:#x} pc={e.pc:#x} dr6={e.dr6:#x} {e.detail}")
    print("   re-entered with nothing done:")
    for e in hardware_breakpoint(2, "none")[:4]:
        print(f"   {e.reason:<10} rip={e.rip:#x} pc={e.pc:#x} dr6={e.dr6:#x} {e.detail}")
    rips, exits = single_steps()
    print("2. single-step: " + ", ".join(f"{e.reason} rip={e.rip:#x} dr6={e.dr6:#x}" for e in exits))
    e = software_breakpoint()
    print(f"3. INT3 with KVM_GUESTDBG_USE_SW_BP: {e.reason} rip={e.rip:#x} {e.detail}")
    print("4. write watchpoint (DR0, 8 bytes, write):")
    for e in write_watchpoint():
        print(f"   {e.reason:<10} rip={e.rip:#x} pc={e.pc:#x} dr6={e.dr6:#x} {e.detail}")
    print("5. real mode under the kernel's emulation: hardware breakpoint, resumed by a step:")
    for e in real_mode_under_kvm():
        print(f"   {e.reason:<10} rip={e.rip:#x} pc={e.pc:#x} dr6={e.dr6:#x} {e.detail}")
    print("6. KVM_TRANSLATE vs pykvm's page walk:")
    for linear, kvm, walked in translations():
        fmt = lambda v: v if isinstance(v, str) else ("unmapped" if v is None else f"{v:#x}")  # noqa: E731
        print(f"   {linear:#018x}: KVM {fmt(kvm)}, walk {fmt(walked)}")


if __name__ == "__main__":
    main()
