"""The compiled tier (pykvm.emulator.compiler): blocks and regions as single functions.

Each program runs three ways -- per instruction (``interp``), compiled as soon as possible
(``eager``), and tiered with thresholds low enough that blocks and then regions form in a short
run -- and must end in the same architectural state, with the same instruction count, whether
it halts, faults mid-region (exact RIP, registers, flags), rewrites the code it is running or
is interrupted. The bounded loop (``run(batch=...)``) is here too.
"""

from __future__ import annotations

import pytest

from pykvm.emulator import compiler
from pykvm.pvm import Events
from tests.emulator.asm import HAVE_AS, assemble
from tests.emulator.machine import protected_mode, real_mode

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")
ORG = 0x100000
TIERS = ("interp", "eager", "tiered")


@pytest.fixture(autouse=True)
def low_thresholds(monkeypatch):
    """Tiered compilation after a few runs, so a short program forms blocks and regions."""
    monkeypatch.setattr(compiler, "BLOCK_AT", 3)
    monkeypatch.setattr(compiler, "REGION_AT", 3)
    monkeypatch.setattr(compiler, "HOT_WINDOW", 60.0)


def state_of(emu):
    st = emu.state
    return (list(st.gpr[:8]), st.rip, emu.get_flags(), st.halted, emu.instructions_executed,
            [(s.selector, s.base, s.limit) for s in st.seg[:6]])


def run_all(make, chunk=100_000, limit=2_000_000):
    """Run ``make()``'s emulator in each tier; returns {tier: (final state, emulator)}."""
    results = {}
    for tier in TIERS:
        emu, mem, _ = make()
        emu.tier = tier
        total = 0
        while not emu.state.halted and total < limit:
            n = emu.run(min(chunk, limit - total))
            total += n
            if n == 0:
                break
        results[tier] = (state_of(emu), emu, mem)
    return results


def assert_same(results):
    reference = results["interp"][0]
    for tier, (state, _, _) in results.items():
        assert state == reference, tier


def regions(emu):
    return [u for cache in emu._caches.values() for blk in cache.values() for u in (blk.units or ())
            if u.region]


LOOP = """
    mov ecx, 500
    xor eax, eax
    mov esi, 0x200000
1:  mov edx, [esi + ecx*4]
    add edx, ecx
    mov [esi + ecx*4], edx
    add eax, edx
    cmp edx, 300
    jb 2f
    sub eax, 7
    adc eax, 0
2:  rol eax, 3
    dec ecx
    jnz 1b
    hlt
"""


def test_a_hot_loop_becomes_a_region_and_ends_where_the_closures_end():
    results = run_all(lambda: protected_mode(assemble(LOOP, 32, ORG), mem_size=4 << 20))
    assert_same(results)
    assert regions(results["tiered"][1]), "no region formed"
    assert results["eager"][1].units_compiled > 0
    assert results["interp"][1].units_compiled == 0


def test_small_budgets_stop_inside_regions_at_the_same_places():
    """run(n) for odd n: a region only enters a block that fits, the rest runs per instruction."""
    for chunk in (1, 3, 7, 13):
        assert_same(run_all(lambda: protected_mode(assemble(LOOP, 32, ORG), mem_size=4 << 20), chunk=chunk))


FAULT_IN_REGION = """
    mov ecx, 100
    mov esi, 0x3ff000          # the loop walks up to the end of 4 MiB of RAM ...
    xor eax, eax
1:  add eax, [esi]
    add esi, 0x100
    inc ebx
    cmp ecx, 1
    jne 2f
    mov edx, 0x12345678        # ... and on the last pass divides by zero, mid-block
    xor edi, edi
    div edi
2:  dec ecx
    jnz 1b
    hlt
"""


def test_a_fault_mid_region_leaves_the_exact_state():
    """#DE on the last pass (the IDT is empty: it ends in a triple fault, the state at the
    fault is what delivery saw). Registers, flags and RIP are compared at the moment of the
    fault, through an observer on delivery."""
    seen = {}

    def make():
        emu, mem, bus = protected_mode(assemble(FAULT_IN_REGION, 32, ORG), mem_size=4 << 20)
        return emu, mem, bus

    from pykvm.emulator import TripleFault
    for tier in TIERS:
        emu, _, _ = make()
        emu.tier = tier
        snapshots = []
        emu.delivery_observer = lambda vector, linear, size, emu=emu, snapshots=snapshots: snapshots.append(
            (vector, state_of(emu)))
        original = emu.get_flags
        try:
            while not emu.state.halted:
                emu.run(37)
        except TripleFault:
            pass
        seen[tier] = snapshots[:1] or [("none", state_of(emu))]
        del original
    assert seen["eager"] == seen["interp"]
    assert seen["tiered"] == seen["interp"]


def with_idt(source: str, vectors) -> callable:
    """A protected-mode program whose IDT sends ``vectors`` to ``handler`` (a label in it)."""
    from pykvm.x86 import descriptors as D
    from tests.emulator.machine import install_gdt, install_idt, standard_gdt

    code = assemble(source, 32, ORG)
    handler = ORG + code.index(bytes.fromhex("90909090")) + 4      # the handler follows four NOPs

    def make():
        emu, mem, bus = protected_mode(code, mem_size=4 << 20)
        install_gdt(emu, mem, standard_gdt())
        install_idt(emu, mem, {v: D.encode_gate(0x08, handler, D.SYS_INT_GATE32) for v in vectors})
        return emu, mem, bus
    return make


def test_a_fault_mid_region_with_an_idt_resumes_identically():
    """The same with a handler that steps over the DIV: the run goes on to the HLT."""
    source = FAULT_IN_REGION + """
        nop
        nop
        nop
        nop
        add dword ptr [esp], 2       # past the 2-byte DIV
        mov edi, 1
        iretd
    """
    assert_same(run_all(with_idt(source, [0])))


SELF_MODIFYING = """
    mov ecx, 60
    xor eax, eax
1:  add eax, 1               # the loop rewrites this immediate as it goes
    mov byte ptr [1b + 2], cl
    mov byte ptr [3f + 1], cl
3:  mov bl, 0
    add edx, ebx
    dec ecx
    jnz 1b
    hlt
"""


def test_stores_into_the_running_region_take_effect_at_once():
    results = run_all(lambda: protected_mode(assemble(SELF_MODIFYING, 32, ORG)))
    assert_same(results)
    assert results["interp"][0][0][2] != 0


REAL_MODE_LOOP = """
    mov cx, 300
    xor ax, ax
    mov bx, 0x2000
1:  add ax, [bx]
    mov [bx], ax
    add bx, 2
    and bx, 0x2fff
    sbb dx, 0
    loop 1b
    hlt
"""


def test_real_mode_loops_compile_the_same():
    assert_same(run_all(lambda: real_mode(assemble(REAL_MODE_LOOP, 16, 0x7C00))))


def test_an_interrupt_that_comes_up_inside_a_region_is_taken_at_the_next_block():
    """INTR raised between two runs while IF = 1: every tier takes it at the same boundary."""
    source = """
        sti
        mov ecx, 2000
    1:  add eax, ecx
        dec ecx
        jnz 1b
        hlt
        nop
        nop
        nop
        nop
        inc esi
        iretd
    """

    class Controller:
        def __init__(self, emu):
            self.emu = emu
            self.raised = False

        def acknowledge(self):
            self.emu.set_intr(False)
            return 0x20

    states = {}
    for tier in TIERS:
        emu, _, _ = with_idt(source, [0x20])()
        emu.tier = tier
        emu.interrupt_controller = controller = Controller(emu)
        total = 0
        while not emu.state.halted:
            total += emu.run(500)
            if total >= 3000 and not controller.raised:
                emu.set_intr(True)                              # as the PIC would, between runs
                controller.raised = True
        states[tier] = state_of(emu)
    assert states["eager"] == states["interp"] == states["tiered"]
    assert states["interp"][0][6] == 1          # ESI: the handler ran once


def test_the_batch_bound_is_checked_at_block_exits_without_returning():
    """run(n, batch): with nothing pending the emulator runs on past each batch; an event or a
    device access seen at a batch boundary ends the run there."""
    for tier in TIERS:
        emu, _, bus = protected_mode(assemble(LOOP, 32, ORG), mem_size=4 << 20)
        emu.tier = tier
        emu.events = events = Events()
        assert emu.run(1_000, batch=13) == 1_000          # nothing pending: the whole budget
        events.pending = True
        ran = emu.run(1_000, batch=13)
        assert 13 <= ran < 13 + 64, tier                     # back at the first boundary after 13
        events.pending = False
        assert emu.run(1_000, batch=13) == 1_000

    # A device access during the batch: back at the boundary after it (every block here does one).
    for tier in TIERS:
        emu, _, bus = protected_mode(assemble("1: out 0x80, al\n inc eax\n jmp 1b", 32, ORG))
        emu.tier = tier
        emu.events = Events()
        ran = emu.run(1_000, batch=13)
        assert 13 <= ran <= 13 + 2, tier
        assert bus.accesses == (ran + 2) // 3           # out, inc, jmp: one access in three


def test_breakpoint_blocks_are_never_compiled():
    emu, _, _ = protected_mode(assemble(LOOP, 32, ORG), mem_size=4 << 20)
    emu.tier = "eager"
    target = ORG + len(assemble(LOOP.split("1:")[0], 32, ORG))
    emu.set_breakpoints([target])
    hits = 0
    emu.breakpoint_observer = lambda address: None
    for _ in range(5):
        emu.run(100_000)
        assert emu.breakpoint_hit == target
        assert (emu.state.seg[1].base + emu.state.rip) == target
        hits += 1
        emu.breakpoints_armed = False
        emu.step()
        emu.breakpoints_armed = True
    guarded = [blk for cache in emu._caches.values() for blk in cache.values() if blk.guarded]
    assert guarded and all(blk.unit is None for blk in guarded)
    assert hits == 5
