/* crt0_kernel.S - start-up code for 32-bit C kernels that a boot loader enters (pvh.c, mb2.c).
 *
 * Entered at _start in flat 32-bit protected mode, paging and interrupts off, with the
 * boot protocol's magic in EAX (Multiboot 1 and 2) and its boot information's address in
 * EBX (all three). Keeps both, makes its own stack (the protocols promise none), zeroes
 * .bss, clears DF, calls kernel_main(eax, ebx) and hands its result to the debug-exit port.
 */
#include "guest_asm.h"

#define STACK_SIZE 16384

    .section .text.entry, "ax"
    .code32
    .globl  _start
_start:
    cli
    cld
    mov     $stack_top, %esp
    mov     %eax, %esi              // the magic and the boot information, past the .bss loop
    mov     %ebx, %ebp
    mov     $__bss_start, %edi
    mov     $__bss_end, %ecx
    sub     %edi, %ecx
    xor     %eax, %eax
    rep stosb
    push    %ebp
    push    %esi
    xor     %ebp, %ebp              // terminates frame-pointer walks
    call    kernel_main
    outl    %eax, $DEBUG_EXIT_PORT
    HALT_FOREVER

    .bss
    .balign 16
stack:
    .skip   STACK_SIZE
stack_top:
