/* crt0_16.S - start-up code for freestanding C guests built with gcc -m16.
 *
 * Entered at the image's first byte in real mode, as pykvm's --mode real
 * loader leaves the CPU: CS=0, IP=0x7c00, interrupts off, no BIOS.  gcc -m16
 * emits .code16gcc: 32-bit operands and addresses throughout, so the C code
 * takes every pointer as an offset in segment 0 (DS=ES=SS=0) and expects the
 * upper halves of ESP and EBP to be zero.  It makes the C environment: zero
 * data segments, its own stack in .bss (below 0x10000 like everything else,
 * see ld/real16.ld), a zeroed .bss, the direction flag clear, then calls main()
 * with a 32-bit call (main returns with retl) and hands main's return value to
 * the debug-exit port.
 */
#include "guest_asm.h"

#define STACK_SIZE 4096

    .section .text.entry, "ax"
    .code16
    .globl  _start
_start:
    cli
    cld
    xor     %ax, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %ss
    movl    $stack_top, %esp        // all 32 bits: C code addresses (%esp) with 67h
    xorl    %ebp, %ebp              // terminates frame-pointer walks
    mov     $__bss_start, %di       // zero .bss (the stack too: it is unused yet)
    mov     $__bss_end, %cx
    sub     %di, %cx
    rep stosb                       // AL is still 0
    calll   main
    outw    %ax, $DEBUG_EXIT_PORT   // status (main's result << 1) | 1
    HALT_FOREVER

    .bss
    .balign 16
stack:
    .skip   STACK_SIZE
stack_top:
