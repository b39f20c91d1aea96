/* checks.h - PASS/FAIL lines and their counts for C guests (lib/checks.c). */
#ifndef PYKVM_CHECKS_H
#define PYKVM_CHECKS_H

#include <stdint.h>

extern unsigned checks_passed, checks_failed;

/* Print "PASS: <name>" or "FAIL: <name>" and count it. */
void check(const char *name, int ok);
/* Print "SUMMARY: <passed> passed, <failed> failed"; return the failure count. */
unsigned checks_summary(void);
/* The CRC-32 of zlib (reflected, polynomial 0xedb88320), bit by bit. */
uint32_t crc32_bytes(const void *data, uint32_t size);
/* The hexadecimal value of "<key>0x<hex>" as a word of a command line: 1 if found, else 0. */
int cmdline_hex(const char *cmdline, const char *key, uint32_t *value);

#endif
