"""Mends of the CPU executor from a reader's findings on hunts 159-166 (hunt 174)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab.cpu import KernelFault, RawKernel
from pagedattn_lab.cpu import race, report_checks
from pagedattn_lab.cpu.source import guard_static_shared
from tests.test_cpu_guards_hunt166 import _PAST_SHARED

CPU = Path(__file__).resolve().parents[1] / "pagedattn_lab" / "cpu"

# Three template functions that source.py's _TEMPLATE_HEAD missed before: block b loads the
# first b slots of a __shared__ array only, so every other slot read is unwritten there.
_BODY = """{
        __shared__ float s[32];
        if ((int)threadIdx.x < b) s[threadIdx.x] = 1.0f + threadIdx.x;
        __syncthreads();
        return s[threadIdx.x];
    }"""
_MISSED_TEMPLATES = {
    "member_after_access_specifier": (
        "struct L {\npublic:\n    template <int N> __device__ float load(int b) " + _BODY +
        "\n};\n", "L().load<32>(blockIdx.x)"),
    "auto_parameter": ("__device__ float load(auto b) " + _BODY + "\n", "load((int)blockIdx.x)"),
    "braces_in_a_default_argument": (
        "template <int N>\n__device__ float load(int b, int c = int{4}) " + _BODY + "\n",
        "load<32>(blockIdx.x)"),
}


@pytest.mark.parametrize("case", sorted(_MISSED_TEMPLATES))
def test_a_missed_template_heads_shared_array_is_poisoned_before_each_block(case):
    """Before: no PAL_SPOISON after the declaration (GCC drops a template's section
    attribute), so block b read block b-1's values (or .bss zeros), and a kernel that forgot
    to load slots passed. Now each unwritten slot reads the poison (NaN), as the kernel's
    own __shared__ arrays do."""
    helper, call = _MISSED_TEMPLATES[case]
    src = (helper + 'extern "C" __global__ void missed(float* out)\n{\n'
           f"    out[blockIdx.x * 32 + threadIdx.x] = {call};\n}}\n")
    assert "PAL_SPOISON(s)" in guard_static_shared(src)
    out = np.zeros(3 * 32, np.float32)
    RawKernel(src, "missed")((3,), (32,), (out,), workers=1)
    rows = out.reshape(3, 32)
    for b in range(3):
        assert rows[b, :b].tolist() == [1.0 + t for t in range(b)]
        assert np.isnan(rows[b, b:]).all(), (b, rows[b].tolist())


def test_a_shared_guard_report_reads_the_symbol_table_once(monkeypatch):
    """Before: shared_guard_error ran `nm --defined-only` on the library twice (once for the
    array before the write, once for the one after). The report reads the section's bounds
    off the library's symbol table itself now (report_checks), once for all its look-ups,
    and runs `nm` once, for the static `__shared__` arrays' names (race.data_symbols)."""
    kern = RawKernel(_PAST_SHARED, "past_shared")
    kern.compile()
    reads, tools = [], []
    real_read, real_tool = report_checks.elf_bytes, race.binutils_output
    monkeypatch.setattr(report_checks, "elf_bytes",
                        lambda path: reads.append(path) or real_read(path))
    monkeypatch.setattr(race, "binutils_output",
                        lambda *args: tools.append(args) or real_tool(*args))
    # (another test may have read this library)
    report_checks._symbols_at.cache_clear()
    race.data_symbols.cache_clear()
    with pytest.raises(KernelFault) as info:
        kern((1,), (32,), (np.zeros(32, np.float32), np.int32(32)))
    assert info.value.variable == "a", str(info.value)
    assert len(reads) == 1, reads
    assert sum(args[:2] == ("nm", "-C") for args in tools) == 1, tools


def test_the_sandbox_settings_are_found_without_sysconf():
    """pal_worker_exit, called from the fault and time-out handlers, reads the settings
    through settings(): before, it called sysconf there (not async-signal-safe). (Read off
    the source: a signal handler's call of sysconf works in practice, so no run shows it.)"""
    text = (CPU / "sandbox.cpp").read_text()
    body = re.search(r"\nSettings \*settings\(\)\n\{(.*?)\n\}", text, re.S).group(1)
    assert "sysconf" not in body and "settings_page" not in body, body


_BEFORE = r"""
extern "C" __global__ void before(float* x, float* y, long long off, int write)
{
    if (threadIdx.x == 2) {
        if (write) x[off] = 0.0f;
        else y[0] = x[off];
    }
}
"""


_FAR_WRITES = """
import json, sys
import numpy as np
from pagedattn_lab.cpu import KernelFault, RawKernel
kernel = RawKernel(sys.argv[1], "before")
for kib, write in ((1300, 0), (1300, 1), (2052, 1), (2100, 1), (3430, 1), (200 * 1024, 1)):
    x, y = np.zeros(16384, np.float32), np.zeros(1, np.float32)
    try:
        kernel((1,), (32,), (x, y, np.int64(-kib * 1024 // 4), np.int32(write)))
        print(json.dumps([kib, write, None]))
    except KernelFault as fault:
        print(json.dumps([kib, write, [fault.access, fault.thread, fault.buffer, str(fault)]]))
"""


