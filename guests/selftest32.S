/* selftest32.S - a self-checking suite for 32-bit protected mode.
 *
 * Mode:   --mode protected, flat image loaded at 0x100000, entered at its first
 *         byte with flat 32-bit segments, paging and interrupts off.
 * Does:   installs its own GDT and IDT, then runs checks, printing
 *         "PASS: <name>" / "FAIL: <name>" for each and a final
 *         "SUMMARY: <n> passed, <m> failed"; writes the failure count to the
 *         debug-exit port with OUTL (0 failures -> process status 1).
 *
 * Covered: ALU and flags, shifts incl. SHLD/SHRD, BT/BTS/BTR/BTC (also with
 * register bit offsets reaching outside the addressed dword), BSF/BSR,
 * SETcc/CMOVcc, the IMUL forms, DIV/IDIV and #DE, CMPXCHG/XADD/BSWAP,
 * MOVZX/MOVSX, ENTER/LEAVE, REP MOVS/STOS/CMPS/SCAS forwards and backwards
 * (including overlapping copies), INT n + IRET, CPUID, RDTSC, faulting segment
 * loads (#GP for a null SS and for a selector past the GDT limit, #NP for a
 * not-present segment, #GP for a limit violation), segment bases, and 32-bit
 * paging: 4 KiB page tables identity-mapping the first 4 MiB, alias pages,
 * #PF with CR2 and the error code, CR0.WP, accessed/dirty bits, INVLPG, a
 * 4 MiB PSE page, and turning paging off again.
 *
 * Only flags the Intel SDM defines for an instruction are compared, so the
 * suite passes on any x86 CPU.  Exceptions go through one handler that
 * records vector, error code, EIP, CS (and CR2) and resumes at the address the
 * test put in fault_resume; an exception nobody expected is reported as a
 * failure with its vector and EIP, and ends the run.
 *
 * pykvm-test:
 *   format = "elf"
 *   mode = "protected"
 *   serial = ["SUMMARY: 163 passed, 0 failed"]
 */
#include "guest_asm.h"

#define CODE_SEL    0x08            /* flat 32-bit code */
#define DATA_SEL    0x10            /* flat 32-bit data */
#define BASED_SEL   0x18            /* data, base SEG_BASE, limit 0xffff (bytes) */
#define ABSENT_SEL  0x20            /* data descriptor with P=0 */
#define BEYOND_SEL  0x30            /* past the GDT limit */
#define SEG_BASE    0x200000        /* where BASED_SEL's segment starts */
#define INT_TEST    0x40            /* the software-interrupt vector under test */
#define IDT_ENTRIES (INT_TEST + 1)

#define ALIAS_VA    0x401000        /* -> alias_page (read/write) */
#define HOLE_VA     0x402000        /* not present */
#define RO_VA       0x403000        /* -> alias_page, read-only */
#define PSE_VA      0x800000        /* a 4 MiB page -> physical 0 */
#define MARKER      0x11111111      /* what physical ALIAS_VA holds */

#define SELFCHECK_PUSH pushl
#include "selfcheck.h"

.macro SAVE_FLAGS
    pushf
    popl    saved_flags
.endm
.macro CHECK_FLAGS name, mask, want
    push    %eax
    mov     saved_flags, %eax
    and     $(\mask), %eax
    cmp     $(\want), %eax
    pop     %eax
    REPORT  "\name"
.endm
/* EXPECT_FAULT label: the next exception resumes at label (one shot). */
.macro EXPECT_FAULT label
    movl    $\label, fault_resume
.endm
/* CHECK_FAULT name, vector, error: exactly one new fault, with this vector and
 * error code, since fault_count was last cleared. */
.macro CHECK_FAULT name, vector, error
    CHECKL  "\name: one fault", $1, fault_count
    CHECKL  "\name: vector", $(\vector), fault_vector
    CHECKL  "\name: error code", $(\error), fault_error
    movl    $0, fault_count
    movl    $0, fault_resume        // in case the fault never came
.endm

#define FL_LOGIC (FL_CF | FL_PF | FL_ZF | FL_SF | FL_OF)
#define FL_SHIFTN (FL_CF | FL_PF | FL_ZF | FL_SF)

    .section .text.entry, "ax"
    .code32
    .globl  _start
_start:
    cli
    cld
    mov     $stack_top, %esp
    lgdt    gdt_descriptor
    ljmp    $CODE_SEL, $1f          // reload CS from our own GDT
1:  mov     $DATA_SEL, %eax
    mov     %eax, %ds
    mov     %eax, %es
    mov     %eax, %fs
    mov     %eax, %gs
    mov     %eax, %ss
    call    setup_idt
    lidt    idt_descriptor
    mov     $msg_banner, %esi
    call    serial_puts

