"""scripts/build_guests.py: every guest builds, builds are incremental, failures are clear.

The builds go to a temporary directory (the sources are the real guests/), so these
tests never race with anything else using guests/build/.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pykvm.errors import BadInputError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "build_guests.py"

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or shutil.which("ld") is None or shutil.which("objcopy") is None,
    reason="needs gcc, GNU ld and objcopy",
)


def _load_script():
    spec = importlib.util.spec_from_file_location("build_guests_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bg = _load_script()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Every guest built once from the real sources into a private directory."""
    return bg.build_all(out_dir=tmp_path_factory.mktemp("guests-build"))


def _copy_sources(dest: Path) -> Path:
    src = dest / "guests"
    shutil.copytree(REPO / "guests", src, ignore=shutil.ignore_patterns("build"))
    return src


def _elf_entry(path: Path) -> int:
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF"
    if data[4] == 1:  # ELFCLASS32
        return struct.unpack_from("<I", data, 24)[0]
    return struct.unpack_from("<Q", data, 24)[0]


def test_every_guest_builds(built):
    assert set(built) == set(bg.RECIPES)
    for name, path in built.items():
        recipe = bg.RECIPES[name]
        assert path.is_file() and path.stat().st_size > 0, name
        elf = path.with_suffix(".elf")
        assert elf.is_file(), name
        assert path.suffix == (".bin" if recipe.flat else ".elf")


def test_flat_images_start_at_their_entry(built):
    # The loaders jump to the load address: the ELF's entry must be there too.
    load_address = {16: 0x7C00, 32: 0x100000, 64: 0x100000}
    multiboot = {"mbshim": 0x1000000}   # a.out-kludge multiboot kernel: its header says where
    for name, path in built.items():
        recipe = bg.RECIPES[name]
        if recipe.flat and not recipe.rom:
            want = multiboot.get(name, load_address[recipe.bits])
            assert _elf_entry(path.with_suffix(".elf")) == want, name


def test_roms_have_the_reset_vector_16_bytes_below_their_end(built):
    for name, path in built.items():
        if bg.RECIPES[name].rom:
            assert _elf_entry(path.with_suffix(".elf")) == 0xFFFFFFF0, name
            assert path.stat().st_size % 0x10000 == 0


def test_bootsector_is_512_bytes_with_signature(built):
    data = built["bootsector"].read_bytes()
    assert len(data) == 512
    assert data[510:] == b"\x55\xaa"
    # Same code as boot16to64, padded.
    flat = built["boot16to64"].read_bytes()
    assert data[: len(flat)] == flat


def test_real_mode_images_fit_below_64k(built):
    for name in ("boot16to64", "selftest16", "cwork16"):
        assert 0x7C00 + built[name].stat().st_size <= 0x10000


def test_counted_images_have_the_documented_layout(built):
    for name, default in (("exits64", 100000), ("loop32", 20000)):
        data = built[name].read_bytes()
        assert data[0] == 0xEB and data[1] == 0x10 - 2, name  # jmp short to offset 0x10
        assert int.from_bytes(data[bg.COUNT_OFFSET:bg.COUNT_OFFSET + 8], "little") == default


def test_with_count_patches_only_the_count(built):
    data = built["exits64"].read_bytes()
    patched = bg.with_count(data, 12345)
    assert len(patched) == len(data)
    assert int.from_bytes(patched[8:16], "little") == 12345
    assert patched[:8] == data[:8] and patched[16:] == data[16:]
    with pytest.raises(BadInputError):
        bg.with_count(data, -1)


def test_loop32_checksum_model_matches_known_runs():
    # Values observed from the guest itself on an independent x86 model.
    assert bg.loop32_checksum(0) == 0
    assert bg.loop32_checksum(7) == 0x4E8E02A6
    assert bg.loop32_checksum(20000) == 0xBBA57EDA


def test_multiboot_header_is_valid(built):
    data = built["multiboot32"].read_bytes()
    for offset in range(0, min(len(data), 8192) - 12, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, offset)
        if magic == 0x1BADB002:
            assert (magic + flags + checksum) & 0xFFFFFFFF == 0
            assert flags & 2  # asks for the memory fields it prints
            break
    else:
        pytest.fail("no multiboot header in the first 8 KiB")
    assert _elf_entry(built["multiboot32"]) >= 0x100000


def test_second_build_does_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = bg.build("hello64", out_dir=out)
    stamp = first.stat().st_mtime_ns
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(bg.subprocess, "run", lambda *a, **k: calls.append(a) or real_run(*a, **k))
    second = bg.build("hello64", out_dir=out)
    assert second == first
    assert calls == []
    assert second.stat().st_mtime_ns == stamp


def test_concurrent_builds_of_one_guest_build_it_once(tmp_path, monkeypatch):
    """pytest-xdist workers starting the same guest at once: one builds, the others wait for its
    lock and find the outputs fresh."""
    out = tmp_path / "out"
    builds = []
    real_build = bg._build
    monkeypatch.setattr(bg, "_build", lambda r, src, out: builds.append(r.name) or real_build(r, src, out))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: bg.build("cwork32", out_dir=out), range(4)))
    assert builds == ["cwork32"] and len(set(results)) == 1 and results[0].is_file()
    assert sorted(p.name for p in out.iterdir()) == [".cwork32.lock", "cwork32.bin", "cwork32.deps", "cwork32.elf"]


def test_a_touched_header_triggers_a_rebuild(tmp_path):
    src = _copy_sources(tmp_path)
    out = tmp_path / "out"
    image = bg.build("hello64", src_dir=src, out_dir=out)
    # Age the outputs, then touch a header hello64 includes: it must rebuild.
    old = image.stat().st_mtime_ns - 100_000_000_000
    for path in bg.outputs("hello64", out):
        os.utime(path, ns=(old, old))
    os.utime(src / "include" / "guest_asm.h")
    bg.build("hello64", src_dir=src, out_dir=out)
    assert image.stat().st_mtime_ns > old
    # A header hello64 does not include leaves it alone, however new.
    stamp = image.stat().st_mtime_ns
    future = stamp + 100_000_000_000
    os.utime(src / "include" / "pykvm_guest.h", ns=(future, future))
    bg.build("hello64", src_dir=src, out_dir=out)
    assert image.stat().st_mtime_ns == stamp


def test_force_rebuilds(tmp_path):
    out = tmp_path / "out"
    image = bg.build("hello64", out_dir=out)
    stamp = image.stat().st_mtime_ns
    os.utime(image, ns=(stamp - 10_000_000_000, stamp - 10_000_000_000))
    old = image.stat().st_mtime_ns
    bg.build("hello64", out_dir=out, force=True)
    assert image.stat().st_mtime_ns > old


def test_broken_source_gives_a_clear_error(tmp_path):
    src = _copy_sources(tmp_path)
    (src / "hello64.S").write_text("    .code64\n_start:\n    movq %rax, %nosuchreg\n")
    with pytest.raises(bg.GuestBuildError) as info:
        bg.build("hello64", src_dir=src, out_dir=tmp_path / "out")
    assert isinstance(info.value, BadInputError)
    message = str(info.value)
    assert "hello64.S" in message and "nosuchreg" in message  # the assembler's own words
    assert not (tmp_path / "out" / "hello64.bin").exists()


def test_broken_c_source_shows_the_compiler_error(tmp_path):
    src = _copy_sources(tmp_path)
    (src / "cwork32.c").write_text("int main(void) { return undeclared_thing; }\n")
    with pytest.raises(bg.GuestBuildError, match="undeclared_thing"):
        bg.build("cwork32", src_dir=src, out_dir=tmp_path / "out")


def test_oversized_bootsector_is_refused(tmp_path):
    src = _copy_sources(tmp_path)
    (src / "bootsector.S").write_text(
        '.code16\n.section .text.entry, "ax"\n_start:\n.fill 600, 1, 0x90\n')
    with pytest.raises(bg.GuestBuildError, match="512 bytes"):
        bg.build("bootsector", src_dir=src, out_dir=tmp_path / "out")


def test_unknown_guest(tmp_path):
    with pytest.raises(bg.GuestBuildError, match="unknown guest 'nope'.*hello64"):
        bg.build("nope", out_dir=tmp_path)


def test_missing_source_file(tmp_path):
    src = _copy_sources(tmp_path)
    (src / "hello64.S").unlink()
    with pytest.raises(bg.GuestBuildError, match="missing input"):
        bg.build("hello64", src_dir=src, out_dir=tmp_path / "out")


def test_missing_toolchain(tmp_path, monkeypatch):
    monkeypatch.setattr(bg.shutil, "which", lambda name: None)
    with pytest.raises(bg.GuestBuildError, match="'gcc' is not on PATH"):
        bg.build("hello64", out_dir=tmp_path / "out")


def test_cli_lists_and_reports_errors(capsys, tmp_path):
    assert bg.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in bg.RECIPES)
    assert bg.main(["no-such-guest"]) == BadInputError.exit_code
    assert "unknown guest" in capsys.readouterr().err


def test_cli_runs_as_a_script():
    result = subprocess.run([sys.executable, str(SCRIPT), "hello64"], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("hello64.bin")
