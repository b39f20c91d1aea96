"""A GDB remote stub: ``pykvm run --gdb tcp::PORT`` lets a stock gdb debug the guest.

Enough of gdb's Remote Serial Protocol for ``target remote``: the target description
(``qXfer:features:read``, the x86-64 register set in every mode, as QEMU's x86-64 stub
reports it), registers (``g``/``G``/``p``/``P``), memory at linear addresses (``m``/``M``/``X``),
``c``/``s``/``vCont``, breakpoints (``Z0``/``Z1``, both kinds the same to pykvm: guards in the
emulator, debug registers in PVM mode), stop replies (``T05``, ``T02`` after Ctrl-C, ``W`` when
the guest ends, with ``O`` console lines saying why), ``D`` (detach: the guest runs on to its end),
``k``, no-ack mode and ``monitor`` commands (``qRcmd``: mode, regs, sregs). One thread, one
vCPU; a helper thread watches the socket for gdb's Ctrl-C (0x03) while the guest runs.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from dataclasses import dataclass

from pykvm.debug.core import Debugger, DebugError, Stop
from pykvm.errors import BadInputError, InterruptedByUser
from pykvm.x86.bits import MSR_KERNEL_GS_BASE
from pykvm.x86.state import CS, DS, ES, FS, GS, SS, CpuState

log = logging.getLogger("pykvm")

SIGINT, SIGTRAP = 2, 5
PACKET_SIZE = 0x4000


@dataclass(frozen=True)
class Reg:
    name: str
    bits: int
    type: str
    feature: str


def _regs() -> list[Reg]:
    core, sse, seg, sys_ = "org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments", \
        "org.pykvm.x86.sys"
    out = [Reg(n, 64, "data_ptr" if n in ("rbp", "rsp") else "int64", core)
           for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", *(f"r{i}" for i in range(8, 16)))]
    out += [Reg("rip", 64, "code_ptr", core), Reg("eflags", 32, "i386_eflags", core)]
    out += [Reg(n, 32, "int32", core) for n in ("cs", "ss", "ds", "es", "fs", "gs")]
    out += [Reg(f"st{i}", 80, "i387_ext", core) for i in range(8)]
    out += [Reg(n, 32, "int", core) for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")]
    out += [Reg(f"xmm{i}", 128, "vec128", sse) for i in range(16)] + [Reg("mxcsr", 32, "i386_mxcsr", sse)]
    out += [Reg("fs_base", 64, "int", seg), Reg("gs_base", 64, "int", seg)]
    out += [Reg(n, 64, "int", sys_) for n in ("k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer")]
    return out


REGISTERS = _regs()
REG_INDEX = {r.name: i for i, r in enumerate(REGISTERS)}
_SEGMENTS = {"cs": CS, "ss": SS, "ds": DS, "es": ES, "fs": FS, "gs": GS}
_GPRS = {"rax": 0, "rcx": 1, "rdx": 2, "rbx": 3, "rsp": 4, "rbp": 5, "rsi": 6, "rdi": 7,
         **{f"r{i}": i for i in range(8, 16)}}

_EFLAGS = ["CF", "", "PF", None, "AF", None, "ZF", "SF", "TF", "IF", "DF", "OF", None, None, "NT", None, "RF",
           "VM", "AC", "VIF", "VIP", "ID"]
_MXCSR = ["IE", "DE", "ZE", "OE", "UE", "PE", "DAZ", "IM", "DM", "ZM", "OM", "UM", "PM", "FZ"]


def _flags(name: str, fields: list) -> str:
    body = "".join(f'<field name="{f}" start="{i}" end="{i}"/>' for i, f in enumerate(fields) if f is not None)
    return f'<flags id="{name}" size="4">{body}</flags>'


def target_xml() -> str:
    """The target description: x86-64 registers in the order of the ``g`` packet."""
    types = {
        "org.gnu.gdb.i386.core": _flags("i386_eflags", _EFLAGS),
        "org.gnu.gdb.i386.sse": (
            '<vector id="v8bf16" type="bfloat16" count="8"/><vector id="v4f" type="ieee_single" count="4"/>'
            '<vector id="v2d" type="ieee_double" count="2"/><vector id="v16i8" type="int8" count="16"/>'
            '<vector id="v8i16" type="int16" count="8"/><vector id="v4i32" type="int32" count="4"/>'
            '<vector id="v2i64" type="int64" count="2"/>'
            '<union id="vec128"><field name="v8_bfloat16" type="v8bf16"/><field name="v4_float" type="v4f"/>'
            '<field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/>'
            '<field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/>'
            '<field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/></union>'
            + _flags("i386_mxcsr", _MXCSR)),
    }
    parts = ['<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">',
             "<target><architecture>i386:x86-64</architecture>"]
    feature = None
    for i, r in enumerate(REGISTERS):
        if r.feature != feature:
            if feature is not None:
                parts.append("</feature>")
            feature = r.feature
            parts.append(f'<feature name="{feature}">{types.get(feature, "")}')
        group = ' group="float"' if r.name.startswith("f") and r.bits == 32 else ""
        parts.append(f'<reg name="{r.name}" bitsize="{r.bits}" type="{r.type}" regnum="{i}"{group}/>')
    parts.append("</feature></target>")
    return "".join(parts)


def register_values(state: CpuState, fpu=None, fpu_control: tuple[int, int] | None = None) -> list[int]:
    """Every register of REGISTERS from ``state`` (and ``fpu``, a ``struct kvm_fpu``, for x87/SSE)."""
    values = []
    for r in REGISTERS:
        n = r.name
        if n in _GPRS:
            v = state.gpr[_GPRS[n]]
        elif n == "rip":
            v = state.rip
        elif n == "eflags":
            v = state.rflags
        elif n in _SEGMENTS:
            v = state.seg[_SEGMENTS[n]].selector
        elif n in ("fs_base", "gs_base"):
            v = state.seg[FS if n == "fs_base" else GS].base
        elif n == "k_gs_base":
            v = state.msrs.get(MSR_KERNEL_GS_BASE, 0)
        elif n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer"):
            v = getattr(state, n)
        else:
            v = _fpu_value(n, fpu, fpu_control)
        values.append(v & ((1 << r.bits) - 1))
    return values


def _fpu_value(name: str, fpu, control) -> int:
    if fpu is None:
        return 0x37F if name == "fctrl" else 0x1F80 if name == "mxcsr" else 0
    if name.startswith("st"):
        return int.from_bytes(bytes(fpu.fpr[int(name[2:])])[:10], "little")
    if name.startswith("xmm"):
        return int.from_bytes(bytes(fpu.xmm[int(name[3:])]), "little")
    if name in ("fctrl", "fstat") and control is not None:
        return control[0] if name == "fctrl" else control[1]
    return {"fctrl": fpu.fcw, "fstat": fpu.fsw, "ftag": _full_tag(fpu.ftwx), "fop": fpu.last_opcode,
            "fioff": fpu.last_ip & 0xFFFFFFFF, "fooff": fpu.last_dp & 0xFFFFFFFF, "mxcsr": fpu.mxcsr}.get(name, 0)


def _full_tag(abridged: int) -> int:
    """FXSAVE's abridged tag byte (1 = valid) as the x87 tag word gdb shows (11 = empty)."""
    return sum((0 if abridged >> i & 1 else 3) << (2 * i) for i in range(8))


def encode_registers(values: list[int]) -> str:
    return "".join(v.to_bytes(r.bits // 8, "little").hex() for r, v in zip(REGISTERS, values))


def decode_registers(text: str) -> list[int]:
    data = bytes.fromhex(text)
    out, at = [], 0
    for r in REGISTERS:
        size = r.bits // 8
        out.append(int.from_bytes(data[at:at + size], "little"))
        at += size
    return out


# -- the wire -------------------------------------------------------------------------------------

def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def escape(data: bytes) -> bytes:
    """Binary data in a packet: '#', '$', '}' and '*' become '}' followed by the byte XOR 0x20."""
    out = bytearray()
    for b in data:
        if b in b"#$}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for b in it:
        out.append(next(it, 0) ^ 0x20 if b == 0x7D else b)
    return bytes(out)


def parse_listen(spec: str) -> tuple[str, int]:
    """``tcp::PORT`` (QEMU's spelling), ``tcp:HOST:PORT``, ``:PORT`` or ``PORT`` → (host, port).
    An empty host is 127.0.0.1: the stub gives full control of the guest, so not to the network."""
    text = spec[4:] if spec.startswith("tcp:") else spec
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise BadInputError(f"--gdb {spec}: expected tcp::PORT (or tcp:HOST:PORT)") from None
    return host or "127.0.0.1", number


class Connection:
    """Packets over a connected socket: acks, checksums, and gdb's out-of-band Ctrl-C (0x03)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray()
        self.ack = True

    def _fill(self) -> None:
        data = self.sock.recv(4096)
        if not data:
            raise EOFError("gdb closed the connection")
        self.buffer += data

    def take_interrupts(self) -> None:
        """Drop 0x03 bytes (a Ctrl-C that came as the guest stopped anyway) and stray acks."""
        while self.buffer and self.buffer[0] in b"\x03+-":
            del self.buffer[0]

    def read_packet(self) -> str:
        """The next packet's payload."""
        while True:
            self.take_interrupts()
            start = self.buffer.find(b"$")
            if start >= 0:
                end = self.buffer.find(b"#", start)
                if end >= 0 and len(self.buffer) >= end + 3:
                    payload = bytes(self.buffer[start + 1:end])
                    sent = self.buffer[end + 1:end + 3]
                    del self.buffer[:end + 3]
                    if self.ack:
                        ok = sent.lower() == f"{checksum(payload):02x}".encode()
                        self.sock.sendall(b"+" if ok else b"-")
                        if not ok:
                            continue
                    return payload.decode("latin-1")
                if start > 0:
                    del self.buffer[:start]
            self._fill()

    def send(self, payload: str | bytes) -> None:
        data = payload.encode("latin-1") if isinstance(payload, str) else payload
        packet = b"$" + data + b"#" + f"{checksum(data):02x}".encode()
        for _ in range(10):
            self.sock.sendall(packet)
            if not self.ack:
                return
            while True:
                while not self.buffer:
                    self._fill()
                b = self.buffer[0]
                del self.buffer[0]
                if b in b"+-":
                    break
            if b == ord("+"):
                return
        raise EOFError("gdb keeps rejecting our packets")

    def console(self, text: str) -> None:
        """An ``O`` packet: text gdb prints (only while the target runs, before the stop reply)."""
        self.send("O" + text.encode().hex())


class CtrlCWatcher:
    """While the guest runs: a thread that turns gdb's 0x03 into ``Debugger.interrupt()``."""

    def __init__(self, conn: Connection, debugger: Debugger):
        self.conn, self.debugger = conn, debugger
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._watch, name="gdb-ctrl-c", daemon=True)

    def __enter__(self) -> "CtrlCWatcher":
        self._thread.start()
        return self

    def _watch(self) -> None:
        sock = self.conn.sock
        while True:
            ready, _, _ = select.select([sock, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                self.debugger.interrupt()      # gdb went away: stop, the main loop sees EOF
                return
            self.conn.buffer += data
            if 3 in data:
                self.debugger.interrupt()

    def __exit__(self, *exc) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)


class GdbStub:
    """Serves one gdb connection for a ``Debugger``; ``serve()`` returns the stop that ended it."""

    def __init__(self, debugger: Debugger, conn: Connection):
        self.debugger = debugger
        self.conn = conn
        self.xml = target_xml().encode()
        self.kinds: dict[int, str] = {}        # breakpoint address -> "swbreak" / "hwbreak"
        self.last = Stop("step", debugger.pc())
        self.detached = False

    # -- the loop ----------------------------------------------------------------------------------
    def serve(self) -> Stop:
        """Answer packets until the guest ends (after telling gdb), or gdb detaches or kills."""
        while True:
            packet = self.conn.read_packet()
            reply = self.handle(packet)
            if reply is None:             # the guest ended, or gdb detached / killed it
                return self.last
            self.conn.send(reply)
            if packet == "QStartNoAckMode":
                self.conn.ack = False

    def handle(self, packet: str) -> str | None:
        kind = packet[:1]
        try:
            if kind in "cCsS" and packet[:5] != "vCont":
                return self._resume("s" if kind in "sS" else "c")
            if packet.startswith("vCont"):
                return self._vcont(packet)
            handler = self.HANDLERS.get(kind)
            if handler is not None:
                return handler(self, packet)
            if packet.startswith("q") or packet.startswith("Q"):
                return self._query(packet)
        except DebugError as e:
            log.warning("gdb: %s", e)
            return "E22"
        except (ValueError, IndexError):
            log.warning("gdb: malformed packet %r", packet[:64])
            return "E01"
        return ""

    # -- running ------------------------------------------------------------------------------------
    def _resume(self, action: str) -> str | None:
        d = self.debugger
        with CtrlCWatcher(self.conn, d):   # a step too may sleep in HLT
            stop = d.step() if action == "s" else d.cont()
        self.conn.take_interrupts()
        self.last = stop
        return self._stop_reply(stop)

    def _vcont(self, packet: str) -> str | None:
        if packet == "vCont?":
            return "vCont;c;C;s;S"
        actions = packet[6:].split(";")
        if not actions or not actions[0]:
            return "E22"
        return self._resume("s" if actions[0][0] in "sS" else "c")

    def _stop_reply(self, stop: Stop) -> str | None:
        d = self.debugger
        if stop.exited:
            if stop.error is not None:
                self.conn.console(f"pykvm: {stop.error}\n")
            self.conn.send(f"W{stop.status & 0xFF:02x}")
            return None
        if stop.reason == "interrupt":
            return f"T{SIGINT:02x}thread:1;"
        if stop.reason == "breakpoint":
            return f"T{SIGTRAP:02x}{self.kinds.get(stop.address, 'swbreak')}:;thread:1;"
        if stop.reason in ("mode", "conversion"):
            what = "converted to PVM mode" if stop.reason == "conversion" else "mode change"
            self.conn.console(f"pykvm: {what}: now in {d.mode()}, {d.executor} runs it\n")
        return f"T{SIGTRAP:02x}thread:1;"

    # -- packets ------------------------------------------------------------------------------------
    def _status(self, packet: str) -> str:
        return self._stop_reply(self.last) or ""

    def _read_registers(self, packet: str) -> str:
        return encode_registers(self._values())

    def _values(self) -> list[int]:
        fpu, control = self.debugger.fpu()
        return register_values(self.debugger.state(), fpu, control)

    def _write_registers(self, packet: str) -> str:
        new = decode_registers(packet[1:])
        old = self._values()
        self._write_changed({REGISTERS[i].name: v for i, (v, o) in enumerate(zip(new, old)) if v != o})
        return "OK"

    def _write_changed(self, values: dict[str, int]) -> None:
        self.debugger.write_registers({("rflags" if k == "eflags" else k): v for k, v in values.items()})

    def _read_register(self, packet: str) -> str:
        n = int(packet[1:], 16)
        if n >= len(REGISTERS):
            return "E45"
        r = REGISTERS[n]
        return self._values()[n].to_bytes(r.bits // 8, "little").hex()

    def _write_register(self, packet: str) -> str:
        number, _, value = packet[1:].partition("=")
        n = int(number, 16)
        if n >= len(REGISTERS):
            return "E45"
        r = REGISTERS[n]
        v = int.from_bytes(bytes.fromhex(value)[:r.bits // 8], "little")
        if v != self._values()[n]:
            self._write_changed({r.name: v})
        return "OK"

    def _read_memory(self, packet: str) -> str:
        addr, _, length = packet[1:].partition(",")
        data = self.debugger.read_memory(int(addr, 16), min(int(length, 16), PACKET_SIZE // 2))
        return data.hex() if data else "E14"

    def _write_memory(self, packet: str) -> str:
        spec, _, hexdata = packet[1:].partition(":")
        addr, _, length = spec.partition(",")
        data = bytes.fromhex(hexdata)[:int(length, 16)]
        return self._write(int(addr, 16), data)

    def _write_binary(self, packet: str) -> str:
        raw = packet.encode("latin-1")
        colon = raw.index(b":")
        addr, _, length = raw[1:colon].decode().partition(",")
        return self._write(int(addr, 16), unescape(raw[colon + 1:])[:int(length, 16)])

    def _write(self, addr: int, data: bytes) -> str:
        if data:
            try:
                self.debugger.write_memory(addr, data)
            except DebugError:
                return "E14"
        return "OK"

    def _breakpoint(self, packet: str) -> str:
        insert = packet[0] == "Z"
        kind, _, rest = packet[1:].partition(",")
        if kind not in "01":
            return ""                      # watchpoints: PVM never reports them (docs/pvm-findings.md)
        addr = int(rest.split(",")[0], 16)
        d = self.debugger
        if insert:
            d.add_breakpoint(addr)
            self.kinds[addr] = "hwbreak" if kind == "1" else "swbreak"
        else:
            d.remove_breakpoint(addr)
            self.kinds.pop(addr, None)
        return "OK"

    def _detach(self, packet: str) -> None:
        self.conn.send("OK")
        self.detached = True
        return None

    def _kill(self, packet: str) -> None:
        self.last = Stop("exited", error=InterruptedByUser("killed by gdb"), status=InterruptedByUser.exit_code)
        return None

    def _thread(self, packet: str) -> str:
        return "OK"

    HANDLERS = {"?": _status, "g": _read_registers, "G": _write_registers, "p": _read_register,
                "P": _write_register, "m": _read_memory, "M": _write_memory, "X": _write_binary,
                "Z": _breakpoint, "z": _breakpoint, "D": _detach, "k": _kill, "H": _thread, "T": _thread}

    def _query(self, packet: str) -> str:
        if packet.startswith("qSupported"):
            return f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;swbreak+;hwbreak+;QStartNoAckMode+;vContSupported+"
        if packet == "QStartNoAckMode":
            return "OK"                    # serve() leaves ack mode once this OK is acknowledged
        if packet.startswith("qXfer:features:read:"):
            annex, _, span = packet[len("qXfer:features:read:"):].partition(":")
            if annex != "target.xml":
                return "E00"
            offset, _, length = span.partition(",")
            offset, length = int(offset, 16), int(length, 16)
            chunk = self.xml[offset:offset + length]
            return ("l" if offset + length >= len(self.xml) else "m") + escape(chunk).decode("latin-1")
        if packet == "qAttached":
            return "1"
        if packet == "qC":
            return "QC1"
        if packet == "qfThreadInfo":
            return "m1"
        if packet == "qsThreadInfo":
            return "l"
        if packet.startswith("qSymbol"):
            return "OK"
        if packet.startswith("qRcmd,"):
            return self._monitor(bytes.fromhex(packet[6:]).decode(errors="replace"))
        return ""

    def _monitor(self, command: str) -> str:
        """``monitor mode|regs|sregs`` in gdb: pykvm's own view of the vCPU."""
        from pykvm.debug.dump import format_registers

        d = self.debugger
        words = command.split()
        if words[:1] == ["mode"]:
            text = f"{d.mode()}, next instruction in {'KVM' if d.executor == 'kvm' else 'the emulator'}\n"
        elif words[:1] in (["regs"], ["sregs"]):
            text = format_registers(d.state()) + "\n"
        else:
            text = "pykvm monitor commands: mode, regs, sregs\n"
        for i in range(0, len(text), 512):
            self.conn.console(text[i:i + 512])
        return "OK"


def listen(spec: str) -> socket.socket:
    host, port = parse_listen(spec)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind((host, port))
    except OSError as e:
        server.close()
        raise BadInputError(f"--gdb {spec}: cannot listen on {host}:{port}: {e.strerror}") from None
    server.listen(1)
    return server


def serve_gdb(debugger: Debugger, server: socket.socket, announce) -> Stop:
    """Wait for gdb on ``server`` (the guest has not run yet), serve it; after a detach the guest
    runs on to its end without the debugger. Returns the stop that ended the run."""
    host, port = server.getsockname()[:2]
    announce(f"pykvm: waiting for gdb on tcp:{host}:{port} (target remote {host}:{port})")
    sock, peer = server.accept()
    server.close()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stub = GdbStub(debugger, Connection(sock))
    try:
        stop = stub.serve()
    except (EOFError, ConnectionError):
        stub.detached = True
        stop = None
    finally:
        sock.close()
    if stop is None or stub.detached:
        for address in list(debugger.breakpoints):
            debugger.remove_breakpoint(address)
        debugger.catch("mode", False)
        debugger.catch("conversion", False)
        stop = debugger.ended or debugger.cont()
        while not stop.exited:            # a stop requested before the detach: run on
            stop = debugger.cont()
    return stop

