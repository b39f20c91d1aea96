/* crt0_kernel.S - start-up code for 32-bit C kernels that a boot loader enters (pvh.c, mb2.c).
 *
 * lib/crt0_32.S, keeping what the loader hands over: entered at _start in flat 32-bit
 * protected mode, paging and interrupts off, with the boot protocol's magic in EAX
 * (Multiboot 1 and 2) and its boot information's address in EBX (all three), it makes its
 * own stack (the protocols promise none), zeroes .bss and calls kernel_main(eax, ebx),
 * whose result goes to the debug-exit port.
 */
#define CRT0_KERNEL
#include "crt0_32.S"
