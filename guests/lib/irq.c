/* irq.c - interrupt dispatch and the PIC/PIT/CMOS drivers of the timer and idle guests.
 *
 * platform_init() installs the vectors, sets up the PICs and starts the PIT tick;
 * wait_ticks() sleeps in "sti; hlt" through a number of ticks.
 *
 * on_vector() is called by the vector stubs (lib/vectors{16,32,64}.S) with the
 * vector number and the interrupted code's return address, with interrupts
 * off.  Vectors of the two PICs become ISA IRQs: counted, their return address
 * and order recorded, and, unless the IRQ is in manual_eoi, ended with an EOI
 * (slave then master for IRQ 8-15).  IRQ 8's handler reads RTC register C,
 * which releases the RTC's interrupt line.  A spurious IRQ 7/15 (no ISR bit)
 * is counted and not EOIed on its own chip.  Any other vector is a CPU
 * exception nobody expected: the guest reports it and exits with 0x7e.
 *
 * The main code touches the CMOS index port only with interrupts off, so the
 * IRQ 8 handler never changes the index under it.
 */
#include "pc_platform.h"

#define UNEXPECTED_VECTOR_EXIT 0x7e

volatile unsigned irq_count[16];
volatile uintptr_t irq_ip[16];
volatile uint8_t irq_order[IRQ_ORDER_MAX];
volatile unsigned irq_order_len;
volatile unsigned irq_spurious;
volatile uint8_t rtc_flags_seen;
unsigned manual_eoi;

static uint8_t master_base = BIOS_MASTER_BASE, slave_base = BIOS_SLAVE_BASE;

static int vector_to_irq(unsigned vector)
{
    if (vector - master_base < 8)
        return vector - master_base;
    if (vector - slave_base < 8)
        return 8 + vector - slave_base;
    return -1;
}

void on_vector(uintptr_t vector, uintptr_t ip)
{
    int irq = vector_to_irq(vector & 0xff);     /* the stubs push the vector sign-extended */

    if (irq < 0 || irq == PIC_CASCADE_IRQ) {
        guest_printf("FAIL: unexpected vector 0x%x at 0x%x\n", (unsigned)(vector & 0xff), (unsigned)ip);
        guest_exit(UNEXPECTED_VECTOR_EXIT);
    }
    if ((irq & 7) == 7 && !(pic_isr() & (1u << irq))) {
        irq_spurious++;
        if (irq == 15)                          /* the master did acknowledge its cascade line */
            outb(PIC_MASTER, PIC_EOI);
        return;
    }
    irq_count[irq]++;
    irq_ip[irq] = ip;
    if (irq_order_len < IRQ_ORDER_MAX)
        irq_order[irq_order_len++] = (uint8_t)irq;
    if (irq == 8)
        rtc_flags_seen |= cmos_read(RTC_REG_C);
    if (!(manual_eoi & (1u << irq)))
        pic_eoi(irq);
}

void irq_log_clear(void)
{
    irq_order_len = 0;
}

/* Vectors installed, the PICs at the given vector bases (the BIOS bases: left as the
 * firmware, or pykvm, programmed them; others: initialised), PIT channel 0 at ``hz``
 * (mode 2), only IRQ 0 open, requests left from before taken and forgotten. */
void platform_init(uint8_t master, uint8_t slave, unsigned hz)
{
    vectors_install();
    if (master == BIOS_MASTER_BASE && slave == BIOS_SLAVE_BASE) {
        master_base = master;                   /* the chips stay as they are */
        slave_base = slave;
        pic_set_mask(0xffff);
    } else {
        pic_init(master, slave);
    }
    pit_program(0, 2, pit_hz_count(hz));
    pic_set_mask((uint16_t)~1u);
    interrupt_window();
    for (unsigned i = 0; i < 16; i++)
        irq_count[i] = 0;
    irq_log_clear();
}

/* Sleep in "sti; hlt" until n more ticks (IRQ 0) came; return how many times HLT woke up. */
unsigned wait_ticks(unsigned n)
{
    unsigned end = irq_count[0] + n, wakeups = 0;
    while ((int)(end - irq_count[0]) > 0) {
        sti_hlt_cli();
        wakeups++;
    }
    return wakeups;
}

/* -- 8259A pair -------------------------------------------------------------------- */

/* Full initialisation: ICW1 (edge, cascade, ICW4), the vector bases, the slave on
 * IR2, 8086 mode; every line masked, every line edge-triggered (a BIOS may have
 * made PCI lines level-triggered in the ELCR). */
void pic_init(uint8_t master, uint8_t slave)
{
    outb(PIC_MASTER, 0x11);
    outb(PIC_MASTER + 1, master);
    outb(PIC_MASTER + 1, 1 << PIC_CASCADE_IRQ);
    outb(PIC_MASTER + 1, 0x01);
    outb(PIC_SLAVE, 0x11);
    outb(PIC_SLAVE + 1, slave);
    outb(PIC_SLAVE + 1, PIC_CASCADE_IRQ);
    outb(PIC_SLAVE + 1, 0x01);
    outb(PIC_ELCR, 0);
    outb(PIC_ELCR + 1, 0);
    master_base = master;
    slave_base = slave;
    pic_set_mask(0xffff);
}

/* Mask bit n masks IRQ n; the cascade line follows whether any slave line is open. */
void pic_set_mask(uint16_t masked)
{
    if ((masked & 0xff00) != 0xff00)
        masked &= ~(1u << PIC_CASCADE_IRQ);
    else
        masked |= 1u << PIC_CASCADE_IRQ;
    outb(PIC_MASTER + 1, masked & 0xff);
    outb(PIC_SLAVE + 1, masked >> 8);
}

static uint16_t pic_read_pair(uint8_t ocw3)
{
    outb(PIC_MASTER, ocw3);
    outb(PIC_SLAVE, ocw3);
    uint16_t value = inb(PIC_MASTER) | inb(PIC_SLAVE) << 8;
    outb(PIC_MASTER, PIC_READ_IRR);
    outb(PIC_SLAVE, PIC_READ_IRR);
    return value;
}

uint16_t pic_irr(void) { return pic_read_pair(PIC_READ_IRR); }
uint16_t pic_isr(void) { return pic_read_pair(PIC_READ_ISR); }

void pic_eoi(unsigned irq)
{
    if (irq >= 8)
        outb(PIC_SLAVE, PIC_EOI);
    outb(PIC_MASTER, PIC_EOI);
}

/* -- CMOS --------------------------------------------------------------------------- */

uint8_t cmos_read(uint8_t index)
{
    outb(CMOS_INDEX, index);
    return inb(CMOS_DATA);
}

void cmos_write(uint8_t index, uint8_t value)
{
    outb(CMOS_INDEX, index);
    outb(CMOS_DATA, value);
}

unsigned cmos_read16(uint8_t index)
{
    return cmos_read(index) | cmos_read(index + 1) << 8;
}

/* -- 8254 PIT ----------------------------------------------------------------------- */

/* Channel, mode, LSB/MSB access, binary; a count of 0 means 65536. */
void pit_program(unsigned channel, unsigned mode, unsigned count)
{
    outb(PIT_CONTROL, PIT_SELECT(channel) | PIT_LSB_MSB | PIT_MODE(mode));
    outb(PIT_CHANNEL(channel), count & 0xff);
    outb(PIT_CHANNEL(channel), (count >> 8) & 0xff);
}

/* Counter-latch command, then the latched count (LSB, MSB). */
unsigned pit_latch(unsigned channel)
{
    outb(PIT_CONTROL, PIT_SELECT(channel));
    unsigned lsb = inb(PIT_CHANNEL(channel));
    return lsb | inb(PIT_CHANNEL(channel)) << 8;
}

/* Read-back command latching the status alone, then the status byte. */
uint8_t pit_status(unsigned channel)
{
    outb(PIT_CONTROL, PIT_READ_BACK | PIT_RB_NO_COUNT | PIT_RB_CHANNEL(channel));
    return inb(PIT_CHANNEL(channel));
}

/* The count giving ``hz`` interrupts per second, rounded to nearest. */
unsigned pit_hz_count(unsigned hz)
{
    return (PIT_HZ + hz / 2) / hz;
}
