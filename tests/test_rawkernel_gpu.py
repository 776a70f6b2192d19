"""pagedattn_lab.RawKernel on the GPU: the test kernels with CuPy arrays against NumPy.

The same .cu files as tests/test_cpu_executor.py, launched with cupy.RawKernel's calling
convention through pagedattn_lab.RawKernel. Skipped without a CUDA device (marker `gpu`).
"""
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab.rawkernel import RawKernel

pytestmark = pytest.mark.gpu
KERNELS = Path(__file__).parent / "kernels"
_CACHE: dict = {}


def kern(filename: str, name: str) -> RawKernel:
    if (filename, name) not in _CACHE:
        source = (KERNELS / filename).read_text()
        _CACHE[filename, name] = RawKernel(source, name, filename=filename)
    return _CACHE[filename, name]


@pytest.fixture(scope="module")
def cp():
    return pytest.importorskip("cupy")


@pytest.fixture
def rng():
    return np.random.default_rng(4321)


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("n", [1, 1000, 4099])
def test_vector_add(cp, rng, n):
    a, b = f32(rng, n), f32(rng, n)
    c = cp.full(n, np.nan, cp.float32)
    kern("vector_add.cu", "vector_add")(((n + 127) // 128,), (128,),
                                        (cp.asarray(a), cp.asarray(b), c, np.int32(n)))
    np.testing.assert_array_equal(cp.asnumpy(c), a + b)


def test_double_and_int64_scalars(cp, rng):
    n = 1001
    y, x = rng.standard_normal(n), rng.standard_normal(n)
    y_d = cp.asarray(y)
    kern("vector_add.cu", "axpy_f64")(3, 64, (y_d, cp.asarray(x), np.float64(2.5), np.int64(n)))
    np.testing.assert_allclose(cp.asnumpy(y_d), y + 2.5 * x, rtol=1e-12, atol=1e-15)  # GPU: FMA


def test_shared_memory_reductions(cp, rng):
    n = 1000
    x, nb = f32(rng, n), (n + 255) // 256
    partial = cp.zeros(nb, cp.float32)
    kern("reduce_shared.cu", "block_sum")(nb, 256, (cp.asarray(x), partial, np.int32(n)))
    expect = [x[i * 256:(i + 1) * 256].astype(np.float64).sum() for i in range(nb)]
    np.testing.assert_allclose(cp.asnumpy(partial), expect, atol=1e-4)
    partial = cp.zeros(5, cp.float32)
    kern("reduce_shared.cu", "block_sum_dynamic")(5, 64, (cp.asarray(x), partial, np.int32(n)),
                                                  shared_mem=64 * 4)
    assert float(partial.sum()) == pytest.approx(x.astype(np.float64).sum(), abs=1e-3)
    # a float size was cut to an int on the GPU (255.9 -> 255 bytes); both devices refuse it
    for bad, error in ((64 * 4 - 0.1, TypeError), (None, TypeError), (-4, ValueError)):
        with pytest.raises(error, match="shared_mem"):
            kern("reduce_shared.cu", "block_sum_dynamic")(
                5, 64, (cp.asarray(x), partial, np.int32(n)), shared_mem=bad)
    counts = cp.zeros(nb, cp.int32)
    kern("reduce_shared.cu", "count_positive")(nb, 256, (cp.asarray(x), counts, np.int32(n)))
    expect_counts = [int((x[i * 256:(i + 1) * 256] > 0).sum()) for i in range(nb)]
    assert list(cp.asnumpy(counts)) == expect_counts


def test_warp_shuffles(cp, rng):
    n = 777
    x, nb = f32(rng, n), (n + 127) // 128
    out_xor, out_down = cp.zeros(nb, cp.float32), cp.zeros(nb, cp.float32)
    kern("warp_reduce.cu", "warp_sums")(nb, 128, (cp.asarray(x), out_xor, out_down, np.int32(n)))
    expect = [x[i * 128:(i + 1) * 128].astype(np.float64).sum() for i in range(nb)]
    np.testing.assert_allclose(cp.asnumpy(out_xor), expect, atol=1e-4)
    np.testing.assert_allclose(cp.asnumpy(out_down), expect, atol=1e-4)
    m = 256
    xi = rng.integers(0, 100, m).astype(np.int32)
    rotated, scan = cp.zeros(m, cp.int32), cp.zeros(m, cp.int32)
    ballots = cp.zeros(m // 32, cp.uint32)
    kern("warp_reduce.cu", "warp_misc")(2, 128, (cp.asarray(xi), rotated, scan, ballots))
    lane = np.arange(m) % 32
    np.testing.assert_array_equal(cp.asnumpy(rotated), xi[(np.arange(m) // 8) * 8 + (lane + 1) % 8])
    np.testing.assert_array_equal(cp.asnumpy(scan), np.cumsum(xi.reshape(-1, 32), axis=1).ravel())
    assert [int(b) for b in cp.asnumpy(ballots)] == [
        sum(int(v & 1) << i for i, v in enumerate(xi[w * 32:(w + 1) * 32])) for w in range(m // 32)]


def test_2d_and_3d_grids(cp, rng):
    rows, cols = 70, 45
    m, out = f32(rng, rows, cols), cp.zeros((cols, rows), cp.float32)
    kern("transpose.cu", "transpose")(((cols + 31) // 32, (rows + 31) // 32), (32, 8),
                                      (cp.asarray(m), out, np.int32(rows), np.int32(cols)))
    np.testing.assert_array_equal(cp.asnumpy(out), m.T)
    nz, ny, nx = 5, 6, 7
    a, b, o = f32(rng, nz, ny, nx), f32(rng, nz, ny, nx), cp.zeros((nz, ny, nx), cp.float32)
    kern("transpose.cu", "add3d")((2, 2, 2), (4, 4, 4), (cp.asarray(a), cp.asarray(b), o,
                                                         np.int32(nx), np.int32(ny), np.int32(nz)))
    np.testing.assert_allclose(cp.asnumpy(o), a + 2 * b, rtol=1e-6)


def test_half_precision(cp, rng):
    rows, cols = 37, 24
    x, out = rng.standard_normal((rows, cols)).astype(np.float16), cp.zeros(rows, cp.float32)
    kern("half_ops.cu", "row_sums_f16")(2, 32, (cp.asarray(x), out, np.int32(rows), np.int32(cols)))
    np.testing.assert_allclose(cp.asnumpy(out), x.astype(np.float32).sum(axis=1), atol=1e-3)
    n = 301
    a, b = rng.standard_normal(n).astype(np.float16), rng.standard_normal(n).astype(np.float16)
    z, w, f = cp.zeros(n, cp.float16), cp.zeros(n, cp.float16), cp.zeros(n, cp.float32)
    kern("half_ops.cu", "half_math")(3, 128, (cp.asarray(a), cp.asarray(b), z, w, f,
                                              np.float32(3.0), np.int32(n)))
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    np.testing.assert_array_equal(cp.asnumpy(z), (a32 + b32).astype(np.float16))
    np.testing.assert_array_equal(cp.asnumpy(w), (a32 * np.float32(3)).astype(np.float16))
    np.testing.assert_array_equal(cp.asnumpy(f), a.astype(np.float32))
    v = rng.integers(0, 2**32, 50000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    v = v[~np.isnan(v)]
    h = cp.zeros(v.size, cp.float16)
    kern("half_ops.cu", "to_half")((v.size + 255) // 256, 256, (cp.asarray(v), h, np.int32(v.size)))
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(cp.asnumpy(h).view(np.uint16),
                                      v.astype(np.float16).view(np.uint16))


def test_math_functions(cp, rng):
    n = 333
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    out_gpu, out_cpu = cp.zeros((20, n), cp.float32), np.zeros((20, n), np.float32)
    k = kern("math_ops.cu", "math_ops")
    k(3, 128, (cp.asarray(x), out_gpu, np.int32(n)))
    k(3, 128, (x, out_cpu, np.int32(n)))   # the CPU executor: exact functions
    np.testing.assert_allclose(cp.asnumpy(out_gpu), out_cpu, rtol=1e-5, atol=1e-5)


def test_atomics(cp, rng):
    n = 100003
    values, bins = rng.integers(0, 1000, n).astype(np.int32), cp.zeros(64, cp.uint32)
    kern("atomics.cu", "histogram")(40, 128, (cp.asarray(values), bins, np.int32(n)))
    np.testing.assert_array_equal(cp.asnumpy(bins), np.bincount(values % 64, minlength=64))
    n = 5000
    x, k = f32(rng, n), rng.integers(-10**6, 10**6, n).astype(np.int32)
    total, kmax = cp.zeros(1, cp.float32), cp.array([-2**31], cp.int32)
    kmin, count = cp.array([2**31 - 1], cp.int32), cp.zeros(1, cp.int32)
    kern("atomics.cu", "atomic_misc")((n + 127) // 128, 128, (cp.asarray(x), cp.asarray(k), total,
                                                              kmax, kmin, count, np.int32(n)))
    assert float(total[0]) == pytest.approx(x.astype(np.float64).sum(), abs=1e-2)
    assert (int(kmax[0]), int(kmin[0]), int(count[0])) == (k.max(), k.min(), n)


def test_printf(cp, capfd):
    x = cp.arange(300, dtype=cp.int32)
    kern("printf.cu", "hello")(3, 100, (x, np.int32(300)))
    cp.cuda.Device().synchronize()
    out, _ = capfd.readouterr()
    assert sorted(out.splitlines()) == sorted([
        "block 0 of 3 starts with x=0", "block 1 of 3 starts with x=100",
        "block 2 of 3 starts with x=200", "last thread 299: 149.500"])


def test_speed_kernel_matches_cpu_executor(cp, rng):
    x = rng.random(64 * 128).astype(np.float32)
    y_gpu, y_cpu = cp.zeros(x.size, cp.float32), np.zeros(x.size, np.float32)
    k = kern("speed.cu", "busy")
    k(64, 128, (cp.asarray(x), y_gpu, np.int32(100)))
    k(64, 128, (x, y_cpu, np.int32(100)))          # NumPy arrays: the CPU executor
    np.testing.assert_allclose(cp.asnumpy(y_gpu), y_cpu, rtol=1e-5)


def test_numpy_arrays_run_on_the_cpu_even_with_a_gpu(cp, rng):
    a, b, c = f32(rng, 100), f32(rng, 100), np.zeros(100, np.float32)
    k = kern("vector_add.cu", "vector_add")
    assert k.device_for((a, b, c, np.int32(100))) == "cpu"
    k(1, 128, (a, b, c, np.int32(100)))
    np.testing.assert_array_equal(c, a + b)


def test_bad_arguments_are_refused_before_the_gpu_runs(cp, rng):
    k = kern("vector_add.cu", "vector_add")
    a, c = cp.asarray(f32(rng, 10)), cp.zeros(10, cp.float32)
    with pytest.raises(TypeError, match="different places"):
        k(1, 32, (a, np.zeros(10, np.float32), c, np.int32(10)))
    with pytest.raises(TypeError, match=r"\('b', const float\*\): expected a float32 array"):
        k(1, 32, (a, cp.zeros(10, cp.float64), c, np.int32(10)))
    with pytest.raises(TypeError, match=r"\('n', int\).*np\.int32\(10\)"):
        k(1, 32, (a, a, c, 10))
