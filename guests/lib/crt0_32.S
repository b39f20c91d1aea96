/* crt0_32.S - start-up code for freestanding 32-bit C guests.
 *
 * Entered at the image's first byte (the linker script puts .text.entry first)
 * in flat 32-bit protected mode with interrupts off, as pykvm's --mode
 * protected loader (or a multiboot loader) leaves the CPU.  It makes the C
 * environment: its own stack (so nothing depends on the loader's ESP), a
 * zeroed .bss, the direction flag clear (the ABI requires it), then calls
 * main() and hands main's return value to the debug-exit port.
 */
#include "guest_asm.h"

#define STACK_SIZE 16384

    .section .text.entry, "ax"
#ifdef __x86_64__
    .code64                         // lib/crt0_64.S: these instructions mean the same there
#else
    .code32
#endif
    .globl  _start
_start:
    cli
    cld
    mov     $stack_top, %esp
#ifdef CRT0_KERNEL
    mov     %eax, %esi              // lib/crt0_kernel.S: the boot magic, past the .bss loop
#endif
    xor     %ebp, %ebp              // terminates frame-pointer walks
    mov     $__bss_start, %edi      // zero .bss (the stack too: it is unused yet)
    mov     $__bss_end, %ecx
    sub     %edi, %ecx
    xor     %eax, %eax
    rep stosb
#ifdef CRT0_KERNEL
    push    %ebx                    // kernel_main(magic, boot information)
    push    %esi
    call    kernel_main
#else
    call    main
#endif
    outl    %eax, $DEBUG_EXIT_PORT  // status (main's result << 1) | 1
    HALT_FOREVER

    .bss
    .balign 16
stack:
    .skip   STACK_SIZE
stack_top:
