/* bios.c - the checks of the BIOS-replacement ROM, in 32-bit protected mode (see bios.S).
 *
 * Runs from ROM; .bss and the stack are RAM. Checks the reset state bios.S saved at the
 * reset vector (include/bios.h), that writes to the ROM were dropped in real mode, and
 * here, in both places it shows, that the two places show the same bytes, and that RAM
 * below 640 KiB, above 1 MiB and at the top the CMOS reports holds what is written. The
 * counts go on in bios.S's 64-bit code, which prints the summary.
 */
#include "pykvm_guest.h"
#include "bios.h"
#include "checks.h"     /* bios.S's 64-bit code reads and continues the counts */

#define RESET_CR0      0x60000010u
#define ROM_TOP        0xffff0000u     /* the ROM's last 64 KiB below 4 GiB ... */
#define ROM_ALIAS      0x000f0000u     /* ... and below 1 MiB */
#define MIB            0x100000u

extern volatile uint8_t rom_probe;       /* a ROM byte (bios.S) */

static uint32_t save32(unsigned offset) { return *(volatile uint32_t *)(BIOS_SAVE + offset); }
static uint16_t save16(unsigned offset) { return *(volatile uint16_t *)(BIOS_SAVE + offset); }
static uint8_t save8(unsigned offset) { return *(volatile uint8_t *)(BIOS_SAVE + offset); }

static uint32_t cpuid_eax(uint32_t leaf)
{
    uint32_t a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(0));
    return a;
}

static uint8_t cmos(uint8_t index)
{
    outb(0x70, index);
    return inb(0x71);
}

static int same_bytes(uint32_t a, uint32_t b, unsigned n)
{
    return memcmp((const void *)a, (const void *)b, n) == 0;
}

static int ram_holds(uint32_t address)
{
    volatile uint32_t *p = (volatile uint32_t *)address;
    uint32_t old = *p;
    *p = 0x5aa5c33cu ^ address;
    int ok = *p == (0x5aa5c33cu ^ address);
    *p = old;
    return ok;
}

void bios_main(void)
{
    uint32_t signature = cpuid_eax(1);
    uint32_t probe = (uint32_t)&rom_probe - ROM_TOP;

    guest_printf("bios: a BIOS-replacement ROM; reset EDX=0x%x, CPUID.1.EAX=0x%x\n", save32(SAVE_EDX), signature);
    check("reset: CS.selector is 0xf000", save16(SAVE_CS) == 0xf000);
    check("reset: IP is 0xfff0 (the reset vector's call pushed 0xfff3)", save16(SAVE_IP) == 0xfff3);
    check("reset: EDX holds the CPUID signature (family, model, stepping)", save32(SAVE_EDX) == signature);
    check("reset: CR0 is 0x60000010 (CD, NW, ET)", save32(SAVE_CR0) == RESET_CR0);
    check("reset: EAX is 0 (BIST passed), ESP is 0", save32(SAVE_EAX) == 0 && save32(SAVE_ESP) == 0);
    check("reset: EFLAGS is 0x2", save32(SAVE_EFLAGS) == 2);
    check("reset: DS, ES, SS, FS, GS are 0",
          !(save16(SAVE_DS) | save16(SAVE_ES) | save16(SAVE_SS) | save16(SAVE_FS) | save16(SAVE_GS)));
    check("reset: GDTR and IDTR have base 0, limit 0xffff",
          save16(SAVE_GDTR) == 0xffff && save32(SAVE_GDTR + 2) == 0 &&
          save16(SAVE_IDTR) == 0xffff && save32(SAVE_IDTR + 2) == 0);
    check("reset: CR4 and EFER are 0", save32(SAVE_CR4) == 0 && save32(SAVE_EFER_LO) == 0 &&
          save32(SAVE_EFER_HI) == 0);
    check("real mode: the far jump to F000 runs the ROM's alias below 1 MiB", save16(SAVE_ALIAS_CS) == 0xf000);
    check("real mode: a write to the ROM through the reset CS is dropped", save8(SAVE_ROM_HIGH) == rom_probe);
    check("real mode: a write to the ROM's alias is dropped", save8(SAVE_ROM_ALIAS) == rom_probe);

    *(volatile uint8_t *)(ROM_TOP + probe) = BIOS_ROM_BYTE;
    *(volatile uint8_t *)(ROM_ALIAS + probe) = BIOS_ROM_BYTE;
    check("protected mode: writes to the ROM and its alias are dropped",
          *(volatile uint8_t *)(ROM_TOP + probe) != BIOS_ROM_BYTE &&
          *(volatile uint8_t *)(ROM_ALIAS + probe) != BIOS_ROM_BYTE);
    check("protected mode: the alias below 1 MiB shows the ROM's top (the last 4 KiB compared)",
          same_bytes(ROM_TOP + 0xf000, ROM_ALIAS + 0xf000, 0x1000));

    uint32_t above_16m = cmos(0x34) | (uint32_t)cmos(0x35) << 8;         /* 64 KiB units */
    uint32_t top = 16 * MIB + above_16m * 0x10000;
    guest_printf("info: CMOS: %u KiB base memory, RAM up to 0x%x\n", cmos(0x15) | (unsigned)cmos(0x16) << 8, top);
    check("RAM below 640 KiB, at 1 MiB and at the top the CMOS reports holds what is written",
          above_16m && ram_holds(0x9f000) && ram_holds(MIB) && ram_holds(top - 4));
}
