/* selftest16.S - a self-checking suite for 16-bit real-mode code.
 *
 * Mode:   --mode real, flat image loaded at 0x7c00, CS=0, IP=0x7c00, no BIOS.
 * Does:   runs one check after another and prints "PASS: <name>" or
 *         "FAIL: <name>" for each, then "SUMMARY: <n> passed, <m> failed", and
 *         writes the failure count to the debug-exit port (0 failures ->
 *         process status 1).
 *
 * Every expected value below was worked out from the Intel SDM and checked on
 * a real x86 CPU model: only flags the SDM *defines* for an instruction are
 * compared (e.g. AF after AND, OF after a multi-bit shift, or anything after DIV
 * is undefined and masked out), so the suite is valid on any x86.
 *
 * It installs two IVT entries: vector 0 (#DE), whose handler records the fault
 * and resumes at an address the test chose, and vector 0x40, a software
 * interrupt used by the INT/IRET checks.  It uses 186/386 instructions (PUSHA,
 * IMUL r,r,imm, 32-bit operands via the 66h prefix) since every CPU pykvm
 * targets has them.
 *
 * pykvm-test:
 *   format = "flat"
 *   mode = "real"
 *   serial = ["SUMMARY: 137 passed, 0 failed"]
 */
#include "guest_asm.h"

#define STACK_TOP   0x7c00
#define INT_TEST    0x40            /* the software-interrupt vector under test */
#define SCRATCH_SEG 0x1000          /* segment of the scratch area at linear 0x10000 */

#define SELFCHECK_PUSH pushw
#include "selfcheck.h"

/* SAVE_FLAGS: remember FLAGS right after the instruction under test. */
.macro SAVE_FLAGS
    pushf
    popw    saved_flags
.endm

/* CHECK_FLAGS name, mask, want: (saved FLAGS & mask) == want.  Preserves registers. */
.macro CHECK_FLAGS name, mask, want
    push    %ax
    mov     saved_flags, %ax
    and     $(\mask), %ax
    cmp     $(\want), %ax
    pop     %ax
    REPORT  "\name"
.endm

/* Flags defined after logic ops (AF is undefined) and after multi-bit shifts. */
#define FL_LOGIC (FL_CF | FL_PF | FL_ZF | FL_SF | FL_OF)
#define FL_SHIFTN (FL_CF | FL_PF | FL_ZF | FL_SF)

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
    mov     $STACK_TOP, %sp
    ljmp    $0, $1f                 // make sure CS=0 whoever loaded us
1:
    // The IVT at 0 is ours: vector 0 (#DE) and the test vector.
    movw    $de_handler, 0 * 4
    movw    $0, 0 * 4 + 2
    movw    $int_handler, INT_TEST * 4
    movw    $0, INT_TEST * 4 + 2
    mov     $msg_banner, %si
    call    puts

/* ------------------------------------------------------------ ALU and flags */
    mov     $0x7fff, %ax
    add     $1, %ax
    SAVE_FLAGS
    CHECK   "add 7fff+1 = 8000", $0x8000, %ax
    CHECK_FLAGS "add 7fff+1 flags: OF SF AF PF", FL_ARITH, FL_OF | FL_SF | FL_AF | FL_PF

    mov     $0xffff, %ax
    add     $1, %ax
    SAVE_FLAGS
    CHECK_FLAGS "add ffff+1 flags: CF ZF AF PF", FL_ARITH, FL_CF | FL_ZF | FL_AF | FL_PF

    mov     $0x7f, %al
    addb    $1, %al
    SAVE_FLAGS
    CHECK_FLAGS "add byte 7f+1 flags: OF SF AF", FL_ARITH, FL_OF | FL_SF | FL_AF

    stc
    mov     $0xfffe, %ax
    adc     $1, %ax
    SAVE_FLAGS
    CHECK   "adc fffe+1+CF = 0", $0, %ax
    CHECK_FLAGS "adc fffe+1+CF flags: CF ZF AF PF", FL_ARITH, FL_CF | FL_ZF | FL_AF | FL_PF

    mov     $0x8000, %ax
    sub     $1, %ax
    SAVE_FLAGS
    CHECK   "sub 8000-1 = 7fff", $0x7fff, %ax
    CHECK_FLAGS "sub 8000-1 flags: OF AF PF", FL_ARITH, FL_OF | FL_AF | FL_PF

    xor     %ax, %ax
    stc
    sbb     $0, %ax
    SAVE_FLAGS
    CHECK   "sbb 0-0-CF = ffff", $0xffff, %ax
    CHECK_FLAGS "sbb 0-0-CF flags: CF SF AF PF", FL_ARITH, FL_CF | FL_SF | FL_AF | FL_PF

    mov     $5, %ax
    cmp     $7, %ax
    SAVE_FLAGS
    CHECK   "cmp leaves its operand alone", $5, %ax
    CHECK_FLAGS "cmp 5,7 flags: CF SF AF", FL_ARITH, FL_CF | FL_SF | FL_AF

    stc
    mov     $0x7fff, %ax
    inc     %ax
    SAVE_FLAGS
    CHECK_FLAGS "inc 7fff keeps CF, sets OF SF AF PF", FL_ARITH, FL_CF | FL_OF | FL_SF | FL_AF | FL_PF

    clc
    mov     $1, %ax
    dec     %ax
    SAVE_FLAGS
    CHECK_FLAGS "dec 1 flags: ZF PF, CF kept clear", FL_ARITH, FL_ZF | FL_PF

    mov     $1, %ax
    neg     %ax
    SAVE_FLAGS
    CHECK   "neg 1 = ffff", $0xffff, %ax
    CHECK_FLAGS "neg 1 flags: CF SF AF PF", FL_ARITH, FL_CF | FL_SF | FL_AF | FL_PF

    mov     $0x8000, %ax
    neg     %ax
    SAVE_FLAGS
    CHECK_FLAGS "neg 8000 flags: OF SF PF CF", FL_ARITH, FL_OF | FL_SF | FL_PF | FL_CF

    xor     %ax, %ax
    neg     %ax
    SAVE_FLAGS
    CHECK_FLAGS "neg 0 flags: ZF PF, CF clear", FL_ARITH, FL_ZF | FL_PF

    mov     $0xf0f0, %ax
    and     $0x0ff0, %ax
    SAVE_FLAGS
    CHECK   "and f0f0&0ff0 = 00f0", $0x00f0, %ax
    CHECK_FLAGS "and flags: PF only", FL_LOGIC, FL_PF

    mov     $0x8000, %ax
    or      $0x0001, %ax
    SAVE_FLAGS
    CHECK   "or 8000|0001 = 8001", $0x8001, %ax
    CHECK_FLAGS "or flags: SF only", FL_LOGIC, FL_SF

    stc
    mov     $0x1234, %ax
    xor     %ax, %ax
    SAVE_FLAGS
    CHECK_FLAGS "xor ax,ax flags: ZF PF, CF cleared", FL_LOGIC, FL_ZF | FL_PF

/* ---------------------------------------------------------- shifts, rotates */
    mov     $0x8001, %ax
    shl     $1, %ax
    SAVE_FLAGS
    CHECK   "shl 8001,1 = 0002", $0x0002, %ax
    CHECK_FLAGS "shl 8001,1 flags: CF OF", FL_LOGIC, FL_CF | FL_OF

    mov     $0x8001, %ax
    shr     $1, %ax
    SAVE_FLAGS
    CHECK   "shr 8001,1 = 4000", $0x4000, %ax
    CHECK_FLAGS "shr 8001,1 flags: CF OF PF", FL_LOGIC, FL_CF | FL_OF | FL_PF

    mov     $0x8001, %ax
    sar     $1, %ax
    SAVE_FLAGS
    CHECK   "sar 8001,1 = c000", $0xc000, %ax
    CHECK_FLAGS "sar 8001,1 flags: CF SF PF", FL_LOGIC, FL_CF | FL_SF | FL_PF

    mov     $0x1234, %ax
    mov     $4, %cl
    shl     %cl, %ax
    SAVE_FLAGS
    CHECK   "shl 1234,cl=4 = 2340", $0x2340, %ax
    CHECK_FLAGS "shl 1234,4 flags: CF", FL_SHIFTN, FL_CF

    mov     $0x1234, %ax
    mov     $4, %cl
    shr     %cl, %ax
    SAVE_FLAGS
    CHECK   "shr 1234,cl=4 = 0123", $0x0123, %ax
    CHECK_FLAGS "shr 1234,4 flags: none", FL_SHIFTN, 0

    mov     $1, %ax
    mov     $0x21, %cl              // counts are masked to 5 bits: 0x21 -> 1
    shl     %cl, %ax
    CHECK   "shl count masked to 5 bits", $2, %ax

    mov     $0x8001, %ax
    rol     $1, %ax
    SAVE_FLAGS
    CHECK   "rol 8001,1 = 0003", $0x0003, %ax
    CHECK_FLAGS "rol 8001,1 flags: CF OF", FL_CF | FL_OF, FL_CF | FL_OF

    mov     $0x8001, %ax
    ror     $1, %ax
    SAVE_FLAGS
    CHECK   "ror 8001,1 = c000", $0xc000, %ax
    CHECK_FLAGS "ror 8001,1 flags: CF, OF clear", FL_CF | FL_OF, FL_CF

    clc
    mov     $0x8000, %ax
    rcl     $1, %ax
    SAVE_FLAGS
    CHECK   "rcl 8000,1 with CF=0 = 0000", $0, %ax
    CHECK_FLAGS "rcl 8000,1 flags: CF OF", FL_CF | FL_OF, FL_CF | FL_OF

    stc
    mov     $0x0001, %ax
    rcr     $1, %ax
    SAVE_FLAGS
    CHECK   "rcr 0001,1 with CF=1 = 8000", $0x8000, %ax
    CHECK_FLAGS "rcr 0001,1 flags: CF OF", FL_CF | FL_OF, FL_CF | FL_OF

    mov     $0x1234, %ax
    xor     %bx, %bx                // ZF=1 PF=1 SF=0: rotates must not touch them
    rol     $4, %ax
    SAVE_FLAGS
    CHECK   "rol 1234,4 = 2341", $0x2341, %ax
    CHECK_FLAGS "rol keeps SF ZF PF, sets CF", FL_SF | FL_ZF | FL_PF | FL_CF, FL_ZF | FL_PF | FL_CF

/* ----------------------------------------------------------- mul, div, #DE */
    mov     $0x1234, %ax
    mov     $0x0100, %bx
    mul     %bx
    SAVE_FLAGS
    CHECK   "mul 1234*0100: ax = 3400", $0x3400, %ax
    CHECK   "mul 1234*0100: dx = 0012", $0x0012, %dx
    CHECK_FLAGS "mul with a high half: CF OF", FL_CF | FL_OF, FL_CF | FL_OF

    mov     $3, %ax
    mov     $5, %bx
    mul     %bx
    SAVE_FLAGS
    CHECK   "mul 3*5 = 15", $15, %ax
    CHECK_FLAGS "mul without a high half: CF OF clear", FL_CF | FL_OF, 0

    mov     $0x10, %al
    mov     $0x10, %bl
    mul     %bl
    CHECK   "mul byte 10*10 = 0100", $0x0100, %ax

    mov     $-3, %ax
    mov     $5, %bx
    imul    %bx
    SAVE_FLAGS
    CHECK   "imul -3*5: ax = fff1", $0xfff1, %ax
    CHECK   "imul -3*5: dx = ffff", $0xffff, %dx
    CHECK_FLAGS "imul -3*5 fits: CF OF clear", FL_CF | FL_OF, 0

    mov     $300, %bx
    imul    $-7, %bx, %cx
    CHECK   "imul cx = bx*-7 = -2100", $-2100, %cx

    mov     $1, %dx
    mov     $5, %ax                 // dx:ax = 65541
    mov     $10, %bx
    div     %bx
    CHECK   "div 65541/10 quotient 6554", $6554, %ax
    CHECK   "div 65541/10 remainder 1", $1, %dx

    mov     $1000, %ax
    mov     $7, %bl
    div     %bl
    CHECK   "div byte 1000/7: al = 142", $142, %al
    CHECK   "div byte 1000/7: ah = 6", $6, %ah

    mov     $-100, %ax
    cwd
    mov     $7, %bx
    idiv    %bx
    CHECK   "idiv -100/7 quotient -14", $-14, %ax
    CHECK   "idiv -100/7 remainder -2", $-2, %dx

    // Divide by zero: #DE must be raised with IP pointing at the DIV itself.
    movw    $0, de_count
    movw    $.Lde1_resume, de_resume
    mov     $0x1234, %ax
    xor     %dx, %dx
    xor     %bx, %bx
.Lde1:
    div     %bx
.Lde1_resume:
    CHECKW  "div by zero raises #DE", $1, de_count
    CHECKW  "#DE pushes the IP of the faulting DIV", $.Lde1, de_ip
    CHECKW  "#DE pushes CS", $0, de_cs
    CHECK   "DIV leaves ax alone when it faults", $0x1234, %ax

    // Quotient overflow: 0x10000 / 1 does not fit in 16 bits.
    movw    $.Lde2_resume, de_resume
    mov     $1, %dx
    xor     %ax, %ax
    mov     $1, %bx
.Lde2:
    div     %bx
.Lde2_resume:
    CHECKW  "div overflow raises #DE", $2, de_count
    CHECKW  "#DE on overflow: faulting IP", $.Lde2, de_ip

    // Signed overflow: -32768 / -1 = 32768 does not fit in a signed byte.
    movw    $.Lde3_resume, de_resume
    mov     $0x8000, %ax
    mov     $-1, %bl
.Lde3:
    idiv    %bl
.Lde3_resume:
    CHECKW  "idiv byte overflow raises #DE", $3, de_count

/* ---------------------------------------------------------- string ops, rep */
    mov     $str_src, %si
    mov     $buf, %di
    mov     $11, %cx
    rep movsb
    CHECK   "rep movsb leaves cx = 0", $0, %cx
    CHECK   "rep movsb advances si", $(str_src + 11), %si
    CHECK   "rep movsb advances di", $(buf + 11), %di
    mov     $str_src, %si
    mov     $buf, %di
    mov     $11, %cx
    repe cmpsb
    CHECK   "repe cmpsb finds the copy identical", $0, %cx

    mov     $str_hello, %si         // "hello" vs "help!": differ at index 3
    mov     $str_help, %di
    mov     $5, %cx
    repe cmpsb
    SAVE_FLAGS
    CHECK   "repe cmpsb stops after the mismatch: cx", $1, %cx
    CHECK   "repe cmpsb stops after the mismatch: si", $(str_hello + 4), %si
    CHECK_FLAGS "repe cmpsb mismatch: ZF clear, CF set (l < p)", FL_ZF | FL_CF, FL_CF

    mov     $str_src, %di           // "hello world": find the 'o' at index 4
    mov     $11, %cx
    mov     $0x6f, %al              // 'o'
    repne scasb
    SAVE_FLAGS
    CHECK   "repne scasb finds 'o': di", $(str_src + 5), %di
    CHECK   "repne scasb finds 'o': cx", $6, %cx
    CHECK_FLAGS "repne scasb found: ZF", FL_ZF, FL_ZF

    mov     $buf, %di
    mov     $0xabcd, %ax
    mov     $8, %cx
    rep stosw
    CHECK   "rep stosw advances di by 16", $(buf + 16), %di
    CHECKW  "rep stosw stores the last word", $0xabcd, (buf + 14)

    std                             // backwards: copy words 3..0 from the top down
    mov     $words + 6, %si
    mov     $buf + 6, %di
    mov     $4, %cx
    rep movsw
    cld
    CHECK   "std; rep movsw moves si down", $(words - 2), %si
    CHECKW  "std; rep movsw copied word 0", $0x1111, buf
    CHECKW  "std; rep movsw copied word 3", $0x4444, (buf + 6)

    mov     $words, %si
    lodsw
    lodsw
    CHECK   "lodsw loads and advances", $0x2222, %ax

/* ------------------------------------------------------------- loop, jcxz */
    mov     $10, %cx
    xor     %bx, %bx
1:  inc     %bx
    loop    1b
    CHECK   "loop runs cx times", $10, %bx

    mov     $5, %cx
    xor     %bx, %bx
1:  inc     %bx
    cmp     $3, %bx
    loopne  1b
    CHECK   "loopne stops on ZF: cx", $2, %cx

    xor     %bx, %bx
    xor     %cx, %cx
    jcxz    1f
    mov     $1, %bx
1:  CHECK   "jcxz taken when cx = 0", $0, %bx
    mov     $1, %cx
    jcxz    1f
    mov     $2, %bx
1:  CHECK   "jcxz not taken when cx = 1", $2, %bx

    xor     %bx, %bx
    mov     $-1, %ax
    cmp     $1, %ax                 // signed: -1 < 1; unsigned: ffff > 1
    jnl     1f
    or      $1, %bx
1:  cmp     $1, %ax
    jna     1f
    or      $2, %bx
1:  CHECK   "jl (signed) and ja (unsigned) on ffff vs 1", $3, %bx

/* ----------------------------------------------------------- call, ret, far */
    mov     %sp, %bp
    call    near_func
    CHECK   "near call/ret: result", $0x1111, %ax
    CHECK   "near call/ret: sp restored", %bp, %sp

    pushw   $1
    pushw   $2
    call    ret4_func
    CHECK   "ret imm16 pops the arguments", %bp, %sp

    // A far call through segment 0x0700 (base 0x7000): same code, other CS.
    lcall   $0x0700, $far_func - 0x7000
    CHECK   "far call runs with CS = 0700", $0x0700, %ax
    mov     %cs, %ax
    CHECK   "far return restores CS = 0", $0, %ax
    CHECK   "far call/ret: sp restored", %bp, %sp

    lcall   *far_ptr                // the same, through a far pointer in memory
    CHECK   "indirect far call through m16:16", $0x0700, %ax

/* ------------------------------------------------------------- int n, iret */
    stc
    mov     $0x0100, %ax
.Lint:
    int     $INT_TEST
.Lint_next:
    SAVE_FLAGS
    CHECK   "int 40h handler ran", $0x0200, %ax
    CHECK_FLAGS "iret restores FLAGS (CF set before int)", FL_CF, FL_CF
    CHECKW  "int pushes the IP of the next instruction", $.Lint_next, int_ip
    CHECKW  "int pushes CS", $0, int_cs
    CHECK   "int/iret: sp restored", %bp, %sp

/* --------------------------------------------------- push, pop, pusha, popa */
    pushw   $0x1234
    pop     %bx
    CHECK   "push imm / pop", $0x1234, %bx

    mov     %sp, %bx
    push    %sp
    pop     %ax
    CHECK   "push sp pushes the value before the push", %bx, %ax

    mov     $0x1111, %ax
    mov     $0x2222, %cx
    mov     $0x3333, %dx
    mov     $0x4444, %bx
    mov     $0x5555, %si
    mov     $0x6666, %di
    push    %bp
    mov     %sp, %bp                // bp = sp before PUSHA
    pusha
    mov     %sp, %si
    CHECKW  "pusha: ax slot", $0x1111, 14(%si)
    CHECKW  "pusha: cx slot", $0x2222, 12(%si)
    CHECKW  "pusha: bx slot", $0x4444, 8(%si)
    CHECK   "pusha: sp slot holds the original sp", %bp, 6(%si)
    CHECKW  "pusha: di slot at the bottom", $0x6666, 0(%si)
    xor     %ax, %ax
    xor     %cx, %cx
    xor     %di, %di
    popa
    CHECK   "popa restores ax", $0x1111, %ax
    CHECK   "popa restores di", $0x6666, %di
    CHECK   "popa restores si", $0x5555, %si
    CHECK   "popa skips sp", %bp, %sp
    pop     %bp

    pushw   $0x0abc
    pop     %es
    mov     %es, %ax
    CHECK   "pop es from the stack", $0x0abc, %ax
    push    %ds
    pop     %es

/* --------------------------------------------- lahf, sahf, xlat, xchg, cbw */
    mov     $0x7f, %al
    add     $1, %al                 // SF OF AF set; ZF PF CF clear
    lahf
    CHECK   "lahf: SF AF and bit 1", $0x92, %ah

    mov     $0x7f, %al
    add     $1, %al                 // OF=1 before SAHF: SAHF must keep it
    mov     $0xd5, %ah              // SF ZF AF PF CF
    sahf
    SAVE_FLAGS
    CHECK_FLAGS "sahf loads SF ZF AF PF CF, keeps OF", FL_ARITH, FL_ARITH

    mov     $xlat_table, %bx
    mov     $3, %al
    xlat
    CHECK   "xlat reads table[al]", $40, %al

    mov     $1, %ax
    mov     $2, %bx
    xchg    %ax, %bx
    CHECK   "xchg ax,bx: ax", $2, %ax
    CHECK   "xchg ax,bx: bx", $1, %bx
    mov     $0x5678, %ax
    xchg    %ax, xchg_var
    CHECK   "xchg with memory: old value", $0x1234, %ax
    CHECKW  "xchg with memory: new value", $0x5678, xchg_var

    mov     $0x80, %al
    cbw
    CHECK   "cbw sign-extends 80", $0xff80, %ax
    mov     $0x8000, %ax
    cwd
    CHECK   "cwd sign-extends 8000", $0xffff, %dx
    mov     $0x7fff, %ax
    cwd
    CHECK   "cwd of 7fff", $0, %dx

/* ------------------------------------------ 32-bit operands in real mode */
    mov     $0x7fffffff, %eax
    add     $1, %eax
    SAVE_FLAGS
    CHECK   "32-bit add 7fffffff+1", $0x80000000, %eax
    CHECK_FLAGS "32-bit add flags: OF SF AF PF", FL_ARITH, FL_OF | FL_SF | FL_AF | FL_PF

    mov     $0x10000, %eax
    mov     $0x10000, %ecx
    mul     %ecx
    CHECK   "32-bit mul: edx = 1", $1, %edx
    CHECK   "32-bit mul: eax = 0", $0, %eax

    mov     $0x12345678, %eax
    shr     $16, %eax
    CHECK   "32-bit shr exposes the high half", $0x1234, %ax

    mov     %sp, %bx
    pushl   $0x89abcdef
    mov     %sp, %cx
    popl    %edx
    sub     %cx, %bx
    CHECK   "pushl moves sp by 4", $4, %bx
    CHECK   "pushl/popl", $0x89abcdef, %edx

    mov     $dword_var, %ebx        // 67h: a 32-bit address in real mode
    mov     (%ebx), %eax
    CHECK   "32-bit addressing (67h) in real mode", $0xcafef00d, %eax

/* ---------------------------------------------- segments, far pointers */
    mov     $0x07c0, %ax            // the image seen through segment 07c0
    mov     %ax, %es
    mov     %es:(dword_var - 0x7c00), %eax
    CHECK   "segment 07c0: offset = linear - 7c00", $0xcafef00d, %eax

    mov     $SCRATCH_SEG, %ax       // write 1000:0010, read 1001:0000: same byte
    mov     %ax, %es
    movw    $0xbeef, %es:0x0010
    mov     $SCRATCH_SEG + 1, %ax
    mov     %ax, %fs
    mov     %fs:0, %ax
    CHECK   "1000:0010 and 1001:0000 alias linear 10010", $0xbeef, %ax

    movw    $0x5a5a, %es:0x0123     // target of the far pointer below
    xor     %ax, %ax
    mov     %ax, %es
    les     far_data_ptr, %di
    mov     %es, %ax
    CHECK   "les loads the segment", $SCRATCH_SEG, %ax
    CHECK   "les loads the offset", $0x0123, %di
    CHECKW  "data through the les pointer", $0x5a5a, %es:(%di)

    push    %ds
    lds     far_data_ptr, %si
    mov     %ds, %ax
    mov     (%si), %bx
    pop     %ds
    CHECK   "lds loads the segment", $SCRATCH_SEG, %ax
    CHECK   "data through the lds pointer", $0x5a5a, %bx
    xor     %ax, %ax
    mov     %ax, %es
    mov     %ax, %fs

/* ------------------------------------------------------------------ summary */
    mov     $msg_summary, %si
    call    puts
    mov     pass_count, %ax
    call    put_dec
    mov     $msg_passed, %si
    call    puts
    mov     fail_count, %ax
    call    put_dec
    mov     $msg_failed, %si
    call    puts
    mov     fail_count, %ax
    out     %ax, $DEBUG_EXIT_PORT   // status (failures << 1) | 1
    HALT_FOREVER

/* ------------------------------------------------------------- subroutines */

// report: ZF=1 -> PASS, else FAIL; the name's address is on the stack (ret 2).
report:
    pusha                           // 16 bytes; PUSHA leaves FLAGS alone
    mov     %sp, %bp
    mov     18(%bp), %bx            // past PUSHA and the return address
    jnz     1f
    incw    pass_count
    mov     $msg_pass, %si
    jmp     2f
1:  incw    fail_count
    mov     $msg_fail, %si
2:  call    puts
    mov     %bx, %si
    call    puts
    mov     $msg_newline, %si
    call    puts
    popa
    ret     $2

// puts: print the string at ds:si.  Clobbers ax, dx, si.
puts:
    SERIAL_PUTS
    ret

// put_dec: print ax as unsigned decimal.  Preserves registers.
put_dec:
    pusha
    mov     $10, %bx
    xor     %cx, %cx
1:  xor     %dx, %dx
    div     %bx
    push    %dx
    inc     %cx
    test    %ax, %ax
    jnz     1b
2:  pop     %ax
    add     $0x30, %al              // '0'
    SERIAL_PUTC_AL
    loop    2b
    popa
    ret

near_func:
    mov     $0x1111, %ax
    ret

ret4_func:
    ret     $4

// far_func is entered as 0700:(far_func - 7000): report the CS it runs with.
far_func:
    mov     %cs, %ax
    lret

// #DE: count it, remember where it happened, resume at de_resume.
de_handler:
    push    %bp
    mov     %sp, %bp
    push    %ax
    incw    de_count
    mov     2(%bp), %ax             // the pushed IP (of the faulting instruction)
    mov     %ax, de_ip
    mov     4(%bp), %ax             // the pushed CS
    mov     %ax, de_cs
    mov     de_resume, %ax
    mov     %ax, 2(%bp)
    pop     %ax
    pop     %bp
    iret

// INT 40h: ax += 0x100, clobber CF (IRET must restore it), record IP and CS.
int_handler:
    push    %bp
    mov     %sp, %bp
    push    %bx
    mov     2(%bp), %bx
    mov     %bx, int_ip
    mov     4(%bp), %bx
    mov     %bx, int_cs
    pop     %bx
    pop     %bp
    add     $0x100, %ax
    clc
    iret

/* --------------------------------------------------------------------- data */
    .section .rodata
msg_banner:  .asciz "selftest16: real-mode instruction checks\n"
msg_pass:    .asciz "PASS: "
msg_fail:    .asciz "FAIL: "
msg_newline: .asciz "\n"
msg_summary: .asciz "SUMMARY: "
msg_passed:  .asciz " passed, "
msg_failed:  .asciz " failed\n"
str_src:     .ascii "hello world"
str_hello:   .ascii "hello"
str_help:    .ascii "help!"
xlat_table:  .byte 10, 20, 30, 40, 50
    .balign 2
words:       .word 0x1111, 0x2222, 0x3333, 0x4444
far_ptr:     .word far_func - 0x7000, 0x0700
far_data_ptr: .word 0x0123, SCRATCH_SEG
    .balign 4
dword_var:   .long 0xcafef00d

    .section .data
    .balign 2
pass_count:  .word 0
fail_count:  .word 0
saved_flags: .word 0
de_count:    .word 0
de_ip:       .word 0
de_cs:       .word 0xffff
de_resume:   .word 0
int_ip:      .word 0
int_cs:      .word 0xffff
xchg_var:    .word 0x1234
buf:         .fill 32, 1, 0
