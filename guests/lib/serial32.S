/* serial32.S - COM1 output routines for 32-bit assembly guests.
 *
 * Linked into the 32-bit assembly guests (selftest32, loop32, multiboot32) so
 * that printing numbers is written once.  Every routine preserves all
 * registers and EFLAGS' arithmetic flags are not promised; the stack must be
 * usable.  Strings are NUL-terminated; addresses are flat (DS base 0).
 *
 *   serial_putc       AL  = byte to send
 *   serial_puts       ESI = string
 *   serial_put_hex32  EAX = value, printed as 8 lower-case hex digits
 *   serial_put_dec32  EAX = value, printed as unsigned decimal
 */
#include "guest_asm.h"

    .code32
    .text

    .globl  serial_putc
serial_putc:
    push    %eax
    push    %edx
    SERIAL_PUTC_AL
    pop     %edx
    pop     %eax
    ret

    .globl  serial_puts
serial_puts:
    push    %eax
    push    %edx
    push    %esi
    SERIAL_PUTS
    pop     %esi
    pop     %edx
    pop     %eax
    ret

    .globl  serial_put_hex32
serial_put_hex32:
    push    %eax
    push    %ecx
    push    %edx
    mov     %eax, %edx
    mov     $8, %ecx
1:  rol     $4, %edx                // the next nibble, most significant first
    mov     %dl, %al
    and     $0xf, %al
    add     $0x30, %al              // '0'..'9'
    cmp     $0x39, %al
    jbe     2f
    add     $(0x61 - 0x3a), %al     // 'a'..'f'
2:  call    serial_putc
    loop    1b
    pop     %edx
    pop     %ecx
    pop     %eax
    ret

    .globl  serial_put_dec32
serial_put_dec32:
    push    %eax
    push    %ebx
    push    %ecx
    push    %edx
    mov     $10, %ebx
    xor     %ecx, %ecx
1:  xor     %edx, %edx              // divide by 10, stacking the remainders
    div     %ebx
    push    %edx
    inc     %ecx
    test    %eax, %eax
    jnz     1b
2:  pop     %eax
    add     $0x30, %al
    call    serial_putc
    loop    2b
    pop     %edx
    pop     %ecx
    pop     %ebx
    pop     %eax
    ret
