/* vectors.h - the 256 vector stubs shared by lib/vectors{16,32,64}.S.
 *
 * Stub n is at vector_stubs + 8 * n: "push $n" as a sign-extended imm8 (the
 * dispatcher masks the vector to 8 bits), then a jump to vector_common, which
 * each mode's file provides.  Eight bytes hold the push (2) and a near jump
 * (at most 5) in every mode.
 */
#ifndef PYKVM_VECTORS_H
#define PYKVM_VECTORS_H

#define STUB_SIZE 8

.macro VECTOR_STUBS
    .balign STUB_SIZE
    .globl  vector_stubs
vector_stubs:
    .set    vec, 0
    .rept   256
    .balign STUB_SIZE
    .byte   0x6a, vec & 0xff        // push imm8
    jmp     vector_common
    .set    vec, vec + 1
    .endr
.endm

#endif
