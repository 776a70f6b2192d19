"""The CPU executor's shared-memory race check (`racecheck=True`).

Planted races (tests/kernels/races.cu) must be reported as SharedMemoryRace naming the
variable, the kind of hazard, both threads, the block and the source lines; the correct
versions, and every kernel the package ships, must run clean.
"""
import functools
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab.cpu import KernelFault, RawKernel, SharedMemoryRace

KERNELS = Path(__file__).parent / "kernels"
RACES = "races.cu"
SOURCE = (KERNELS / RACES).read_text().splitlines()
CODE = "\n".join(SOURCE) + "\n"


def line_of(text: str) -> int:
    """1-based line of the first source line containing `text`."""
    return next(i + 1 for i, line in enumerate(SOURCE) if text in line)


@functools.lru_cache(maxsize=None)
def kern(name: str) -> RawKernel:
    return RawKernel(CODE, name, filename=RACES)


@pytest.fixture
def x():
    return np.random.default_rng(7).standard_normal(256).astype(np.float32)


def test_every_thread_adding_into_one_shared_variable(x):
    out = np.zeros(2, np.float32)
    with pytest.raises(SharedMemoryRace) as info:
        kern("shared_accumulator")(2, 64, (x, out), racecheck=True)
    e = info.value
    assert isinstance(e, KernelFault)
    assert e.kind == "read after write" and e.variable == "acc" and e.offset == 0
    assert e.block == (0, 0, 0) and e.thread != e.other_thread
    line = line_of("acc += x[")
    assert e.line == line and e.other_line == line
    msg = str(e)
    assert "shared_accumulator" in msg and "acc" in msg and f"line {line}" in msg
    assert "atomicAdd" in msg   # the hint for a read-modify-write by every thread


def test_racecheck_is_off_unless_asked(x, monkeypatch):
    monkeypatch.delenv("PAGEDATTN_LAB_CPU_RACECHECK", raising=False)
    out = np.zeros(2, np.float32)
    kern("shared_accumulator")(2, 64, (x, out))   # runs (wrong on a GPU, not caught here)
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_RACECHECK", "1")
    with pytest.raises(SharedMemoryRace):
        kern("shared_accumulator")(2, 64, (x, out))


def test_atomics_on_shared_memory_are_no_race(x):
    out = np.zeros(2, np.float32)
    kern("shared_accumulator_atomic")(2, 64, (x, out), racecheck=True)
    np.testing.assert_allclose(out, x[:128].reshape(2, 64).sum(axis=1), rtol=1e-5)


def test_reading_an_atomic_total_before_the_barrier(x):
    with pytest.raises(SharedMemoryRace, match="atomic") as info:
        kern("atomic_then_read")(1, 64, (x, np.zeros(64, np.float32)), racecheck=True)
    # one thread reads the total, another's atomicAdd then changes what it read
    e = info.value
    assert (e.kind, e.access) == ("write after read", "atomic") and e.thread != e.other_thread
    assert e.line == line_of("atomicAdd(&acc, x[threadIdx.x])")


def test_missing_barrier_between_writing_a_tile_and_reading_it(x):
    y = np.zeros(128, np.float32)
    with pytest.raises(SharedMemoryRace) as info:
        kern("shift_tile")(2, 64, (x, y, np.int32(0)), shared_mem=64 * 4, racecheck=True)
    e = info.value
    # thread 0 reads tile[1] before thread 1 writes it: thread 1's write comes after a read
    assert e.kind == "write after read" and e.variable == "tile"
    assert e.thread == (1, 0, 0) and e.other_thread == (0, 0, 0) and e.offset == 4
    assert e.line == line_of("tile[t] = x[") and e.other_line == line_of("tile[(t + 1) % n]")
    assert "dynamic shared memory `tile`" in str(e)
    kern("shift_tile")(2, 64, (x, y, np.int32(1)), shared_mem=64 * 4, racecheck=True)
    np.testing.assert_array_equal(y.reshape(2, 64), np.roll(x[:128].reshape(2, 64), -1, axis=1))