/* ------------------------------------------------------------ ALU and flags */
    mov     $0x7fffffff, %eax
    add     $1, %eax
    SAVE_FLAGS
    CHECK   "add 7fffffff+1", $0x80000000, %eax
    CHECK_FLAGS "add 7fffffff+1 flags: OF SF AF PF", FL_ARITH, (FL_OF | FL_SF | FL_AF | FL_PF)

    xor     %eax, %eax
    sub     $1, %eax
    SAVE_FLAGS
    CHECK   "sub 0-1", $0xffffffff, %eax
    CHECK_FLAGS "sub 0-1 flags: CF SF AF PF", FL_ARITH, (FL_CF | FL_SF | FL_AF | FL_PF)

    mov     $0xffffffff, %eax
    stc
    adc     $0, %eax
    SAVE_FLAGS
    CHECK   "adc ffffffff+0+CF", $0, %eax
    CHECK_FLAGS "adc flags: CF ZF AF PF", FL_ARITH, (FL_CF | FL_ZF | FL_AF | FL_PF)

    mov     $5, %eax
    stc
    sbb     $3, %eax
    SAVE_FLAGS
    CHECK   "sbb 5-3-CF", $1, %eax
    CHECK_FLAGS "sbb 5-3-CF flags: none", FL_ARITH, 0

    mov     $0x80000001, %eax
    test    $0x80000000, %eax
    SAVE_FLAGS
    CHECK_FLAGS "test flags: SF PF", FL_LOGIC, (FL_SF | FL_PF)

    mov     $0x0f0f0f0f, %eax
    stc
    not     %eax
    SAVE_FLAGS
    CHECK   "not 0f0f0f0f", $0xf0f0f0f0, %eax
    CHECK_FLAGS "not leaves flags alone", FL_CF, FL_CF

    mov     $0xffffffff, %eax
    inc     %eax
    SAVE_FLAGS
    CHECK_FLAGS "inc ffffffff flags: ZF AF PF", (FL_ARITH & ~FL_CF), (FL_ZF | FL_AF | FL_PF)

/* --------------------------------------------------------- setcc and cmovcc */
    mov     $-1, %eax
    cmp     $1, %eax                // -1 vs 1: signed less, unsigned above
    setl    cc_bytes + 0
    setb    cc_bytes + 1
    seta    cc_bytes + 2
    setg    cc_bytes + 3
    CHECKL  "setl setb seta setg after cmp -1,1", $0x00010001, cc_bytes
    mov     $-1, %eax               // CHECK clobbered the flags: compare again
    cmp     $1, %eax
    sete    cc_bytes + 0
    setne   cc_bytes + 1
    sets    cc_bytes + 2
    seto    cc_bytes + 3
    CHECKL  "sete setne sets seto after cmp -1,1", $0x00010100, cc_bytes
    mov     $-1, %eax
    cmp     $1, %eax
    setle   cc_bytes + 0
    setbe   cc_bytes + 1
    setge   cc_bytes + 2
    setae   cc_bytes + 3
    CHECKL  "setle setbe setge setae after cmp -1,1", $0x01000001, cc_bytes
    mov     $-1, %eax
    cmp     $1, %eax
    setp    cc_bytes + 0
    setnp   cc_bytes + 1
    setno   cc_bytes + 2
    setns   cc_bytes + 3
    CHECKL  "setp setnp setno setns after cmp -1,1", $0x00010100, cc_bytes
    mov     $0x80000000, %eax
    cmp     $1, %eax                // overflows: OF=1 SF=0
    setl    cc_bytes + 0
    seto    cc_bytes + 1
    setb    cc_bytes + 2
    setg    cc_bytes + 3
    CHECKL  "setl seto setb setg after cmp 80000000,1", $0x00000101, cc_bytes

    mov     $1, %eax
    mov     $2, %ebx
    mov     $3, %ecx
    cmp     $1, %eax
    cmove   %ebx, %eax
    CHECK   "cmove taken", $2, %eax
    cmovne  %ecx, %eax
    CHECK   "cmovne not taken", $2, %eax
    cmovbe  cmov_src, %eax
    CHECK   "cmovbe from memory", $0x600d, %eax

