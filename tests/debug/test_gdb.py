"""The GDB remote stub: the protocol from a small client, then a real ``gdb -batch`` (Debian's
gdb; skipped where it is not installed) breaking, stepping and reading registers in the
emulator and in PVM mode of one run, and Ctrl-C."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from pykvm.debug.gdbstub import (REGISTERS, checksum, decode_registers, encode_registers, escape, parse_listen,
                                 target_xml, unescape)
from pykvm.errors import BadInputError
from tests.debug.listing import symbols

HAVE_GDB = shutil.which("gdb") is not None
RIP = [r.name for r in REGISTERS].index("rip")


# -- pieces (no KVM) -------------------------------------------------------------------------------------
def test_target_description_is_x86_64_with_the_registers_in_g_order():
    root = ET.fromstring(target_xml().split("?>", 1)[1].split(">", 1)[1])     # past <?xml?> and DOCTYPE
    assert root.find("architecture").text == "i386:x86-64"
    regs = [reg.get("name") for reg in root.iter("reg")]
    assert regs == [r.name for r in REGISTERS]
    assert regs[:17] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", *(f"r{i}" for i in range(8, 16)),
                         "rip"]
    assert [f.get("name") for f in root.iter("feature")] == [
        "org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments", "org.pykvm.x86.sys"]


def test_register_packets_round_trip():
    values = [(i * 0x0101010101010101) & ((1 << r.bits) - 1) for i, r in enumerate(REGISTERS)]
    text = encode_registers(values)
    assert len(text) == 2 * sum(r.bits // 8 for r in REGISTERS)
    assert decode_registers(text) == values


def test_binary_escapes():
    data = bytes(range(256))
    assert b"#" not in escape(data) and b"$" not in escape(data) and unescape(escape(data)) == data


@pytest.mark.parametrize("spec,address", [("tcp::1234", ("127.0.0.1", 1234)), ("tcp:0.0.0.0:1", ("0.0.0.0", 1)),
                                          (":99", ("127.0.0.1", 99)), ("1234", ("127.0.0.1", 1234))])
def test_listen_spellings(spec, address):
    assert parse_listen(spec) == address


@pytest.mark.parametrize("spec", ["tcp::x", "tcp::70000", "unix:/tmp/x"])
def test_bad_listen_spellings(spec):
    with pytest.raises(BadInputError, match="tcp::PORT"):
        parse_listen(spec)


# -- a pykvm waiting for gdb ---------------------------------------------------------------------------------
class Pykvm:
    """``pykvm run --gdb tcp::0 ARGS`` as a process; ``port`` once it listens."""

    def __init__(self, *args: str, timeout: float = 60):
        self.proc = subprocess.Popen([sys.executable, "-m", "pykvm", "run", "--gdb", "tcp::0", "--timeout", str(timeout),
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stderr.readline().decode()
        match = re.search(r"waiting for gdb on tcp:127\.0\.0\.1:(\d+)", line)
        if match is None:
            self.proc.kill()
            pytest.fail(f"pykvm did not listen: {line}{self.proc.communicate()[1].decode()}")
        self.port = int(match[1])

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        return self.proc.returncode, out.decode(), err.decode()


class Client:
    """Just enough of gdb's side of the protocol (ack mode) to drive the stub."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""

    def _byte(self) -> int:
        while not self.buffer:
            self.buffer = self.sock.recv(4096)
            assert self.buffer, "the stub closed the connection"
        b, self.buffer = self.buffer[0], self.buffer[1:]
        return b

    def send(self, payload: str) -> None:
        data = payload.encode("latin-1")
        self.sock.sendall(b"$" + data + b"#" + f"{checksum(data):02x}".encode())
        assert self._byte() == ord("+")

    def reply(self) -> str:
        while self._byte() != ord("$"):
            pass
        out = bytearray()
        while (b := self._byte()) != ord("#"):
            out.append(b)
        sent = bytes((self._byte(), self._byte()))
        assert int(sent, 16) == checksum(bytes(out))
        self.sock.sendall(b"+")
        return out.decode("latin-1")

    def ask(self, payload: str) -> str:
        self.send(payload)
        return self.reply()

    def rip(self) -> int:
        return int.from_bytes(bytes.fromhex(self.ask(f"p{RIP:x}")), "little")


@pytest.mark.kvm
def test_the_protocol_through_both_executors():
    s = symbols()
    pykvm = Pykvm()
    c = Client(pykvm.port)
    assert "qXfer:features:read+" in c.ask("qSupported:multiprocess+;swbreak+;hwbreak+")
    xml, offset = "", 0
    while True:                                            # in small chunks, as gdb may ask
        chunk = c.ask(f"qXfer:features:read:target.xml:{offset:x},100")
        xml += unescape(chunk[1:].encode("latin-1")).decode()
        offset += 0x100
        if chunk[0] == "l":
            break
    assert xml == target_xml()
    assert c.ask("?") == "T05thread:1;"
    assert c.ask("vCont?") == "vCont;c;C;s;S"
    g = c.ask("g")
    assert len(g) == 2 * sum(r.bits // 8 for r in REGISTERS) and c.rip() == 0x7C00
    assert c.ask("m7c00,4") == "fafc31c0"
    assert c.ask("m10000000000,4") == "E14"
    assert c.ask(f"Z0,{s['protected_start']:x},1") == "OK"
    assert c.ask(f"Z1,{s['long_start']:x},1") == "OK"
    assert c.ask("Z2,7d3e,1") == ""                        # no watchpoints (PVM never reports them)
    assert c.ask("vCont;c") == "T05swbreak:;thread:1;" and c.rip() == s["protected_start"]
    assert c.ask("vCont;s:1") == "T05thread:1;" and c.rip() == s["protected_start"] + 4
    assert c.ask("P1=efbeadde00000000") == "OK"             # rbx
    assert c.ask("p1") == "efbeadde00000000"
    assert c.ask(f"X{s['msg_long'] + 1:x},1:L") == "OK" and c.ask(f"m{s['msg_long']:x},2") == "5b4c"
    assert c.ask("c") == "T05hwbreak:;thread:1;" and c.rip() == s["long_start"]
    assert c.ask(f"z1,{s['long_start']:x},1") == "OK" and c.ask(f"z0,{s['protected_start']:x},1") == "OK"
    assert c.ask("s") == "T05thread:1;" and c.rip() == s["long_start"] + 4
    cs = [r.name for r in REGISTERS].index("cs")
    assert c.ask(f"p{cs:x}") == "18000000"                 # the 64-bit code segment
    c.send("qRcmd," + b"mode".hex())
    assert bytes.fromhex(c.reply()[1:]) == b"long mode (64-bit), next instruction in KVM\n"
    assert c.reply() == "OK"
    assert c.ask("c") == "W01"
    status, out, _ = pykvm.finish()
    assert status == 1 and out.startswith("[real]") and "[Long] 64-bit" in out


@pytest.fixture
def spin(tmp_path):
    """A flat image that spins in place (jmp $), in the emulator or in PVM mode."""
    image = tmp_path / "spin.bin"
    image.write_bytes(b"\xeb\xfe")
    return str(image)


@pytest.mark.kvm
@pytest.mark.parametrize("mode", ["real", "long"])
def test_ctrl_c_byte_interrupts_a_running_guest(spin, mode):
    pykvm = Pykvm("--mode", mode, spin, timeout=2)
    c = Client(pykvm.port)
    c.send("c")
    time.sleep(0.3)
    started = time.monotonic()
    c.sock.sendall(b"\x03")
    assert c.reply() == "T02thread:1;" and time.monotonic() - started < 1.5
    c.send("D")                                            # detach: the guest runs on
    assert c.reply() == "OK"
    status, _, err = pykvm.finish()
    assert status == 10 and "--timeout" in err             # spinning until the timeout


def stopped_at(address: int) -> tuple[Pykvm, Client]:
    """A pykvm with gdb's side connected, stopped at a breakpoint at ``address``."""
    pykvm = Pykvm()
    c = Client(pykvm.port)
    assert c.ask(f"Z0,{address:x},1") == "OK"
    assert c.ask("c").startswith("T05")
    return pykvm, c


@pytest.mark.kvm
def test_detach_lets_the_guest_run_to_its_end():
    pykvm, c = stopped_at(symbols()["protected_start"])
    assert c.ask("D") == "OK"
    status, out, _ = pykvm.finish()
    assert status == 1 and out.count("\n") == 3


# -- a real gdb ------------------------------------------------------------------------------------------------
def gdb(port: int, *commands: str, timeout: float = 120) -> subprocess.CompletedProcess:
    args = ["gdb", "-batch", "-nx", "-ex", "set pagination off", "-ex", f"target remote :{port}"]
    for command in commands:
        args += ["-ex", command]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


@pytest.mark.kvm
@pytest.mark.skipif(not HAVE_GDB, reason="gdb not installed (Debian: apt-get install gdb)")
def test_gdb_breaks_steps_and_reads_registers_in_both_executors_then_the_guest_exits():
    s = symbols()
    lods64 = 0x7CEE                              # the LODSB of the 64-bit SERIAL_PUTS loop
    assert lods64 > s["long_start"]
    pykvm = Pykvm()
    result = gdb(pykvm.port,
                 f"break *{s['protected_start']:#x}", f"break *{lods64:#x}",
                 "continue", "info registers rip cs eflags", "stepi", "stepi", "info registers rip ds",
                 "monitor mode",
                 "continue", "info registers rip cs", "stepi", "info registers rip rax", "x/2xb $rsi - 1",
                 "continue", "info registers rsi",
                 "delete", "continue")
    status, out, _ = pykvm.finish()
    text = result.stdout + result.stderr          # gdb -batch prints monitor output on stderr
    assert status == 1 and "[long] 64-bit long mode" in out
    assert f"Breakpoint 1, {s['protected_start']:#018x} in ?? ()" in text
    assert re.search(rf"rip\s+{s['protected_start']:#x}", text) and re.search(r"cs\s+0x8\s", text)
    assert re.search(rf"rip\s+{s['protected_start'] + 6:#x}", text) and re.search(r"ds\s+0x10\s", text)
    assert "protected mode (32-bit), next instruction in the emulator" in text
    assert f"Breakpoint 2, {lods64:#018x} in ?? ()" in text
    assert re.search(r"cs\s+0x18\s", text) and re.search(rf"rip\s+{lods64 + 1:#x}", text)
    assert re.search(r"rax\s+0x\w*5b\s", text)                   # '[' just loaded by LODSB
    assert re.search(rf"rsi\s+{s['msg_long'] + 1:#x}", text)      # the next pass, hit once
    assert "[Inferior 1 (Remote target) exited with code 01]" in text


@pytest.mark.kvm
@pytest.mark.skipif(not HAVE_GDB, reason="gdb not installed (Debian: apt-get install gdb)")
@pytest.mark.parametrize("mode", ["real", "long"])
def test_gdb_ctrl_c_interrupts_the_guest(spin, mode):
    pykvm = Pykvm("--mode", mode, spin)
    proc = subprocess.Popen(["gdb", "-batch", "-nx", "-ex", f"target remote :{pykvm.port}", "-ex", "continue",
                             "-ex", "info registers rip", "-ex", "kill"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)              # what Ctrl-C in gdb's terminal does
    out, _ = proc.communicate(timeout=60)
    status, _, err = pykvm.finish()
    assert "Program received signal SIGINT" in out and re.search(r"rip\s+0x(7c00|100000)\s", out)
    assert status == 130 and "killed by gdb" in err


@pytest.mark.kvm
def test_an_error_that_ends_the_run_reaches_gdb_and_the_exit_status():
    pykvm, c = stopped_at(symbols()["protected_start"] + 4)
    assert c.ask("P0=efbe000000000000") == "OK"             # AX = 0xbeef: MOV DS, AX faults
    c.send("c")
    assert bytes.fromhex(c.reply()[1:]).decode().startswith("pykvm: triple fault at rip=0x7c44")
    assert c.reply() == "W06"
    status, _, err = pykvm.finish()
    assert status == 6 and "triple fault" in err
