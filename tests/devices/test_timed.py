"""TimedDevice: one comparison until the deadline, then the device's _due."""

from pykvm.devices.timed import TimedDevice


class Ticker(TimedDevice):
    def __init__(self):
        self.now = 100
        self.clock = lambda: self.now
        self.due = []

    def _due(self, now):
        self.due.append(now)
        self._deadline = now + 10


def test_no_deadline_no_work():
    t = Ticker()
    t.update()
    assert t.due == [] and t.next_deadline_ns() is None


def test_due_at_the_deadline_with_the_given_or_clock_time():
    t = Ticker()
    t._deadline = 150
    t.update(149)
    assert t.due == []
    t.update(150)
    assert t.due == [150] and t.next_deadline_ns() == 160
    t.now = 170
    t.update()
    assert t.due == [150, 170]
