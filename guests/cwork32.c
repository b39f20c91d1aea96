/* cwork32.c - a freestanding C guest doing real work, checking itself.
 *
 * Mode:   --mode protected (flat image at 0x100000; lib/crt0_32.S sets up the
 *         stack and .bss and calls main).  Compiled -O2, so it shows what
 *         compiler-generated 32-bit code asks of the emulator: memory operands
 *         everywhere, indexed addressing, IMUL/DIV, SETcc/CMOVcc, ADC for
 *         64-bit sums, recursion.
 * Does:   CRC-32 of a generated 16 KiB buffer (table-driven), quicksort of
 *         2000 pseudo-random words, a sieve of Eratosthenes below 100000,
 *         64-bit Fibonacci, and a check of its own printf formatting.  Each
 *         result is compared with a constant computed on the host (Python:
 *         zlib.crc32, sorted(), ...), printed as PASS:/FAIL:, then
 *         "SUMMARY: <n> passed, <m> failed"; main returns the failure count,
 *         which crt0 writes to the debug-exit port.
 *         Roughly 1.5 million instructions in all.
 *
 * cwork16 is this file built with -m16 -DCWORK16 for --mode real (image at
 * 0x7c00, lib/crt0_16.S): gcc's .code16gcc output, i.e. 32-bit operands and
 * addresses behind 66h/67h prefixes almost everywhere, running in real mode.
 * Code, data, .bss and stack must all fit below offset 0x10000 of segment 0
 * (about 32 KiB), so it does the same work on smaller inputs.
 *
 * pykvm-test:
 *   serial = ["SUMMARY: 10 passed, 0 failed"]
 *   [cwork32]
 *   format = "elf"
 *   mode = "protected"
 *   [cwork16]
 *   format = "flat"
 *   mode = "real"
 */
#include "pykvm_guest.h"

/* Input sizes and the results they must give.  Every expected constant was
 * computed on the host with Python from the same inputs: zlib.crc32 of the
 * generated buffer, sorted() of the same xorshift32 sequence (first, last and
 * the hash * 31 + value over the sorted list, mod 2**32), a sieve (count, sum,
 * largest prime) and fib(80) by iteration. */
#ifdef CWORK16
#define CWORK_BANNER  "cwork16: freestanding C guest, built with gcc -m16 -O2, in real mode"
#define CRC_KIB       4
#define CRC_EXPECTED  0x462c1e21u
#define SORT_COUNT    1000
#define SORT_MIN      0x002438a3u
#define SORT_MAX      0xffb53b9fu
#define SORT_HASH     0x65fcc164u
#define SIEVE_LIMIT   10000
#define SIEVE_PRIMES  1229
#define SIEVE_SUM     5736396u
#define SIEVE_LARGEST 9973
#else
#define CWORK_BANNER  "cwork32: freestanding C guest, built with gcc -m32 -O2"
#define CRC_KIB       16
#define CRC_EXPECTED  0xa219c94fu
#define SORT_COUNT    2000
#define SORT_MIN      0x0011fe1du
#define SORT_MAX      0xffef5165u
#define SORT_HASH     0xa3be5e47u
#define SIEVE_LIMIT   100000
#define SIEVE_PRIMES  9592
#define SIEVE_SUM     454396537u
#define SIEVE_LARGEST 99991
#endif
#define FIB80         23416728348467685ull

#define STR_(x) #x
#define STR(x) STR_(x)      /* a size as text, for the check names */

static int passed, failed;

static void check(int ok, const char *name)
{
    guest_printf("%s: %s\n", ok ? "PASS" : "FAIL", name);
    if (ok)
        passed++;
    else
        failed++;
}

/* ---- CRC-32 (IEEE 802.3, reflected, as zlib computes it) ---- */
#define CRC_BYTES (CRC_KIB * 1024)

static uint32_t crc_table[256];
static uint8_t crc_buffer[CRC_BYTES];

static void crc32_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--)
        c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* ---- quicksort ---- */
static uint32_t values[SORT_COUNT];

static void quicksort(uint32_t *a, int lo, int hi)
{
    while (lo < hi) {
        uint32_t pivot = a[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot)
                i++;
            while (a[j] > pivot)
                j--;
            if (i <= j) {
                uint32_t t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++, j--;
            }
        }
        /* Recurse into the smaller part, loop on the larger: bounded stack. */
        if (j - lo < hi - i) {
            quicksort(a, lo, j);
            lo = i;
        } else {
            quicksort(a, i, hi);
            hi = j;
        }
    }
}

/* ---- sieve ---- */
static uint8_t composite[SIEVE_LIMIT];

int main(void)
{
    char text[64];

    guest_printf(CWORK_BANNER "\n");

    crc32_init();
    for (uint32_t i = 0; i < CRC_BYTES; i++)
        crc_buffer[i] = (uint8_t)(i * 7 + (i >> 8));
    uint32_t crc = crc32(crc_buffer, CRC_BYTES);
    guest_printf("info: crc32 = 0x%08x\n", crc);
    check(crc32((const uint8_t *)"123456789", 9) == 0xCBF43926u, "crc32 check value of \"123456789\"");
    check(crc == CRC_EXPECTED, "crc32 of the generated " STR(CRC_KIB) " KiB buffer");

    uint32_t x = 2463534242u;                   /* xorshift32 */
    for (int i = 0; i < SORT_COUNT; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        values[i] = x;
    }
    quicksort(values, 0, SORT_COUNT - 1);
    int ordered = 1;
    uint32_t hash = 0;
    for (int i = 0; i < SORT_COUNT; i++) {
        if (i && values[i - 1] > values[i])
            ordered = 0;
        hash = hash * 31 + values[i];
    }
    check(ordered, "quicksort leaves " STR(SORT_COUNT) " values in order");
    check(values[0] == SORT_MIN && values[SORT_COUNT - 1] == SORT_MAX,
          "quicksort: smallest and largest");
    check(hash == SORT_HASH, "quicksort: hash of the sorted values");

    uint32_t primes = 0, sum = 0, largest = 0;
    for (uint32_t i = 2; i < SIEVE_LIMIT; i++) {
        if (composite[i])
            continue;
        primes++;
        sum += i;
        largest = i;
        for (uint32_t m = i * i; i < 65536 && m < SIEVE_LIMIT; m += i)
            composite[m] = 1;
    }
    guest_printf("info: %u primes below %u, the largest %u\n", primes, SIEVE_LIMIT, largest);
    check(primes == SIEVE_PRIMES, "sieve: " STR(SIEVE_PRIMES) " primes below " STR(SIEVE_LIMIT));
    check(sum == SIEVE_SUM && largest == SIEVE_LARGEST, "sieve: their sum and the largest");

    uint64_t a = 0, b = 1;
    for (int i = 0; i < 80; i++) {
        uint64_t t = a + b;
        a = b;
        b = t;
    }
    check(a == FIB80, "64-bit arithmetic: fib(80)");

    int n = guest_snprintf(text, sizeof text, "%d|%u|%x|%08X|%-4s|%c|%%|%5d|%05d",
                           -42, 42u, 0xbeefu, 0xbeefu, "ab", 'z', 7, -7);
    check(n == 41 && strcmp(text, "-42|42|beef|0000BEEF|ab  |z|%|    7|-0007") == 0,
          "printf formatting");
    n = guest_snprintf(text, 4, "%s", "truncated");
    check(n == 9 && strcmp(text, "tru") == 0, "snprintf truncates and counts");

    guest_printf("SUMMARY: %d passed, %d failed\n", passed, failed);
    return failed;
}
