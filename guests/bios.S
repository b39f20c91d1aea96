/* bios.S - a BIOS-replacement ROM: from the reset vector to 64-bit long mode.
 *
 * Mode:   a 64 KiB firmware image (guests/build/bios.bin) for pykvm run --bios and
 *         qemu-system-x86_64 -bios, linked at 0xffff0000 (ld/bios.ld): the ROM's top
 *         64 KiB, seen just below 4 GiB and again at 0xf0000-0xfffff.
 * Entry:  the reset state: real mode, CS.selector 0xf000 with CS.base 0xffff0000,
 *         IP 0xfff0 (so the first fetch is at 0xfffffff0), EDX = the CPUID signature,
 *         CR0 = 0x60000010, everything else zero (SDM vol. 3, 10.1.1).
 * Does:   at the reset vector, saves the state as it finds it (include/bios.h) and
 *         tries to write the ROM through the reset CS; far-jumps to F000:low16, which
 *         runs from the alias below 1 MiB, and tries to write the ROM there; enters
 *         32-bit protected mode (GDT in ROM, accessed bits preset: loading a selector
 *         must not write the ROM) and runs bios.c's checks from ROM, with .bss and the
 *         stack in RAM; builds an identity map of the first 4 GiB and enters 64-bit
 *         long mode at lm64 -- under pykvm, PVM mode: KVM runs ROM code from a
 *         read-only slot -- for the last checks, prints the summary and writes the
 *         failure count to port 0xf4.
 *
 * pykvm-test:
 *   format = "bios"
 *   mode = "real"
 *   executors = ["emu", "kvm"]  # the last 4 checks run from ROM in PVM mode
 *   serial = ["SUMMARY: 19 passed, 0 failed"]
 */
#include "guest_asm.h"
#include "bios.h"

#define LONG_CR0 0x80000011         /* PG | ET | PE: caches on (CD, NW clear) */

/* The reset vector: 16 bytes at 0xfffffff0 (ld/bios.ld). The call saves IP. */
    .section .reset, "ax"
    .code16
    .globl  reset_vector
reset_vector:
    call    reset16                 // pushes 0xfff3 at 0000:fffe (RAM)
    .fill   16 - (. - reset_vector), 1, 0xf4

    .section .text16, "ax"
reset16:                            // CS.base is still 0xffff0000: this runs from the ROM's top
    mov     %eax, BIOS_SAVE + SAVE_EAX      // DS = 0: the save area in RAM
    mov     %edx, BIOS_SAVE + SAVE_EDX
    mov     %cr0, %eax
    mov     %eax, BIOS_SAVE + SAVE_CR0
    mov     %cr4, %eax
    mov     %eax, BIOS_SAVE + SAVE_CR4
    popw    BIOS_SAVE + SAVE_IP
    mov     %esp, BIOS_SAVE + SAVE_ESP      // as at reset, now that the call's push is undone
    pushfl
    popl    BIOS_SAVE + SAVE_EFLAGS
    mov     %cs, BIOS_SAVE + SAVE_CS
    mov     %ds, BIOS_SAVE + SAVE_DS
    mov     %es, BIOS_SAVE + SAVE_ES
    mov     %ss, BIOS_SAVE + SAVE_SS
    mov     %fs, BIOS_SAVE + SAVE_FS
    mov     %gs, BIOS_SAVE + SAVE_GS
    sgdtl   BIOS_SAVE + SAVE_GDTR
    sidtl   BIOS_SAVE + SAVE_IDTR
    mov     $MSR_EFER, %ecx
    rdmsr
    mov     %eax, BIOS_SAVE + SAVE_EFER_LO
    mov     %edx, BIOS_SAVE + SAVE_EFER_HI
    movb    $BIOS_ROM_BYTE, %cs:rom_probe   // a write to 0xffff0000 + offset: dropped
    movb    %cs:rom_probe, %al
    mov     %al, BIOS_SAVE + SAVE_ROM_HIGH
    ljmp    $0xf000, $low16                 // CS.base = 0xf0000 from here on

low16:                              // running from the alias below 1 MiB
    mov     %cs, BIOS_SAVE + SAVE_ALIAS_CS
    movb    $BIOS_ROM_BYTE, %cs:rom_probe   // a write to 0xf0000 + offset: dropped too
    movb    %cs:rom_probe, %al
    mov     %al, BIOS_SAVE + SAVE_ROM_ALIAS
    xor     %ax, %ax
    mov     %ax, %ss
    mov     $BIOS_STACK16, %sp
    in      $0x92, %al              // A20 on (fast A20: bit 1; bit 0 would reset)
    or      $0x02, %al
    and     $0xfe, %al
    out     %al, $0x92
    lgdtl   %cs:gdt_desc            // the GDT's base is its ROM address below 4 GiB
    mov     %cr0, %eax
    or      $CR0_PE, %eax
    mov     %eax, %cr0
    ljmpl   $0x08, $pm32

    .section .text.entry, "ax"
    .code32
