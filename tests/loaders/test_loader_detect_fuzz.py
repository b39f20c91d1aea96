"""Format detection, and hypothesis fuzzing: malformed images give BadInputError and nothing else."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pykvm.errors import BadInputError
from pykvm.loaders import detect, load
from pykvm.loaders import elf as elf_loader
from pykvm.loaders import multiboot
from pykvm.memory import GuestMemory

from tests.loaders.loader_images import Seg, aout_kernel, elf, mb_header, snapshot

MIB = 1 << 20
ELF32 = elf(32, [Seg(0x100000, b"\xf4" * 32, memsz=0x100), Seg(0x200000, b"data")], 0x100000)
ELF64 = elf(64, [Seg(0x100000, b"\xf4" * 32, memsz=0x100)], 0x100000)
MB_ELF = elf(32, [Seg(0x100000, b"\xf4" * 32)], 0x100000, prefix=mb_header(0x3))
MB_AOUT = aout_kernel()


@pytest.mark.parametrize("data,fmt", [
    (MB_AOUT, "multiboot"),
    (MB_ELF, "multiboot"),          # multiboot wins over ELF
    (ELF32, "elf"),
    (ELF64, "elf"),
    (b"\xf4" * 510 + b"\x55\xaa", "bootsector"),
    (b"\xf4" * 511 + b"\x55\xaa", "flat"),
    (b"\xf4" * 512, "flat"),
    (b"", "flat"),
    (b"\x7fEL", "flat"),
])
def test_detect(data, fmt):
    assert detect(data) == fmt


@pytest.fixture(scope="module")
def mem():
    with GuestMemory(4 * MIB) as m:
        yield m


_fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mutations(seed: bytes):
    """Truncations, byte flips and splices of a valid image."""
    n = len(seed)
    return st.one_of(
        st.integers(0, n).map(lambda k: seed[:k]),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
            lambda edits: bytes(_apply(seed, edits))),
        st.tuples(st.integers(0, n), st.binary(max_size=64)).map(lambda t: seed[:t[0]] + t[1] + seed[t[0]:]),
    )


def _apply(seed, edits):
    b = bytearray(seed)
    for i, v in edits:
        b[i] = v
    return b


def _only_bad_input(fn, data):
    try:
        fn(data)
    except BadInputError as e:
        assert str(e) and "\n" not in str(e)


@_fuzz
@given(st.binary(max_size=600))
def test_parse_elf_random_bytes(data):
    _only_bad_input(elf_loader.parse_elf, b"\x7fELF" + data)


@_fuzz
@given(st.one_of(_mutations(ELF32), _mutations(ELF64)))
def test_parse_elf_mutated(data):
    _only_bad_input(elf_loader.parse_elf, data)


@_fuzz
@given(st.one_of(_mutations(MB_AOUT), _mutations(MB_ELF), st.binary(max_size=256).map(
    lambda b: mb_header(0x10000) + b)))
def test_multiboot_header_mutated(data):
    _only_bad_input(multiboot.parse_header, data)


@_fuzz
@given(data=st.one_of(_mutations(ELF32), _mutations(ELF64), _mutations(MB_AOUT), _mutations(MB_ELF),
                      st.binary(max_size=1024)),
       fmt=st.sampled_from(["auto", "elf", "multiboot", "bootsector", "flat"]))
def test_load_mutated_only_bad_input_and_untouched_on_error(mem, data, fmt):
    mem.fill(0, mem.size, 0x5A)
    before = snapshot(mem)
    try:
        img = load(mem, data, fmt, mode="protected" if fmt == "flat" else None)
    except BadInputError as e:
        assert str(e) and "\n" not in str(e)
        assert snapshot(mem) == before
    else:
        for r in img.load_ranges:
            assert mem.contains(r.start, r.size)
