/* multiboot32.S - a multiboot (v1) kernel: an ELF loaded at 1 MiB.
 *
 * Mode:   an ELF32 file (guests/build/multiboot32.elf, no flat image) for a
 *         multiboot loader: pykvm's, GRUB's, or QEMU's -kernel.
 * Entry:  as the multiboot spec leaves the CPU: 32-bit protected mode, flat
 *         CS/DS, paging and interrupts off, EAX = 0x2badb002 (the magic), EBX
 *         = physical address of the multiboot information structure.  ESP and
 *         the GDTR are undefined, so it sets its own stack and loads no
 *         segment register.
 * Does:   prints
 *           multiboot32: eax=0x2badb002 flags=0x........
 *           multiboot32: mem_lower=<n> KiB mem_upper=<n> KiB
 *         (the second line only when flags bit 0 says the fields are valid),
 *         then writes 0 to the debug-exit port if the magic was right and the
 *         memory fields were present, 1 otherwise.
 *
 * pykvm-test:
 *   format = "multiboot"
 *   mode = "protected"
 *   memory = "64M"
 *   serial = ["multiboot32: mem_lower=640 KiB mem_upper=64512 KiB"]
 *   serial_match = ['^multiboot32: eax=0x2badb002 flags=']
 */
#include "guest_asm.h"

#define MB_HEADER_MAGIC  0x1badb002
#define MB_HEADER_FLAGS  0x00000003     /* bit 0: align modules, bit 1: memory info */
#define MB_BOOT_MAGIC    0x2badb002     /* what the loader puts in EAX */
#define MB_INFO_MEMORY   0x00000001     /* info.flags: mem_lower/mem_upper valid */

    .section .multiboot, "a"
    .balign 4
multiboot_header:                       // must lie in the first 8 KiB of the file
    .long   MB_HEADER_MAGIC
    .long   MB_HEADER_FLAGS
    .long   -(MB_HEADER_MAGIC + MB_HEADER_FLAGS)

    .section .text.entry, "ax"
    .code32
    .globl  _start
_start:
    cli
    cld
    mov     $stack_top, %esp
    mov     %eax, %edi              // keep the magic and the info pointer
    mov     %ebx, %ebp

    mov     $msg_eax, %esi
    call    serial_puts
    mov     %edi, %eax
    call    serial_put_hex32
    mov     $msg_flags, %esi
    call    serial_puts
    xor     %eax, %eax
    cmp     $MB_BOOT_MAGIC, %edi
    jne     1f
    mov     (%ebp), %eax            // info.flags (only read if the magic says EBX is valid)
1:  mov     %eax, %ebx
    call    serial_put_hex32
    mov     $msg_newline, %esi
    call    serial_puts

    mov     $1, %ecx                // exit value: 1 until proven fine
    cmp     $MB_BOOT_MAGIC, %edi
    jne     2f
    test    $MB_INFO_MEMORY, %ebx
    jz      2f
    mov     $msg_lower, %esi
    call    serial_puts
    mov     4(%ebp), %eax           // info.mem_lower, KiB below 1 MiB
    call    serial_put_dec32
    mov     $msg_upper, %esi
    call    serial_puts
    mov     8(%ebp), %eax           // info.mem_upper, KiB above 1 MiB
    call    serial_put_dec32
    mov     $msg_kib, %esi
    call    serial_puts
    xor     %ecx, %ecx
2:  mov     %ecx, %eax
    outl    %eax, $DEBUG_EXIT_PORT
    HALT_FOREVER

    .section .rodata
msg_eax:        .asciz "multiboot32: eax=0x"
msg_flags:      .asciz " flags=0x"
msg_lower:      .asciz "multiboot32: mem_lower="
msg_upper:      .asciz " KiB mem_upper="
msg_kib:        .asciz " KiB\n"
msg_newline:    .asciz "\n"

    .bss
    .balign 16
    .skip   4096
stack_top:
