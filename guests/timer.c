/* timer.c - the PC platform's interrupts and timers, checked from inside a guest.
 *
 * One source, three guests, one per place pykvm runs guest code:
 *
 *   timer16  -DTIMER16, gcc -m16, --mode real:      the userspace emulator, IVT,
 *            the PICs used as the firmware (or pykvm) left them: IRQ 0-7 at
 *            vectors 0x08-0x0f, IRQ 8-15 at 0x70-0x77.  Needs no --testdev.
 *   timer32  -DTIMER32, gcc -m32, --mode protected: the userspace emulator,
 *            an IDT of 32-bit interrupt gates, the PICs remapped to 0x20/0x28.
 *            Needs --testdev.
 *   timer64  -DTIMER64, gcc -m64, --mode long:      PVM mode under KVM_RUN,
 *            interrupts injected with KVM_INTERRUPT; an IDT of 64-bit gates on
 *            the loader's code selector, the PICs remapped to 0x20/0x28.
 *            Needs --testdev.
 *
 * Each counts 200 ticks of the PIT at 100 Hz in "sti; hlt" (2 s of host time:
 * the host measures it between the "info: counting" line and the PASS line) and
 * checks the STI shadow; the other checks are spread over the three (see
 * guests/README.md).  Requests that must be deterministic come from the
 * pc-testdev IRQ lines (a byte to port 0x2000 + n sets ISA IRQ n's level).
 *
 * The main code runs with interrupts off, except in sti_hlt_cli() and
 * interrupt_window(); the handlers (lib/irq.c) count and log what they get.
 * Nothing depends on how the firmware left the PIC masks, the ELCR or the
 * PIT: under QEMU, SeaBIOS leaves lines masked and its own PIT tick running,
 * pykvm leaves every line unmasked and the PIT idle.
 *
 * pykvm-test:
 *   group = "timers"            # they count host time: with --dist loadgroup, one worker
 *   [timer16]
 *   format = "flat"
 *   mode = "real"
 *   serial = ["SUMMARY: 11 passed, 0 failed"]
 *   [timer32]
 *   format = "elf"
 *   mode = "protected"
 *   serial = ["SUMMARY: 22 passed, 0 failed"]
 *   [timer64]
 *   format = "elf"
 *   mode = "long"
 *   serial = ["SUMMARY: 15 passed, 0 failed"]
 */
#include "pc_platform.h"

#if defined(TIMER16)
#define NAME "timer16"
#define WHERE "real mode, IVT, PICs at the BIOS vector bases"
#elif defined(TIMER32)
#define NAME "timer32"
#define WHERE "32-bit protected mode, IDT, PICs remapped to 0x20/0x28"
#elif defined(TIMER64)
#define NAME "timer64"
#define WHERE "64-bit long mode, IDT, PICs remapped to 0x20/0x28"
#else
#error "build with -DTIMER16, -DTIMER32 or -DTIMER64"
#endif

#define TICK_HZ      100
#define TICKS        200
#define TIMER_IRQ    0
#define RTC_IRQ      8
#define SPIN_LIMIT   2000000u       /* polls before a wait for a device gives up */
#define BIT(irq)     ((uint16_t)(1u << (irq)))

static unsigned passed, failed;

/* PASS/FAIL line; on failure the details in parentheses. */
static int check(int ok, const char *name, const char *fmt, ...)
{
    guest_printf("%s: %s", ok ? "PASS" : "FAIL", name);
    if (!ok && fmt) {
        va_list ap;
        va_start(ap, fmt);
        guest_printf(" (");
        guest_vprintf(fmt, ap);
        guest_printf(")");
        va_end(ap);
    }
    guest_printf("\n");
    if (ok)
        passed++;
    else
        failed++;
    return ok;
}

/* -- the tick (platform_init programs it, wait_ticks sleeps through it: lib/irq.c) --------- */

/* Every HLT wake-up must be one tick: a VMM that resumed a halted vCPU without an
 * interrupt would show more wake-ups than ticks. */
static void check_ticks(void)
{
    wait_ticks(1);                                  /* start on a tick */
    guest_printf("info: counting %u PIT ticks at %u Hz in sti; hlt\n", TICKS, TICK_HZ);
    unsigned wakeups = wait_ticks(TICKS);
    check(wakeups == TICKS, "200 PIT ticks at 100 Hz, each waking HLT once", "%u wake-ups", wakeups);
}

#ifndef TIMER32             /* timer16 and timer64 wait for PIT ticks in IRR */
/* Poll IRR (interrupts off) until ``irq`` is requested; 0 if it never is. */
static int wait_irr(unsigned irq)
{
    for (unsigned i = 0; i < SPIN_LIMIT; i++)
        if (pic_irr() & BIT(irq))
            return 1;
    return 0;
}
#endif

/* -- the STI shadow ----------------------------------------------------------------- */

/* Execute "sti; nop; 1: ..." and return the address of 1: an interrupt pending
 * with IF = 0 must be taken exactly there: after the one instruction the shadow
 * of STI lets run, not before it and not later. */
static uintptr_t sti_shadow_probe(void)
{
    uintptr_t after_shadow;
    __asm__ volatile("mov $1f, %0\n\t"
                     "sti\n\t"
                     "nop\n"
                     "1:\tnop\n\t"
                     "nop\n\t"
                     "cli"
                     : "=r"(after_shadow) : : "memory");
    return after_shadow;
}

/* ``irq`` was made pending with interrupts off; it must be taken one instruction after STI. */
static void check_sti_shadow(unsigned irq, const char *name)
{
    unsigned before = irq_count[irq];
    int pending = (pic_irr() & BIT(irq)) != 0;
    uintptr_t want = sti_shadow_probe();
    check(pending && irq_count[irq] == before + 1 && irq_ip[irq] == want, name,
          "pending %d, delivered %u times, at 0x%x, want 0x%x",
          pending, irq_count[irq] - before, (unsigned)irq_ip[irq], (unsigned)want);
}

#ifndef TIMER32
static void check_sti_shadow_tick(void)
{
    /* One tick, from a one-shot: a periodic one could tick again while the first is handled
     * (a VMM that compiles code, or a busy host, may well take 10 ms there), and count twice. */
    pic_set_mask(~BIT(TIMER_IRQ));
    pit_program(0, 0, 0);                           /* OUT low for 55 ms: no edges */
    interrupt_window();                             /* no tick left over */
    pit_program(0, 0, pit_hz_count(TICK_HZ));       /* one edge, 10 ms from now */
    if (!wait_irr(TIMER_IRQ))                       /* held off by IF = 0 */
        guest_printf("info: no PIT tick showed up in IRR\n");
    check_sti_shadow(TIMER_IRQ,
                     "STI shadow: a PIT tick pending with IF = 0 is taken after the instruction following STI");
    pit_program(0, 2, pit_hz_count(TICK_HZ));       /* the 100 Hz tick again */
}
#endif

#ifndef TIMER16
/* -- pc-testdev requests ------------------------------------------------------------ */

static void pulse(unsigned irq)
{
    outb(TESTDEV_IRQ(irq), 1);
    outb(TESTDEV_IRQ(irq), 0);
}

static int testdev_present(void)
{
    outl(TESTDEV_SCRATCH, 0x1234abcd);
    return inl(TESTDEV_SCRATCH) == 0x1234abcd;
}

static void check_sti_shadow_testdev(void)
{
    pic_set_mask(~BIT(3));
    pulse(3);
    check_sti_shadow(3, "STI shadow: a testdev IRQ pending with IF = 0 is taken after the instruction following STI");
}

/* With IF = 1, when is an IRQ raised by an OUT taken?  Not a check: the latency is the
 * platform's (pykvm takes it at the next instruction boundary, in the emulator and
 * under KVM; QEMU's TCG at the end of its translation block, here after the CLI). */
static void report_out_latency(void)
{
    uintptr_t after_out;
    unsigned before = irq_count[3];
    pic_set_mask(~BIT(3));
    __asm__ volatile("mov $1f, %0\n\t"
                     "sti\n\t"
                     "nop\n\t"
                     "outb %%al, %%dx\n"
                     "1:\tnop\n\t"
                     "nop\n\t"
                     "cli"
                     : "=&r"(after_out) : "a"(1), "d"(TESTDEV_IRQ(3)) : "memory");
    outb(TESTDEV_IRQ(3), 0);
    int at_once = irq_count[3] == before + 1 && irq_ip[3] == after_out;
    interrupt_window();
    guest_printf("info: an IRQ raised by OUT with IF = 1 is taken %s\n",
                 at_once ? "right after the OUT" : "later");
}

/* IMR holds a request back: IRR shows it (OCW3), nothing is delivered; unmasking
 * delivers it once, however many edges came while it was masked. */
static void check_masked_testdev(void)
{
    const unsigned irq = 6;
    unsigned before = irq_count[irq];
    pic_set_mask(~BIT(TIMER_IRQ));
    pulse(irq);
    pulse(irq);
    int in_irr = (pic_irr() & BIT(irq)) != 0;
    interrupt_window();
    interrupt_window();
    unsigned while_masked = irq_count[irq] - before;
    pic_set_mask(~(BIT(TIMER_IRQ) | BIT(irq)));
    interrupt_window();
    interrupt_window();
    unsigned after = irq_count[irq] - before;
    check(in_irr, "a masked IRQ's request shows in IRR (OCW3)", NULL);
    check(while_masked == 0, "a masked IRQ is not delivered", "delivered %u times", while_masked);
    check(after == 1 && !(pic_irr() & BIT(irq)), "unmasking delivers it once (two edges while masked)",
          "delivered %u times", after);
}

static int order_is(const uint8_t *want, unsigned n)
{
    if (irq_order_len != n)
        return 0;
    for (unsigned i = 0; i < n; i++)
        if (irq_order[i] != want[i])
            return 0;
    return 1;
}

/* The delivery order as text, for failure details. */
static const char *order_text(void)
{
    static char text[3 * IRQ_ORDER_MAX + 1];
    text[0] = 0;
    for (unsigned i = 0, at = 0; i < irq_order_len; i++)
        at += guest_snprintf(text + at, sizeof text - at, "%s%u", i ? "," : "", irq_order[i]);
    return text;
}

/* Priorities and EOI ordering with the handlers leaving the EOI to this code. */
static void check_priorities(void)
{
    static const uint8_t first[] = {3}, both[] = {3, 5}, nested[] = {5, 3}, slave[] = {10}, cascade[] = {10, 4};

    manual_eoi = BIT(3) | BIT(4) | BIT(5) | BIT(10);
    pic_set_mask(~(BIT(3) | BIT(4) | BIT(5) | BIT(10)));     /* ticks wait: they would interleave */

    irq_log_clear();
    pulse(5);
    pulse(3);
    uint16_t irr = pic_irr();
    interrupt_window();
    uint16_t isr = pic_isr();
    check((irr & (BIT(3) | BIT(5))) == (BIT(3) | BIT(5)) && order_is(first, 1) && isr == BIT(3),
          "two requests: IRQ 3 before IRQ 5; IRQ 5 waits while 3 is in service",
          "IRR 0x%x, order %s, ISR 0x%x", irr, order_text(), isr);
    pic_eoi(3);
    interrupt_window();
    check(order_is(both, 2), "the EOI of IRQ 3 lets IRQ 5 in", "order %s", order_text());
    pic_eoi(5);

    irq_log_clear();
    pulse(5);
    interrupt_window();
    pulse(3);
    interrupt_window();
    check(order_is(nested, 2), "IRQ 3 interrupts while IRQ 5 is in service (nesting)", "order %s", order_text());
    pic_eoi(3);
    isr = pic_isr();
    pic_eoi(5);
    check(isr == BIT(5) && pic_isr() == 0, "non-specific EOIs end IRQ 3, then IRQ 5",
          "ISR after one EOI 0x%x", isr);

    irq_log_clear();
    pulse(4);
    pulse(10);
    interrupt_window();
    check(order_is(slave, 1), "slave IRQ 10 (on master IR2) before master IRQ 4", "order %s", order_text());
    outb(PIC_SLAVE, PIC_EOI);
    interrupt_window();
    check(order_is(slave, 1), "IRQ 4 waits after the slave's EOI while IR2 is in service",
          "order %s", order_text());
    outb(PIC_MASTER, PIC_EOI);
    interrupt_window();
    check(order_is(cascade, 2), "the master's EOI of IR2 lets IRQ 4 in", "order %s", order_text());
    pic_eoi(4);

    manual_eoi = 0;
    check(pic_isr() == 0, "nothing left in service", "ISR 0x%x", pic_isr());
    pic_set_mask(~BIT(TIMER_IRQ));
}
#endif

#ifdef TIMER16
/* -- PIT mode 0 on IRQ 0, masked ------------------------------------------------------ */

/* Channel 0 in mode 0 raises IRQ 0 once, at terminal count; masked, the request
 * stays in IRR and is delivered once when the line is unmasked. */
static void check_pit_one_shot_masked(void)
{
    pic_set_mask(~BIT(TIMER_IRQ));
    pit_program(0, 0, 0);                       /* OUT low for 55 ms: no more edges */
    interrupt_window();                         /* take a tick that was already pending */
    pic_set_mask(0xffff);
    unsigned before = irq_count[TIMER_IRQ];
    /* 20 ms: the read-back must come before terminal count even when the host stalls the vCPU
     * (a loaded host, e.g. pytest -n 2 beside other work, took more than 1 ms here). */
    pit_program(0, 0, pit_hz_count(50));
    uint8_t status = pit_status(0);
    int fired = wait_irr(TIMER_IRQ);
    uint8_t status_after = pit_status(0);
    interrupt_window();
    interrupt_window();
    unsigned while_masked = irq_count[TIMER_IRQ] - before;
    pic_set_mask(~BIT(TIMER_IRQ));
    interrupt_window();
    interrupt_window();
    unsigned after = irq_count[TIMER_IRQ] - before;

    check((status & 0xbf) == (PIT_LSB_MSB | PIT_MODE(0)), "PIT read-back: channel 0 in mode 0, LSB/MSB, OUT low",
          "status 0x%x", status);
    check(fired && (status_after & PIT_STATUS_OUT), "PIT mode 0: OUT rises at terminal count, requesting IRQ 0",
          "IRR %d, status 0x%x", fired, status_after);
    check(while_masked == 0, "masked IRQ 0 stays pending, not delivered", "delivered %u times", while_masked);
    check(after == 1, "unmasking IRQ 0 delivers the one-shot's tick once", "delivered %u times", after);
    pit_program(0, 2, pit_hz_count(TICK_HZ));       /* the 100 Hz tick again */
}

/* -- RTC ----------------------------------------------------------------------------- */

struct rtc_time {
    uint8_t sec, min, hour, day, month, year, century;
};

static void rtc_read(struct rtc_time *t)
{
    t->sec = cmos_read(RTC_SECONDS);
    t->min = cmos_read(RTC_MINUTES);
    t->hour = cmos_read(RTC_HOURS);
    t->day = cmos_read(RTC_DAY);
    t->month = cmos_read(RTC_MONTH);
    t->year = cmos_read(RTC_YEAR);
    t->century = cmos_read(RTC_CENTURY);
}

static void rtc_write(const struct rtc_time *t)
{
    cmos_write(RTC_SECONDS, t->sec);
    cmos_write(RTC_MINUTES, t->min);
    cmos_write(RTC_HOURS, t->hour);
    cmos_write(RTC_DAY, t->day);
    cmos_write(RTC_MONTH, t->month);
    cmos_write(RTC_YEAR, t->year);
    cmos_write(RTC_CENTURY, t->century);
}

static int rtc_equal(const struct rtc_time *a, const struct rtc_time *b)
{
    return memcmp(a, b, sizeof *a) == 0;
}

static uint8_t from_bcd(uint8_t v) { return (v >> 4) * 10 + (v & 15); }
static uint8_t to_bcd(uint8_t v) { return (v / 10) << 4 | v % 10; }
static int bcd_ok(uint8_t v, uint8_t lo, uint8_t hi)
{
    return (v >> 4) < 10 && (v & 15) < 10 && from_bcd(v) >= lo && from_bcd(v) <= hi;
}

static void rtc_convert(struct rtc_time *t, uint8_t (*f)(uint8_t))
{
    uint8_t *p = (uint8_t *)t;                          /* seven bytes, no padding */
    for (unsigned i = 0; i < sizeof *t; i++)
        p[i] = f(p[i]);
}

static unsigned seconds_of_day(const struct rtc_time *t)
{
    return (t->hour * 60u + t->min) * 60u + t->sec;
}

/* Wait (ticks running) for UIP to rise and then fall: an update just happened and
 * the next is a second away.  0 if none was seen within 10 s: UIP is high for only
 * 244 us before each update, and a loaded host can deschedule the vCPU across a
 * few of them. */
static int rtc_wait_update(void)
{
    unsigned start = irq_count[TIMER_IRQ];
    for (int want_uip = 1; want_uip >= 0; want_uip--) {
        while (((cmos_read(RTC_REG_A) & RTC_A_UIP) != 0) != want_uip) {
            if (irq_count[TIMER_IRQ] - start > 1000)
                return 0;
            interrupt_window();
        }
    }
    return 1;
}

/* UIP, a consistent BCD time, then binary mode: on a real MC146818 the DM bit
 * does not convert the bytes, so the time is written again in binary under SET
 * (the IBM century byte too: QEMU takes the year from it).
 * The 200-tick count runs in between (``count``), and the binary clock must have
 * advanced across it. */
static void check_rtc(void (*count)(void))
{
    struct rtc_time a, b;
    cmos_write(RTC_REG_B, RTC_B_24H);                   /* BCD, 24 h, no interrupts */
    int synced = rtc_wait_update();
    rtc_read(&a);
    rtc_read(&b);
    int stable = rtc_equal(&a, &b) && !(cmos_read(RTC_REG_A) & RTC_A_UIP);
    check(synced, "RTC register A: UIP rises before an update and falls after it", NULL);
    check(stable, "RTC: the time read after UIP falls is consistent", NULL);
    check(bcd_ok(a.sec, 0, 59) && bcd_ok(a.min, 0, 59) && bcd_ok(a.hour, 0, 23) && bcd_ok(a.day, 1, 31) &&
          bcd_ok(a.month, 1, 12) && bcd_ok(a.year, 0, 99) && bcd_ok(a.century, 19, 20),
          "RTC: BCD time and date (register B DM = 0)",
          "%x:%x:%x %x.%x.%x", a.hour, a.min, a.sec, a.day, a.month, a.year);
    guest_printf("info: RTC time %02x%02x-%02x-%02x %02x:%02x:%02x\n", a.century, a.year, a.month, a.day, a.hour,
                 a.min, a.sec);

    rtc_convert(&a, from_bcd);
    cmos_write(RTC_REG_B, RTC_B_SET | RTC_B_24H | RTC_B_BINARY);   /* stop, load in binary */
    rtc_write(&a);
    cmos_write(RTC_REG_B, RTC_B_24H | RTC_B_BINARY);
    count();
    rtc_read(&b);
    unsigned elapsed = (seconds_of_day(&b) + 86400 - seconds_of_day(&a)) % 86400;
    /* At least 1 s; at most a minute (not a timing bound: only a stalled host takes
     * that long for 200 ticks; more means the clock was not set in binary). */
    check(b.sec < 60 && b.min < 60 && b.hour < 24 && elapsed >= 1 && elapsed <= 60,
          "RTC in binary mode (B DM = 1, set under SET) advances across the 2 s of ticks",
          "%u:%u:%u -> %u:%u:%u", a.hour, a.min, a.sec, b.hour, b.min, b.sec);
    guest_printf("info: the RTC advanced %u s across %u ticks (%u:%u:%u to %u:%u:%u)\n", elapsed, TICKS,
                 a.hour, a.min, a.sec, b.hour, b.min, b.sec);

    rtc_convert(&b, to_bcd);                            /* back to BCD, as firmware keeps it */
    cmos_write(RTC_REG_B, RTC_B_SET | RTC_B_24H);
    rtc_write(&b);
    cmos_write(RTC_REG_B, RTC_B_24H);
}

/* Periodic interrupts on IRQ 8: the slave's vector 0x70, register C read by the handler. */
static void check_rtc_periodic(void)
{
    unsigned before = irq_count[RTC_IRQ];
    rtc_flags_seen = 0;
    cmos_write(RTC_REG_A, 0x2a);                        /* 32.768 kHz base, 64 Hz */
    cmos_read(RTC_REG_C);
    cmos_write(RTC_REG_B, RTC_B_24H | RTC_B_PIE);
    pic_set_mask(~(BIT(TIMER_IRQ) | BIT(RTC_IRQ)));
    wait_ticks(25);
    cmos_write(RTC_REG_B, RTC_B_24H);
    pic_set_mask(~BIT(TIMER_IRQ));
    cmos_read(RTC_REG_C);
    cmos_write(RTC_REG_A, 0x26);
    unsigned n = irq_count[RTC_IRQ] - before;
    guest_printf("info: %u RTC periodic interrupts at 64 Hz in 250 ms\n", n);
    check(n >= 4 && (rtc_flags_seen & (RTC_C_IRQF | RTC_C_PF)) == (RTC_C_IRQF | RTC_C_PF),
          "RTC periodic interrupts on IRQ 8 (vector 0x70), register C shows IRQF and PF",
          "%u interrupts, C 0x%x", n, rtc_flags_seen);
}
#endif

#ifdef TIMER32
/* -- PIT modes, latches and read-back, port 0x61 --------------------------------------- */

static int wait_port61_out2(void)
{
    for (unsigned i = 0; i < SPIN_LIMIT; i++)
        if (inb(PORT61) & PORT61_OUT2)
            return 1;
    return 0;
}

static void check_pit(void)
{
    unsigned tick_count = pit_hz_count(TICK_HZ), a = 0, b = 0;
    uint8_t status = pit_status(0);
    check((status & 0x3f) == (PIT_LSB_MSB | PIT_MODE(2)), "PIT read-back status: channel 0 in mode 2, LSB/MSB, binary",
          "status 0x%x", status);
    int decreasing = 0;
    for (int i = 0; i < 3 && !decreasing; i++) {       /* again if it reloaded in between */
        a = pit_latch(0);
        b = pit_latch(0);
        decreasing = b < a && a <= tick_count;
    }
    check(decreasing, "PIT counter latch: channel 0's count decreases", "%u then %u", a, b);

    /* Channel 2, gate high through port 0x61 (speaker off), mode 0. */
    outb(PORT61, (inb(PORT61) & ~PORT61_SPEAKER) | PORT61_GATE2);
    pit_program(2, 0, 0x2000);                          /* about 6.9 ms */
    status = pit_status(2);
    uint8_t port61 = inb(PORT61);
    check((status & 0xbf) == (PIT_LSB_MSB | PIT_MODE(0)) && !(port61 & PORT61_OUT2) && (port61 & PORT61_GATE2),
          "PIT channel 2 in mode 0: read-back shows the mode, OUT low; port 0x61 shows OUT low, gate high",
          "status 0x%x, port 0x61 0x%x", status, port61);
    int high = wait_port61_out2();
    outb(PIT_CONTROL, PIT_READ_BACK | PIT_RB_CHANNEL(2));       /* status and count together */
    status = inb(PIT_CHANNEL(2));
    unsigned count = inb(PIT_CHANNEL(2));
    count |= inb(PIT_CHANNEL(2)) << 8;
    check(high && (status & (PIT_STATUS_OUT | PIT_STATUS_NULL | 0x3f)) == (PIT_STATUS_OUT | PIT_LSB_MSB | PIT_MODE(0)),
          "PIT channel 2 mode 0: OUT rises at terminal count (port 0x61 bit 5, read-back status)",
          "port 0x61 bit 5 %d, status 0x%x", high, status);
    guest_printf("info: channel 2 count after terminal count: 0x%x\n", count);

    /* Mode 2: a rising gate edge reloads the count. */
    pit_program(2, 2, 0xffff);
    for (unsigned i = 0; i < SPIN_LIMIT && (a = pit_latch(2)) > 0x8000; i++)
        ;
    outb(PORT61, inb(PORT61) & ~PORT61_GATE2);
    outb(PORT61, inb(PORT61) | PORT61_GATE2);
    b = pit_latch(2);
    check(a <= 0x8000 && b > 0xc000, "PIT channel 2 mode 2: a rising gate edge (port 0x61 bit 0) reloads the count",
          "0x%x before, 0x%x after", a, b);
    outb(PORT61, inb(PORT61) & ~PORT61_GATE2);
}

/* -- CMOS memory size ---------------------------------------------------------------- */

static void check_cmos_memory(void)
{
    unsigned base = cmos_read16(CMOS_BASE_KIB), ext = cmos_read16(CMOS_EXT_KIB);
    unsigned ext2 = cmos_read16(CMOS_EXT_KIB2), above16 = cmos_read16(CMOS_ABOVE_16M);
    uint32_t kib = above16 ? 16384 + above16 * 64 : 1024 + ext2;
    guest_printf("info: CMOS memory size: %u KiB (base %u KiB, extended %u KiB, above 16 MiB %u x 64 KiB)\n",
                 kib, base, ext2, above16);
    check(base == 640, "CMOS base memory: 640 KiB", "%u", base);
    check(ext == ext2 && (ext2 == 0xffff ? kib >= 1024 + 0xffff : kib == 1024 + ext2),
          "CMOS extended memory bytes agree (0x17, 0x30, 0x34)", "0x%x, 0x%x, 0x%x", ext, ext2, above16);
    volatile uint32_t *last = (volatile uint32_t *)(uintptr_t)(kib * 1024 - 4);
    volatile uint32_t *beyond = (volatile uint32_t *)(uintptr_t)(kib * 1024);
    *last = 0x5aa5c33c;
    *beyond = 0x5aa5c33c;
    check(*last == 0x5aa5c33c && *beyond != 0x5aa5c33c, "RAM ends where the CMOS says", NULL);
}
#endif

int main(void)
{
    guest_printf(NAME ": interrupts and timers of the PC platform, " WHERE "\n");
#ifdef TIMER16
    platform_init(BIOS_MASTER_BASE, BIOS_SLAVE_BASE, TICK_HZ);
    check_rtc(check_ticks);
    check_sti_shadow_tick();
    check_pit_one_shot_masked();
    check_rtc_periodic();
#else
    platform_init(0x20, 0x28, TICK_HZ);
    check_ticks();
#ifdef TIMER64
    check_sti_shadow_tick();
#endif
    if (check(testdev_present(), "pc-testdev present (pykvm run --testdev)", NULL)) {
        check_sti_shadow_testdev();
        report_out_latency();
        check_masked_testdev();
        check_priorities();
    }
#endif
#ifdef TIMER32
    check_pit();
    check_cmos_memory();
#endif

    pic_set_mask(0xffff);
    guest_printf("info: %u spurious interrupts\n", irq_spurious);
    guest_printf("SUMMARY: %u passed, %u failed\n", passed, failed);
    return failed;
}