def test_two_writers_named_in_the_block_that_has_them():
    out = np.zeros(4 * 64, np.int32)
    kern("two_writers")(4, 64, (out, np.int32(-1)), racecheck=True)
    with pytest.raises(SharedMemoryRace) as info:
        kern("two_writers")(4, 64, (out, np.int32(3)), racecheck=True)
    e = info.value
    assert e.kind == "write after write" and e.block == (3, 0, 0) and e.variable == "flag"
    assert {e.thread, e.other_thread} == {(0, 0, 0), (33, 0, 0)}


@pytest.mark.parametrize("order", [0, 2], ids=["nothing", "a shuffle"])
def test_lanes_of_a_warp_are_ordered_by_syncwarp_only(x, order):
    out = np.zeros(2, np.float32)
    kern("warp_tree")(1, 64, (x, out, np.int32(1)), racecheck=True)
    np.testing.assert_allclose(out, x[:64].reshape(2, 32).sum(axis=1), rtol=1e-5)
    with pytest.raises(SharedMemoryRace) as info:
        kern("warp_tree")(1, 64, (x, out, np.int32(order)), racecheck=True)
    race = info.value
    assert race.thread[0] // 32 == race.other_thread[0] // 32 and race.same_warp
    assert "with no __syncwarp() or __syncthreads() between" in str(race)
    assert "a __syncwarp() there orders them too; a shuffle, a vote or a WMMA call does not" \
        in str(race)


def test_a_syncwarp_orders_only_the_lanes_in_its_mask():
    """CUDA orders memory only among the threads in a __syncwarp()'s mask. Here the check is
    stricter than compute-sanitizer's racecheck, which reported no hazard for lane 16 on the
    H200 (2026-12-04, results/2026-12-04_H200_session16_warp_order_racecheck.log)."""
    out = np.zeros(1, np.float32)
    kern("half_warps")(1, 32, (out, np.int32(15)), racecheck=True)
    assert out[0] == 1.0
    with pytest.raises(SharedMemoryRace) as info:   # lanes 0 and 16 never synced together
        kern("half_warps")(1, 32, (out, np.int32(16)), racecheck=True)
    assert (info.value.thread, info.value.other_thread) == ((16, 0, 0), (0, 0, 0))


def test_threads_of_two_warps_are_told_of_syncthreads_only():
    with pytest.raises(SharedMemoryRace) as info:
        kern("two_writers")(4, 64, (np.zeros(4 * 64, np.int32), np.int32(3)), racecheck=True)
    race = info.value
    assert not race.same_warp and race.thread[0] // 32 != race.other_thread[0] // 32
    assert "with no __syncthreads() between" in str(race) and "__syncwarp" not in str(race)


def test_loop_without_a_barrier_at_the_end_of_each_iteration(x):
    out = np.zeros(64, np.float32)
    with pytest.raises(SharedMemoryRace) as info:
        kern("loop_without_trailing_barrier")(1, 64, (x, out, np.int32(3)), racecheck=True)
    assert info.value.kind == "write after read"
    assert "end of each loop iteration" in str(info.value)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_the_course_kernels_are_race_free(monkeypatch, dtype):
    """Every kernel in pagedattn_lab/kernels, through the package's API, race-checked."""
    import pagedattn_lab.backend as backend
    from pagedattn_lab import gather_kv

    from .test_attention import check_decode, check_prefill, make_problem
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_RACECHECK", "1")
    rng = np.random.default_rng(0)
    args = make_problem(rng, [1, 17, 70], page_size=16, num_heads=8, num_kv_heads=2,
                        head_dim=32, dtype=dtype)
    check_decode(args, dtype)
    check_decode(make_problem(rng, [600], page_size=8, dtype=dtype), dtype)   # split-K, merge
    args = make_problem(rng, [9, 21], page_size=4, num_heads=4, num_kv_heads=1, head_dim=64,
                        dtype=dtype, mode="prefill")
    for kernel in ("naive", "tiled"):
        check_prefill(args, dtype, kernel)
    _q, k, v, tables, lens = args
    kk, _vv = gather_kv(k, v, tables[1], int(lens[1]))
    assert kk.shape == (21, 1, 64)


def test_the_executor_test_kernels_with_shared_memory_are_race_free():
    from tests.test_cpu_executor import kern as exec_kern
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    partial = np.zeros(4, np.float32)
    exec_kern("reduce_shared.cu", "block_sum")(4, 256, (x, partial, np.int32(1000)),
                                               racecheck=True)
    np.testing.assert_allclose(partial, [x[i * 256:(i + 1) * 256].sum() for i in range(4)],
                               atol=1e-4)


# The rule of the race check within a warp (only __syncwarp() orders shared memory), held
# against compute-sanitizer's racecheck on the GPU: each kernel variant runs there in its own
# process, and the two checks must give the same verdict.
_ORDER_CASES = [   # file, kernel, variant argument, racy
    ("races.cu", "warp_tree", 1, False),
    ("races.cu", "warp_tree", 0, True),
    ("races.cu", "warp_tree", 2, True),            # a shuffle in place of __syncwarp()
    ("wmma.cu", "smem_gemm", 3, False),
    ("wmma.cu", "smem_gemm", 2, True),             # WMMA loads of what other lanes staged
    ("wmma.cu", "smem_gemm", 1, True),             # reads of what store_matrix_sync stored
]
_LAUNCH = """
import sys, cupy as cp
from pathlib import Path
from pagedattn_lab.rawkernel import RawKernel
file, name, variant = sys.argv[1], sys.argv[2], int(sys.argv[3])
kern = RawKernel(Path(file).read_text(), name, filename=Path(file).name)
if name == "warp_tree":
    kern((1,), (64,), (cp.ones(64, cp.float32), cp.zeros(2, cp.float32), cp.int32(variant)))
else:
    a = cp.ones((16, 16), cp.float16)
    kern((1,), (32,), (a, a, cp.zeros(256, cp.float32), cp.int32(variant)))
cp.cuda.Device().synchronize()
"""


@pytest.mark.gpu
@pytest.mark.parametrize("file, name, variant, racy", _ORDER_CASES,
                         ids=[f"{c[1]}-{c[2]}" for c in _ORDER_CASES])
def test_compute_sanitizer_agrees_on_what_orders_a_warp(file, name, variant, racy):
    import shutil
    import subprocess
    import sys

    from pagedattn_lab.cpu import RawKernel as CpuRawKernel
    sanitizer = shutil.which("compute-sanitizer")
    if sanitizer is None:
        pytest.skip("compute-sanitizer is not on PATH")
    path = KERNELS / file
    run = subprocess.run([sanitizer, "--tool", "racecheck", "--error-exitcode", "9",
                          sys.executable, "-c", _LAUNCH, str(path), name, str(variant)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode in (0, 9), run.stdout + run.stderr
    cpu = CpuRawKernel(path.read_text(), name, filename=file)
    args = ((np.ones(64, np.float32), np.zeros(2, np.float32), np.int32(variant))
            if name == "warp_tree" else
            (np.ones((16, 16), np.float16), np.ones((16, 16), np.float16),
             np.zeros(256, np.float32), np.int32(variant)))
    try:
        cpu(1, 64 if name == "warp_tree" else 32, args, racecheck=True)
        cpu_racy = False
    except SharedMemoryRace:
        cpu_racy = True
    assert (run.returncode == 9, cpu_racy) == (racy, racy), run.stdout[-3000:]


# ---- cp.async (cpu/shim_async.h): a copy may land any time from its issue to its wait ----

@functools.lru_cache(maxsize=None)
def async_kern(name: str) -> RawKernel:
    from pagedattn_lab.kernels import KERNEL_DIR
    return RawKernel((KERNELS / "async_copies.cu").read_text(), name, ("-I" + str(KERNEL_DIR),),
                     filename="async_copies.cu")


def test_a_copy_into_a_buffer_still_read_is_a_race_from_its_issue():
    """Without the barrier at the end of an iteration, the next copy overwrites a buffer
    other threads still read: reported at the copy's issue (before it lands at its wait, a
    barrier later); with the barrier, no race and the right sums."""
    x = np.arange(4 * 256, dtype=np.float32)
    out = np.zeros(64, np.float32)
    async_kern("pipeline")(1, 64, (x, out, np.int32(4), np.int32(1)), racecheck=True)
    want = sum(x[i * 256 + (4 * np.arange(64) + 100) % 256] for i in range(4))
    np.testing.assert_array_equal(out, want)
    with pytest.raises(SharedMemoryRace) as info:
        async_kern("pipeline")(1, 64, (x, out, np.int32(4), np.int32(0)), racecheck=True)
    assert info.value.kind == "write after read"


@pytest.mark.parametrize("valid", [1, 0], ids=["copy", "zero-fill"])
def test_another_threads_copy_needs_a_barrier_after_the_wait(valid):
    """A copy that zero-fills (not valid) is a write like any other: the race check sees it,
    and with the barrier the neighbour's 16 bytes (or zeros) are read."""
    x = np.arange(256, dtype=np.float32) + 1
    out = np.zeros(64, np.float32)
    with pytest.raises(SharedMemoryRace):
        async_kern("neighbour")(1, 64, (x, out, np.int32(valid), np.int32(0)), racecheck=True)
    async_kern("neighbour")(1, 64, (x, out, np.int32(valid), np.int32(1)), racecheck=True)
    np.testing.assert_array_equal(out, x[(4 * np.arange(64) + 4) % 256] * valid)


@pytest.mark.parametrize("block", [(64,), (8, 4, 2)], ids=["1-D", "3-D"])
def test_wait_group_lands_all_but_the_newest_committed_groups(block):
    """copy_wait<1> after two committed groups and an uncommitted copy: the first group has
    landed; the second and the uncommitted copy have not (their slots keep the executor's
    NaN poison). Blocks run one after another in one worker: nothing carries over."""
    x = np.arange(3 * 256, dtype=np.float32)
    out = np.zeros((2, 64, 3), np.float32)
    async_kern("groups")(2, block, (x, out), workers=1)
    np.testing.assert_array_equal(out[..., 0], np.broadcast_to(x[4 * np.arange(64)], (2, 64)))
    assert np.isnan(out[..., 1:]).all()


def test_racecheck_set_on_the_two_device_kernel_reaches_the_cpu_executor(x):
    """`pagedattn_lab.RawKernel(..., racecheck=True)` takes it for every launch (it once took
    the keyword and dropped it)."""
    import pagedattn_lab
    kernel = pagedattn_lab.RawKernel(CODE, "shared_accumulator",
                                     filename=RACES, racecheck=True)
    with pytest.raises(SharedMemoryRace):
        kernel(2, 64, (x, np.zeros(2, np.float32)))


def test_count_accesses_takes_the_kernels_racecheck_and_the_environment(x, monkeypatch):
    """count_accesses' racecheck=None defers to the kernel's, then to the environment, as a
    launch does (it once defaulted to False and dropped both)."""
    from pagedattn_lab.cpu import count_accesses
    monkeypatch.delenv("PAGEDATTN_LAB_CPU_RACECHECK", raising=False)
    checked = RawKernel(CODE, "shared_accumulator", filename=RACES,
                        racecheck=True)
    with pytest.raises(SharedMemoryRace):
        count_accesses(checked, 2, 64, (x, np.zeros(2, np.float32)))
    count_accesses(kern("shared_accumulator"), 2, 64, (x, np.zeros(2, np.float32)))
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_RACECHECK", "1")
    with pytest.raises(SharedMemoryRace):
        count_accesses(kern("shared_accumulator"), 2, 64, (x, np.zeros(2, np.float32)))
