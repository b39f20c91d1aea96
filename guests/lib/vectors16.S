/* vectors16.S - real-mode interrupt vectors for gcc -m16 C guests.
 *
 * vectors_install() points all 256 IVT entries (0000:0000) at the stubs of
 * vectors.h (segment 0, like everything in a real-mode C guest).  A stub
 * pushes its vector and jumps to vector_common, which saves every register,
 * calls on_vector(vector, return IP) with the 32-bit C convention of
 * .code16gcc (calll, arguments as dwords) and returns with a 16-bit IRET.
 * DS, ES and SS are 0 throughout the guest, as the C code expects.
 */
#include "vectors.h"

    .code16
    .text
    .globl  vectors_install
vectors_install:                    // void vectors_install(void), called with calll
    pushl   %edi
    xor     %di, %di                // ES:DI = 0000:0000, the IVT
    mov     $vector_stubs, %dx
    mov     $256, %cx
1:  mov     %dx, %ax
    stosw                           // offset
    xor     %ax, %ax
    stosw                           // segment 0
    add     $STUB_SIZE, %dx
    loop    1b
    popl    %edi
    retl

vector_common:                      // stack: vector, IP, CS, FLAGS (words)
    pushal
    cld
    movzwl  34(%esp), %eax          // the interrupted IP
    movzwl  32(%esp), %edx          // the vector
    pushl   %eax
    pushl   %edx
    calll   on_vector
    addl    $8, %esp
    popal
    add     $2, %sp                 // drop the vector
    iret

    VECTOR_STUBS
