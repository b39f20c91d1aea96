/* pykvm_guest.h - what a freestanding C guest needs to talk to pykvm.
 *
 * Port I/O, the COM1 console (16550 at 0x3f8, polled), the debug-exit port
 * (0xf4: status = (value << 1) | 1), a small printf (lib/printf.c) and
 * GUEST_ASSERT, which reports
 *     ASSERT FAILED: <file>:<line>: <condition>
 * on the console and ends the run with debug-exit value GUEST_ASSERT_EXIT
 * (process status 255), so the host can turn it into a test failure that
 * names the line -- the idea of the Linux KVM selftests' GUEST_ASSERT.
 *
 * Built with -ffreestanding -nostdlib: only the compiler's own headers exist.
 */
#ifndef PYKVM_GUEST_H
#define PYKVM_GUEST_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define GUEST_COM1_THR        0x3f8
#define GUEST_COM1_LSR        0x3fd
#define GUEST_LSR_THRE        0x20
#define GUEST_DEBUG_EXIT_PORT 0xf4
#define GUEST_ASSERT_EXIT     0x7f

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline void outl(uint16_t port, uint32_t value)
{
    __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t value;
    __asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

/* Send one byte to COM1 once the transmitter can take it. */
static inline void serial_putc(char c)
{
    while (!(inb(GUEST_COM1_LSR) & GUEST_LSR_THRE))
        ;
    outb(GUEST_COM1_THR, (uint8_t)c);
}

static inline void serial_puts(const char *s)
{
    while (*s)
        serial_putc(*s++);
}

/* End the run: the host exits with status (code << 1) | 1. */
__attribute__((noreturn)) static inline void guest_exit(uint32_t code)
{
    outl(GUEST_DEBUG_EXIT_PORT, code);
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* lib/printf.c: %d %i %u %x %X %p %s %c %%, flags '-' and '0', a width, and
 * the 'l' length modifier (a no-op: long is 32 bits here). */
int guest_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int guest_vprintf(const char *fmt, va_list ap);
int guest_snprintf(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int guest_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* lib/string.c: gcc may emit calls to these even in freestanding code. */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);

__attribute__((noreturn)) static inline void
guest_assert_failed(const char *file, int line, const char *cond)
{
    guest_printf("ASSERT FAILED: %s:%d: %s\n", file, line, cond);
    guest_exit(GUEST_ASSERT_EXIT);
}

#define GUEST_ASSERT(cond)                                          \
    do {                                                            \
        if (!(cond))                                                \
            guest_assert_failed(__FILE__, __LINE__, #cond);         \
    } while (0)

#endif
