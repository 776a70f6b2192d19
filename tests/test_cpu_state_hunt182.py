"""A stray write of a kernel's cannot change the executor's own state unseen (hunt 182).

The library's data lies next to the kernel's static `__shared__` section (pal_shared): before
it gridDim, blockDim and the table of the section's guards (pal_sguards), after it the
scheduler's state (pal::S: the fibers' saved stack pointers, the pointers to the launch's
results), the running fiber and __pal_dyn_smem. A write through a pointer past the 256-byte
guards of poison landed there: the next context switch jumped through a zeroed stack
pointer, the block-end check read a guard through an overwritten pointer (a crash reported
with the wrong thread, or a wrong report), or nothing was seen at all. The writes here are
library-relative (the library's own layout, the same in every process)."""
import subprocess
import sys

import numpy as np
import pytest

from pagedattn_lab.cpu import KernelFault, RawKernel, compiler
from tests.test_cpu_guards_hunt166 import _PAST_SHARED
from tests.test_cpu_sandbox_seal_hunt165 import _BEFORE

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the static __shared__ section is an ELF one")


def _addresses(path: str) -> dict[str, int]:
    """name -> address of every defined symbol of the library (sizeless ones too)."""
    out = subprocess.run(["nm", "--defined-only", path], capture_output=True, text=True,
                         check=True).stdout
    return {p[2]: int(p[0], 16) for p in map(str.split, out.splitlines()) if len(p) == 3}


def _data_symbols(path: str) -> dict[str, tuple[int, int]]:
    """name -> (address, size) of the library's sized data symbols."""
    out = subprocess.run(["nm", "-S", "--defined-only", path], capture_output=True, text=True,
                         check=True).stdout
    return {p[3]: (int(p[0], 16), int(p[1], 16)) for p in map(str.split, out.splitlines())
            if len(p) == 4 and p[2] in "bBdD"}


@pytest.fixture(scope="module")
def past_shared():
    """(the kernel that writes 2.0f at `a + off` (floats), the library's symbol addresses,
    its sized data symbols)."""
    kern = RawKernel(_PAST_SHARED, "past_shared")
    path = kern.compile()._builds[False][2]
    return kern, _addresses(path), _data_symbols(path)


def _write(kern, symbols, address, grid=1):
    """Launch past_shared so that thread 0 writes at `address` (library-relative)."""
    off = (address - symbols["_ZZ11past_sharedE1a"]) // 4
    kern((grid,), (32,), (np.zeros(32 * grid, np.float32), np.int32(off)))


_STATE_GUARD = 1 << 20   # scheduler.h's PAL_STATE_GUARD


def _runtime_data_names() -> set[str]:
    """The data symbols the executor's runtime objects define, local ones too: the library's
    data less the kernel's own and the toolchain's (its crt's, its C++ library's), whose
    names differ from one compiler and libc to another."""
    cmd, ident, _ = compiler.compiler()
    objects = compiler.runtime_objects(cmd, ident, compiler._fiber_mode())
    return {name for path in objects for name in _data_symbols(path)}


def test_nothing_of_the_schedulers_lies_within_a_mib_past_the_shared_section(past_shared):
    """Before: the running fiber (pal::cur) and the state (pal::S) began 0x20 and 0x40 bytes
    past the section's end: 2.0f written 0x400, 0x4000, 0x10000 or 0x40000 bytes past it went
    into a fiber's saved state or the pointers to the launch's results and passed unseen (a
    zeroed saved stack pointer or results pointer crashed the worker at the next switch,
    reported with no thread or another's). Now nothing of the runtime's lies between the
    section and the state's area, whose state begins 1 MiB into it, past a guard (the
    toolchain's data, such as GCC's crt flag, and the kernel's own variables may)."""
    _, symbols, data = past_shared
    runtime = _runtime_data_names()
    assert "_ZN3pal10state_areaE" in runtime, sorted(runtime)   # (the runtime's, read)
    near = [name for name, (address, _) in data.items()
            if 0 <= address - symbols["__stop_pal_shared"] < _STATE_GUARD and name in runtime]
    assert near == ["_ZN3pal10state_areaE"], near
    assert symbols["_ZN3pal10state_areaE"] - symbols["__stop_pal_shared"] < 0x20000


@pytest.mark.parametrize("into", [0x100, 0x80000, -0x100])
def test_a_write_into_the_guards_around_the_schedulers_state_faults_where_it_happens(
        past_shared, into):
    """The guards (1 MiB before the state, 1 MiB after it; `into` < 0 counts back from the
    area's end) are inaccessible while blocks run: a stray write there faults with its
    thread, before it can go on into the state."""
    kern, symbols, data = past_shared
    start, size = data["_ZN3pal10state_areaE"]
    with pytest.raises(KernelFault) as info:
        _write(kern, symbols, start + into if into > 0 else start + size + into)
    e = info.value
    assert (e.access, e.thread, e.block) == ("write", (0, 0, 0), (0, 0, 0)), str(e)


@pytest.mark.parametrize("target", ["gridDim", "blockDim", "__start_pal_sguards",
                                    "__pal_dyn_smem"])
def test_a_write_to_a_runtime_variable_the_kernel_may_only_read_is_reported(past_shared,
                                                                           target):
    """gridDim, blockDim and the guards' table lie before the section, __pal_dyn_smem after
    it. Before: 2.0f written into gridDim.x or blockDim.x passed unseen (the scheduler took
    the next block's index and its threads' from them); into the guards' table or the
    dynamic shared memory pointer, the block-end check or the next block's poisoning went
    through the broken pointer and crashed, named as a read by the block's last thread. Now
    each is checked after the block (the scheduler keeps its own copies): a write before or
    past static __shared__ memory, with the block."""
    kern, symbols, _ = past_shared
    with pytest.raises(KernelFault) as info:
        _write(kern, symbols, symbols[target], grid=2)
    e = info.value
    assert (e.region, e.access, e.block, getattr(e, "variable", None)) == (
        "static shared memory", "write", (0, 0, 0), "a"), str(e)
    named = {"gridDim": "`gridDim`", "blockDim": "`blockDim`",
             "__pal_dyn_smem": "the address of `extern __shared__` memory"}.get(target)
    assert (f"It changed {named}, which kernel code can only read" in str(e)) == bool(named), \
        str(e)


def test_the_symbol_table_walk_reads_what_nm_read_for_the_guard_reports(past_shared):
    """report_checks reads the section's bounds and the read-only runtime variables off the
    library's symbol table itself (kernel_object.elf_symbols), where it ran `nm`: the same
    addresses and sizes as nm's on a built kernel."""
    from pagedattn_lab.cpu import race, report_checks   # noqa: PLC0415
    from pagedattn_lab.cpu.report import LaunchInfo   # noqa: PLC0415
    kern, symbols, _ = past_shared
    path = kern.compile()._builds[False][2]
    info = LaunchInfo("past_shared", (), (1, 1, 1), (1, 1, 1), 0, 0, [], [],
                      source=(path, "k.cu", ""))
    walked = report_checks._library_symbols(info)
    for bound in ("__start_pal_shared", "__stop_pal_shared"):
        assert walked[bound][0] == symbols[bound], bound
    read_only = {name: (start, size) for start, size, name in race.data_symbols(path)
                 if name in report_checks._READ_ONLY}
    assert len(read_only) == 3, read_only
    assert {name: walked[name] for name in read_only} == read_only


def test_a_read_just_before_a_global_array_gets_nan_and_is_not_stopped():
    """Known gap (README, "Not supported, or not caught"): an array argument ends against its
    guard page, so its start lies inside a page whose bytes before it hold signalling NaNs:
    `x[-1]` reads NaN there, the launch goes on (a page before each argument would need its
    size to be a multiple of the page)."""
    x, y = np.arange(1000, dtype=np.float32), np.zeros(1, np.float32)
    RawKernel(_BEFORE, "before")((1,), (32,), (x, y, np.int64(-1), np.int32(0)))
    assert np.isnan(y[0])