pm32:
    mov     $0x10, %eax
    mov     %eax, %ds
    mov     %eax, %es
    mov     %eax, %fs
    mov     %eax, %gs
    mov     %eax, %ss
    mov     $BIOS_STACK32, %esp
    cld
    mov     $__bss_start, %edi      // C's .bss is RAM: zero it
    mov     $__bss_end, %ecx
    sub     %edi, %ecx
    xor     %eax, %eax
    rep stosb
    push    $BIOS_SAVE
    call    bios_main               // the checks of real and protected mode (bios.c)

    ENTER_LONG_MODE_4GIB BIOS_PML4, LONG_CR0
    ljmp    $0x18, $lm64            // 64-bit code at its ROM address below 4 GiB

    .code64
lm64:
    mov     $BIOS_STACK32, %esp
    lea     lm64(%rip), %rax        // 64-bit code running from the ROM below 4 GiB
    shr     $16, %rax
    cmp     $0xffff, %rax
    sete    %al
    lea     msg_lm_rip(%rip), %rsi
    call    report64
    movb    $BIOS_ROM_BYTE, rom_probe(%rip)     // under pykvm: KVM's MMIO exit, dropped
    cmpb    $BIOS_ROM_BYTE, rom_probe(%rip)
    setne   %al
    lea     msg_lm_rom(%rip), %rsi
    call    report64
    mov     $0x200000, %ebx         // RAM above 1 MiB, through the identity map
    movq    $0x0123456789abcdef, %rax
    mov     %rax, (%rbx)
    cmp     (%rbx), %rax
    sete    %al
    lea     msg_lm_ram(%rip), %rsi
    call    report64
    mov     $0xfffffff0, %esi       // the reset vector, as the alias below 1 MiB shows it too
    mov     $0xffff0, %edi
    mov     $16, %ecx
    repe cmpsb
    sete    %al
    lea     msg_lm_alias(%rip), %rsi
    call    report64

    lea     msg_summary(%rip), %rsi // SUMMARY: <passed> passed, <failed> failed
    SERIAL_PUTS
    mov     $checks_passed, %ebx    // 32-bit absolute addresses: this is an i386 object
    mov     (%rbx), %eax
    call    put_dec64
    lea     msg_passed(%rip), %rsi
    SERIAL_PUTS
    mov     $checks_failed, %ebx
    mov     (%rbx), %eax
    call    put_dec64
    lea     msg_failed(%rip), %rsi
    SERIAL_PUTS
    mov     $checks_failed, %ebx
    mov     (%rbx), %eax
    outl    %eax, $DEBUG_EXIT_PORT
    HALT_FOREVER

/* report64: "PASS: <name>" if AL != 0, else "FAIL: <name>", name at RSI; counts it.
 * Clobbers RAX, RDX, RSI, RDI. */
report64:
    push    %rsi
    lea     msg_pass(%rip), %rsi
    test    %al, %al
    jnz     1f
    lea     msg_fail(%rip), %rsi
    mov     $checks_failed, %edi
    jmp     2f
1:  mov     $checks_passed, %edi
2:  incl    (%rdi)
    SERIAL_PUTS
    pop     %rsi
    SERIAL_PUTS
    mov     $'\n', %al
    SERIAL_PUTC_AL
    ret

/* put_dec64: EAX in decimal. */
put_dec64:
    mov     $10, %ecx
    xor     %ebx, %ebx              // digits pushed
1:  xor     %edx, %edx
    div     %ecx
    push    %rdx
    inc     %ebx
    test    %eax, %eax
    jnz     1b
2:  pop     %rax
    add     $'0', %al
    SERIAL_PUTC_AL
    dec     %ebx
    jnz     2b
    ret

    .section .rodata
    .balign 8
gdt:
    .quad   0
    .quad   0x00cf9b000000ffff      // 0x08: code, 32-bit, 4 GiB, accessed
    .quad   0x00cf93000000ffff      // 0x10: data, 4 GiB, accessed
    .quad   0x00af9b000000ffff      // 0x18: code, 64-bit (L=1), accessed
gdt_end:
gdt_desc:
    .word   gdt_end - gdt - 1
    .long   gdt
    .globl  rom_probe
rom_probe:
    .byte   0xa5                    // != BIOS_ROM_BYTE
msg_pass:       .asciz "PASS: "
msg_fail:       .asciz "FAIL: "
msg_lm_rip:     .asciz "long mode: 64-bit code runs from the ROM below 4 GiB"
msg_lm_rom:     .asciz "long mode: a write to the ROM is dropped"
msg_lm_ram:     .asciz "long mode: RAM at 2 MiB reads back what was written"
msg_lm_alias:   .asciz "long mode: the reset vector reads the same at 0xfffffff0 and 0xffff0"
msg_summary:    .asciz "SUMMARY: "
msg_passed:     .asciz " passed, "
msg_failed:     .asciz " failed\n"
