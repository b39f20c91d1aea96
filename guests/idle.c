/* idle.c - a guest that does nothing but idle: the benchmark of scripts/bench_idle.py.
 *
 * Mode:   idle16: --mode real (the userspace emulator, the PICs at the BIOS bases);
 *         idle64: --mode long (PVM mode under KVM_RUN, the PICs at 0x20/0x28).
 * Does:   programs PIT channel 0 at 100 Hz, sleeps IDLE_TICKS ticks in "sti; hlt"
 *         (the idle loop of every OS), prints how many HLT wake-ups it had and
 *         exits with 0.  What it costs the host per second is the cost of idling.
 *
 * pykvm-test:
 *   serial_match = ['^idle: 300 ticks at 100 Hz, \d+ HLT wake-ups$']   # wake-ups vary with load
 *   [idle16]
 *   format = "flat"
 *   mode = "real"
 *   [idle64]
 *   format = "elf"
 *   mode = "long"
 */
#include "pc_platform.h"

#ifndef IDLE_TICKS
#define IDLE_TICKS 300
#endif

int main(void)
{
#ifdef __x86_64__
    platform_init(0x20, 0x28, 100);
#else
    platform_init(BIOS_MASTER_BASE, BIOS_SLAVE_BASE, 100);
#endif
    unsigned wakeups = wait_ticks(IDLE_TICKS);
    guest_printf("idle: %u ticks at 100 Hz, %u HLT wake-ups\n", IDLE_TICKS, wakeups);
    return 0;
}
