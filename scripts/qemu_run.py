#!/usr/bin/env python3
"""Run a flat guest of ``guests/`` under QEMU (TCG), the reference PC pykvm is compared with.

QEMU boots a multiboot kernel with ``-kernel`` (SeaBIOS and its multiboot option ROM), so
the guest's flat image is appended to ``guests/mbshim.S``, which copies it to its load
address and enters it in the state pykvm's loader gives that mode (guests/README.md,
"Entry states"). The platform is QEMU's "pc" machine as SeaBIOS leaves it, with
``isa-debug-exit`` at port 0xf4 (so the exit status means what it means under pykvm) and,
with ``--testdev``, ``pc-testdev``.

usage: python scripts/qemu_run.py GUEST --mode real|protected|long [--testdev] [--mem MIB]
       [--timeout S] [--print-command]
GUEST is a guest name (``timer16``) or a flat image. The exit status is QEMU's.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pykvm.guests import build_guest  # noqa: E402

QEMU = "qemu-system-x86_64"
MODES = ("real", "protected", "long")
LOAD_ADDRESS = {"real": 0x7C00, "protected": 0x100000, "long": 0x100000}
SHIM_PARAMS = 0x30               # mbshim.S: mode, load address, payload size, payload offset
DEFAULT_MEMORY_MIB = 64


def qemu_path() -> str | None:
    return shutil.which(QEMU)


def multiboot_image(image: bytes, mode: str) -> bytes:
    """The multiboot shim with ``image`` appended and its parameter block filled in."""
    shim = bytearray(build_guest("mbshim").read_bytes())
    offset = -(-len(shim) // 16) * 16
    struct.pack_into("<4I", shim, SHIM_PARAMS, MODES.index(mode), LOAD_ADDRESS[mode], len(image), offset)
    return bytes(shim.ljust(offset, b"\0") + image)


def qemu_command(kernel: Path | None, memory_mib: int = DEFAULT_MEMORY_MIB, testdev: bool = False, *,
                 bios: Path | None = None, initrd: str | None = None, append: str | None = None) -> list[str]:
    """The reference PC's command line: ``-kernel`` (multiboot 1, PVH, Linux), or ``-bios`` alone
    for a firmware image; ``initrd`` (``-initrd``: modules, comma-separated) and ``append``
    (``-append``: the kernel command line) as QEMU spells them."""
    command = [qemu_path() or QEMU, "-machine", "pc", "-accel", "tcg", "-m", str(memory_mib),
               "-nodefaults", "-nographic", "-no-reboot", "-serial", "stdio",
               "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4"]
    if testdev:
        command += ["-device", "pc-testdev"]
    if bios is not None:
        command += ["-bios", str(bios)]
    if kernel is not None:
        command += ["-kernel", str(kernel)]
    if initrd is not None:
        command += ["-initrd", initrd]
    if append is not None:
        command += ["-append", append]
    return command


_FIRMWARE_NOISE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc|SeaBIOS \(version [^)]*\)\r?\n|Booting from ROM\.\.")


def guest_output(stdout: str) -> str:
    """The guest's own COM1 text from QEMU's: without SeaBIOS's banner and terminal escapes."""
    return _FIRMWARE_NOISE.sub("", stdout)


def guest_image(guest: str) -> bytes:
    path = Path(guest)
    return path.read_bytes() if path.exists() else build_guest(guest).read_bytes()


def run(image: bytes, mode: str, testdev: bool = False, memory_mib: int = DEFAULT_MEMORY_MIB,
        timeout: float = 120, **popen_args) -> subprocess.CompletedProcess:
    """Run ``image`` (a flat guest) under QEMU; stdout is the guest's COM1."""
    with tempfile.TemporaryDirectory() as tmp:
        kernel = Path(tmp, "guest.mb")
        kernel.write_bytes(multiboot_image(image, mode))
        return subprocess.run(qemu_command(kernel, memory_mib, testdev), timeout=timeout, **popen_args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("guest", help="a guest name (e.g. timer16) or a flat image file")
    parser.add_argument("--mode", choices=MODES, required=True, help="the guest's entry mode")
    parser.add_argument("--testdev", action="store_true", help="add QEMU's pc-testdev")
    parser.add_argument("--mem", type=int, default=DEFAULT_MEMORY_MIB, help="RAM in MiB (default 64)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before QEMU is stopped")
    parser.add_argument("--print-command", action="store_true", help="show the QEMU command line")
    args = parser.parse_args(argv)
    if qemu_path() is None:
        print(f"qemu_run: {QEMU} not found (Debian: apt-get install qemu-system-x86)", file=sys.stderr)
        return 4
    image = guest_image(args.guest)
    if args.print_command:
        print(shlex.join(qemu_command(Path("GUEST.mb"), args.mem, args.testdev)), file=sys.stderr)
    try:
        return run(image, args.mode, args.testdev, args.mem, args.timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"qemu_run: still running after {args.timeout:g}s", file=sys.stderr)
        return 10


if __name__ == "__main__":
    sys.exit(main())
