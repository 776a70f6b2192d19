"""The CPU executor runs the course's CUDA C kernels, unmodified.

Every kernel is compared with NumPy on seeded random inputs of awkward sizes; its speed, its
cache of compiled kernels and pagedattn_lab.RawKernel's choice of executor are here too. The
bugs it must catch and survive: tests/test_cpu_executor_bugs.py.
"""
import functools
import time
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab.cpu import RawKernel, cache_dir

KERNELS = Path(__file__).parent / "kernels"


@functools.lru_cache(maxsize=None)
def kern(filename: str, name: str, **kw) -> RawKernel:
    return RawKernel((KERNELS / filename).read_text(), name, filename=filename, **kw)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- kernels against NumPy

@pytest.mark.parametrize("n", [1, 1000, 4099])
@pytest.mark.parametrize("checked, workers", [(True, 1), (True, 2), (False, 1)])
def test_vector_add(rng, n, checked, workers):
    a, b, c = f32(rng, n), f32(rng, n), np.full(n, np.nan, np.float32)
    kern("vector_add.cu", "vector_add")(((n + 127) // 128,), (128,), (a, b, c, np.int32(n)),
                                        checked=checked, workers=workers)
    np.testing.assert_array_equal(c, a + b)


def test_double_and_int64_scalars(rng):
    n = 1001
    y, x = rng.standard_normal(n), rng.standard_normal(n)
    expect = y + 2.5 * x
    kern("vector_add.cu", "axpy_f64")(3, 64, (y, x, np.float64(2.5), np.int64(n)))
    np.testing.assert_allclose(y, expect, rtol=1e-15)


def test_shared_memory_tree_reduction(rng):
    n = 1000
    x, nb = f32(rng, n), (n + 255) // 256
    partial = np.zeros(nb, np.float32)
    kern("reduce_shared.cu", "block_sum")(nb, 256, (x, partial, np.int32(n)))
    expect = [x[i * 256:(i + 1) * 256].astype(np.float64).sum() for i in range(nb)]
    np.testing.assert_allclose(partial, expect, atol=1e-4)


def test_dynamic_shared_memory(rng):
    n, blocks, threads = 3333, 5, 64
    x, partial = f32(rng, n), np.zeros(blocks, np.float32)
    kern("reduce_shared.cu", "block_sum_dynamic")(blocks, threads, (x, partial, np.int32(n)),
                                                  shared_mem=threads * 4)
    assert partial.sum() == pytest.approx(x.astype(np.float64).sum(), abs=1e-3)


def test_syncthreads_count(rng):
    n = 700
    x, counts = f32(rng, n), np.zeros(3, np.int32)
    kern("reduce_shared.cu", "count_positive")(3, 256, (x, counts, np.int32(n)))
    assert list(counts) == [int((x[i * 256:(i + 1) * 256] > 0).sum()) for i in range(3)]


def test_warp_shuffle_reductions(rng):
    n = 777
    x, nb = f32(rng, n), (n + 127) // 128
    out_xor, out_down = np.zeros(nb, np.float32), np.zeros(nb, np.float32)
    kern("warp_reduce.cu", "warp_sums")(nb, 128, (x, out_xor, out_down, np.int32(n)))
    expect = [x[i * 128:(i + 1) * 128].astype(np.float64).sum() for i in range(nb)]
    np.testing.assert_allclose(out_xor, expect, atol=1e-4)
    np.testing.assert_allclose(out_down, expect, atol=1e-4)


def test_shuffle_width_scan_and_ballot(rng):
    n = 256
    x = rng.integers(0, 100, n).astype(np.int32)
    rotated, scan = np.zeros(n, np.int32), np.zeros(n, np.int32)
    ballots = np.zeros(n // 32, np.uint32)
    kern("warp_reduce.cu", "warp_misc")(2, 128, (x, rotated, scan, ballots))
    lane = np.arange(n) % 32
    np.testing.assert_array_equal(rotated, x[(np.arange(n) // 8) * 8 + (lane + 1) % 8])
    np.testing.assert_array_equal(scan, np.cumsum(x.reshape(-1, 32), axis=1).ravel())
    warps = x.reshape(-1, 32)
    assert [int(b) for b in ballots] == [sum(int(v & 1) << i for i, v in enumerate(w))
                                         for w in warps]


def test_2d_grid_transpose_with_padded_shared_tile(rng):
    rows, cols = 70, 45
    m, out = f32(rng, rows, cols), np.zeros((cols, rows), np.float32)
    kern("transpose.cu", "transpose")(((cols + 31) // 32, (rows + 31) // 32), (32, 8),
                                      (m, out, np.int32(rows), np.int32(cols)))
    np.testing.assert_array_equal(out, m.T)


def test_3d_grid_and_block(rng):
    nz, ny, nx = 5, 6, 7
    a, b, out = f32(rng, nz, ny, nx), f32(rng, nz, ny, nx), np.zeros((nz, ny, nx), np.float32)
    kern("transpose.cu", "add3d")((2, 2, 2), (4, 4, 4),
                                  (a, b, out, np.int32(nx), np.int32(ny), np.int32(nz)))
    np.testing.assert_allclose(out, a + 2 * b, rtol=1e-6)


def test_half_rows_read_16_bytes_at_a_time(rng):
    rows, cols = 37, 24
    x, out = rng.standard_normal((rows, cols)).astype(np.float16), np.zeros(rows, np.float32)
    kern("half_ops.cu", "row_sums_f16")(2, 32, (x, out, np.int32(rows), np.int32(cols)))
    np.testing.assert_allclose(out, x.astype(np.float32).sum(axis=1), atol=1e-3)


def test_half_math(rng):
    n = 301
    a, b = rng.standard_normal(n).astype(np.float16), rng.standard_normal(n).astype(np.float16)
    z, w, f = np.zeros(n, np.float16), np.zeros(n, np.float16), np.zeros(n, np.float32)
    kern("half_ops.cu", "half_math")(3, 128, (a, b, z, w, f, np.float32(3.0), np.int32(n)))
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    np.testing.assert_array_equal(z, (a32 + b32).astype(np.float16))
    np.testing.assert_array_equal(w, (a.astype(np.float32) * np.float32(3)).astype(np.float16))
    np.testing.assert_array_equal(f, a.astype(np.float32))


def test_float_to_half_is_bit_exact(rng):
    special = np.array([0.0, -0.0, np.inf, -np.inf, 65504, 65519.99, 65520, 1e6, 6.1e-5,
                        5.96e-8, 2.98e-8, 2.9802322387695312e-08, 1e-9, 0.1, 1 / 3], np.float32)
    x = np.concatenate([special, -special, f32(rng, 50000) * 1000,
                        (rng.standard_normal(50000) * 1e-5).astype(np.float32),
                        rng.integers(0, 2**32, 50000, dtype=np.uint64).astype(np.uint32)
                        .view(np.float32)])
    x = x[~np.isnan(x)]
    y = np.zeros(x.size, np.float16)
    kern("half_ops.cu", "to_half")((x.size + 255) // 256, 256, (x, y, np.int32(x.size)))
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(y.view(np.uint16), x.astype(np.float16).view(np.uint16))


def test_math_functions_and_intrinsics(rng):
    n = 333
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    out = np.zeros((20, n), np.float32)
    kern("math_ops.cu", "math_ops")(3, 128, (x, out, np.int32(n)))
    v = x.astype(np.float64)
    a = np.abs(v) + 0.5
    c = np.clip(v, -50, 50)
    expect = [np.exp(c), np.exp(c), np.exp2(c), np.log(a), np.log(a), np.maximum(v, 0.25),
              np.minimum(v, 0.25), np.abs(v), np.sqrt(a), 1 / np.sqrt(a), v / a, a ** 1.5,
              np.floor(v), np.ceil(v), np.maximum(v, -0.5),
              np.minimum(np.trunc(x * np.float32(10)), 3), np.maximum(np.arange(n) % 7, 2), v, -v,
              np.ones(n)]
    np.testing.assert_allclose(out, np.array(expect), rtol=2e-6, atol=1e-6)


FLOAT_TO_INT_SRC = r"""
extern "C" __global__ void to_int(const float* x, int* out, unsigned* uout, int n)
{
    int i = threadIdx.x;
    if (i >= n) return;
    out[i] = __float2int_rn(x[i]);
    out[n + i] = __float2int_rz(x[i]);
    out[2 * n + i] = __float2int_rd(x[i]);
    out[3 * n + i] = __float2int_ru(x[i]);
    out[4 * n + i] = __double2int_rn((double)x[i]);
    uout[i] = __float2uint_rn(x[i]);
}
"""


def test_float_to_int_intrinsics_follow_ptx():
    """As cvt.rni/rzi/rmi/rpi on the GPU: NaN gives 0 (INT_MIN from a double, as on an H100)
    and out-of-range values saturate, where a C cast is undefined (x86 gives INT_MIN): a
    kernel that leaves NaN to __float2int_rn stores
    0 on the GPU and must here too (workbook 11's NaN inputs)."""
    x = np.array([np.nan, np.inf, -np.inf, 3e9, -3e9, 2.5, -2.5, 1.7, -1.7, 0.0],
                 np.float32)
    n = x.size
    out, uout = np.zeros(5 * n, np.int32), np.zeros(n, np.uint32)
    RawKernel(FLOAT_TO_INT_SRC, "to_int")(1, 32, (x, out, uout, np.int32(n)))
    big, small = 2**31 - 1, -2**31
    expect = [[0, big, small, big, small, 2, -2, 2, -2, 0],     # nearest, ties to even
              [0, big, small, big, small, 2, -2, 1, -1, 0],     # toward zero
              [0, big, small, big, small, 2, -3, 1, -2, 0],     # down
              [0, big, small, big, small, 3, -2, 2, -1, 0],     # up
              [small, big, small, big, small, 2, -2, 2, -2, 0]]  # double: NaN is INT_MIN (H100)
    np.testing.assert_array_equal(out.reshape(5, n), np.array(expect))
    np.testing.assert_array_equal(uout, [0, 2**32 - 1, 0, 3000000000, 0, 2, 0, 2, 0, 0])


@pytest.mark.parametrize("workers", [1, 2])
def test_histogram_with_atomics_from_many_blocks(rng, workers):
    n = 100003
    values, bins = rng.integers(0, 1000, n).astype(np.int32), np.zeros(64, np.uint32)
    kern("atomics.cu", "histogram")(40, 128, (values, bins, np.int32(n)), workers=workers)
    np.testing.assert_array_equal(bins, np.bincount(values % 64, minlength=64))


def test_atomic_add_max_min_cas(rng):
    n = 5000
    x, k = f32(rng, n), rng.integers(-10**6, 10**6, n).astype(np.int32)
    total, kmax = np.zeros(1, np.float32), np.array([-2**31], np.int32)
    kmin, count = np.array([2**31 - 1], np.int32), np.zeros(1, np.int32)
    kern("atomics.cu", "atomic_misc")((n + 127) // 128, 128,
                                      (x, k, total, kmax, kmin, count, np.int32(n)), workers=2)
    assert total[0] == pytest.approx(x.astype(np.float64).sum(), abs=1e-2)
    assert (kmax[0], kmin[0], count[0]) == (k.max(), k.min(), n)


def test_printf_goes_to_python_stdout(capfd):
    x = np.arange(300, dtype=np.int32)
    kern("printf.cu", "hello")(3, 100, (x, np.int32(300)))
    out, _ = capfd.readouterr()   # captured at the fd level too: nothing bypasses sys.stdout
    assert out == ("block 0 of 3 starts with x=0\nblock 1 of 3 starts with x=100\n"
                   "block 2 of 3 starts with x=200\nlast thread 299: 149.500\n")


def test_printf_output_is_capped(capsys):
    kern("printf.cu", "chatty")(1, 64, (np.int32(400),))
    out = capsys.readouterr().out
    assert len(out) < 1100 * 1024 and "output truncated after 1024 KiB" in out


def test_shared_memory_starts_as_garbage():
    src = r'''extern "C" __global__ void peek(float* f, int* i) {
        __shared__ float s[64]; __shared__ int t[64];
        f[threadIdx.x] = s[threadIdx.x]; i[threadIdx.x] = t[threadIdx.x]; }'''
    f, i = np.zeros(64, np.float32), np.zeros(64, np.int32)
    RawKernel(src, "peek")(1, 64, (f, i))
    assert np.isnan(f).all() and (i == -1).all()


def test_same_array_passed_twice_is_one_buffer(rng):
    src = r'''extern "C" __global__ void shift(const float* src, float* dst, int n) {
        int i = threadIdx.x; float v = i + 1 < n ? src[i + 1] : 0.0f;
        __syncthreads(); if (i < n) dst[i] = v; }'''
    x = f32(rng, 100)
    expect = np.append(x[1:], 0)
    RawKernel(src, "shift")(1, 128, (x, x, np.int32(100)))
    np.testing.assert_array_equal(x, expect)


def test_options_define_macros(rng):
    src = r'''extern "C" __global__ void scale(float* x, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] *= FACTOR; }'''
    x = f32(rng, 50)
    expect = x * 3
    RawKernel(src, "scale", options=("-DFACTOR=3.0f", "--use_fast_math"))(1, 64, (x, np.int32(50)))
    np.testing.assert_array_equal(x, expect)


def test_grid_and_block_forms_and_limits(rng):
    a, b, c = f32(rng, 10), f32(rng, 10), np.zeros(10, np.float32)
    k = kern("vector_add.cu", "vector_add")
    k(1, (16,), (a, b, c, np.int32(10)))
    np.testing.assert_array_equal(c, a + b)
    with pytest.raises(ValueError, match="at most 1024 threads"):
        k(1, (64, 32), (a, b, c, np.int32(10)))
    with pytest.raises(TypeError, match="grid: expected an int or a tuple"):
        k((1, 1, 1, 1), 32, (a, b, c, np.int32(10)))


def test_compiled_kernels_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGEDATTN_LAB_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path / "cpu"
    src = (KERNELS / "vector_add.cu").read_text() + "\n// cache test\n"
    t0 = time.perf_counter()
    first = RawKernel(src, "vector_add").compile()
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = RawKernel(src, "vector_add").compile()
    warm = time.perf_counter() - t0
    print(f"\ncompile: cold {cold:.2f} s (compiler {first.compile_seconds:.2f} s), "
          f"cached {warm * 1000:.1f} ms")
    assert not first.cached and second.cached
    assert list((tmp_path / "cpu").glob("k-*.so"))


# ---------------------------------------------------------------- speed

def test_speed_64_blocks_of_128_threads(rng):
    k = kern("speed.cu", "busy").compile()
    x, y = rng.random(64 * 128).astype(np.float32), np.zeros(64 * 128, np.float32)
    t0 = time.perf_counter()
    k(64, 128, (x, y, np.int32(100)))   # 100 iterations x 9 flops per thread
    elapsed = time.perf_counter() - t0
    print(f"\n64x128 launch, ~1k flops/thread: {elapsed * 1000:.1f} ms "
          f"(compile {k.compile_seconds or 0:.2f} s{' (cached)' if k.cached else ''}, "
          f"fibers: {k.fiber_kind})")
    a, b, c = x.astype(np.float64), np.ones(x.size), np.full(x.size, 0.5)
    for _ in range(100):
        b = (a * 0.5 + b) * 0.75
        c = (b * 0.25 + c) * 0.5
        a = (c * 0.125 + a) * 0.875
    np.testing.assert_allclose(y, a + b + c, rtol=1e-4)
    assert elapsed < 2.0


def test_speed_barrier_heavy(rng):
    k = kern("speed.cu", "barrier_heavy").compile()
    blocks, threads, rounds = 16, 256, 16
    x, out = rng.random(blocks * threads).astype(np.float32), np.zeros(blocks, np.float32)
    t0 = time.perf_counter()
    k(blocks, threads, (x, out, np.int32(rounds)), shared_mem=threads * 4)
    elapsed = time.perf_counter() - t0
    print(f"\nbarrier-heavy launch ({blocks * threads} threads, {rounds * 10} barriers and "
          f"{rounds * 5} shuffles each): {elapsed * 1000:.1f} ms")
    sums = x.reshape(blocks, threads).astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(out, 32 * sums * sum(range(1, rounds + 1)), rtol=1e-4)
    assert elapsed < 1.0


# ---------------------------------------------------------------- pagedattn_lab.RawKernel

def test_rawkernel_runs_numpy_arrays_on_the_cpu(rng, monkeypatch):
    import pagedattn_lab.backend as backend
    from pagedattn_lab import RawKernel as AnyRawKernel
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    k = AnyRawKernel((KERNELS / "vector_add.cu").read_text(), "vector_add")
    a, b, c = f32(rng, 300), f32(rng, 300), np.zeros(300, np.float32)
    assert k.device_for((a, b, c, np.int32(300))) == "cpu"
    k(3, 128, (a, b, c, np.int32(300)))
    np.testing.assert_array_equal(c, a + b)
    assert k.device_for((np.int32(1),)) == "cpu"   # no arrays, no GPU


def test_rawkernel_passes_cooperative_groups_to_the_cpu_executor(rng):
    """enable_cooperative_groups=True went to CuPy only: the CPU executor, which refuses it,
    ran the kernel without grid-wide sync as if nothing was asked."""
    from pagedattn_lab import RawKernel as AnyRawKernel
    k = AnyRawKernel((KERNELS / "vector_add.cu").read_text(), "vector_add",
                     enable_cooperative_groups=True)
    a, b, c = f32(rng, 32), f32(rng, 32), np.zeros(32, np.float32)
    with pytest.raises(NotImplementedError, match="cooperative groups"):
        k(1, 32, (a, b, c, np.int32(32)))


def test_rawkernel_refuses_arrays_from_two_places(rng):
    from pagedattn_lab import RawKernel as AnyRawKernel

    class FakeCupyArray:   # stands for a cupy.ndarray without needing CuPy
        pass
    FakeCupyArray.__module__ = "cupy._core.core"
    k = AnyRawKernel((KERNELS / "vector_add.cu").read_text(), "vector_add")
    with pytest.raises(TypeError, match=r"CuPy \(GPU\) arrays at argument\(s\) 1 \('b'\).*"
                                        r"NumPy \(CPU\) arrays at argument\(s\) "
                                        r"0 \('a'\), 2 \('c'\)"):
        k(1, 32, (f32(rng, 4), FakeCupyArray(), np.zeros(4, np.float32), np.int32(4)))
