/* printf.c - formatted output for freestanding guests.
 *
 * One formatter writes through a sink so that the same code serves the serial
 * console (guest_printf) and memory (guest_snprintf, which lets a guest check
 * its own formatting).  Supported: %d %i %u %x %X %p %s %c %%, the '-' and '0'
 * flags, a decimal width, and 'l' (ignored: long is 32 bits).  Only 32-bit
 * arithmetic is used, so no libgcc helpers are needed.
 */
#include "pykvm_guest.h"

struct sink {
    void (*put)(struct sink *, char);
    char *buf;       /* snprintf: destination */
    size_t size;     /* snprintf: capacity including the NUL */
    size_t count;    /* characters produced (even those that did not fit) */
};

static void put_serial(struct sink *s, char c)
{
    serial_putc(c);
    s->count++;
}

static void put_buffer(struct sink *s, char c)
{
    if (s->count + 1 < s->size)
        s->buf[s->count] = c;
    s->count++;
}

static void emit_padded(struct sink *s, const char *text, size_t len,
                        int width, int left, char pad)
{
    int fill = width > (int)len ? width - (int)len : 0;
    /* Zero padding goes after a sign, as printf does it. */
    if (!left && pad == '0' && len && text[0] == '-') {
        s->put(s, '-');
        text++, len--;
    }
    if (!left)
        while (fill-- > 0)
            s->put(s, pad);
    while (len--)
        s->put(s, *text++);
    if (left)
        while (fill-- > 0)
            s->put(s, ' ');
}

/* Render an unsigned value in base 10 or 16 at the end of buf; return its start. */
static char *render(char *end, uint32_t value, unsigned base, int upper)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char *p = end;
    do {
        *--p = digits[value % base];
        value /= base;
    } while (value);
    return p;
}

static void format(struct sink *s, const char *fmt, va_list ap)
{
    char num[16];
    char *end = num + sizeof num;

    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            s->put(s, *fmt);
            continue;
        }
        fmt++;
        int left = 0;
        char pad = ' ';
        for (;; fmt++) {
            if (*fmt == '-')
                left = 1;
            else if (*fmt == '0')
                pad = '0';
            else
                break;
        }
        int width = 0;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l')
            fmt++;

        const char *text;
        char *start;
        switch (*fmt) {
        case 'd':
        case 'i': {
            int32_t v = va_arg(ap, int32_t);
            uint32_t magnitude = v < 0 ? -(uint32_t)v : (uint32_t)v;
            start = render(end, magnitude, 10, 0);
            if (v < 0)
                *--start = '-';
            emit_padded(s, start, end - start, width, left, pad);
            break;
        }
        case 'u':
            start = render(end, va_arg(ap, uint32_t), 10, 0);
            emit_padded(s, start, end - start, width, left, pad);
            break;
        case 'x':
        case 'X':
            start = render(end, va_arg(ap, uint32_t), 16, *fmt == 'X');
            emit_padded(s, start, end - start, width, left, pad);
            break;
        case 'p':
            start = render(end, (uint32_t)(uintptr_t)va_arg(ap, void *), 16, 0);
            s->put(s, '0');
            s->put(s, 'x');
            emit_padded(s, start, end - start, width, left, pad);
            break;
        case 's':
            text = va_arg(ap, const char *);
            if (!text)
                text = "(null)";
            emit_padded(s, text, strlen(text), width, left, ' ');
            break;
        case 'c':
            num[0] = (char)va_arg(ap, int);
            emit_padded(s, num, 1, width, left, ' ');
            break;
        case '%':
            s->put(s, '%');
            break;
        case '\0':
            return;
        default:              /* unknown conversion: show it verbatim */
            s->put(s, '%');
            s->put(s, *fmt);
            break;
        }
    }
}

int guest_vprintf(const char *fmt, va_list ap)
{
    struct sink s = { put_serial, NULL, 0, 0 };
    format(&s, fmt, ap);
    return (int)s.count;
}

int guest_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = guest_vprintf(fmt, ap);
    va_end(ap);
    return n;
}

int guest_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct sink s = { put_buffer, buf, size, 0 };
    format(&s, fmt, ap);
    if (size)
        buf[s.count < size ? s.count : size - 1] = '\0';
    return (int)s.count;
}

int guest_snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = guest_vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}
