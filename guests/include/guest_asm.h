/* guest_asm.h - constants and macros shared by pykvm's assembly guests.
 *
 * Included (through the C preprocessor: the guests are .S files) by every
 * assembly guest so that the device conventions live in one place:
 *   - COM1 is a 16550 at 0x3f8: poll LSR (0x3fd) until THRE (bit 5), then write THR.
 *   - A write to port 0xf4 ends the run with status (value << 1) | 1, like QEMU's
 *     isa-debug-exit; self-checking guests write their failure count there.
 *
 * The macros use only instructions that assemble and behave identically under
 * .code16, .code32 and .code64 (lodsb picks SI/ESI/RSI by mode), so one text
 * serves real, protected and long mode.
 */
#ifndef PYKVM_GUEST_ASM_H
#define PYKVM_GUEST_ASM_H

#define COM1_THR        0x3f8   /* transmit holding register (write) */
#define COM1_LSR        0x3fd   /* line status register (read) */
#define LSR_THRE        0x20    /* THR empty: the UART accepts another byte */
#define DEBUG_EXIT_PORT 0xf4    /* isa-debug-exit: status = (value << 1) | 1 */
#define POST_PORT       0x80    /* the classic POST/diagnostic port; exits64 hammers it */

/* Control registers, EFER and page-table entry bits the mode-switching guests use. */
#define CR0_PE   0x00000001     /* protected mode */
#define CR0_WP   0x00010000     /* supervisor writes honour read-only pages */
#define CR0_PG   0x80000000     /* paging */
#define CR4_PSE  0x00000010     /* 4 MiB pages in 32-bit paging */
#define CR4_PAE  0x00000020     /* PAE (required for long mode) */
#define MSR_EFER 0xc0000080
#define EFER_LME 0x00000100     /* long mode enable; LMA follows when CR0.PG is set */
#define PTE_P    0x001          /* present */
#define PTE_W    0x002          /* writable */
#define PTE_U    0x004          /* user */
#define PTE_A    0x020          /* accessed: set by the CPU on any access */
#define PTE_D    0x040          /* dirty: set by the CPU on a write */
#define PTE_PS   0x080          /* large page (2 MiB in long mode, 4 MiB in 32-bit) */

/* RFLAGS bits the self-tests compare. */
#define FL_CF 0x0001
#define FL_PF 0x0004
#define FL_AF 0x0010
#define FL_ZF 0x0040
#define FL_SF 0x0080
#define FL_DF 0x0400
#define FL_OF 0x0800
#define FL_ARITH (FL_CF | FL_PF | FL_AF | FL_ZF | FL_SF | FL_OF)

/* SERIAL_PUTC_AL: send the byte in AL to COM1.  Clobbers AX and DX. */
.macro SERIAL_PUTC_AL
    mov     %al, %ah
    mov     $COM1_LSR, %dx
.Lputc_wait\@:
    in      %dx, %al
    test    $LSR_THRE, %al
    jz      .Lputc_wait\@
    mov     %ah, %al
    mov     $COM1_THR, %dx
    out     %al, %dx
.endm

/* SERIAL_PUTS: send the NUL-terminated string at DS:(E/R)SI to COM1.
 * Leaves (E/R)SI just past the NUL.  Clobbers AX and DX. */
.macro SERIAL_PUTS
.Lputs_next\@:
    lodsb
    test    %al, %al
    jz      .Lputs_done\@
    SERIAL_PUTC_AL
    jmp     .Lputs_next\@
.Lputs_done\@:
.endm

/* ENTER_LONG_MODE_4GIB pml4, cr0: from 32-bit protected mode with paging off, build at
 * pml4 an identity map of the first 4 GiB with 2 MiB pages (six zeroed pages: PML4, PDPT,
 * four page directories), load CR3, set CR4.PAE and EFER.LME|SCE and write cr0 (with PG):
 * the next far jump to a 64-bit code segment enters 64-bit mode.
 * Clobbers EAX, ECX, EDX and EDI. */
.macro ENTER_LONG_MODE_4GIB pml4, cr0
    mov     $\pml4, %edi
    xor     %eax, %eax
    mov     $(6 * 4096 / 4), %ecx
    rep stosl
    movl    $(\pml4 + 0x1000 + PTE_P + PTE_W), \pml4
    mov     $(\pml4 + 0x1000), %edi
    mov     $(\pml4 + 0x2000 + PTE_P + PTE_W), %eax
    mov     $4, %ecx
.Lpdpt\@:
    mov     %eax, (%edi)
    add     $0x1000, %eax
    add     $8, %edi
    loop    .Lpdpt\@
    mov     $(\pml4 + 0x2000), %edi
    mov     $(PTE_P | PTE_W | PTE_PS), %eax
    mov     $2048, %ecx
.Lpd\@:
    mov     %eax, (%edi)            // the high halves stay 0: all of it is below 4 GiB
    add     $0x200000, %eax
    add     $8, %edi
    loop    .Lpd\@
    mov     $\pml4, %eax
    mov     %eax, %cr3
    mov     $CR4_PAE, %eax
    mov     %eax, %cr4
    mov     $MSR_EFER, %ecx
    rdmsr
    or      $(EFER_LME | 0x1), %eax // LME and SCE
    wrmsr
    mov     $\cr0, %eax
    mov     %eax, %cr0
.endm

/* HALT_FOREVER: park the CPU if the debug-exit port was not wired up. */
.macro HALT_FOREVER
    cli
.Lhalt\@:
    hlt
    jmp     .Lhalt\@
.endm

#endif
