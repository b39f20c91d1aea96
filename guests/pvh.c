/* pvh.c - a PVH kernel in C: prints its start info and checks what it can.
 *
 * Mode:   an ELF32 kernel linked at 1 MiB (ld/kernel32.ld) carrying the Xen note
 *         XEN_ELFNOTE_PHYS32_ENTRY (owner "Xen", type 18) = _start, for pykvm run (where
 *         --format auto prefers PVH) and qemu-system-x86_64 -kernel, as cloud-hypervisor
 *         and Firecracker boot kernels.
 * Entry:  Xen's x86/HVM direct boot ABI: 32-bit protected mode, paging off, flat CS and
 *         DS, EBX = the physical address of struct hvm_start_info; no stack.
 * Does:   checks the start info's magic and version, that paging is off and protection
 *         on, that the memory map calls the kernel's own memory RAM; prints the command
 *         line, the memory map and each module with its CRC-32; with "crc32=0x<hex>" on
 *         the command line, checks module 0 against it. Exits with the failure count.
 *
 * pykvm-test:
 *   format = "pvh"
 *   mode = "protected"
 *   serial = ["SUMMARY: 4 passed, 0 failed"]
 */
#include "pykvm_guest.h"
#include "checks.h"

__asm__(".pushsection .note.Xen, \"a\", @note\n"
        "    .balign 4\n"
        "    .long 4, 4, 18\n"          /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
        "    .asciz \"Xen\"\n"
        "    .long _start\n"            /* lib/crt0_kernel.S */
        ".popsection");

#define PVH_MAGIC      0x336ec578u
#define MEMMAP_RAM     1
#define KERNEL_ADDR    0x100000u

struct hvm_start_info {
    uint32_t magic, version, flags, nr_modules;
    uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    uint32_t memmap_entries, reserved;
};

struct hvm_modlist_entry {
    uint64_t paddr, size, cmdline_paddr, reserved;
};

struct hvm_memmap_table_entry {
    uint64_t addr, size;
    uint32_t type, reserved;
};

extern char __bss_end[];

static const char *string_at(uint64_t address)
{
    return address ? (const char *)(uintptr_t)address : "";
}

int kernel_main(uint32_t eax, const struct hvm_start_info *si)
{
    uint32_t cr0;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    (void)eax;
    guest_printf("pvh: a PVH kernel, start info at 0x%x\n", (unsigned)(uintptr_t)si);
    check("start info magic is 0x336ec578", si->magic == PVH_MAGIC);
    if (si->magic != PVH_MAGIC)
        return checks_summary();
    check("start info version is 1 or later", si->version >= 1);
    check("entered with protection on and paging off", (cr0 & 0x80000001u) == 1);
    const char *cmdline = string_at(si->cmdline_paddr);
    guest_printf("info: command line \"%s\"\n", cmdline);

    int kernel_is_ram = 0;
    const struct hvm_memmap_table_entry *map = (const void *)(uintptr_t)si->memmap_paddr;
    for (uint32_t i = 0; si->version >= 1 && i < si->memmap_entries; i++) {
        guest_printf("info: memory map %u: 0x%08x%08x +0x%08x%08x type %u\n", i, (unsigned)(map[i].addr >> 32),
                     (unsigned)map[i].addr, (unsigned)(map[i].size >> 32), (unsigned)map[i].size, map[i].type);
        if (map[i].type == MEMMAP_RAM && map[i].addr <= KERNEL_ADDR &&
            map[i].addr + map[i].size >= (uintptr_t)__bss_end)
            kernel_is_ram = 1;
    }
    check("the memory map says the kernel is in RAM", kernel_is_ram);

    const struct hvm_modlist_entry *mods = (const void *)(uintptr_t)si->modlist_paddr;
    guest_printf("info: %u module(s)\n", si->nr_modules);
    for (uint32_t i = 0; i < si->nr_modules; i++) {
        uint32_t crc = crc32_bytes((const void *)(uintptr_t)mods[i].paddr, (uint32_t)mods[i].size);
        guest_printf("module %u: %u bytes, crc32 0x%08x, string \"%s\"\n", i, (unsigned)mods[i].size, crc,
                     string_at(mods[i].cmdline_paddr));
    }
    uint32_t want;
    if (cmdline_hex(cmdline, "crc32=", &want))
        check("module 0's CRC-32 is the command line's crc32=",
              si->nr_modules && crc32_bytes((const void *)(uintptr_t)mods[0].paddr, (uint32_t)mods[0].size) == want);
    return checks_summary();
}
