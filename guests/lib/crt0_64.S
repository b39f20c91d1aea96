/* crt0_64.S - start-up code for freestanding 64-bit C guests (--mode long).
 *
 * lib/crt0_32.S assembled as 64-bit code: entered at the image's first byte with
 * interrupts off (identity-mapped RAM, the loader's GDT: guests load no
 * selector), every instruction there does the same in 64-bit mode -- a 32-bit
 * register write zero-extends, so the stack and .bss addresses below 4 GiB load
 * as they are, and "call main" finds RSP + 8 aligned to 16 as the ABI wants.
 */
#include "crt0_32.S"