/* -------------------------------------------------------------- shifts */
    mov     $0x80000001, %eax
    shl     $1, %eax
    SAVE_FLAGS
    CHECK   "shl 80000001,1", $2, %eax
    CHECK_FLAGS "shl 80000001,1 flags: CF OF", FL_LOGIC, (FL_CF | FL_OF)

    mov     $0x80000000, %eax
    mov     $31, %cl
    sar     %cl, %eax
    SAVE_FLAGS
    CHECK   "sar 80000000,31", $0xffffffff, %eax
    CHECK_FLAGS "sar 80000000,31 flags: SF PF", FL_SHIFTN, (FL_SF | FL_PF)

    mov     $0x12345678, %eax
    mov     $36, %cl                // masked to 4
    shr     %cl, %eax
    SAVE_FLAGS
    CHECK   "shr count masked: 12345678 >> 4", $0x01234567, %eax
    CHECK_FLAGS "shr 12345678,4 flags: CF", FL_SHIFTN, FL_CF

    mov     $0x12345678, %eax
    ror     $8, %eax
    CHECK   "ror 12345678,8", $0x78123456, %eax

    mov     $0x12345678, %eax
    mov     $0x9abcdef0, %edx
    shld    $8, %edx, %eax
    SAVE_FLAGS
    CHECK   "shld 8", $0x3456789a, %eax
    CHECK   "shld leaves its source alone", $0x9abcdef0, %edx
    CHECK_FLAGS "shld 8 flags: CF clear", FL_CF, 0

    mov     $0x12345678, %eax
    mov     $4, %cl
    shld    %cl, %edx, %eax
    SAVE_FLAGS
    CHECK   "shld cl=4", $0x23456789, %eax
    CHECK_FLAGS "shld 4 flags: CF", FL_CF, FL_CF

    mov     $0x12345678, %eax
    shrd    $4, %edx, %eax
    SAVE_FLAGS
    CHECK   "shrd 4", $0x01234567, %eax
    CHECK_FLAGS "shrd 4 flags: CF", FL_CF, FL_CF

    mov     $0x12345678, %eax
    mov     $8, %cl
    shrd    %cl, %edx, %eax
    CHECK   "shrd cl=8", $0xf0123456, %eax

    mov     $0x40000000, %eax
    xor     %edx, %edx
    shld    $1, %edx, %eax
    SAVE_FLAGS
    CHECK_FLAGS "shld 1 into the sign bit: OF, CF clear", (FL_OF | FL_CF), FL_OF

/* ------------------------------------------------------ bit test and scan */
    mov     $0x20, %eax
    bt      $5, %eax
    SAVE_FLAGS
    CHECK_FLAGS "bt 5 of 20: CF", FL_CF, FL_CF
    bts     $0, %eax
    SAVE_FLAGS
    CHECK   "bts 0", $0x21, %eax
    CHECK_FLAGS "bts 0 old bit: CF clear", FL_CF, 0
    btr     $5, %eax
    SAVE_FLAGS
    CHECK   "btr 5", $0x01, %eax
    CHECK_FLAGS "btr 5 old bit: CF", FL_CF, FL_CF
    btc     $31, %eax
    CHECK   "btc 31", $0x80000001, %eax

    mov     $35, %ecx               // a register offset reaches the next dword
    bt      %ecx, bitmap
    SAVE_FLAGS
    CHECK_FLAGS "bt mem,reg with offset 35", FL_CF, FL_CF
    mov     $-1, %ecx               // ...or the previous one
    bt      %ecx, bitmap + 4
    SAVE_FLAGS
    CHECK_FLAGS "bt mem,reg with offset -1", FL_CF, FL_CF
    mov     $40, %ecx
    bts     %ecx, bitmap
    CHECKL  "bts mem,reg with offset 40", $0x108, (bitmap + 4)

    mov     $0x00018000, %eax
    bsf     %eax, %ecx
    SAVE_FLAGS
    CHECK   "bsf 00018000 = 15", $15, %ecx
    CHECK_FLAGS "bsf of non-zero: ZF clear", FL_ZF, 0
    bsr     %eax, %ecx
    CHECK   "bsr 00018000 = 16", $16, %ecx
    xor     %eax, %eax
    bsf     %eax, %ecx
    SAVE_FLAGS
    CHECK_FLAGS "bsf of zero: ZF", FL_ZF, FL_ZF

/* -------------------------------------------------------------- multiply */
    mov     $-2, %eax
    mov     $0x40000000, %ebx
    imul    %ebx                    // -2^31 fits exactly
    SAVE_FLAGS
    CHECK   "imul r/m32: eax", $0x80000000, %eax
    CHECK   "imul r/m32: edx", $0xffffffff, %edx
    CHECK_FLAGS "imul -2*2^30 fits: CF OF clear", (FL_CF | FL_OF), 0

    mov     $3, %ecx
    imul    %ebx, %ecx
    SAVE_FLAGS
    CHECK   "imul r32,r/m32", $0xc0000000, %ecx
    CHECK_FLAGS "imul 3*2^30 overflows: CF OF", (FL_CF | FL_OF), (FL_CF | FL_OF)

    mov     $7, %ecx
    imul    $-5, %ecx, %edx
    CHECK   "imul r32,r/m32,imm8", $-35, %edx

    imul    $100000, imul_src, %eax  // 30000 * 100000 = 3e9: overflows
    SAVE_FLAGS
    CHECK   "imul r32,m32,imm32 (truncated)", $0xb2d05e00, %eax
    CHECK_FLAGS "imul imm32 overflow: CF OF", (FL_CF | FL_OF), (FL_CF | FL_OF)

    mov     $-128, %al
    mov     $2, %bl
    imul    %bl
    SAVE_FLAGS
    CHECK   "imul r/m8: ax = -256", $0xff00, %ax
    CHECK_FLAGS "imul -128*2 overflows a byte: CF OF", (FL_CF | FL_OF), (FL_CF | FL_OF)

    mov     $0xffffffff, %eax
    mov     $0xffffffff, %ecx
    mul     %ecx
    CHECK   "mul ffffffff^2: edx", $0xfffffffe, %edx
    CHECK   "mul ffffffff^2: eax", $1, %eax