@pytest.fixture(scope="module")
def far_writes():
    """{(KiB before x, write): (access, thread, buffer, message) of the fault, or None}, in a
    process of their own: where a far access lands depends on the process's mappings, and a
    test worker that ran other tests has holes below x that a fresh process has not (the
    launch's own mappings are then placed one below the other)."""
    out = subprocess.run([sys.executable, "-c", _FAR_WRITES, _BEFORE], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    return {(kib, write): fault for kib, write, fault in map(json.loads, out.splitlines())}


@pytest.mark.parametrize("kib, write", [(1300, 0), (1300, 1), (2052, 1), (2100, 1), (3430, 1),
                                        (200 * 1024, 1)])
def test_a_write_past_an_arrays_guard_and_the_results_guard_faults(kib, write, far_writes):
    """x (64 KiB) has 1 MiB of guard in front; the launch's results (pal_ctl) were mapped just
    below it with 1 MiB of guard of their own. Before: x[-(2 MiB + 4 KiB) / 4] = 0 and
    x[-2100 KiB / 4] = 0 changed the results silently, and the launch passed (at -3.35 MiB, a
    write of the block counters made a launch pass with 1 of 64 blocks run). Now the results
    have 256 MiB of guard each side: the write is a wild one, with the thread. (And a read
    1300 KiB before x, past x's own guard: hunt 165's case.)"""
    fault = far_writes[kib, write]
    assert fault is not None, f"x[-{kib} KiB] passed unseen"
    access, thread, _, message = fault
    assert (tuple(thread or ()), access) == ((2, 0, 0), "write" if write else "read"), message


class _OneWorker:
    """The library calls _raise_failure makes for an unchecked launch."""
    @staticmethod
    def pal_launch_nworkers(handle):
        return 1


@pytest.mark.parametrize("done, taken", [(1, 65), (64, 3), (64, 0)])
def test_overwritten_block_counters_are_named_as_such(done, taken):
    """Every worker ended cleanly, yet the counters say otherwise (a clean launch of 64
    blocks by one worker ends with 64 done and 65 taken): kernel code wrote them. Before:
    1 of 64 done said "a worker process vanished?", and 64 done with the take counter
    overwritten (the reader's launch that ran 1 block) passed."""
    from pagedattn_lab.cpu import KernelError, abi
    from pagedattn_lab.cpu.launch import _raise_failure
    from pagedattn_lab.cpu.report import LaunchInfo
    ctl = abi.Ctl()
    ctl.blocks_done, ctl.next_block = done, taken
    info = LaunchInfo("k", None, (64, 1, 1), (32, 1, 1), 0, 0, [], [])
    with pytest.raises(KernelError, match="block counters were overwritten") as err:
        _raise_failure(_OneWorker, None, ctl, info, None, checked=False)
    assert "vanished" not in str(err.value)


def test_a_clean_launchs_counters_pass():
    from pagedattn_lab.cpu import abi
    from pagedattn_lab.cpu.launch import _raise_failure
    from pagedattn_lab.cpu.report import LaunchInfo
    ctl = abi.Ctl()
    ctl.blocks_done, ctl.next_block = 64, 65
    _raise_failure(_OneWorker, None, ctl, LaunchInfo("k", None, (64, 1, 1), (32, 1, 1), 0, 0,
                                                     [], []), None, checked=False)


# Thread 1 reads p[4] past `float a[4]` (a read is reported when the thread next meets the
# scheduler), then spins on __nanosleep, which switches threads without a report; thread 0
# spins without yielding, so it is the one running at the time-out.
_READ_THEN_SPIN = r"""
extern "C" __global__ void read_then_spin(const float* x, float* out, int i)
{
    float a[4];
    for (int j = 0; j < 4; ++j) a[j] = x[j] * threadIdx.x;
    const float *p = a;
    const float v = threadIdx.x == 1 ? p[i] : 0.0f;
    __nanosleep(100);
    if (threadIdx.x == 0) for (volatile int s = 0; s == 0;) {}
    for (volatile int s = 0; s == 0;) __nanosleep(100);
    __syncthreads();
    out[threadIdx.x] = v + a[0];
}
"""


def test_a_deferred_read_is_reported_whichever_thread_runs_at_the_time_out():
    """Before: the time-out handler recorded only the running thread's deferred read, so a
    launch timed out at thread 0 gave a KernelTimeout naming thread 0 (with both threads on
    __nanosleep, 2 of 8 launches); the read past the array by thread 1 came first. Now it is
    reported, with thread 1."""
    kern = RawKernel(_READ_THEN_SPIN, "read_then_spin", timeout=0.3)
    x, out = np.arange(1, 5, dtype=np.float32), np.zeros(2, np.float32)
    with pytest.raises(KernelFault) as info:
        kern((1,), (2,), (x, out, np.int32(4)))
    e = info.value
    assert (e.thread, e.access, e.region) == ((1, 0, 0), "read", "local or shared array"), str(e)


# Thread 0 reads past a static __shared__ array, then thread 1 past a local one (the
# library's base for one, none for the other); then thread 0 spins without yielding, so it
# is the one running at the time-out.
_TWO_READS = r"""
extern "C" __global__ void two_reads(const float* x, float* out, int i)
{
    __shared__ float s[4];
    float a[4];
    for (int j = 0; j < 4; ++j) a[j] = x[j] * threadIdx.x;
    float v = 0.0f;
    if (threadIdx.x == 0) { const float *p = s; v = p[i]; }
    if (threadIdx.x == 1) { const float *q = a; v = q[i]; }
    __nanosleep(100);
    if (threadIdx.x == 0) for (volatile int t = 0; t == 0;) {}
    for (volatile int t = 0; t == 0;) __nanosleep(100);
    __syncthreads();
    out[threadIdx.x] = v + a[0];
}
"""


def test_each_threads_deferred_read_keeps_its_own_library_base():
    """Before: one global base, set by the last deferred read (thread 1's, on its stack: 0),
    so thread 0's read past `s` was reported "byte 140079163445248 past its end" (an
    absolute address for an offset). Now each thread keeps its own."""
    kern = RawKernel(_TWO_READS, "two_reads", timeout=0.3)
    x, out = np.arange(1, 5, dtype=np.float32), np.zeros(2, np.float32)
    with pytest.raises(KernelFault) as info:
        kern((1,), (2,), (x, out, np.int32(4)))
    e = info.value
    assert (e.thread, e.access) == ((0, 0, 0), "read"), str(e)
    assert "static __shared__ array `s` (16 bytes; byte 0 past its end)" in str(e), str(e)
