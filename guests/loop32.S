/* loop32.S - a benchmark guest for the non-PVM-mode emulator.
 *
 * Mode:   --mode protected, flat image loaded at 0x100000, flat segments,
 *         paging off.  Needs 8 MiB of RAM (it uses 0x200000-0x3fffff).
 *
 * Image layout (offsets in the flat file == offsets from the load address):
 *   0x00  jmp start                (padded to 8)
 *   0x08  count, u64 LE            loop iterations; only the low 32 bits are
 *                                  used; default 20000.  The host patches it
 *                                  (scripts/build_guests.py: with_count()).
 *   0x10  start: code
 *
 * Does, printing nothing until the end:
 *   1. count iterations of a 15-instruction body mixing ALU work (an LCG step
 *      with IMUL, XOR, ROL), a load and a store to a 256-dword array, and a
 *      data-dependent branch (about 15 * count instructions);
 *   2. REP STOSD of 1 MiB at 0x200000 (the value: the loop's checksum), then
 *      REP MOVSD of that 1 MiB to 0x300000;
 *   3. folds 256 sampled dwords of the copy (one per 4 KiB) and the array into
 *      the checksum, prints "loop32: <count> iterations, checksum 0x<hex>" and
 *      writes 0 to the debug-exit port.
 * scripts/build_guests.py: loop32_checksum(count) computes the expected value.
 *
 * pykvm-test:
 *   format = "elf"
 *   mode = "protected"
 *   serial = ["loop32: 20000 iterations, checksum 0xbba57eda"]  # loop32_checksum(20000)
 */
#include "guest_asm.h"

#define FILL_BASE   0x200000        /* REP STOSD target, REP MOVSD source */
#define COPY_BASE   0x300000        /* REP MOVSD target */
#define MIB_DWORDS  (0x100000 / 4)

    .section .text.entry, "ax"
    .code32
    .globl  _start
_start:
    jmp     start
    .balign 8
    .globl  count
count:                              // offset 8: patched by the host
    .quad   20000
start:
    cld
    mov     count, %ecx
    xor     %eax, %eax              // eax: checksum
    mov     $0x12345678, %ebx       // ebx: LCG state
    xor     %esi, %esi              // esi: iteration index
    test    %ecx, %ecx
    jz      3f

    // ---- the hot loop: 15 instructions per iteration ----
1:  imul    $1103515245, %ebx, %ebx // LCG: state = state * 1103515245 + 12345
    add     $12345, %ebx
    mov     %esi, %edx
    and     $255, %edx              // array index
    mov     array(,%edx,4), %edi    // load
    xor     %ebx, %edi
    rol     $5, %edi
    mov     %edi, array(,%edx,4)    // store
    add     %edi, %eax
    test    $0x10000, %ebx          // a branch the predictor cannot learn
    jz      2f
    sub     %edx, %eax
2:  inc     %esi
    dec     %ecx
    jnz     1b

    // ---- 1 MiB REP STOSD, then 1 MiB REP MOVSD ----
3:  mov     %eax, %ebp              // keep the checksum
    mov     $FILL_BASE, %edi
    mov     $MIB_DWORDS, %ecx
    rep stosl
    mov     $FILL_BASE, %esi
    mov     $COPY_BASE, %edi
    mov     $MIB_DWORDS, %ecx
    rep movsl

    // ---- fold the copy (one dword per 4 KiB) and the array into the sum ----
    mov     %ebp, %eax
    mov     $COPY_BASE + 4, %esi    // not the first dword: vary the offset a little
    mov     $256, %ecx
4:  rol     $1, %eax
    add     (%esi), %eax
    add     $4096, %esi
    loop    4b
    xor     %edx, %edx
5:  rol     $3, %eax
    xor     array(,%edx,4), %eax
    inc     %edx
    cmp     $256, %edx
    jb      5b
    mov     %eax, %ebp

    mov     $msg_loop, %esi
    call    serial_puts
    mov     count, %eax
    call    serial_put_dec32
    mov     $msg_checksum, %esi
    call    serial_puts
    mov     %ebp, %eax
    call    serial_put_hex32
    mov     $msg_newline, %esi
    call    serial_puts
    xor     %eax, %eax
    outl    %eax, $DEBUG_EXIT_PORT  // status 1
    HALT_FOREVER

    .section .rodata
msg_loop:       .asciz "loop32: "
msg_checksum:   .asciz " iterations, checksum 0x"
msg_newline:    .asciz "\n"

    .data
    .balign 4
array:          .fill 256, 4, 0     // part of the image: zero whatever RAM held