/* --------------------------------------------------------- divide and #DE */
    mov     $1, %edx
    xor     %eax, %eax
    mov     $3, %ebx
    div     %ebx
    CHECK   "div 2^32/3 quotient", $0x55555555, %eax
    CHECK   "div 2^32/3 remainder", $1, %edx

    mov     $-7, %eax
    cdq
    mov     $2, %ebx
    idiv    %ebx
    CHECK   "idiv -7/2 quotient", $-3, %eax
    CHECK   "idiv -7/2 remainder", $-1, %edx

    movl    $0, fault_count
    EXPECT_FAULT 1f
    mov     $0x1234, %eax
    xor     %edx, %edx
    xor     %ebx, %ebx
2:  div     %ebx
1:  CHECKL  "#DE reports the faulting EIP", $2b, fault_eip
    CHECKL  "#DE reports CS", $CODE_SEL, fault_cs
    CHECK   "a faulting DIV leaves eax alone", $0x1234, %eax
    CHECK_FAULT "div by zero", 0, 0

    EXPECT_FAULT 1f
    mov     $0x80000000, %eax
    cdq
    mov     $-1, %ebx
    idiv    %ebx
1:  CHECK_FAULT "idiv 80000000/-1", 0, 0

/* --------------------------------------------------- cmpxchg, xadd, bswap */
    mov     $5, %eax
    movl    $5, atomic_var
    mov     $9, %ecx
    lock cmpxchg %ecx, atomic_var
    SAVE_FLAGS
    CHECKL  "cmpxchg equal: stores the source", $9, atomic_var
    CHECK_FLAGS "cmpxchg equal: ZF", FL_ZF, FL_ZF
    mov     $5, %eax
    cmpxchg %ecx, atomic_var        // 9 != 5
    SAVE_FLAGS
    CHECK   "cmpxchg different: loads eax", $9, %eax
    CHECK_FLAGS "cmpxchg different: ZF clear", FL_ZF, 0

    movl    $10, atomic_var
    mov     $3, %eax
    lock xadd %eax, atomic_var
    CHECK   "xadd returns the old value", $10, %eax
    CHECKL  "xadd stores the sum", $13, atomic_var

    mov     $0x12345678, %eax
    bswap   %eax
    CHECK   "bswap", $0x78563412, %eax

/* ----------------------------------------------------------- movzx, movsx */
    mov     $0x80, %bl
    movzbl  %bl, %eax
    CHECK   "movzx byte", $0x80, %eax
    movsbl  %bl, %eax
    CHECK   "movsx byte", $0xffffff80, %eax
    movswl  word_8000, %eax
    CHECK   "movsx word from memory", $0xffff8000, %eax
    movzwl  word_8000, %eax
    CHECK   "movzx word from memory", $0x8000, %eax
    movsbw  %bl, %ax
    CHECK   "movsx byte to word", $0xff80, %ax

/* ------------------------------------------------------------ enter, leave */
    mov     %esp, %esi
    mov     $0x1234, %ebp
    enter   $16, $0
    lea     -4(%esi), %eax
    CHECK   "enter 16,0: ebp = frame", %eax, %ebp
    lea     -20(%esi), %eax
    CHECK   "enter 16,0: esp = frame - 16", %eax, %esp
    CHECKL  "enter 16,0: old ebp saved", $0x1234, (%ebp)
    leave
    CHECK   "leave restores esp", %esi, %esp
    CHECK   "leave restores ebp", $0x1234, %ebp

    mov     $0x5678, %ebp
    enter   $8, $1
    lea     -4(%esi), %eax
    CHECK   "enter 8,1: ebp = frame", %eax, %ebp
    CHECK   "enter 8,1: frame pointer pushed", %eax, -8(%esi)
    lea     -16(%esi), %eax
    CHECK   "enter 8,1: esp", %eax, %esp
    leave
    CHECK   "leave after enter 8,1: ebp", $0x5678, %ebp
    CHECK   "leave after enter 8,1: esp", %esi, %esp

