"""Flat images and boot sectors: placement, defaults, entry state and refusals."""

import pytest

from pykvm.x86.state import CS, RDX
from pykvm.errors import BadInputError
from pykvm.loaders import bootsector, load
from pykvm.memory import GuestMemory
from pykvm.x86 import boot

from tests.loaders.loader_images import snapshot

MIB = 1 << 20


@pytest.fixture
def mem():
    with GuestMemory(4 * MIB) as m:
        yield m


def test_flat_real_mode_defaults(mem):
    img = load(mem, b"\xeb\xfe", "flat")
    assert (img.format, img.mode, img.entry) == ("flat", "real", 0x7C00)
    assert mem.read(0x7C00, 2) == b"\xeb\xfe"
    assert [(r.start, r.size) for r in img.load_ranges] == [(0x7C00, 2)]
    assert img.initial_state().rip == 0x7C00


@pytest.mark.parametrize("mode", ["protected", "long"])
def test_flat_protected_and_long_defaults_write_boot_structures(mem, mode):
    img = load(mem, b"\x90" * 100 + b"\xf4", "flat", mode=mode, entry=0x100064)
    assert img.mode == mode and img.entry == 0x100064
    assert mem.read(0x100000, 101) == b"\x90" * 100 + b"\xf4"
    assert mem.read(boot.GDT_ADDR, boot.GDT_LIMIT + 1) == boot.build_gdt()
    if mode == "long":
        assert mem.read_u64(boot.PML4_ADDR) == boot.PDPT_ADDR | 3
    else:
        assert mem.read_u64(boot.PML4_ADDR) == 0
    whats = [r.what for r in img.load_ranges]
    assert whats[0] == "flat image" and "loader GDT" in whats


def test_flat_custom_load_addr(mem):
    img = load(mem, b"abc", "flat", mode="protected", load_addr=0x200000)
    assert img.entry == 0x200000 and mem.read(0x200000, 3) == b"abc"


def test_flat_high_real_mode_entry(mem):
    img = load(mem, b"\xf4" * 0x10, "flat", load_addr=0x12340, entry=0x12345)
    state = img.initial_state()
    assert state.seg[CS].selector == 0x1000 and state.rip == 0x2345


@pytest.mark.parametrize("kwargs,message", [
    (dict(data=b""), "empty"),
    (dict(data=b"x" * (5 * MIB), mode="protected"), "larger than guest RAM"),
    (dict(data=b"x" * 16, mode="protected", load_addr=4 * MIB - 8), "outside guest RAM"),
    (dict(data=b"x" * 16, mode="protected", load_addr=0x7000), "reserved area"),
    (dict(data=b"x" * 16, mode="long", load_addr=0x1000), "reserved area"),
    (dict(data=b"x" * 16, load_addr=0x100), "reserved area"),
    (dict(data=b"x" * 16, mode="protected", entry=0x100010), "outside the loaded image"),
    (dict(data=b"x" * 16, load_addr=0x100000), "not below 1 MiB"),
    (dict(data=b"x" * 16, mode="v86"), "unknown boot mode"),
    (dict(data=b"x" * 16, load_addr=-16), "negative"),
    (dict(data=b"x" * 16, cmdline="quiet"), "command line only applies"),
])
def test_flat_refusals_leave_memory_untouched(mem, kwargs, message):
    before = snapshot(mem)
    data = kwargs.pop("data")
    with pytest.raises(BadInputError, match=message):
        load(mem, data, "flat", **kwargs)
    assert snapshot(mem) == before


def test_flat_real_mode_fits_below_reserved_area_only_above_bda(mem):
    img = load(mem, b"\xf4", "flat", load_addr=0x500)
    assert img.entry == 0x500


def test_flat_needs_low_ram_for_boot_structures():
    with GuestMemory(1 * MIB, base=MIB) as m:
        before = snapshot(m)
        with pytest.raises(BadInputError, match="loader GDT"):
            load(m, b"\xf4", "flat", mode="protected", load_addr=MIB)
        assert snapshot(m) == before


def _sector(fill=b"\xf4"):
    return fill * 510 + b"\x55\xaa"


def test_bootsector_loads_at_7c00_with_dl(mem):
    img = load(mem, _sector(), "bootsector")
    assert (img.mode, img.entry, img.registers) == ("real", 0x7C00, {"rdx": 0x80})
    assert mem.read(0x7C00, 512) == _sector()
    state = img.initial_state()
    assert state.gpr[RDX] == 0x80 and state.rip == 0x7C00 and state.seg[CS].selector == 0


@pytest.mark.parametrize("data,kwargs,message", [
    (b"\xf4" * 511, {}, "exactly 512"),
    (b"\xf4" * 1024, {}, "exactly 512"),
    (b"\xf4" * 512, {}, "signature"),
    (b"\xf4" * 510 + b"\xaa\x55", {}, "signature"),
    (_sector(), dict(mode="protected"), "real mode"),
    (_sector(), dict(load_addr=0x8000), "load at 0x7c00"),
    (_sector(), dict(entry=0x7E00), "outside the boot sector"),
])
def test_bootsector_refusals(mem, data, kwargs, message):
    before = snapshot(mem)
    with pytest.raises(BadInputError, match=message):
        load(mem, data, "bootsector", **kwargs)
    assert snapshot(mem) == before


def test_bootsector_in_tiny_ram():
    with GuestMemory(0x7000) as m:
        with pytest.raises(BadInputError, match="outside guest RAM"):
            load(m, _sector(), "bootsector")
    assert bootsector.is_bootsector(_sector())


def test_unknown_format(mem):
    with pytest.raises(BadInputError, match="unknown image format"):
        load(mem, b"x", "coff")


def test_auto_treats_sector_with_flat_options_as_flat(mem):
    sector = _sector()
    img = load(mem, sector, mode="protected")
    assert (img.format, img.mode, img.entry) == ("flat", "protected", 0x100000)
    img = load(mem, sector, load_addr=0x9000)
    assert (img.format, img.mode, img.entry) == ("flat", "real", 0x9000)
    assert load(mem, sector).format == "bootsector"
    with pytest.raises(BadInputError, match="real mode"):
        load(mem, sector, "bootsector", mode="protected")
