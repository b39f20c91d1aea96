/* exits64.S - an exit-heavy loop for the exit benchmark and the KVM-layer tests.
 *
 * Mode:   --mode long, flat image loaded at 0x100000, entered in 64-bit mode.
 *
 * Image layout (offsets in the flat file == offsets from the load address):
 *   0x00  jmp start            (2 bytes; padded to 8)
 *   0x08  count, u64 LE        number of OUTs; default 100000. The host patches
 *                              it (scripts/build_guests.py: with_count()).
 *   0x10  start: code
 *
 * Does:   count times "outb %al, $0x80" (AL = low byte of the remaining count,
 *         so a device sees changing data), then one "inb $0x80, %al", then
 *         cli; hlt (and hlt again if woken).  Each OUT is one KVM_EXIT_IO, the
 *         IN one more, the HLT a KVM_EXIT_HLT: count + 2 exits in total.
 *         A count of 0 skips the loop.
 *
 * pykvm-test:
 *   format = "elf"
 *   mode = "long"
 *   status = 0                  # cli; hlt after the last exit
 *   timeout = 30
 */
#include "guest_asm.h"

    .code64
    .section .text.entry, "ax"
    .globl  _start
_start:
    jmp     start
    .balign 8
    .globl  count
count:                                  // offset 8: patched by the host
    .quad   100000
start:
    mov     count(%rip), %rcx
    test    %rcx, %rcx
    jz      2f
1:  mov     %ecx, %eax
    out     %al, $POST_PORT
    dec     %rcx
    jnz     1b
2:  in      $POST_PORT, %al
    HALT_FOREVER