/* ------------------------------------------------------------ string ops */
    mov     $dwords_src, %esi
    mov     $buf, %edi
    mov     $8, %ecx
    rep movsl
    CHECK   "rep movsl: ecx = 0", $0, %ecx
    CHECK   "rep movsl: edi advanced", $(buf + 32), %edi
    CHECKL  "rep movsl: last dword", $0x88888888, (buf + 28)
    mov     $dwords_src, %esi
    mov     $buf, %edi
    mov     $8, %ecx
    repe cmpsl
    SAVE_FLAGS
    CHECK   "repe cmpsl over equal arrays: ecx", $0, %ecx
    CHECK_FLAGS "repe cmpsl over equal arrays: ZF", FL_ZF, FL_ZF

    movl    $0x99, buf + 20         // make dword 5 differ
    mov     $dwords_src, %esi
    mov     $buf, %edi
    mov     $8, %ecx
    repe cmpsl
    CHECK   "repe cmpsl stops after dword 5: ecx", $2, %ecx

    mov     $buf, %edi              // "abcdefgh" -> shift right by 2, backwards
    movl    $0x64636261, buf
    movl    $0x68676665, buf + 4
    std
    lea     buf + 5, %esi
    lea     buf + 7, %edi
    mov     $6, %ecx
    rep movsb
    cld
    CHECKL  "std; rep movsb overlapping: bytes 0-3", $0x62616261, buf   // "abab"
    CHECKL  "std; rep movsb overlapping: bytes 4-7", $0x66656463, (buf + 4)  // "cdef"
    CHECK   "std; rep movsb: edi ends below the copy", $(buf + 1), %edi

    movl    $0x64636261, buf        // forward overlap replicates the first byte
    movl    $0x68676665, buf + 4
    mov     $buf, %esi
    lea     buf + 1, %edi
    mov     $7, %ecx
    rep movsb
    CHECKL  "rep movsb forward overlap replicates: bytes 0-3", $0x61616161, buf
    CHECKL  "rep movsb forward overlap replicates: bytes 4-7", $0x61616161, (buf + 4)

    std
    lea     buf + 12, %edi
    mov     $0x11223344, %eax
    mov     $4, %ecx
    rep stosl
    cld
    CHECK   "std; rep stosl: edi ends before the buffer", $(buf - 4), %edi
    CHECKL  "std; rep stosl: first dword", $0x11223344, buf

    std                             // scan backwards for 0x3333 in the words
    lea     words + 6, %edi
    mov     $0x3333, %ax
    mov     $4, %ecx
    repne scasw
    cld
    SAVE_FLAGS
    CHECK   "std; repne scasw: edi", $(words + 2), %edi
    CHECK   "std; repne scasw: ecx", $2, %ecx
    CHECK_FLAGS "std; repne scasw: found (ZF)", FL_ZF, FL_ZF

    mov     $buf, %edi
    xor     %ecx, %ecx
    mov     $0xdead, %eax
    rep stosl                       // ecx = 0: nothing happens
    CHECK   "rep with ecx = 0 does nothing", $buf, %edi

/* ------------------------------------------------------------ int n, iret */
    mov     %esp, %ebp
    mov     $0x100, %eax
    stc
    int     $INT_TEST
.Lint_next:
    SAVE_FLAGS
    CHECK   "int 40h handler ran", $0x200, %eax
    CHECKL  "int pushes the EIP of the next instruction", $.Lint_next, int_eip
    CHECKL  "int pushes CS", $CODE_SEL, int_cs
    CHECK_FLAGS "iret restores EFLAGS (CF)", FL_CF, FL_CF
    CHECK   "int/iret: esp restored", %ebp, %esp

/* --------------------------------------------------------- cpuid, rdtsc */
    xor     %eax, %eax
    cpuid
    mov     %ebx, vendor + 0
    mov     %edx, vendor + 4
    mov     %ecx, vendor + 8
    test    %eax, %eax
    setnz   %bl
    CHECK   "cpuid: max basic leaf is non-zero", $1, %bl
    push    %eax
    mov     $msg_cpuid, %esi
    call    serial_puts
    mov     $vendor, %esi
    call    serial_puts
    mov     $msg_maxleaf, %esi
    call    serial_puts
    pop     %eax
    call    serial_put_dec32
    mov     $msg_newline, %esi
    call    serial_puts

    rdtsc
    mov     %eax, %esi
    mov     %edx, %edi
    mov     $100, %ecx
1:  loop    1b
    rdtsc
    sub     %esi, %eax              // edx:eax = later - earlier (64-bit)
    sbb     %edi, %edx
    SAVE_FLAGS
    or      %edx, %eax
    CHECK_FLAGS "rdtsc does not go backwards", FL_CF, 0
    test    %eax, %eax
    setnz   %bl
    CHECK   "rdtsc advances", $1, %bl

/* ------------------------------------------------------- segment faults */
    movl    $0, fault_count
    EXPECT_FAULT 1f
    xor     %eax, %eax
    mov     %eax, %ss               // a null selector in SS: #GP(0)
1:  CHECK_FAULT "mov ss, null", 13, 0
    mov     %ss, %ax
    CHECK   "ss unchanged after the fault", $DATA_SEL, %ax

    EXPECT_FAULT 1f
    mov     $BEYOND_SEL, %eax
    mov     %eax, %es               // past the GDT limit: #GP(selector)
