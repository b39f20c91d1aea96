/* bios.h - what bios.S saves of the reset state for bios.c to check.
 *
 * The save area lives in RAM at BIOS_SAVE; the offsets are shared by the assembly
 * that fills it (real mode, right at the reset vector) and the C that reads it.
 */
#ifndef PYKVM_BIOS_H
#define PYKVM_BIOS_H

#define BIOS_SAVE         0x500     /* the save area (RAM) */
#define BIOS_STACK16      0x7000    /* SS:SP = 0000:7000 once the code has left the reset CS */
#define BIOS_STACK32      0x80000
#define BIOS_PML4         0x20000   /* the 64-bit identity map: PML4, PDPT, 4 PDs (4 GiB, 2 MiB pages) */
#define BIOS_ROM_BYTE     0x5a      /* what bios.S writes over rom_probe (whose ROM value differs) */

#define SAVE_EAX          0
#define SAVE_EDX          4
#define SAVE_CR0          8
#define SAVE_CR4          12
#define SAVE_EFLAGS       16
#define SAVE_ESP          20
#define SAVE_EFER_LO      24
#define SAVE_EFER_HI      28
#define SAVE_IP           32        /* u16: the return address of the reset vector's call */
#define SAVE_CS           34        /* u16 selectors at the reset vector */
#define SAVE_DS           36
#define SAVE_ES           38
#define SAVE_SS           40
#define SAVE_FS           42
#define SAVE_GS           44
#define SAVE_GDTR         46        /* limit u16, base u32 */
#define SAVE_IDTR         52
#define SAVE_ROM_HIGH     58        /* u8: rom_probe read back after a write through the reset CS */
#define SAVE_ROM_ALIAS    59        /* u8: ... after a write through CS = 0xf000 (the alias) */
#define SAVE_ALIAS_CS     60        /* u16: CS after the far jump */
#define SAVE_SIZE         64

#endif
