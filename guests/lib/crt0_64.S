/* crt0_64.S - start-up code for freestanding 64-bit C guests.
 *
 * Entered at the image's first byte in 64-bit mode with interrupts off, as
 * pykvm's --mode long loader leaves the CPU (identity-mapped RAM, its own GDT:
 * guests load no selector).  It makes the C environment: its own 16-byte
 * aligned stack, a zeroed .bss, the direction flag clear, then calls main()
 * and hands main's return value to the debug-exit port.
 */
#include "guest_asm.h"

#define STACK_SIZE 16384

    .section .text.entry, "ax"
    .code64
    .globl  _start
_start:
    cli
    cld
    mov     $stack_top, %esp
    xor     %ebp, %ebp              // terminates frame-pointer walks
    mov     $__bss_start, %edi      // zero .bss (the stack too: it is unused yet)
    mov     $__bss_end, %ecx
    sub     %edi, %ecx
    xor     %eax, %eax
    rep stosb
    call    main
    out     %eax, $DEBUG_EXIT_PORT  // status (main's result << 1) | 1
    HALT_FOREVER

    .bss
    .balign 16
stack:
    .skip   STACK_SIZE
stack_top:
