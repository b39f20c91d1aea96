/* bootsector.S - boot16to64 as a 512-byte boot sector.
 *
 * The same code and strings as boot16to64.S, padded to 510 bytes and followed
 * by the 55 AA signature, for pykvm's boot-sector loader (and for any PC BIOS:
 * the code normalises CS to 0 and needs no BIOS services).
 *
 * pykvm-test:
 *   format = "bootsector"
 *   mode = "real"
 *   executors = ["emu", "kvm"]
 *   timeout = 10
 *   serial = ["[long] 64-bit long mode: running in PVM mode under KVM"]
 */
#define BOOTSECTOR 1
#include "boot16to64.S"
