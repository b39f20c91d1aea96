"""CMOS RAM and the Motorola MC146818 real-time clock (ports 0x70/0x71).

Port 0x70 selects one of 128 CMOS bytes (bit 7 of the same write masks NMI on a
PC; pykvm keeps it in ``nmi_masked`` for whoever delivers NMIs), port 0x71
reads or writes it. Bytes 0x00-0x0D are the clock:

* time of day and date (0x00 seconds, 0x02 minutes, 0x04 hours, 0x06 day of
  week (Sunday = 1), 0x07 day of month, 0x08 month, 0x09 year) plus the IBM
  century byte 0x32, read from the host clock in the format register B selects
  (BCD or binary, 24-hour or 12-hour with bit 7 = PM). The time is kept as a
  number and encoded on every read, so switching the format re-encodes it (as
  QEMU does; the chip would show the old bytes until the guest rewrote them);
* register A: UIP (bit 7) reads 1 during the 244 µs before each once-a-second
  update, computed from the clock, so a guest that waits for UIP = 0 then reads
  the time has 244 µs in which no update happens (the update itself is
  instantaneous here); DV (bits 6-4) = 11x holds the divider in reset — the
  clock stops, and the first update comes 500 ms after it is released; RS
  (bits 3-0) the periodic rate;
* register B: SET (bit 7) stops updates and turns the time bytes into plain
  memory the guest initialises; clearing it starts the clock from what the
  guest wrote (a write to a time byte without SET takes effect at once too);
  setting SET clears UIE, as the datasheet says. PIE/AIE/UIE enable the
  interrupts; DM (bit 2) binary, 24/12 (bit 1); SQWE and DSE are kept and
  ignored (there is no square-wave pin, and daylight saving is the guest's);
* register C: the flags IRQF, PF (periodic), AF (alarm), UF (update ended);
  reading it clears them and releases IRQ 8; register D: VRT (the battery is
  fine), read-only.

Interrupts: the flags are set as the chip sets them — PF at the periodic rate
whenever the divider runs, UF and AF at each update — computed from the clock
when they are looked at, not ticked. IRQ 8 (``irq(level)``) follows IRQF; the
PIC sees IRQ 8 edge-triggered, so as on a PC a guest must read register C for
its next interrupt. ``update()`` and ``next_deadline_ns()`` work as the PIT's;
missed periodic interrupts coalesce into the one PF flag there is.

Memory size bytes, from the RAM size (what QEMU writes and SeaBIOS reads):
0x15/0x16 base memory in KiB (640), 0x17/0x18 and 0x30/0x31 extended memory
above 1 MiB in KiB (at most 0xFFFF), 0x34/0x35 memory above 16 MiB in 64 KiB
units (SeaBIOS takes the RAM below 4 GiB from these when non-zero, else from
0x30/0x31), 0x5b-0x5d RAM above 4 GiB in 64 KiB units; the standard checksum
of 0x10-0x2d is kept in 0x2e/0x2f. 0x5f (CPUs - 1, for SeaBIOS) stays 0: one
vCPU.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from pykvm.devices.bus import ByteRegisters
from pykvm.devices.timed import TimedDevice

log = logging.getLogger(__name__)

INDEX_PORT = 0x70
PORTS = 2
NMI_DISABLE = 0x80
CMOS_SIZE = 128

SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR = 0x06, 0x07, 0x08, 0x09
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32
TIME_BYTES = (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY)

A_UIP = 0x80
A_DV = 0x70
A_DV_RESET = 0x60            # DV = 11x: divider chain held in reset
A_RS = 0x0F
A_DEFAULT = 0x26             # 32.768 kHz time base, 1024 Hz periodic rate
B_SET = 0x80
B_PIE = 0x40
B_AIE = 0x20
B_UIE = 0x10
B_DM_BINARY = 0x04
B_24H = 0x02
B_DEFAULT = B_24H
C_IRQF = 0x80
C_FLAGS = 0x70               # PF, AF, UF: the same bit positions as PIE, AIE, UIE in B
C_PF = 0x40
C_AF = 0x20
C_UF = 0x10
D_VRT = 0x80
HOUR_PM = 0x80
ALARM_DONT_CARE = 0xC0

_NS = 1_000_000_000
UIP_NS = 8 * _NS // 32768    # 244 µs: eight periods of the 32.768 kHz time base
_EPOCH = datetime(1970, 1, 1)
_DAY = 86400

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


def periodic_rate(rs: int) -> int:
    """Periodic interrupts per second for register A's RS bits (0: none) at 32.768 kHz."""
    if rs == 0:
        return 0
    return 32768 >> (rs + 6 if rs < 3 else rs - 1)


class Rtc(ByteRegisters, TimedDevice):
    """Offsets 0 (index, NMI mask) and 1 (data).

    The clock runs on ``clock()`` (host ns; ``time.monotonic_ns``, the PIT's, so both
    devices' deadlines share one time base and the guest's clock does not jump with
    the host's NTP corrections) and starts at the date ``time_of_day()`` gives when the
    RTC is made (host wall-clock ns since 1970, UTC). Tests pass one fake for both.

    ``update()`` raises IRQ 8 for what fell due; ``next_deadline_ns()`` is when the next
    enabled interrupt comes (None while IRQ 8 is up: register C must be read first).

    ``memory_size`` is guest RAM; ``below_4g`` how much of it sits below 4 GiB
    (default: all of it up to 4 GiB, pykvm's RAM being one flat range from 0).
    """

    def __init__(self, memory_size: int, clock: Callable[[], int] = time.monotonic_ns,
                 irq: Callable[[int], None] | None = None, *, below_4g: int | None = None,
                 time_of_day: Callable[[], int] = time.time_ns):
        self.clock = clock
        self.irq = irq
        self.cmos = bytearray(CMOS_SIZE)
        self.index = 0
        self.nmi_masked = False
        self.cmos[REG_A] = A_DEFAULT
        self.cmos[REG_B] = B_DEFAULT
        self.cmos[REG_D] = D_VRT
        self.flags = 0               # PF | AF | UF
        now = clock()
        self._offset = time_of_day() - now   # guest RTC time = clock() + offset (ns), while running
        self._stopped = None         # the guest time (ns) while the divider is held in reset
        self._set_bytes = None       # the time bytes while SET: plain memory
        self._weekday_adjust = 0     # a day of week the guest set, relative to the calendar's
        self._encoded = (None, None)
        self._line = False
        self._deadline = None
        self._since = self._guest_ns(now)        # flags are accounted up to this guest time
        self.set_memory_size(memory_size, below_4g)

    def attach(self, bus) -> None:
        """Claim ports 0x70-0x71."""
        bus.pio.register(INDEX_PORT, PORTS, self)

    # -- memory size ---------------------------------------------------------------------------
    def set_memory_size(self, memory_size: int, below_4g: int | None = None) -> None:
        below = min(memory_size, 4 * GIB) if below_4g is None else below_4g
        above = memory_size - below
        self._put(0x15, 2, min(below // KIB, 640))
        extended = min(max(below - MIB, 0) // KIB, 0xFFFF)
        self._put(0x17, 2, extended)
        self._put(0x30, 2, extended)
        self._put(0x34, 2, min(max(below - 16 * MIB, 0) // (64 * KIB), 0xFFFF))
        self._put(0x5B, 3, min(above // (64 * KIB), 0xFFFFFF))
        self._put(0x2E, 2, sum(self.cmos[0x10:0x2E]), big_endian=True)

    def _put(self, index: int, length: int, value: int, big_endian: bool = False) -> None:
        self.cmos[index:index + length] = value.to_bytes(length, "big" if big_endian else "little")

    # -- time --------------------------------------------------------------------------------------
    def _guest_ns(self, now: int) -> int:
        return self._stopped if self._stopped is not None else now + self._offset

    def _set_guest_ns(self, now: int, guest_ns: int) -> None:
        """Move the clock (callers account the flags up to ``now`` first)."""
        if self._stopped is not None:
            self._stopped = guest_ns
        else:
            self._offset = guest_ns - now
        self._since = guest_ns

    @property
    def _binary(self) -> bool:
        return bool(self.cmos[REG_B] & B_DM_BINARY)

    def _to_reg(self, value: int) -> int:
        return value if self._binary else (value // 10) << 4 | value % 10

    def _from_reg(self, value: int) -> int:
        return value if self._binary else (value >> 4) * 10 + (value & 0xF)

    def _hour_to_reg(self, hour: int) -> int:
        if self.cmos[REG_B] & B_24H:
            return self._to_reg(hour)
        return self._to_reg(hour % 12 or 12) | (HOUR_PM if hour >= 12 else 0)

    def _hour_from_reg(self, value: int) -> int:
        if self.cmos[REG_B] & B_24H:
            return self._from_reg(value)
        return self._from_reg(value & ~HOUR_PM) % 12 + (12 if value & HOUR_PM else 0)

    def _time_bytes(self, seconds: int) -> dict[int, int]:
        """The clock's bytes for ``seconds`` since 1970 in the format register B selects."""
        key = (seconds, self.cmos[REG_B] & (B_DM_BINARY | B_24H), self._weekday_adjust)
        if self._encoded[0] == key:
            return self._encoded[1]
        t = _EPOCH + timedelta(seconds=seconds)
        weekday = (t.isoweekday() + self._weekday_adjust) % 7 + 1
        encoded = {SECONDS: self._to_reg(t.second), MINUTES: self._to_reg(t.minute),
                   HOURS: self._hour_to_reg(t.hour), DAY_OF_WEEK: self._to_reg(weekday),
                   DAY_OF_MONTH: self._to_reg(t.day), MONTH: self._to_reg(t.month),
                   YEAR: self._to_reg(t.year % 100), CENTURY: self._to_reg(t.year // 100)}
        self._encoded = (key, encoded)
        return encoded

    def _seconds_from_bytes(self, regs: dict[int, int]) -> int | None:
        """Seconds since 1970 for the clock's bytes, or None if they are no valid date and time."""
        f = self._from_reg
        try:
            t = datetime(f(regs[CENTURY]) * 100 + f(regs[YEAR]), f(regs[MONTH]), f(regs[DAY_OF_MONTH]),
                         self._hour_from_reg(regs[HOURS]), f(regs[MINUTES]), f(regs[SECONDS]))
        except ValueError:
            return None
        self._weekday_adjust = (f(regs[DAY_OF_WEEK]) - 1 - t.isoweekday()) % 7
        return (t - _EPOCH) // timedelta(seconds=1)

    def _set_from_bytes(self, now: int, regs: dict[int, int]) -> None:
        """Start the clock from ``regs``, keeping the divider's phase within the second."""
        seconds = self._seconds_from_bytes(regs)
        if seconds is None:
            log.debug("RTC: the guest set an invalid date/time %s; the clock keeps its time",
                      " ".join(f"{regs[i]:02x}" for i in TIME_BYTES))
            return
        self._set_guest_ns(now, seconds * _NS + self._guest_ns(now) % _NS)

    def _updating(self) -> bool:
        """Updates happen: SET clear and the divider running."""
        return not self.cmos[REG_B] & B_SET and self._stopped is None

    # -- interrupts --------------------------------------------------------------------------------
    def _alarm_fields(self) -> tuple[list[int], list[int], list[int]] | None:
        def field(index, limit, decode):
            value = self.cmos[index]
            if value & ALARM_DONT_CARE == ALARM_DONT_CARE:
                return list(range(limit))
            v = decode(value)
            return [v] if 0 <= v < limit else []
        fields = (field(HOURS_ALARM, 24, self._hour_from_reg), field(MINUTES_ALARM, 60, self._from_reg),
                  field(SECONDS_ALARM, 60, self._from_reg))
        return fields if all(fields) else None

    def _next_alarm(self, after: int) -> int | None:
        """The first second after ``after`` whose time of day matches the alarm bytes."""
        fields = self._alarm_fields()
        if fields is None:
            return None
        hours, minutes, seconds = fields
        day = after - after % _DAY
        for start in (day, day + _DAY):
            for h in hours:
                if start + h * 3600 + 3599 <= after:
                    continue
                for m in minutes:
                    base = start + h * 3600 + m * 60
                    if base + 59 <= after:
                        continue
                    for s in seconds:
                        if base + s > after:
                            return base + s
        return None

    def _accrue(self, now: int) -> None:
        """Set the flags for what happened between the last look and ``now``."""
        g, since = self._guest_ns(now), self._since
        if g <= since:
            return
        rate = periodic_rate(self.cmos[REG_A] & A_RS)
        if rate and g * rate // _NS > since * rate // _NS:
            self.flags |= C_PF
        if self._updating():
            first, last = since // _NS, g // _NS
            if last > first:
                self.flags |= C_UF
                alarm = self._next_alarm(first)
                if alarm is not None and alarm <= last:
                    self.flags |= C_AF
        self._since = g

    def _irqf(self) -> bool:
        return bool(self.flags & self.cmos[REG_B] & C_FLAGS)

    def _refresh(self, now: int) -> None:
        """Bring the flags, IRQ 8 and the deadline up to ``now``."""
        self._accrue(now)
        level = self._irqf()
        if level != self._line:
            self._line = level
            if self.irq is not None:
                self.irq(int(level))
        self._deadline = None if level else self._next_event(now)

    def _next_event(self, now: int) -> int | None:
        """Host ns of the next flag that would raise IRQ 8, or None."""
        if self._stopped is not None:
            return None
        b, g = self.cmos[REG_B], self._guest_ns(now)
        times = []
        rate = periodic_rate(self.cmos[REG_A] & A_RS)
        if b & B_PIE and rate:
            times.append(-(-(g * rate // _NS + 1) * _NS // rate))
        if self._updating():
            if b & B_UIE:
                times.append((g // _NS + 1) * _NS)
            alarm = self._next_alarm(g // _NS) if b & B_AIE else None
            if alarm is not None:
                times.append(alarm * _NS)
        return min(times) - self._offset if times else None

    def _due(self, now: int) -> None:
        """An enabled periodic, alarm or update-ended interrupt fell due: raise IRQ 8."""
        self._refresh(now)

    # -- ports ---------------------------------------------------------------------------------
    def read_byte(self, offset: int) -> int:
        if offset != 1:
            return 0xFF              # the index register is write-only
        index = self.index
        if index > REG_D and index != CENTURY:
            return self.cmos[index]
        now = self.clock()
        if index in TIME_BYTES:
            if self._set_bytes is not None:
                return self._set_bytes[index]
            return self._time_bytes(self._guest_ns(now) // _NS)[index]
        if index == REG_A:
            uip = self._updating() and self._guest_ns(now) % _NS >= _NS - UIP_NS
            return self.cmos[REG_A] | (A_UIP if uip else 0)
        if index == REG_C:
            self._accrue(now)
            value = self.flags | (C_IRQF if self._irqf() else 0)
            self.flags = 0
            self._refresh(now)
            return value
        return self.cmos[index]

    def write_byte(self, offset: int, value: int) -> None:
        if offset == 0:
            self.index = value & 0x7F
            self.nmi_masked = bool(value & NMI_DISABLE)
            return
        if offset != 1:
            return
        index = self.index
        if index > REG_D and index != CENTURY:
            self.cmos[index] = value
            return
        now = self.clock()
        self._accrue(now)             # what happened before this write, under the old settings
        if index in TIME_BYTES:
            self._write_time_byte(now, index, value)
        elif index == REG_A:
            self._write_a(now, value)
        elif index == REG_B:
            self._write_b(now, value)
        elif index in (SECONDS_ALARM, MINUTES_ALARM, HOURS_ALARM):
            self.cmos[index] = value
        self._refresh(now)            # registers C and D are read-only

    def _write_time_byte(self, now: int, index: int, value: int) -> None:
        if self._set_bytes is not None:
            self._set_bytes[index] = value
            return
        regs = dict(self._time_bytes(self._guest_ns(now) // _NS))
        regs[index] = value
        self._set_from_bytes(now, regs)

    def _write_a(self, now: int, value: int) -> None:
        stopping = value & A_DV_RESET == A_DV_RESET
        if stopping and self._stopped is None:
            self._stopped = self._guest_ns(now)
        elif not stopping and self._stopped is not None:
            seconds, self._stopped = self._stopped // _NS, None
            self._set_guest_ns(now, seconds * _NS + _NS // 2)     # first update 500 ms later
        self.cmos[REG_A] = value & ~A_UIP

    def _write_b(self, now: int, value: int) -> None:
        was_set = self._set_bytes is not None
        if value & B_SET:
            value &= ~B_UIE
            if not was_set:
                self._set_bytes = dict(self._time_bytes(self._guest_ns(now) // _NS))
            self.cmos[REG_B] = value
        else:
            self.cmos[REG_B] = value
            if was_set:
                regs, self._set_bytes = self._set_bytes, None
                self._set_from_bytes(now, regs)
