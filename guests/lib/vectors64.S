/* vectors64.S - long-mode interrupt vectors for 64-bit C guests.
 *
 * vectors_install() fills a 256-entry IDT with 64-bit interrupt gates (DPL 0,
 * no IST, selector: the current CS, whatever GDT the loader made) to the stubs
 * of vectors.h and loads it.  A stub pushes its vector and jumps to
 * vector_common, which saves the registers the C ABI lets a call clobber,
 * aligns the stack to 16 bytes, calls on_vector(vector, return RIP) and
 * returns with IRETQ.  The C code is built with -mno-red-zone: an interrupt
 * pushes its frame right below the interrupted code's RSP.
 */
#include "vectors.h"

#define GATE_INTERRUPT64 0x8e00     // present, DPL 0, 64-bit interrupt gate

    .code64
    .text
    .globl  vectors_install
vectors_install:
    mov     $idt, %edi
    mov     $vector_stubs, %edx
    mov     %cs, %esi
    mov     $256, %ecx
1:  mov     %rdx, %rax
    mov     %ax, (%rdi)             // offset 15:0
    mov     %si, 2(%rdi)            // selector
    movw    $GATE_INTERRUPT64, 4(%rdi)
    shr     $16, %rax
    mov     %ax, 6(%rdi)            // offset 31:16
    shr     $16, %rax
    mov     %eax, 8(%rdi)           // offset 63:32
    movl    $0, 12(%rdi)
    add     $16, %rdi
    add     $STUB_SIZE, %rdx
    loop    1b
    lidt    idtr(%rip)
    ret

vector_common:                      // stack: vector, RIP, CS, RFLAGS, RSP, SS
    push    %rax
    push    %rcx
    push    %rdx
    push    %rsi
    push    %rdi
    push    %r8
    push    %r9
    push    %r10
    push    %r11
    push    %rbp
    mov     80(%rsp), %rdi          // the vector
    mov     88(%rsp), %rsi          // the interrupted RIP
    mov     %rsp, %rbp
    and     $-16, %rsp
    cld
    call    on_vector
    mov     %rbp, %rsp
    pop     %rbp
    pop     %r11
    pop     %r10
    pop     %r9
    pop     %r8
    pop     %rdi
    pop     %rsi
    pop     %rdx
    pop     %rcx
    pop     %rax
    add     $8, %rsp                // drop the vector
    iretq

    VECTOR_STUBS

    .data
    .balign 8
    .word   0, 0, 0
idtr:
    .word   256 * 16 - 1
    .quad   idt

    .bss
    .balign 16
idt:
    .skip   256 * 16
