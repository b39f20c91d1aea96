"""Port-I/O scripts run twice: in a tiny guest under QEMU (TCG), and against pykvm's devices.

QEMU serves as an oracle nobody here wrote. A script is a list of operations —
``out``, ``in`` (ANDed with a mask, to hide lines QEMU's own devices drive) and
``sti`` (open an interrupt window) — that a 32-bit multiboot guest interprets,
printing each ``in`` and each interrupt it takes (its handlers log the vector
and IRET, nothing else). The replay does the same on a Bus; an interrupt window
becomes "while INTR: acknowledge", which is what the CPU does between STI and
CLI when every handler just returns.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.asm import HAVE_GNU_AS, assemble

QEMU = shutil.which("qemu-system-i386")
AVAILABLE = QEMU is not None and HAVE_GNU_AS
WHY_NOT = "needs qemu-system-i386 (Debian: qemu-system-x86) and GNU as/ld"

OP_END, OP_OUT, OP_IN, OP_STI = 0, 1, 2, 3


class Script:
    def __init__(self):
        self.ops: list[tuple] = []

    def out(self, port: int, value: int) -> "Script":
        self.ops.append((OP_OUT, port, value))
        return self

    def inb(self, port: int, mask: int = 0xFF) -> "Script":
        self.ops.append((OP_IN, port, mask))
        return self

    def sti(self) -> "Script":
        self.ops.append((OP_STI,))
        return self

    def encode(self) -> bytes:
        out = bytearray()
        for op in self.ops:
            out.append(op[0])
            if op[0] != OP_STI:
                out += op[1].to_bytes(2, "little") + bytes([op[2]])
        return bytes(out + bytes([OP_END]))


def replay(script: Script, bus, pic) -> list[str]:
    """What the guest would print, with pykvm's devices on ``bus`` and ``pic`` as the CPU sees it."""
    lines = []
    for op in script.ops:
        if op[0] == OP_OUT:
            bus.pio_write(op[1], 1, op[2])
        elif op[0] == OP_IN:
            lines.append(f"IN {op[1]:04x} {bus.pio_read(op[1], 1) & op[2]:02x}")
        else:
            while pic.interrupt_pending():
                lines.append(f"INT {pic.acknowledge():02x}")
    return lines


_GUEST = r"""
    .set MAGIC, 0x1BADB002
    .set FLAGS, 0x00010000
mb: .long MAGIC, FLAGS, -(MAGIC + FLAGS), mb, mb, 0, 0, start
start:
    cli
    mov $stack_top, %esp
    lgdt gdtr
    ljmp $8, $1f
1:  mov $16, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $idt, %edi
    mov $stubs, %edx
    mov $256, %ecx
2:  mov %edx, %eax
    mov %ax, (%edi)
    movw $8, 2(%edi)
    movw $0x8E00, 4(%edi)
    shr $16, %eax
    mov %ax, 6(%edi)
    add $8, %edi
    add $10, %edx
    loop 2b
    lidt idtr
    mov $script, %esi
next:
    lodsb
    cmp $1, %al
    je op_out
    cmp $2, %al
    je op_in
    cmp $3, %al
    je op_sti
    mov $0, %al
    out %al, $0xf4
    hlt
op_out:
    lodsw
    mov %ax, %dx
    lodsb
    out %al, %dx
    jmp next
op_in:
    lodsw
    mov %ax, %dx
    lodsb
    mov %al, %bl
    in %dx, %al
    and %bl, %al
    mov %al, %bl
    mov $'I', %al
    call putc
    mov $'N', %al
    call putc
    mov $' ', %al
    call putc
    mov %dh, %al
    call hex2
    mov %dl, %al
    call hex2
    mov $' ', %al
    call putc
    mov %bl, %al
    call hex2
    mov $'\n', %al
    call putc
    jmp next
op_sti:
    sti
    nop
    nop
    nop
    nop
    cli
    jmp next

common:
    pusha
    mov $'I', %al
    call putc
    mov $'N', %al
    call putc
    mov $'T', %al
    call putc
    mov $' ', %al
    call putc
    mov 32(%esp), %al
    call hex2
    mov $'\n', %al
    call putc
    popa
    add $4, %esp
    iret

hex2:
    push %eax
    shr $4, %al
    call nibble
    pop %eax
nibble:
    push %eax
    and $15, %al
    add $'0', %al
    cmp $'9', %al
    jbe 1f
    add $('a' - '0' - 10), %al
1:  call putc
    pop %eax
    ret

putc:
    push %edx
    push %eax
1:  mov $0x3fd, %dx
    in %dx, %al
    test $0x20, %al
    jz 1b
    pop %eax
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret

stubs:
    .set vec, 0
    .rept 256
    .byte 0x68
    .long vec
    .byte 0xE9
    .long common - (. + 4)
    .set vec, vec + 1
    .endr

    .align 8
gdt: .quad 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF
gdtr: .word 23
    .long gdt
idtr: .word 256 * 8 - 1
    .long idt
    .align 8
idt: .space 256 * 8
    .space 4096
stack_top:
script:
"""


def run_in_qemu(script: Script, memory: str = "128M", timeout: float = 60) -> list[str]:
    """What the guest prints under QEMU (TCG, with pc-testdev for IRQ lines and isa-debug-exit)."""
    data = ", ".join(str(b) for b in script.encode())
    image = assemble(_GUEST + f"    .byte {data}\n", bits=32, org=0x100000, intel=False)
    with tempfile.TemporaryDirectory() as tmp:
        kernel = Path(tmp, "probe.bin")
        kernel.write_bytes(image)
        proc = subprocess.run(
            [QEMU, "-machine", "pc", "-accel", "tcg", "-display", "none", "-nodefaults", "-no-reboot",
             "-m", memory, "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-device", "pc-testdev",
             "-kernel", str(kernel)],
            capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 1:
        raise RuntimeError(f"QEMU exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return [line for line in proc.stdout.splitlines() if line.startswith(("IN ", "INT "))]
