/* boot16to64.S - pykvm's default guest: real mode -> protected mode -> long mode.
 *
 * Mode:   --mode real, flat image loaded at 0x7c00, entered with CS=0, IP=0x7c00,
 *         interrupts off.  No BIOS is needed (and none is used).
 * Does:   the whole x86 boot ladder in ~100 instructions, printing one line on
 *         COM1 in each mode it passes through:
 *           [real] ...       16-bit real mode, straight from the loader
 *           [protected] ...  after LGDT + CR0.PE + a far jump to a 32-bit segment
 *           [long] ...       after PAE page tables + EFER.LME + CR0.PG + a far
 *                            jump to a 64-bit (CS.L=1) segment
 *         and finally writes 0 to the debug-exit port (process status 1).
 *
 * Under PVM, everything before the last far jump is "non-PVM mode" and runs in
 * pykvm's instruction emulator; the far jump to the CS.L=1 segment is what lets
 * pykvm convert the vCPU to PVM mode, so the [long] line is printed by code
 * running on the hardware through KVM_RUN.
 *
 * Memory used: the image at 0x7c00, the stack below it, page tables at
 * 0x10000-0x12fff.  Everything (code, GDT, strings) lives in one section so the
 * same text also builds as a 512-byte boot sector (bootsector.S defines
 * BOOTSECTOR, which appends the 55 AA signature at offset 510).
 *
 * pykvm-test:
 *   format = "flat"
 *   mode = "real"
 *   executors = ["emu", "kvm"]  # converted to PVM mode for the [long] line
 *   timeout = 10
 *   serial_match = ['^\[real\] 16-bit real mode', '^\[protected\] 32-bit', '^\[long\] 64-bit long mode: running in PVM mode']
 */
#include "guest_asm.h"

#define CODE32_SEL  0x08        /* GDT[1]: 32-bit code, base 0, limit 4 GiB */
#define DATA32_SEL  0x10        /* GDT[2]: 32-bit data, base 0, limit 4 GiB */
#define CODE64_SEL  0x18        /* GDT[3]: 64-bit code (L=1) */
#define DATA64_SEL  0x20        /* GDT[4]: data for long mode */

#define STACK_TOP   0x7c00      /* the stack grows down from just below the image */
#define PML4        0x10000     /* page-map level 4: one entry */
#define PDPT        0x11000     /* page-directory-pointer table: one entry */
#define PD          0x12000     /* page directory: 512 x 2 MiB = the first 1 GiB */

    .section .text.entry, "ax"

/* ---------------------------------------------------------------- real mode */
    .code16
    .globl  _start
_start:
    cli                             // no IDT/IVT worth taking interrupts with
    cld                             // string instructions count upwards
    xor     %ax, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %ss
    mov     $STACK_TOP, %sp
    ljmp    $0, $real_start         // a BIOS may enter at 07c0:0000: make CS=0
real_start:
    mov     $msg_real, %si
    SERIAL_PUTS

    // Enter protected mode: describe the segments (LGDT), switch CR0.PE on,
    // then reload CS with a far jump -- until then the CPU still executes
    // with the real-mode CS it had.
    lgdt    gdt_descriptor
    mov     %cr0, %eax
    or      $CR0_PE, %eax
    mov     %eax, %cr0
    ljmp    $CODE32_SEL, $protected_start

/* ------------------------------------------------------ 32-bit protected mode */
    .code32
protected_start:
    mov     $DATA32_SEL, %ax        // flat data segments, base 0, 4 GiB
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %fs
    mov     %ax, %gs
    mov     %ax, %ss
    mov     $STACK_TOP, %esp
    mov     $msg_protected, %esi
    SERIAL_PUTS

    // Long mode needs paging with PAE: build a 4-level identity map of the
    // first 1 GiB using 2 MiB pages (PML4[0] -> PDPT[0] -> PD[0..511]).
    mov     $PML4, %edi             // clear the three tables
    xor     %eax, %eax
    mov     $(3 * 4096 / 4), %ecx
    rep stosl
    movl    $(PDPT | PTE_P | PTE_W), PML4
    movl    $(PD | PTE_P | PTE_W), PDPT
    mov     $PD, %edi
    mov     $(PTE_P | PTE_W | PTE_PS), %eax   // physical 0, present, writable, 2 MiB
    mov     $512, %ecx
1:  mov     %eax, (%edi)            // the high half of each entry stays 0
    add     $0x200000, %eax
    add     $8, %edi
    loop    1b

    mov     $PML4, %eax             // CR3 -> PML4
    mov     %eax, %cr3
    mov     %cr4, %eax              // CR4.PAE
    or      $CR4_PAE, %eax
    mov     %eax, %cr4
    mov     $MSR_EFER, %ecx         // EFER.LME
    rdmsr
    or      $EFER_LME, %eax
    wrmsr
    mov     %cr0, %eax              // CR0.PG: long mode is now active (EFER.LMA),
    or      $CR0_PG, %eax           // running 32-bit "compatibility mode" code
    mov     %eax, %cr0
    ljmp    $CODE64_SEL, $long_start  // a CS with L=1: 64-bit mode

/* ------------------------------------------------------------ 64-bit long mode */
    .code64
long_start:
    mov     $DATA64_SEL, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %ss
    mov     $msg_long, %esi         // the image is below 4 GiB: a 32-bit address will do
    SERIAL_PUTS
    xor     %eax, %eax
    out     %al, $DEBUG_EXIT_PORT   // exit status (0 << 1) | 1
    HALT_FOREVER

/* --------------------------------------------------------------------- data */
    .balign 8
gdt:
    .quad   0                       // 0x00: the null descriptor
    .quad   0x00cf9a000000ffff      // 0x08: code, 32-bit (D=1), G=1, limit 4 GiB, DPL 0
    .quad   0x00cf92000000ffff      // 0x10: data, writable, 32-bit, G=1, limit 4 GiB
    .quad   0x00af9a000000ffff      // 0x18: code, 64-bit (L=1, D=0), DPL 0
    .quad   0x00cf92000000ffff      // 0x20: data for long mode (only P/type matter)
gdt_end:
gdt_descriptor:
    .word   gdt_end - gdt - 1       // limit
    .long   gdt                     // base (a linear address: segment 0)

msg_real:
    .asciz  "[real] 16-bit real mode at 0000:7c00, no BIOS\n"
msg_protected:
    .asciz  "[protected] 32-bit protected mode, flat 4 GiB segments\n"
msg_long:
    .asciz  "[long] 64-bit long mode: running in PVM mode under KVM\n"

#ifdef BOOTSECTOR
    .org    510                     // fails to assemble if the code outgrew 510 bytes
    .byte   0x55, 0xaa              // the boot-sector signature
#endif
