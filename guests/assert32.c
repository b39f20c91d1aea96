/* assert32.c - a C guest whose GUEST_ASSERT fails on purpose.
 *
 * Mode:   --mode protected (like cwork32).
 * Does:   prints one line, then fails GUEST_ASSERT, which prints
 *         "ASSERT FAILED: assert32.c:<line>: answer == 42" and ends the run with
 *         debug-exit value GUEST_ASSERT_EXIT (0x7f, process status 255).  It is
 *         the fixture for the host's handling of guest assertions.
 *
 * pykvm-test:
 *   [assert32]
 *   format = "elf"
 *   mode = "protected"
 *   status = 255                # GUEST_ASSERT_EXIT 0x7f: the host sees the failure
 *   serial = ["assert32: about to fail an assertion"]
 *   serial_match = ['^ASSERT FAILED: assert32\.c:\d+: answer == 42$']
 *   [assert32-crash-report]     # the same run expected to pass: pytest --runxfail shows the report
 *   guest = "assert32"
 *   xfail = "GUEST_ASSERT fails on purpose (--runxfail shows the crash report)"
 */
#include "pykvm_guest.h"

static volatile int answer = 41;    /* volatile: the check happens at run time */

int main(void)
{
    guest_printf("assert32: about to fail an assertion\n");
    GUEST_ASSERT(answer == 42);
    guest_printf("assert32: unreachable\n");
    return 0;
}
