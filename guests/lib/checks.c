/* checks.c - PASS/FAIL lines, their counts and a CRC-32 for C guests (include/checks.h). */
#include "checks.h"
#include "pykvm_guest.h"

unsigned checks_passed, checks_failed;

void check(const char *name, int ok)
{
    if (ok)
        checks_passed++;
    else
        checks_failed++;
    guest_printf("%s: %s\n", ok ? "PASS" : "FAIL", name);
}

unsigned checks_summary(void)
{
    guest_printf("SUMMARY: %u passed, %u failed\n", checks_passed, checks_failed);
    return checks_failed;
}

uint32_t crc32_bytes(const void *data, uint32_t size)
{
    const uint8_t *p = data;
    uint32_t crc = 0xffffffffu;
    while (size--) {
        crc ^= *p++;
        for (int bit = 0; bit < 8; bit++)
            crc = (crc >> 1) ^ (0xedb88320u & -(crc & 1));
    }
    return ~crc;
}

int cmdline_hex(const char *cmdline, const char *key, uint32_t *value)
{
    size_t n = strlen(key);
    for (const char *p = cmdline; p && *p; p++) {
        if ((p == cmdline || p[-1] == ' ') && memcmp(p, key, n) == 0) {
            const char *d = p + n;
            if (d[0] == '0' && (d[1] == 'x' || d[1] == 'X'))
                d += 2;
            uint32_t v = 0;
            int digits = 0;
            for (;; d++, digits++) {
                unsigned c = (unsigned char)*d;
                unsigned digit = c - '0' < 10 ? c - '0' : (c | 0x20) - 'a' < 6 ? (c | 0x20) - 'a' + 10 : 16;
                if (digit > 15)
                    break;
                v = v << 4 | digit;
            }
            *value = v;
            return digits > 0;
        }
    }
    return 0;
}
