/* mbshim.S - a multiboot kernel that starts a flat guest image in pykvm's entry state.
 *
 * Mode:   a multiboot v1 kernel (a.out kludge: the header's addresses, no ELF),
 *         loaded at 16 MiB, for QEMU's -kernel (SeaBIOS + its multiboot ROM), so
 *         the flat guests of this directory run on a reference PC unchanged.
 * Does:   copies the payload -- a flat guest image appended to this one by the
 *         host (scripts/qemu_run.py) -- to its load address and enters it the
 *         way pykvm's loader does (guests/README.md, "Entry states"):
 *           real       image at 0x7c00, CS:IP = 0000:7c00, SS:SP = 0000:7c00,
 *                      DS = ES = FS = GS = 0, the IVT at 0 zeroed, IF = 0;
 *           protected  image at 0x100000, pykvm's GDT at 0x500 (0x08 code32,
 *                      0x10 data, 0x18 code64, 0x20 code16, 0x28 data16), flat
 *                      segments, ESP = 0x80000, IDT limit 0, paging off;
 *           long       the same GDT, CS = 0x18, identity-mapped 2 MiB pages over
 *                      the first 4 GiB (PML4 0x1000, PDPT 0x2000, PDs 0x3000),
 *                      CR0 0x80050033, CR4.PAE, EFER LME|SCE, RSP = 0x80000.
 *         What stays as the firmware left it is the platform: SeaBIOS masks the
 *         PIC lines it does not use, runs its own PIT tick, may make PCI lines
 *         level-triggered in the ELCR.  pykvm has no firmware.
 *
 * The host patches the parameter block at SHIM_PARAMS (offset 0x30): mode
 * (0 real, 1 protected, 2 long), load address, payload size and payload offset
 * within this image.  The shim uses no stack.
 */
#include "guest_asm.h"

#define MB_MAGIC     0x1badb002
#define MB_AOUT      0x00010000     /* load by the header's addresses */
#define GDT_ADDR     0x500
#define TRAMPOLINE   0x600          /* the 16-bit code on its way to real mode */
#define PML4         0x1000         /* then the PDPT and four page directories (guest_asm.h) */
#define STACK_TOP    0x80000
#define REAL_LOAD    0x7c00
#define LONG_CR0     0x80050033     /* PG|AM|WP|NE|ET|MP|PE, as pykvm's long-mode loader */

/* DS, ES, FS, GS and SS := selector (the same bytes in 16-, 32- and 64-bit code). */
.macro LOAD_DATA_SEGMENTS selector
    mov     $\selector, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %fs
    mov     %ax, %gs
    mov     %ax, %ss
.endm

    .section .text.entry, "ax"
    .code32
    .globl  _start
_start:
    jmp     entry
    .balign 4
mb_header:
    .long   MB_MAGIC, MB_AOUT, -(MB_MAGIC + MB_AOUT)
    .long   mb_header, _start, 0, 0, entry  // header, load, load end (0: the file), bss end, entry

    .org    0x30
shim_params:                        // patched by the host
param_mode:     .long 0
param_load:     .long 0
param_size:     .long 0
param_offset:   .long 0

entry:
    cli
    cld
    mov     param_offset, %esi      // the payload, to its load address
    add     $_start, %esi
    mov     param_load, %edi
    mov     param_size, %ecx
    rep movsb
    mov     $gdt, %esi              // pykvm's loader GDT, where pykvm puts it
    mov     $GDT_ADDR, %edi
    mov     $(gdt_end - gdt), %ecx
    rep movsb
    lgdt    gdtr
    mov     param_mode, %eax
    cmp     $1, %eax
    je      protected
    cmp     $2, %eax
    je      long

    mov     $trampoline16, %esi     // real mode: 16-bit code must run below 64 KiB
    mov     $TRAMPOLINE, %edi
    mov     $(trampoline16_end - trampoline16), %ecx
    rep movsb
    xor     %eax, %eax              // the IVT, all zero
    xor     %edi, %edi
    mov     $256, %ecx
    rep stosl
    ljmp    $0x20, $TRAMPOLINE

protected:
    ljmp    $0x08, $1f
1:  LOAD_DATA_SEGMENTS 0x10
    mov     $STACK_TOP, %esp
    lidt    idtr_empty
    mov     param_load, %eax
    jmp     *%eax

long:
    ENTER_LONG_MODE_4GIB PML4, LONG_CR0
    ljmp    $0x18, $long64

    .code64
long64:
    LOAD_DATA_SEGMENTS 0x10
    mov     $STACK_TOP, %esp
    mov     $idtr_empty, %ebx       // 32-bit absolute addresses: this is an i386 object
    lidt    (%rbx)
    mov     $param_load, %ebx
    mov     (%rbx), %eax
    jmp     *%rax

/* Copied to TRAMPOLINE and entered through the 16-bit code selector 0x20. */
    .code16
trampoline16:
    LOAD_DATA_SEGMENTS 0x28         // 64 KiB data segments before leaving protected mode
    mov     %cr0, %eax
    and     $~CR0_PE, %eax
    mov     %eax, %cr0
    ljmp    $0, $(TRAMPOLINE + 1f - trampoline16)
1:  LOAD_DATA_SEGMENTS 0
    mov     $REAL_LOAD, %sp
    lidt    TRAMPOLINE + (ivtr - trampoline16)
    ljmp    $0, $REAL_LOAD
ivtr:
    .word   0x3ff
    .long   0
trampoline16_end:

    .code32
    .balign 8
gdt:
    .quad   0
    .quad   0x00cf9b000000ffff      // 0x08: code, 32-bit, 4 GiB
    .quad   0x00cf93000000ffff      // 0x10: data, 4 GiB
    .quad   0x00af9b000000ffff      // 0x18: code, 64-bit (L=1)
    .quad   0x00009b000000ffff      // 0x20: code, 16-bit, 64 KiB
    .quad   0x000093000000ffff      // 0x28: data, 16-bit, 64 KiB
gdt_end:
    .word   0
gdtr:
    .word   gdt_end - gdt - 1
    .long   GDT_ADDR
    .word   0
idtr_empty:                         // 10 bytes: 64-bit LIDT reads an 8-byte base
    .word   0
    .quad   0
