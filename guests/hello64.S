/* hello64.S - the smallest useful 64-bit guest.
 *
 * Mode:   --mode long, flat image loaded at 0x100000 and entered at its first
 *         byte in 64-bit mode (paging on, identity map, RSP = 0x80000).
 * Does:   prints "Hello from a 64-bit pykvm guest!" on COM1, then writes 0 to the
 *         debug-exit port (process status 1).  Touches no segment registers and
 *         no memory but its own, so it runs whatever GDT the loader chose.
 *
 * pykvm-test:
 *   format = "elf"
 *   mode = "long"
 *   timeout = 10
 *   serial = ["Hello from a 64-bit pykvm guest!"]
 */
#include "guest_asm.h"

    .code64
    .section .text.entry, "ax"
    .globl  _start
_start:
    lea     message(%rip), %rsi
    SERIAL_PUTS
    xor     %eax, %eax
    out     %al, $DEBUG_EXIT_PORT       // exit status (0 << 1) | 1
    HALT_FOREVER

    .section .rodata
message:
    .asciz  "Hello from a 64-bit pykvm guest!\n"
