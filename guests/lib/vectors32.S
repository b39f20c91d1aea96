/* vectors32.S - protected-mode interrupt vectors for 32-bit C guests.
 *
 * vectors_install() fills a 256-entry IDT with 32-bit interrupt gates (DPL 0,
 * selector: the current CS) to the stubs of vectors.h and loads it.  A stub
 * pushes its vector and jumps to vector_common, which saves every register,
 * calls on_vector(vector, return EIP) and returns with IRET.
 */
#include "vectors.h"

#define GATE_INTERRUPT32 0x8e00     // present, DPL 0, 32-bit interrupt gate

    .code32
    .text
    .globl  vectors_install
vectors_install:
    push    %edi
    push    %ebx
    mov     $idt, %edi
    mov     $vector_stubs, %edx
    mov     %cs, %ebx
    mov     $256, %ecx
1:  mov     %edx, %eax
    mov     %ax, (%edi)             // offset 15:0
    mov     %bx, 2(%edi)            // selector
    movw    $GATE_INTERRUPT32, 4(%edi)
    shr     $16, %eax
    mov     %ax, 6(%edi)            // offset 31:16
    add     $8, %edi
    add     $STUB_SIZE, %edx
    loop    1b
    lidt    idtr
    pop     %ebx
    pop     %edi
    ret

vector_common:                      // stack: vector, EIP, CS, EFLAGS
    pushal
    cld
    push    36(%esp)                // the interrupted EIP
    push    36(%esp)                // the vector (moved up by the push)
    call    on_vector
    add     $8, %esp
    popal
    add     $4, %esp                // drop the vector
    iret

    VECTOR_STUBS

    .data
    .balign 4
    .word   0
idtr:
    .word   256 * 8 - 1
    .long   idt

    .bss
    .balign 8
idt:
    .skip   256 * 8