1:  CHECK_FAULT "mov es, selector beyond the GDT", 13, BEYOND_SEL
    mov     %es, %ax
    CHECK   "es unchanged after the fault", $DATA_SEL, %ax

    EXPECT_FAULT 1f
    mov     $ABSENT_SEL, %eax
    mov     %eax, %fs               // P=0: #NP(selector)
1:  CHECK_FAULT "mov fs, not-present segment", 11, ABSENT_SEL

    movl    $0xfeedface, SEG_BASE + 0x10
    mov     $BASED_SEL, %eax
    mov     %eax, %fs
    mov     %fs:0x10, %eax
    CHECK   "segment base is added to the offset", $0xfeedface, %eax
    EXPECT_FAULT 1f
    mov     %fs:0xfffe, %eax        // crosses the limit 0xffff: #GP(0)
1:  CHECK_FAULT "read past a segment limit", 13, 0

    xor     %eax, %eax
    mov     %eax, %fs               // a null selector in FS is fine...
    EXPECT_FAULT 1f
    mov     %fs:0, %eax             // ...using it is not: #GP(0)
1:  CHECK_FAULT "access through a null fs", 13, 0
    mov     $DATA_SEL, %eax
    mov     %eax, %fs

/* ---------------------------------------------------------------- paging */
    call    build_page_tables
    movl    $MARKER, ALIAS_VA       // physical memory under the alias address
    movl    $0xa5a5a5a5, alias_page
    movl    $0x5a5a5a5a, alias_page + 0xffc
    movl    $0xb0b0b0b0, alias_page2
    mov     $page_dir, %eax
    mov     %eax, %cr3
    mov     %cr4, %eax
    or      $CR4_PSE, %eax
    mov     %eax, %cr4
    mov     %cr0, %eax
    or      $CR0_PG, %eax
    mov     %eax, %cr0
    jmp     1f                      // paging is on; the code is identity-mapped
1:
    mov     %cr0, %eax
    test    $CR0_PG, %eax
    setnz   %bl
    CHECK   "CR0.PG reads back set", $1, %bl
    CHECKL  "identity-mapped code and data still work", $0xcafef00d, dword_var
    CHECKL  "alias page: first dword", $0xa5a5a5a5, ALIAS_VA
    CHECKL  "alias page: last dword", $0x5a5a5a5a, (ALIAS_VA + 0xffc)
    testl   $PTE_A, pt_alias + (ALIAS_VA >> 12 & 0x3ff) * 4
    setnz   %bl
    CHECK   "a read sets the PTE accessed bit", $1, %bl
    testl   $PTE_D, pt_alias + (ALIAS_VA >> 12 & 0x3ff) * 4
    setz    %bl
    CHECK   "a read leaves the dirty bit clear", $1, %bl
    movl    $0x77, ALIAS_VA + 4
    CHECKL  "a write through the alias lands in the page", $0x77, (alias_page + 4)
    testl   $PTE_D, pt_alias + (ALIAS_VA >> 12 & 0x3ff) * 4
    setnz   %bl
    CHECK   "a write sets the PTE dirty bit", $1, %bl
    CHECKL  "a 4 MiB PSE page maps physical 0", $0xcafef00d, (PSE_VA + dword_var)

    movl    $0, fault_count
    EXPECT_FAULT 1f
    mov     HOLE_VA + 0x10, %eax    // not present, read, supervisor: error 0
1:  CHECK_FAULT "#PF on a read of an unmapped page", 14, 0
    CHECKL  "#PF sets CR2 to the faulting address", $(HOLE_VA + 0x10), fault_cr2

    EXPECT_FAULT 1f
    movl    $1, HOLE_VA + 0x20      // not present, write: error 2
1:  CHECK_FAULT "#PF on a write to an unmapped page", 14, PTE_W
    CHECKL  "#PF on a write: CR2", $(HOLE_VA + 0x20), fault_cr2

    movl    $0x42, RO_VA + 8        // CR0.WP=0: the supervisor may write read-only pages
    CHECKL  "CR0.WP=0: write to a read-only page succeeds", $0x42, (alias_page + 8)
    mov     %cr0, %eax
    or      $CR0_WP, %eax
    mov     %eax, %cr0
    EXPECT_FAULT 1f
    movl    $0x43, RO_VA + 8        // present, write: error 3
1:  mov     %cr0, %eax
    and     $~CR0_WP, %eax
    mov     %eax, %cr0
    CHECK_FAULT "CR0.WP=1: #PF on a write to a read-only page", 14, (PTE_P | PTE_W)
    CHECKL  "CR0.WP=1: the page is unchanged", $0x42, (alias_page + 8)

    mov     $alias_page2, %eax      // remap the alias, flush its TLB entry
    or      $(PTE_P | PTE_W), %eax
    mov     %eax, pt_alias + (ALIAS_VA >> 12 & 0x3ff) * 4
    invlpg  ALIAS_VA
    CHECKL  "after invlpg the alias shows the new page", $0xb0b0b0b0, ALIAS_VA

    mov     %cr0, %eax
    and     $~CR0_PG, %eax
    mov     %eax, %cr0
    jmp     1f
1:  mov     %cr4, %eax
    and     $~CR4_PSE, %eax
    mov     %eax, %cr4
    CHECKL  "paging off: the alias address is plain memory again", $MARKER, ALIAS_VA

/* ---------------------------------------------------------------- summary */
summary:
    mov     $msg_summary, %esi
    call    serial_puts
    mov     pass_count, %eax
    call    serial_put_dec32
    mov     $msg_passed, %esi
    call    serial_puts
    mov     fail_count, %eax
    call    serial_put_dec32
    mov     $msg_failed, %esi
    call    serial_puts
    mov     fail_count, %eax
    outl    %eax, $DEBUG_EXIT_PORT  // status (failures << 1) | 1
    HALT_FOREVER

/* ------------------------------------------------------------ subroutines */

// report: ZF=1 -> PASS, else FAIL; the name's address is on the stack.
report:
    pushal                          // 32 bytes; flags untouched
    mov     36(%esp), %ebx          // past PUSHAL and the return address
    jnz     1f
    incl    pass_count
    mov     $msg_pass, %esi
    jmp     2f
1:  incl    fail_count
    mov     $msg_fail, %esi
2:  call    serial_puts
    mov     %ebx, %esi
    call    serial_puts
    mov     $msg_newline, %esi
    call    serial_puts
    popal
    ret     $4

// setup_idt: interrupt gates for vectors 0-31 (isr_table) and INT_TEST.
setup_idt:
    xor     %ecx, %ecx
1:  mov     isr_table(,%ecx,4), %eax
    call    set_gate
    inc     %ecx
    cmp     $32, %ecx
    jb      1b
    mov     $int_handler, %eax
    mov     $INT_TEST, %ecx
    call    set_gate
    ret

// set_gate: IDT[ecx] = 32-bit interrupt gate, DPL 0, to CODE_SEL:eax.
set_gate:
    push    %edx
    mov     %eax, %edx
    and     $0xffff, %edx
    or      $(CODE_SEL << 16), %edx
    mov     %edx, idt(,%ecx,8)
    mov     %eax, %edx
    and     $0xffff0000, %edx
    or      $0x8e00, %edx           // P=1, DPL=0, type 0xe (32-bit interrupt gate)
    mov     %edx, idt + 4(,%ecx,8)
    pop     %edx
    ret

// build_page_tables: PD[0] -> identity 0-4 MiB in 4 KiB pages; PD[1] -> the
// alias table; PD[2] = a 4 MiB page at physical 0.
build_page_tables:
    pushal
    mov     $page_dir, %edi
    xor     %eax, %eax
    mov     $(3 * 1024), %ecx       // page_dir, pt_low and pt_alias are contiguous
    rep stosl
    mov     $pt_low, %edi
    mov     $(PTE_P | PTE_W), %eax
    mov     $1024, %ecx
1:  stosl
    add     $0x1000, %eax
    loop    1b
    movl    $(pt_low + (PTE_P | PTE_W)), page_dir + 0 * 4
    movl    $(pt_alias + (PTE_P | PTE_W)), page_dir + 1 * 4
    movl    $(0 + (PTE_P | PTE_W | PTE_PS)), page_dir + 2 * 4
    movl    $(alias_page + (PTE_P | PTE_W)), pt_alias + (ALIAS_VA >> 12 & 0x3ff) * 4
    movl    $(alias_page + PTE_P), pt_alias + (RO_VA >> 12 & 0x3ff) * 4
    popal
    ret

// Exception stubs: push a dummy error code where the CPU pushes none, then the
// vector, so isr_common always sees the same frame.
.macro ISR_NOERR vec
isr\vec: pushl $0
    pushl   $\vec
    jmp     isr_common
.endm
.macro ISR_ERR vec
isr\vec: pushl $\vec
    jmp     isr_common
.endm
    ISR_NOERR 0
    ISR_NOERR 1
    ISR_NOERR 2
    ISR_NOERR 3
    ISR_NOERR 4
    ISR_NOERR 5
    ISR_NOERR 6
    ISR_NOERR 7
    ISR_ERR   8
    ISR_NOERR 9
    ISR_ERR   10
    ISR_ERR   11
    ISR_ERR   12
    ISR_ERR   13
    ISR_ERR   14
    ISR_NOERR 15
    ISR_NOERR 16
    ISR_ERR   17
    ISR_NOERR 18
    ISR_NOERR 19
    ISR_NOERR 20
    ISR_ERR   21
    ISR_NOERR 22
    ISR_NOERR 23
    ISR_NOERR 24
    ISR_NOERR 25
    ISR_NOERR 26
    ISR_NOERR 27
    ISR_NOERR 28
    ISR_ERR   29
    ISR_ERR   30
    ISR_NOERR 31

// isr_common: frame = vector, error, eip, cs, eflags.  Record the fault and
// resume where the test asked; an unexpected fault fails the run.
isr_common:
    push    %eax                    // 0(%esp)=eax 4=vector 8=error 12=eip 16=cs 20=eflags
    mov     4(%esp), %eax
    mov     %eax, fault_vector
    mov     8(%esp), %eax
    mov     %eax, fault_error
    mov     12(%esp), %eax
    mov     %eax, fault_eip
    mov     16(%esp), %eax
    mov     %eax, fault_cs
    mov     %cr2, %eax
    mov     %eax, fault_cr2
    incl    fault_count
    mov     fault_resume, %eax
    test    %eax, %eax
    jz      unexpected_fault
    movl    $0, fault_resume        // one shot
    mov     %eax, 12(%esp)
    pop     %eax
    add     $8, %esp                // drop vector and error code
    iret

unexpected_fault:
    mov     $DATA_SEL, %eax         // whatever the test broke, make the stack sane
    mov     %eax, %ss
    mov     $stack_top, %esp
    incl    fail_count
    mov     $msg_unexpected, %esi
    call    serial_puts
    mov     fault_vector, %eax
    call    serial_put_dec32
    mov     $msg_error, %esi
    call    serial_puts
    mov     fault_error, %eax
    call    serial_put_hex32
    mov     $msg_at, %esi
    call    serial_puts
    mov     fault_eip, %eax
    call    serial_put_hex32
    mov     $msg_newline, %esi
    call    serial_puts
    jmp     summary

// INT 40h: eax += 0x100, clear CF (IRET must restore it), record EIP and CS.
int_handler:
    push    %ebx
    mov     4(%esp), %ebx
    mov     %ebx, int_eip
    mov     8(%esp), %ebx
    mov     %ebx, int_cs
    pop     %ebx
    add     $0x100, %eax
    clc
    iret

/* ------------------------------------------------------------------- data */
    .section .rodata
    .balign 8
gdt:
    .quad   0                       // 0x00 null
    .quad   0x00cf9a000000ffff      // 0x08 code: base 0, 4 GiB, 32-bit
    .quad   0x00cf92000000ffff      // 0x10 data: base 0, 4 GiB, 32-bit
    .quad   0x004092200000ffff      // 0x18 data: base 0x200000 (SEG_BASE), limit 0xffff, G=0
    .quad   0x00cf12000000ffff      // 0x20 data with P=0
gdt_end:
gdt_descriptor:
    .word   gdt_end - gdt - 1
    .long   gdt
idt_descriptor:
    .word   IDT_ENTRIES * 8 - 1
    .long   idt
isr_table:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .long   isr\v
    .endr

msg_banner:     .asciz "selftest32: protected-mode instruction checks\n"
msg_pass:       .asciz "PASS: "
msg_fail:       .asciz "FAIL: "
msg_newline:    .asciz "\n"
msg_summary:    .asciz "SUMMARY: "
msg_passed:     .asciz " passed, "
msg_failed:     .asciz " failed\n"
msg_unexpected: .asciz "FAIL: unexpected exception, vector "
msg_error:      .asciz " error 0x"
msg_at:         .asciz " at eip 0x"
msg_cpuid:      .asciz "info: cpuid vendor "
msg_maxleaf:    .asciz ", max basic leaf "

    .balign 4
dword_var:      .long 0xcafef00d
cmov_src:       .long 0x600d
imul_src:       .long 30000
word_8000:      .word 0x8000
    .balign 4
dwords_src:     .long 0x11111111, 0x22222222, 0x33333333, 0x44444444
                .long 0x55555555, 0x66666666, 0x77777777, 0x88888888

    .data
    .balign 4
pass_count:     .long 0
fail_count:     .long 0
saved_flags:    .long 0
fault_resume:   .long 0
fault_count:    .long 0
fault_vector:   .long 0
fault_error:    .long 0
fault_eip:      .long 0
fault_cs:       .long 0
fault_cr2:      .long 0
int_eip:        .long 0
int_cs:         .long 0
atomic_var:     .long 0
cc_bytes:       .long 0
bitmap:         .long 0x80000000, 0x00000008
words:          .word 0x1111, 0x2222, 0x3333, 0x4444
vendor:         .fill 13, 1, 0
    .balign 4
buf:            .fill 64, 1, 0

    .bss
    .balign 4096
page_dir:       .skip 4096
pt_low:         .skip 4096
pt_alias:       .skip 4096
alias_page:     .skip 4096
alias_page2:    .skip 4096
idt:            .skip IDT_ENTRIES * 8
    .balign 16
stack:          .skip 8192
stack_top:
