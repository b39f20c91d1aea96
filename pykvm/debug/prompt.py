"""``pykvm debug``: an interactive prompt over the debug core (``cmd`` with readline history and
completion on a terminal; commands read line by line, echoed, when stdin is a pipe or a file)."""

from __future__ import annotations

import cmd
import os
import shlex
import struct

from pykvm.debug.core import Debugger, DebugError, Stop
from pykvm.debug.disasm import MAX_INSTRUCTION, bitness, disassemble
from pykvm.debug.dump import format_gprs, format_system

HISTORY = "~/.pykvm_history"
_UNITS = {"b": 1, "h": 2, "w": 4, "g": 8}
_CALLS = ("call", "int", "int3", "into", "syscall", "sysenter")


class DebugShell(cmd.Cmd):
    """step [N] · next [N] · continue · break [ADDR] · delete [N|ADDR] · regs · sregs · x/N[bhwgi] ADDR ·
    disas [ADDR] [N] · mode · catch mode|conversion [off] · set REG VALUE · quit. ADDR: 0x7c00,
    SEG:OFF (real mode), SREG:OFF, or a symbol of the image."""

    prompt = "(pykvm) "

    def __init__(self, debugger: Debugger, stdin, stdout):
        self.interactive = stdin.isatty() and stdout.isatty()
        super().__init__(stdin=stdin, stdout=stdout)
        self.use_rawinput = self.interactive
        if not self.interactive:
            self.prompt = ""              # each command is echoed after the prompt instead
        self.d = debugger
        self.intro = (f"pykvm debugger: {debugger.mode()}, next instruction in "
                      f"{'KVM' if debugger.executor == 'kvm' else 'the emulator'}. 'help' lists the commands.")

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        history = os.path.expanduser(HISTORY)
        readline = None
        if self.interactive:
            try:
                import readline
                readline.read_history_file(history)
            except (ImportError, OSError):
                pass
        try:
            self.cmdloop()
        except KeyboardInterrupt:
            self.say("")
        finally:
            if readline is not None:
                try:
                    readline.write_history_file(history)
                except OSError:
                    pass

    def precmd(self, line: str) -> str:
        if not self.interactive and line and line != "EOF":
            self.say(f"{DebugShell.prompt}{line.rstrip()}")
        return line

    def onecmd(self, line: str) -> bool:
        try:
            return super().onecmd(line)
        except DebugError as e:
            self.say(f"error: {e}")
        except (ValueError, IndexError) as e:
            self.say(f"error: {e}")
        return False

    def emptyline(self) -> bool:
        return False                      # unlike cmd's default, an empty line repeats nothing

    def default(self, line: str) -> bool:
        if line.startswith("x/") or line == "x":
            return self.do_x(line[1:])
        self.say(f"unknown command {line.split()[0]!r} ('help' lists them)")
        return False

    def say(self, text: str) -> None:
        self.stdout.write(text + "\n")

    def completenames(self, text, *ignored):
        return [name for name in super().completenames(text, *ignored) if name != "EOF"]

    def _complete_address(self, text, line, begidx, endidx):
        return [s for s in self.d.symbols if s.startswith(text)]

    complete_break = complete_b = complete_x = complete_disas = complete_delete = _complete_address

    # -- showing where we are -------------------------------------------------------------------------
    def _where(self) -> str:
        d = self.d
        state = d.state()
        text = disassemble(d.read_memory(d.pc(), MAX_INSTRUCTION), state.rip, bitness(state), 1, d.syntax)
        sym = d.symbolize(d.pc())
        at = f"{state.seg[1].selector:04x}:{state.rip:08x}{f' <{sym}>' if sym else ''}"
        code = f"{text[0].code.hex(' '):<20} {text[0].text}" if text else "<no code>"
        return f"=> {d.executor} {at}  {code}"

    def _report(self, stop: Stop) -> bool:
        d = self.d
        if stop.exited:
            self.say(f"guest ended: {stop.error}" if stop.error else f"guest ended with status {stop.status}")
            return False
        if stop.reason == "breakpoint":
            n = d.breakpoints.index(stop.address) + 1 if stop.address in d.breakpoints else "?"
            self.say(f"breakpoint {n} at {stop.address:#x}")
        elif stop.reason == "mode":
            self.say(f"mode change: {d.mode()}")
        elif stop.reason == "conversion":
            self.say(f"converted to PVM mode: {d.mode()}, KVM runs it")
        elif stop.reason == "interrupt":
            self.say("interrupted")
        self.say(self._where())
        return False

    def _count(self, arg: str, default: int = 1) -> int:
        arg = arg.strip()
        return int(arg, 0) if arg else default

    # -- commands -----------------------------------------------------------------------------------
    def _step(self) -> Stop | None:
        """One step, shown; the stop if the guest ended with it."""
        record, stop = self.d.step_record()
        if record is not None:
            self.say(record.line())
        return stop if stop.exited else None

    def _repeat(self, arg: str, one) -> bool:
        """Do ``one()`` N times (or until it returns a stop to report), then show where we are."""
        for _ in range(self._count(arg)):
            if (stop := one()) is not None:
                return self._report(stop)
        self.say(self._where())
        return False

    def do_step(self, arg: str) -> bool:
        """step [N]: execute N instructions (default 1), showing each."""
        return self._repeat(arg, self._step)

    do_s = do_si = do_stepi = do_step

    def do_next(self, arg: str) -> bool:
        """next [N]: like step, but a CALL or INT runs to the instruction after it."""
        return self._repeat(arg, self._next)

    def _next(self) -> Stop | None:
        d = self.d
        state = d.state()
        pc = d.pc()
        decoded = disassemble(d.read_memory(pc, MAX_INSTRUCTION), state.rip, bitness(state), 1)
        if not decoded or decoded[0].text.split(" ")[0] not in _CALLS:
            return self._step()
        after = pc + len(decoded[0].code)
        temporary = after not in d.breakpoints
        if temporary:
            d.add_breakpoint(after)
        try:
            stop = d.cont()
        finally:
            if temporary and d.ended is None:
                d.remove_breakpoint(after)
        if stop.exited or stop.reason != "breakpoint" or stop.address != after or not temporary:
            return stop
        return None

    do_n = do_ni = do_nexti = do_next

    def do_continue(self, arg: str) -> bool:
        """continue: run at full speed until a breakpoint, a caught event or the end."""
        return self._report(self.d.cont())

    do_c = do_cont = do_continue

    def do_break(self, arg: str) -> bool:
        """break [ADDR]: stop before the instruction at ADDR; without ADDR, list the breakpoints."""
        d = self.d
        if not arg.strip():
            if not d.breakpoints:
                self.say("no breakpoints")
            for i, a in enumerate(d.breakpoints, 1):
                sym = d.symbolize(a)
                self.say(f"{i:>3}  {a:#x}{f' <{sym}>' if sym else ''}")
            return False
        address = d.address(arg)
        d.add_breakpoint(address)
        self.say(f"breakpoint {d.breakpoints.index(address) + 1} at {address:#x}")
        return False

    do_b = do_break

    def do_delete(self, arg: str) -> bool:
        """delete [N|ADDR]: delete breakpoint number N (or at ADDR); without an argument, all."""
        d = self.d
        if not arg.strip():
            for a in list(d.breakpoints):
                d.remove_breakpoint(a)
            self.say("all breakpoints deleted")
            return False
        text = arg.strip()
        if text.isdigit() and 1 <= int(text) <= len(d.breakpoints):
            address = d.breakpoints[int(text) - 1]
        else:
            address = d.address(text)
        if not d.remove_breakpoint(address):
            raise DebugError(f"no breakpoint {text}")
        self.say(f"deleted the breakpoint at {address:#x}")
        return False

    do_d = do_delete

    def do_regs(self, arg: str) -> bool:
        """regs: RIP, RFLAGS and the general registers."""
        self.say(format_gprs(self.d.state()))
        return False

    do_r = do_regs

    def do_sregs(self, arg: str) -> bool:
        """sregs: control registers, segments with their descriptor caches, GDTR, IDTR, EFER."""
        self.say(format_system(self.d.state()))
        return False

    def do_x(self, arg: str) -> bool:
        """x/N[bhwgi] ADDR: N units of memory at ADDR (b, h, w, g: 1, 2, 4, 8 bytes; i: instructions)."""
        spec, _, where = arg.strip().partition(" ")
        spec = spec.lstrip("/")
        digits = "".join(ch for ch in spec if ch.isdigit())
        unit = (spec[len(digits):] or "w")[:1]
        count = int(digits) if digits else 1
        d = self.d
        address = d.address(where) if where.strip() else d.pc()
        if unit == "i":
            return self.do_disas(f"{address:#x} {count}")
        if unit not in _UNITS:
            raise DebugError(f"x/{spec}: the unit is one of b, h, w, g, i")
        size = _UNITS[unit]
        data = d.read_memory(address, count * size)
        if len(data) < count * size:
            self.say(f"(only {len(data)} of {count * size} bytes at {address:#x} are mapped RAM)")
        fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[size]
        values = struct.unpack(f"<{len(data) // size}{fmt}", data[:len(data) // size * size])
        per_line = max(1, 16 // size)
        for i in range(0, len(values), per_line):
            row = " ".join(f"{v:0{2 * size}x}" for v in values[i:i + per_line])
            self.say(f"{address + i * size:#010x}: {row}")
        return False

    def do_disas(self, arg: str) -> bool:
        """disas [ADDR] [N]: N instructions (default 8) at ADDR (default: the next one)."""
        d = self.d
        words = shlex.split(arg)
        address = d.address(words[0]) if words else d.pc()
        count = int(words[1], 0) if len(words) > 1 else 8
        state = d.state()
        pc = d.pc()
        ip = state.rip + (address - pc)            # the same CS base: IP-relative text is right
        for ins in disassemble(d.read_memory(address, MAX_INSTRUCTION * count), ip, bitness(state), count, d.syntax):
            linear = address + (ins.address - ip)
            mark = "=>" if linear == pc else "  "
            sym = d.symbolize(linear)
            self.say(f"{mark} {linear:#010x}{f' <{sym}>':<24} {ins.code.hex(' '):<24} {ins.text}")
        return False

    def do_mode(self, arg: str) -> bool:
        """mode: the vCPU's mode, who runs the next instruction, what ran so far."""
        d = self.d
        s = d.machine.stats
        self.say(f"{d.mode()}; next instruction in {'KVM (PVM mode)' if d.executor == 'kvm' else 'the emulator'}; "
                 f"{s.emulated_instructions} instructions emulated, {s.kvm_exits} KVM exits, "
                 f"{s.conversions} conversions to PVM mode")
        return False

    def do_catch(self, arg: str) -> bool:
        """catch mode|conversion [off]: stop at every mode change / at conversions to PVM mode."""
        words = arg.split()
        if not words or words[0] not in ("mode", "conversion"):
            raise DebugError("catch mode|conversion [off]")
        on = words[1:] != ["off"]
        self.d.catch(words[0], on)
        self.say(f"{'stopping' if on else 'not stopping'} at {'mode changes' if words[0] == 'mode' else 'conversions'}")
        return False

    def do_set(self, arg: str) -> bool:
        """set REG VALUE: write a general register, rip or rflags."""
        words = arg.split()
        if len(words) != 2:
            raise DebugError("set REG VALUE")
        self.d.write_registers({words[0].lower(): int(words[1], 0)})
        return False

    def do_quit(self, arg: str) -> bool:
        """quit: leave the debugger (the guest stops where it is)."""
        return True

    do_q = do_quit

    def do_EOF(self, arg: str) -> bool:  # noqa: N802 - cmd's name for end of input
        return True

