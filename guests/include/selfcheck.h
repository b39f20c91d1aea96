/* selfcheck.h - the check macros of pykvm's self-checking assembly guests.
 *
 * A guest defines SELFCHECK_PUSH as the push that fits its code size (pushw in
 * 16-bit code, pushl in 32-bit code) and provides `report`, which prints
 * "PASS: <name>" when ZF is set and "FAIL: <name>" otherwise, taking the name's
 * address from the stack and preserving every register.
 */
#ifndef PYKVM_SELFCHECK_H
#define PYKVM_SELFCHECK_H

#ifndef SELFCHECK_PUSH
#error "define SELFCHECK_PUSH (pushw or pushl) before including selfcheck.h"
#endif

/* REPORT name: PASS if ZF is set, FAIL otherwise (PUSH does not touch FLAGS). */
.macro REPORT name
    .pushsection .rodata
.Lname\@: .asciz "\name"
    .popsection
    SELFCHECK_PUSH $.Lname\@
    call    report
.endm

/* CHECK name, want, got: compare (operand size from the register). */
.macro CHECK name, want, got
    cmp     \want, \got
    REPORT  "\name"
.endm
/* CHECKL / CHECKW / CHECKB: the same for memory operands of an explicit size. */
.macro CHECKL name, want, got
    cmpl    \want, \got
    REPORT  "\name"
.endm
.macro CHECKW name, want, got
    cmpw    \want, \got
    REPORT  "\name"
.endm
.macro CHECKB name, want, got
    cmpb    \want, \got
    REPORT  "\name"
.endm

#endif
