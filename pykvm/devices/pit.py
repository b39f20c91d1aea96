"""The Intel 8254 programmable interval timer (ports 0x40-0x43), clocked by the host.

Three 16-bit down-counters at 1.193182 MHz. Channel 0's OUT drives IRQ 0 (the
guest's timer tick), channel 2's gate and OUT are reached through port 0x61
(``pykvm.devices.port61``: the speaker, and the calibration loops of BIOSes and
kernels), channel 1 (DRAM refresh on old PCs) is just a counter.

Time comes from the host clock, never from instruction counts: a guest runs
partly in Python and partly under KVM at speeds a thousand times apart, so
counting instructions would make the timer's rate depend on where the guest
happens to run. Every counter is evaluated in closed form from the number of
input-clock edges since its count was loaded, ``(now - epoch) * 1193182 // 1e9``,
so nothing ticks in the background and a read costs the same after a second as
after a microsecond.

Behaviour per the 8254 datasheet:

* control word: channel, access (latch / LSB / MSB / LSB then MSB, with
  separate read and write flip-flops), mode 0-5 (6 and 7 alias 2 and 3), BCD;
  programming a channel stops it, releases its latches and sets OUT to the
  mode's initial level (low in mode 0, high otherwise);
* a count is loaded into the counting element on the clock edge after it is
  written; 0 means 65536 (10000 in BCD);
* mode 0 (interrupt on terminal count): OUT low, high N+1 clocks after the
  write; writing the first byte of a two-byte count stops counting and drops
  OUT; mode 1 (retriggerable one-shot): OUT low for N clocks after each gate
  rising edge; mode 2 (rate generator): OUT low for one clock every N; mode 3
  (square wave): OUT high for ceil(N/2) and low for floor(N/2) clocks, the
  count stepping by two; mode 4/5 (software/hardware triggered strobe): OUT low
  for one clock N+1 clocks after the write / the gate's rising edge. In modes 2
  and 3 a new count takes effect at the end of the current period / half-cycle;
  in modes 0 and 4 on the next clock;
* gates: channels 0 and 1 are tied high (so modes 1 and 5 never trigger there,
  as on a PC); channel 2's gate is port 0x61 bit 0. A low gate pauses modes 0
  and 4, stops modes 2 and 3 with OUT forced high, and a rising edge reloads
  modes 2 and 3 and triggers modes 1 and 5;
* counter-latch and read-back commands: a latched count is held until read
  (or the channel is reprogrammed), a second latch before then is ignored; a
  latched status (OUT, null count, the control bits) is read before a latched
  count; null count is set from a count write until that count reaches the
  counting element.

IRQ 0: ``update()`` raises the edges that fell due. When the host fell behind by
several periods (a descheduled process, a long emulated batch) they are
coalesced into one pulse — one IRR latch, as the PIC could only ever hold one —
rather than a burst the guest cannot tell apart from a broken timer; the count
dropped is kept in ``ticks_coalesced``. Guests that count ticks to keep time
lose them, as they do on an overloaded QEMU with ``-rtc driftfix=none``; they
re-read the RTC or the PIT count to resynchronise. ``next_deadline_ns()`` is
channel 0's next rising edge, for sleeping in HLT or arming a host timer.
The IRQ line's level is brought up to date on every port access to channel 0
and whenever ``update()`` runs past a deadline; between rising edges it may lag
OUT, which an edge-triggered IRQ 0 (IRQ 0 is always edge on PIIX) cannot see.
"""

from __future__ import annotations

import time

from pykvm.devices.bus import ByteRegisters
from pykvm.devices.timed import TimedDevice

PORT = 0x40
PORTS = 4
FREQUENCY = 1_193_182            # Hz: the PC's 14.31818 MHz crystal divided by 12
_NS = 1_000_000_000

CONTROL = 3                      # offset of the control word register
READ_BACK = 3                    # select-counter field value of a read-back command
RB_NO_COUNT = 0x20               # read-back: don't latch the count
RB_NO_STATUS = 0x10              # read-back: don't latch the status
STATUS_OUT = 0x80
STATUS_NULL = 0x40

ACCESS_LATCH, ACCESS_LSB, ACCESS_MSB, ACCESS_WORD = 0, 1, 2, 3


# -- the modes, in closed form ---------------------------------------------------------------
# A running count is a segment: loaded with ``n`` at clock edge ``load`` (d = clk - load clocks
# ago), ``off`` clocks into its period (mode 3 reloaded at a half-cycle), ``fired`` when a
# one-shot mode already passed its event before a pause. Each mode gives (count, OUT) at d,
# the rising edges of OUT in (a, b], and the first rising edge after d (None: never).

def _one_shot(n, off, fired, d, m):              # modes 0 and 1: low until the count runs out
    return (n - d) % m, fired or d >= n


def _one_shot_rises(n, off, fired, a, b):
    return 0 if fired else int(a < n <= b)


def _one_shot_next(n, off, fired, d):
    return None if fired or d >= n else n


def _rate(n, off, fired, d, m):                  # mode 2: low for the clock where the count is 1
    e = d % n
    return n - e, e != n - 1


def _rate_rises(n, off, fired, a, b):
    return 0 if n == 1 else b // n - a // n


def _rate_next(n, off, fired, d):
    return None if n == 1 else (d // n + 1) * n


def _square(n, off, fired, d, m):                # mode 3: high ceil(n/2), low floor(n/2), step 2
    high_len = (n + 1) >> 1
    e = (d + off) % n
    high = e < high_len
    return (n & ~1) - 2 * (e if high else e - high_len), high


def _square_rises(n, off, fired, a, b):
    return 0 if n == 1 else (b + off) // n - (a + off) // n


def _square_next(n, off, fired, d):
    return None if n == 1 else ((d + off) // n + 1) * n - off


def _strobe(n, off, fired, d, m):                # modes 4 and 5: low for one clock at count 0
    return (n - d) % m, fired or d != n


def _strobe_rises(n, off, fired, a, b):
    return 0 if fired else int(a <= n < b)


def _strobe_next(n, off, fired, d):
    return None if fired or d > n else n + 1


_MODES = {
    0: (_one_shot, _one_shot_rises, _one_shot_next),
    1: (_one_shot, _one_shot_rises, _one_shot_next),
    2: (_rate, _rate_rises, _rate_next),
    3: (_square, _square_rises, _square_next),
    4: (_strobe, _strobe_rises, _strobe_next),
    5: (_strobe, _strobe_rises, _strobe_next),
}


def _from_bcd(value: int) -> int:
    return sum(((value >> shift) & 0xF) * scale for shift, scale in ((12, 1000), (8, 100), (4, 10), (0, 1)))


def _to_bcd(value: int) -> int:
    return sum((value // scale % 10) << shift for shift, scale in ((12, 1000), (8, 100), (4, 10), (0, 1)))


class Channel:
    """One counter. Methods take ``c``, the input-clock edges since the PIT's epoch."""

    def __init__(self, index: int, gate: bool):
        self.index = index
        self.gate = gate
        # Power-on is undefined on a real part: no count, OUT high (so that programming
        # channel 0 in any mode never starts with a spurious rising edge on IRQ 0).
        self.control = ACCESS_WORD << 4
        self.mode = 0
        self.modulus = 0x10000
        self.cr = 0                  # the count register, as a count (1 .. modulus)
        self.armed = False           # a count has been written since the control word
        self.running = False         # the segment below advances with the clock
        self.seg = (0, 1, 0)         # (load, n, off)
        self.fired = False
        self.pending = None          # (load, off): modes 2/3 reload with cr at a boundary
        self.ce0, self.out0 = 0, True    # count and OUT while not running / before ``load``
        self.null_until = None       # null count clears at this edge (None: not yet scheduled)
        self.write_lsb = None        # first byte of a two-byte count, while the second is due
        self.read_msb = False        # read flip-flop
        self.latched = []            # latched count bytes still to read
        self.status = None           # latched status byte
        self.mark = 0                # rising edges are accounted up to this clock
        self.edges = 0               # rising edges of OUT not yet delivered

    # -- evaluation ------------------------------------------------------------------------
    def advance(self, c: int) -> None:
        """Apply a reload that fell due by ``c`` and account OUT's rising edges up to ``c``."""
        if c <= self.mark:
            return
        if self.pending is not None and c >= self.pending[0]:
            load, off = self.pending
            self._count_rises(load)
            self.seg, self.pending = (load, self.cr, off), None
        self._count_rises(c)

    def _count_rises(self, c: int) -> None:
        if self.running:
            load, n, off = self.seg
            self.edges += _MODES[self.mode][1](n, off, self.fired, max(self.mark - load, 0), c - load)
        self.mark = c

    def value(self, c: int) -> tuple[int, bool]:
        """(count, OUT) at clock ``c``; the count in counting units (``modulus`` reads as 0)."""
        self.advance(c)
        load, n, off = self.seg
        if not self.running or c < load:
            return self.ce0, self.out0
        return _MODES[self.mode][0](n, off, self.fired, c - load, self.modulus)

    def out(self, c: int) -> bool:
        return self.value(c)[1]

    def null_count(self, c: int) -> bool:
        return self.null_until is None or c < self.null_until

    def next_rise(self, c: int) -> int | None:
        """The clock edge of OUT's next rising edge after ``c``, or None."""
        self.advance(c)
        if not self.running:
            return None
        load, n, off = self.seg
        nxt = _MODES[self.mode][2](n, off, self.fired, max(c - load, 0))
        if self.pending is not None:
            p_load, p_off = self.pending
            if nxt is None or load + nxt > p_load:
                return p_load + _MODES[self.mode][2](self.cr, p_off, False, 0)
        return None if nxt is None else load + nxt

    # -- state changes (each keeps a rising edge of OUT it causes) --------------------------
    def _start(self, c: int, load: int, n: int, off: int = 0, fired: bool = False, out0=None) -> None:
        ce, out = self.value(c)
        self.ce0, self.out0 = ce, out if out0 is None else out0
        self.seg, self.fired, self.running, self.pending = (load, n, off), fired, True, None

    def _stop(self, c: int, out=None) -> None:
        ce, current = self.value(c)
        load, n, _ = self.seg
        self.fired = self.running and (self.fired or c - load >= n)
        self.ce0, self.out0 = ce, current if out is None else out
        if self.pending is not None:         # the count that was waiting will never load
            self.null_until = None
        self.running, self.pending = False, None

    def _edge_if_raised(self, before: bool, c: int) -> None:
        if not before and self.value(c)[1]:
            self.edges += 1

    def program(self, control: int, c: int) -> None:
        before = self.out(c)
        self.control = control & 0x3F
        mode = (control >> 1) & 7
        self.mode = mode - 4 if mode > 5 else mode
        self.modulus = 10000 if control & 1 else 0x10000
        self._stop(c, out=self.mode != 0)
        self.fired = False
        self.armed = False
        self.null_until = None
        self.write_lsb = None
        self.read_msb = False
        self.latched = []
        self.status = None
        self._edge_if_raised(before, c)

    def write(self, value: int, c: int) -> None:
        access = (self.control >> 4) & 3
        if access == ACCESS_WORD and self.write_lsb is None:
            self.write_lsb = value
            if self.mode == 0:               # the first byte stops a mode-0 count, OUT low
                self._stop(c, out=False)
            return
        if access == ACCESS_WORD:
            value, self.write_lsb = self.write_lsb | value << 8, None
        elif access == ACCESS_MSB:
            value <<= 8
        if self.modulus == 10000:
            value = _from_bcd(value)
        self._load(value or self.modulus, c)

    def _load(self, n: int, c: int) -> None:
        before = self.out(c)
        self.cr = n
        self.armed = True
        mode = self.mode
        if mode in (1, 5):                   # waits for a trigger; a running one-shot goes on
            self.null_until = None
        elif mode in (2, 3) and self.running and c >= self.seg[0]:
            self.pending = self._boundary(c)
            self.null_until = self.pending[0]
        elif self.gate:
            self._start(c, c + 1, n, out0=False if mode == 0 else None)
            self.null_until = c + 1
        else:                                # loaded on the next clock, counting held by the gate
            self._stop(c, out=(mode != 0))
            self.ce0, self.fired = n % self.modulus, False
            self.null_until = c + 1
        self._edge_if_raised(before, c)

    def _boundary(self, c: int) -> tuple[int, int]:
        """Where a new count takes over in mode 2 (period end) or 3 (half-cycle end), and its phase."""
        load, n, off = self.seg
        d = c - load
        if self.mode == 2:
            return load + (d // n + 1) * n, 0
        high_len = (n + 1) >> 1
        e = (d + off) % n
        if e < high_len:
            return c + high_len - e, (self.cr + 1) >> 1
        return c + n - e, 0

    def set_gate(self, level: bool, c: int) -> None:
        level = bool(level)
        if level == self.gate:
            return
        before = self.out(c)
        self.gate = level
        mode = self.mode
        if not self.armed:
            pass
        elif mode in (0, 4):
            if level:
                ce = self.value(c)[0]
                self._start(c, c, ce or self.modulus, fired=self.fired)
            else:
                self._stop(c)
        elif mode in (2, 3):
            if level:
                self._start(c, c + 1, self.cr)
                self.null_until = c + 1
            else:
                self._stop(c, out=True)
        elif level:                          # modes 1 and 5: a rising edge triggers
            self._start(c, c + 1, self.cr)
            self.null_until = c + 1
        self._edge_if_raised(before, c)

    # -- reads and latches -----------------------------------------------------------------
    def _count_bytes(self, c: int) -> list[int]:
        count = self.value(c)[0] % self.modulus
        if self.modulus == 10000:
            count = _to_bcd(count)
        access = (self.control >> 4) & 3
        if access == ACCESS_LSB:
            return [count & 0xFF]
        if access == ACCESS_MSB:
            return [count >> 8]
        return [count & 0xFF, count >> 8]

    def latch_count(self, c: int) -> None:
        if not self.latched:
            self.latched = self._count_bytes(c)

    def latch_status(self, c: int) -> None:
        if self.status is None:
            self.status = (STATUS_OUT if self.out(c) else 0) | (STATUS_NULL if self.null_count(c) else 0) | self.control

    def read(self, c: int) -> int:
        if self.status is not None:
            status, self.status = self.status, None
            return status
        if self.latched:
            return self.latched.pop(0)
        data = self._count_bytes(c)
        if len(data) == 1:
            return data[0]
        self.read_msb = not self.read_msb
        return data[0] if self.read_msb else data[1]


class Pit(ByteRegisters, TimedDevice):
    """The three channels at offsets 0-2, the control word at offset 3.

    ``update()`` raises IRQ 0 for what fell due; ``next_deadline_ns()`` is channel 0's
    next rising edge (None when none is coming).

    ``irq(level)`` is channel 0's OUT wired to IRQ 0 (e.g. ``partial(pic.set_irq, 0)``);
    ``clock()`` returns host nanoseconds (``time.monotonic_ns`` unless a test injects one).
    """

    def __init__(self, irq: Callable[[int], None] | None = None, clock: Callable[[], int] = time.monotonic_ns):
        self.irq = irq
        self.clock = clock
        self.epoch = clock()
        self._clk = 0
        self.channels = (Channel(0, True), Channel(1, True), Channel(2, False))
        # The PIC's IRQ 0 starts low; OUT starts high but is not driven until it changes, so
        # that attaching the PIT never latches a tick.
        self._line = True
        self._deadline = None            # ns of channel 0's next rising edge
        self.ticks_coalesced = 0

    def attach(self, bus) -> None:
        """Claim ports 0x40-0x43."""
        bus.pio.register(PORT, PORTS, self)

    def clk(self, now_ns: int | None = None) -> int:
        """Input-clock edges since the epoch at ``now_ns`` (never less than at an earlier call)."""
        now = self.clock() if now_ns is None else now_ns
        c = (now - self.epoch) * FREQUENCY // _NS
        if c > self._clk:
            self._clk = c
        return self._clk

    def edge_time_ns(self, c: int) -> int:
        """The host time at which clock edge ``c`` happens."""
        return self.epoch + -(-c * _NS // FREQUENCY)

    # -- IRQ 0 (``update`` and ``next_deadline_ns`` come from TimedDevice) ------------------
    def _due(self, now: int) -> None:
        """Channel 0's rising edges fell due: raise IRQ 0 (several coalesce into one)."""
        self._sync(self.clk(now))

    def _sync(self, c: int) -> None:
        ch = self.channels[0]
        level = ch.out(c)
        edges, ch.edges = ch.edges, 0
        if edges:
            self.ticks_coalesced += edges - 1
            if self._line:
                self._drive(False)
            self._drive(True)
        if level != self._line:
            self._drive(level)
        nxt = ch.next_rise(c)
        self._deadline = None if nxt is None else self.edge_time_ns(nxt)

    def _drive(self, level: bool) -> None:
        self._line = level
        if self.irq is not None:
            self.irq(int(level))

    # -- port 0x61's view of channel 2, and gates ---------------------------------------------
    def set_gate(self, channel: int, level: bool, now_ns: int | None = None) -> None:
        c = self.clk(now_ns)
        self.channels[channel].set_gate(level, c)
        if channel == 0:
            self._sync(c)

    def out(self, channel: int, now_ns: int | None = None) -> bool:
        return self.channels[channel].out(self.clk(now_ns))

    # -- ports -----------------------------------------------------------------------------
    def read_byte(self, offset: int) -> int:
        if offset >= CONTROL:
            return 0xFF                      # the control word register is write-only
        c = self.clk()
        value = self.channels[offset].read(c)
        if offset == 0:
            self._sync(c)
        return value

    def write_byte(self, offset: int, value: int) -> None:
        if offset > CONTROL:
            return
        c = self.clk()
        if offset < CONTROL:
            self.channels[offset].write(value, c)
            touched = offset == 0
        elif value >> 6 == READ_BACK:
            for ch in self.channels:
                if value & (2 << ch.index):
                    if not value & RB_NO_COUNT:
                        ch.latch_count(c)
                    if not value & RB_NO_STATUS:
                        ch.latch_status(c)
            touched = False
        else:
            ch = self.channels[value >> 6]
            if (value >> 4) & 3 == ACCESS_LATCH:
                ch.latch_count(c)
            else:
                ch.program(value, c)
            touched = ch.index == 0
        if touched:
            self._sync(c)
