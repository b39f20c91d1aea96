/* pc_platform.h - the PC platform devices as C guests program them, and the
 * interrupt bookkeeping of lib/irq.c.
 *
 * Ports and bits of the 8259A pair (and the PIIX ELCR), the 8254 PIT with
 * port 0x61, the CMOS/RTC, and QEMU's pc-testdev (scratch register, IRQ
 * lines), as pykvm and QEMU's "pc" machine both provide them.
 *
 * The same text is compiled with -m16 (real mode), -m32 and -m64: nothing
 * here depends on the mode except what lib/vectors{16,32,64}.S provide.
 */
#ifndef PYKVM_PC_PLATFORM_H
#define PYKVM_PC_PLATFORM_H

#include "pykvm_guest.h"

/* 8259A pair: command (A0 = 0) and data (A0 = 1) ports, and the PIIX ELCR. */
#define PIC_MASTER       0x20
#define PIC_SLAVE        0xa0
#define PIC_ELCR         0x4d0      /* 0x4d0: IRQ 0-7, 0x4d1: IRQ 8-15; 1 = level */
#define PIC_EOI          0x20       /* OCW2: non-specific EOI */
#define PIC_READ_IRR     0x0a       /* OCW3: the next command-port read gives IRR */
#define PIC_READ_ISR     0x0b       /* ... or ISR */
#define PIC_CASCADE_IRQ  2
#define BIOS_MASTER_BASE 0x08       /* vector bases as a PC BIOS leaves them */
#define BIOS_SLAVE_BASE  0x70

/* 8254 PIT and system control port B. */
#define PIT_CHANNEL(n)   (0x40 + (n))
#define PIT_CONTROL      0x43
#define PIT_HZ           1193182u
#define PIT_LSB_MSB      0x30       /* control word: access LSB then MSB */
#define PIT_MODE(m)      ((m) << 1)
#define PIT_SELECT(n)    ((n) << 6)
#define PIT_READ_BACK    0xc0       /* control word 11xxxxxx */
#define PIT_RB_NO_COUNT  0x20
#define PIT_RB_NO_STATUS 0x10
#define PIT_RB_CHANNEL(n) (2 << (n))
#define PIT_STATUS_OUT   0x80
#define PIT_STATUS_NULL  0x40
#define PORT61           0x61
#define PORT61_GATE2     0x01
#define PORT61_SPEAKER   0x02
#define PORT61_OUT2      0x20

/* CMOS and the MC146818 RTC. */
#define CMOS_INDEX       0x70
#define CMOS_DATA        0x71
#define RTC_SECONDS      0x00
#define RTC_MINUTES      0x02
#define RTC_HOURS        0x04
#define RTC_DAY          0x07
#define RTC_MONTH        0x08
#define RTC_YEAR         0x09
#define RTC_CENTURY      0x32       /* IBM convention: CMOS byte 0x32 */
#define RTC_REG_A        0x0a
#define RTC_REG_B        0x0b
#define RTC_REG_C        0x0c
#define RTC_A_UIP        0x80
#define RTC_B_SET        0x80       /* updates stop; the time bytes are the guest's to set */
#define RTC_B_PIE        0x40
#define RTC_B_BINARY     0x04
#define RTC_B_24H        0x02
#define RTC_C_IRQF       0x80
#define RTC_C_PF         0x40
#define CMOS_BASE_KIB    0x15       /* 16-bit values, little-endian */
#define CMOS_EXT_KIB     0x17
#define CMOS_EXT_KIB2    0x30
#define CMOS_ABOVE_16M   0x34       /* in 64 KiB units */

/* QEMU's pc-testdev (pykvm run --testdev). */
#define TESTDEV_SCRATCH  0xe0
#define TESTDEV_IRQ(n)   (0x2000 + (n))

/* Sleep until an interrupt: STI's shadow covers the HLT, so an interrupt that
 * is already pending wakes it instead of being taken before it. */
static inline void sti_hlt_cli(void) { __asm__ volatile("sti; hlt; cli" ::: "memory"); }

/* An interrupt window: IF = 1 across two port reads (under KVM each one is an
 * exit, after which a pending interrupt is injected) and a NOP. */
static inline void interrupt_window(void)
{
    __asm__ volatile("sti\n\tinb $0x21, %%al\n\tinb $0x21, %%al\n\tnop\n\tcli" ::: "eax", "memory");
}

/* lib/vectors{16,32,64}.S: point all 256 vectors (IVT or IDT with interrupt
 * gates on the current CS) at stubs that call on_vector(vector, return address). */
void vectors_install(void);

/* lib/irq.c: what the handlers saw.  irq_count/irq_ip per ISA IRQ (ip: the
 * return address of the last delivery), irq_order the IRQs in delivery order. */
#define IRQ_ORDER_MAX 16
extern volatile unsigned irq_count[16];
extern volatile uintptr_t irq_ip[16];
extern volatile uint8_t irq_order[IRQ_ORDER_MAX];
extern volatile unsigned irq_order_len;
extern volatile unsigned irq_spurious;
extern volatile uint8_t rtc_flags_seen;   /* register C as the IRQ 8 handler read it, ORed */
extern unsigned manual_eoi;               /* IRQ bits whose EOI the main code sends */

void on_vector(uintptr_t vector, uintptr_t ip);
void pic_init(uint8_t master_base, uint8_t slave_base);
void pic_set_mask(uint16_t masked);
uint16_t pic_irr(void);
uint16_t pic_isr(void);
void pic_eoi(unsigned irq);
void irq_log_clear(void);
void platform_init(uint8_t master_base, uint8_t slave_base, unsigned hz);
unsigned wait_ticks(unsigned n);

uint8_t cmos_read(uint8_t index);
void cmos_write(uint8_t index, uint8_t value);
unsigned cmos_read16(uint8_t index);

void pit_program(unsigned channel, unsigned mode, unsigned count);
unsigned pit_latch(unsigned channel);
uint8_t pit_status(unsigned channel);
unsigned pit_hz_count(unsigned hz);

#endif
