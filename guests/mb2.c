/* mb2.c - a Multiboot 2 kernel that checksums its modules.
 *
 * Mode:   an ELF32 kernel linked at 1 MiB (ld/kernel32.ld) with a Multiboot 2 header
 *         (information request for the command line, modules, memory information and
 *         map; module alignment) and, for QEMU's -kernel, which knows only Multiboot 1, a
 *         Multiboot 1 header as well: pykvm run loads it as Multiboot 2 (--format auto
 *         prefers it), QEMU as Multiboot 1 (-initrd gives the modules).
 * Entry:  either protocol's: 32-bit protected mode, paging off, flat segments, EAX = the
 *         magic (0x36d76289 or 0x2badb002), EBX = the boot information.
 * Does:   prints each module's size, CRC-32 and string; with "crc32=0x<hex>" on the
 *         command line, checks module 0 against it; checks that module 0 starts on a page
 *         boundary, that the memory map calls the kernel's memory RAM and that the basic
 *         memory information is there. Exits with the failure count.
 *
 * pykvm-test:
 *   format = "multiboot2"
 *   mode = "protected"
 *   serial = ["SUMMARY: 3 passed, 0 failed"]
 */
#include "pykvm_guest.h"
#include "checks.h"

#define MB1_MAGIC      0x1badb002u
#define MB1_FLAGS      0x00000003u          /* modules page-aligned, memory information */
#define MB1_BOOT       0x2badb002u
#define MB2_MAGIC      0xe85250d6u
#define MB2_BOOT       0x36d76289u
#define KERNEL_ADDR    0x100000u

#define STR_(x) #x
#define STR(x) STR_(x)

__asm__(".pushsection .multiboot, \"a\"\n"
        "    .balign 8\n"
        "mb1_header:\n"
        "    .long " STR(MB1_MAGIC) ", " STR(MB1_FLAGS) ", -(" STR(MB1_MAGIC) " + " STR(MB1_FLAGS) ")\n"
        "    .balign 8\n"
        "mb2_header:\n"
        "    .long " STR(MB2_MAGIC) ", 0, mb2_end - mb2_header, -(" STR(MB2_MAGIC) " + (mb2_end - mb2_header))\n"
        "    .short 1, 0\n"                     /* information request, required: */
        "    .long 24, 1, 3, 4, 6\n"            /* command line, modules, basic memory, memory map */
        "    .balign 8\n"
        "    .short 6, 0\n"                     /* module alignment */
        "    .long 8\n"
        "    .short 0, 0\n"                     /* end */
        "    .long 8\n"
        "mb2_end:\n"
        ".popsection");

struct module { uint32_t start, end; const char *string; };

extern char __bss_end[];

static struct module modules[16];
static unsigned module_count;
static const char *cmdline = "";
static int kernel_is_ram, have_meminfo;
static uint32_t mem_lower, mem_upper;

static void memory_entry(uint64_t base, uint64_t length, uint32_t type)
{
    guest_printf("info: memory map: 0x%08x%08x +0x%08x%08x type %u\n", (unsigned)(base >> 32), (unsigned)base,
                 (unsigned)(length >> 32), (unsigned)length, type);
    if (type == 1 && base <= KERNEL_ADDR && base + length >= (uintptr_t)__bss_end)
        kernel_is_ram = 1;
}

static void add_module(uint32_t start, uint32_t end, const char *string)
{
    if (module_count < sizeof modules / sizeof modules[0])
        modules[module_count++] = (struct module){start, end, string};
}

static void read_multiboot2(const uint8_t *info)
{
    uint32_t total = *(const uint32_t *)info;
    for (const uint8_t *tag = info + 8; tag < info + total;) {
        uint32_t type = ((const uint32_t *)tag)[0], size = ((const uint32_t *)tag)[1];
        const uint32_t *field = (const uint32_t *)(tag + 8);
        if (type == 0)
            break;
        if (type == 1)
            cmdline = (const char *)field;
        else if (type == 2)
            guest_printf("info: boot loader \"%s\"\n", (const char *)field);
        else if (type == 3)
            add_module(field[0], field[1], (const char *)&field[2]);
        else if (type == 4)
            have_meminfo = 1, mem_lower = field[0], mem_upper = field[1];
        else if (type == 6)
            for (uint32_t off = 16; off + field[0] <= size; off += field[0]) {
                const uint32_t *e = (const uint32_t *)(tag + off);
                memory_entry(e[0] | (uint64_t)e[1] << 32, e[2] | (uint64_t)e[3] << 32, e[4]);
            }
        tag += (size + 7) & ~7u;
    }
}

static void read_multiboot1(const uint32_t *info)
{
    uint32_t flags = info[0];
    if (flags & (1u << 0))
        have_meminfo = 1, mem_lower = info[1], mem_upper = info[2];
    if (flags & (1u << 2))
        cmdline = (const char *)(uintptr_t)info[4];
    if (flags & (1u << 3))
        for (uint32_t i = 0; i < info[5]; i++) {
            const uint32_t *m = (const uint32_t *)(uintptr_t)(info[6] + 16 * i);
            add_module(m[0], m[1], (const char *)(uintptr_t)m[2]);
        }
    if (flags & (1u << 6))
        for (uint32_t off = 0; off < info[11]; off += *(const uint32_t *)(uintptr_t)(info[12] + off) + 4) {
            const uint32_t *e = (const uint32_t *)(uintptr_t)(info[12] + off);
            memory_entry(e[1] | (uint64_t)e[2] << 32, e[3] | (uint64_t)e[4] << 32, e[5]);
        }
    if (flags & (1u << 9))
        guest_printf("info: boot loader \"%s\"\n", (const char *)(uintptr_t)info[16]);
}

int kernel_main(uint32_t magic, const void *info)
{
    guest_printf("mb2: a Multiboot 2 kernel (with a Multiboot 1 header), boot information at 0x%x\n",
                 (unsigned)(uintptr_t)info);
    check("EAX holds a multiboot boot magic", magic == MB2_BOOT || magic == MB1_BOOT);
    if (magic == MB2_BOOT) {
        guest_printf("info: booted by Multiboot 2\n");
        read_multiboot2(info);
    } else if (magic == MB1_BOOT) {
        guest_printf("info: booted by Multiboot 1\n");
        read_multiboot1(info);
    } else {
        return checks_summary();
    }
    guest_printf("info: command line \"%s\", mem_lower %u KiB, mem_upper %u KiB\n", cmdline, mem_lower, mem_upper);
    check("basic memory information: about 640 KiB below 1 MiB, some above",
          have_meminfo && mem_lower >= 600 && mem_lower <= 640 && mem_upper);
    check("the memory map says the kernel is in RAM", kernel_is_ram);
    for (unsigned i = 0; i < module_count; i++)
        guest_printf("module %u: %u bytes, crc32 0x%08x, string \"%s\"\n", i, modules[i].end - modules[i].start,
                     crc32_bytes((const void *)(uintptr_t)modules[i].start, modules[i].end - modules[i].start),
                     modules[i].string);
    if (module_count)
        check("module 0 starts on a page boundary", !(modules[0].start & 0xfff));
    uint32_t want;
    if (cmdline_hex(cmdline, "crc32=", &want))
        check("module 0's CRC-32 is the command line's crc32=", module_count &&
              crc32_bytes((const void *)(uintptr_t)modules[0].start, modules[0].end - modules[0].start) == want);
    return checks_summary();
}
