"""WMMA (mma.h) and bfloat16 (cuda_bf16.h) on the CPU executor, against NumPy.

The products of two halves or two bf16 are exact in float, so the only difference from a
float64 reference is float32 accumulation: the tolerances below are a few float32 ulps of
the sums (16 terms of size ~1), which a wrong layout, ldm or mapping exceeds by far.
"""
import functools
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelAssertionError, RawKernel, SharedMemoryRace, WarpSyncError

KERNELS = Path(__file__).parent / "kernels"
SOURCE = (KERNELS / "wmma.cu").read_text()
BF16 = ml_dtypes.bfloat16
i32, f32 = np.int32, np.float32


@functools.lru_cache(maxsize=None)
def kern(name: str) -> RawKernel:
    return RawKernel(SOURCE, name, filename="wmma.cu")


def tile(m, w, transposed):
    t = m[16 * w:16 * w + 16, :16].astype(np.float64)
    return t.T if transposed else t


@pytest.mark.parametrize("name, dtype", [("gemm_f16", np.float16), ("gemm_bf16", BF16)])
@pytest.mark.parametrize("mode", range(16))
def test_mma_all_layouts_against_numpy(name, dtype, mode):
    """Two warps, each its own tile; A, B, C, D in every row/column-major combination, with
    leading dimensions larger than 16 (and all different)."""
    rng = np.random.default_rng(mode)
    lda, ldb, ldc, ldd = 24, 32, 20, 36
    a = rng.standard_normal((32, lda)).astype(dtype)
    b = rng.standard_normal((32, ldb)).astype(dtype)
    c = rng.standard_normal((32, ldc)).astype(f32)
    d = np.full((32, ldd), np.nan, f32)
    kern(name)(1, 64, (a, b, c, d, i32(mode), i32(lda), i32(ldb), i32(ldc), i32(ldd), f32(0.5)))
    for w in range(2):
        want = 0.5 * (tile(a, w, mode & 1) @ tile(b, w, mode & 2) + tile(c, w, mode & 4))
        got = tile(d, w, mode & 8)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
        # what lies between the tiles' columns and ldd stays untouched
        assert np.isnan(d[16 * w:16 * w + 16, 16:]).all()


def test_half_accumulator():
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((16, 16)).astype(np.float16) for _ in range(2))
    d = np.full((16, 16), np.nan, np.float16)
    kern("gemm_f16_acc_f16")(1, 32, (a, b, d))
    want = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float16)
    np.testing.assert_array_equal(d, want)   # float sum of exact products, rounded once


def test_fragment_mapping_and_num_elements_are_as_documented():
    a = np.arange(256, dtype=np.float16).reshape(16, 16)
    x, counts = np.full((32, 16), np.nan, f32), np.zeros(3, i32)
    kern("fragment_map")(1, 32, (a, x, counts))
    assert list(counts) == [16, 8, 8]   # __half A, __nv_bfloat16 A, float accumulator
    for lane in range(32):
        row, cols = lane // 2, (lane % 2) * 8 + np.arange(8)
        np.testing.assert_array_equal(x[lane, :8], a[row, cols])
        np.testing.assert_array_equal(x[lane, 8:], x[lane, :8])   # the mirrored half


def test_staged_in_shared_memory_and_race_checked():
    rng = np.random.default_rng(4)
    a, b = (rng.standard_normal((16, 16)).astype(np.float16) for _ in range(2))
    d = np.zeros(256, f32)
    kern("smem_gemm")(1, 32, (a, b, d, i32(3)), racecheck=True)
    want = a.astype(np.float64) @ b.astype(np.float64).T   # B loaded column-major
    np.testing.assert_allclose(d[::-1].reshape(16, 16), want, atol=2e-5)


@pytest.mark.parametrize("sync, where", [(2, "load_matrix_sync(fa, sa"),
                                         (1, "d[i] = sd[255 - i]")],
                         ids=["no __syncwarp before the loads", "no __syncwarp after the store"])
def test_a_wmma_call_orders_no_shared_memory(sync, where):
    """load_matrix_sync of what other lanes staged, and a read of what store_matrix_sync
    stored, each need a __syncwarp() first: the race check names the lanes, as
    compute-sanitizer's does on a GPU."""
    a = b = np.ones((16, 16), np.float16)
    with pytest.raises(SharedMemoryRace) as info:
        kern("smem_gemm")(1, 32, (a, b, np.zeros(256, f32), i32(sync)), racecheck=True)
    race = info.value
    assert race.kind == "read after write" and race.same_warp
    assert race.line == 1 + next(i for i, text in enumerate(SOURCE.splitlines())
                                 if where in text)
    assert "no __syncwarp() or __syncthreads() between" in str(race)


def test_a_lane_that_leaves_is_reported_like_a_bad_shuffle():
    a, d = np.ones((16, 16), np.float16), np.zeros(32, f32)
    with pytest.raises(WarpSyncError) as info:
        kern("lane_leaves")(1, 32, (a, d, i32(5)))
    e = info.value
    assert e.bad_lanes == [5] and e.warp == 0
    assert "wmma::load_matrix_sync" in str(e) and "already exited" in str(e)
    lines = SOURCE.splitlines()
    start = next(i for i, t in enumerate(lines) if "void lane_leaves" in t)
    call = next(i for i in range(start, len(lines)) if "load_matrix_sync" in lines[i])
    assert e.lines == [call + 1]
    kern("lane_leaves")(1, 32, (a, d, i32(-1)))   # everyone stays: fine
    assert (d == 1).all()


def test_a_warp_with_missing_lanes():
    a, d = np.ones((16, 16), np.float16), np.zeros(48, f32)
    with pytest.raises(WarpSyncError, match="do not exist") as info:
        kern("lane_leaves")(1, 48, (a, d, i32(-1)))
    assert info.value.bad_lanes == list(range(16, 32))


def test_ldm_must_be_a_multiple_of_16_bytes():
    a, d = np.ones((16, 24), np.float16), np.zeros(32, f32)
    with pytest.raises(KernelAssertionError, match="ldm"):
        kern("bad_ldm")(1, 32, (a, d, i32(12)))
    kern("bad_ldm")(1, 32, (a, d, i32(24)))


# ---- bfloat16 ----------------------------------------------------------------------------

def special_floats():
    rng = np.random.default_rng(5)
    f = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 3.3895314e38, 3.4028235e38, 1e-40, -1e-45,
         1.1754944e-38, 65504.0, 1.00390625, 1.01171875, 1.0078125]   # ties both ways
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    rand = bits.view(f32)
    rand = rand[np.isfinite(rand)]
    return np.concatenate([np.array(f, f32), rand, rng.standard_normal(2000).astype(f32)])


def test_bf16_conversions_match_ml_dtypes():
    x = special_floats()
    n = x.size
    rn, back = np.zeros(n, BF16), np.zeros(n, f32)
    prod = np.zeros(n, np.uint16)   # a uint16 array stands for __nv_bfloat16* too
    kern("bf16_convert")((n + 127) // 128, 128, (x, rn, back, prod, i32(n)))
    np.testing.assert_array_equal(rn.view(np.uint16), x.astype(BF16).view(np.uint16))
    np.testing.assert_array_equal(back, x.astype(BF16).astype(f32))
    # (x * y) rounded, + 2 rounded, - 2 rounded: each step an ml_dtypes bf16 operation
    xb, yb = x.astype(BF16), x[::-1].astype(BF16)
    with np.errstate(over="ignore"):
        want = ((xb * yb) + BF16(2)) - BF16(2)
    ok = np.isfinite(want.astype(f32))
    np.testing.assert_array_equal(prod.view(BF16)[ok].astype(f32), want[ok].astype(f32))


def test_bf16_nan_is_canonical():
    x = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFC12345], np.uint32).view(f32)
    rn, back, prod = np.zeros(4, BF16), np.zeros(4, f32), np.zeros(4, BF16)
    kern("bf16_convert")(1, 32, (x, rn, back, prod, i32(4)))
    assert (rn.view(np.uint16) == 0x7FFF).all() and np.isnan(back).all()


def test_bf16_arrays_of_the_wrong_dtype_are_refused():
    x = np.zeros(4, f32)
    with pytest.raises(TypeError, match="bfloat16.*uint16|ml_dtypes.bfloat16"):
        kern("bf16_convert")(1, 32, (x, np.zeros(4, np.float16), x, np.zeros(4, BF16), i32(4)))


@pytest.mark.parametrize("filename, mark", [("wmma.cu", "wmma.mma.sync"), ("fp8.cu", "cvt")])
def test_the_same_source_compiles_for_the_gpu(tmp_path, filename, mark):
    """With the real CUDA headers (nvcc stands in for NVRTC; skipped without a toolkit)."""
    import shutil
    import subprocess

    from pagedattn_lab.rawkernel import cuda_include_dir
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not Path(nvcc).is_file() or cuda_include_dir() is None:
        pytest.skip("no CUDA toolkit (nvcc and mma.h) on this machine")
    (tmp_path / filename).write_text((KERNELS / filename).read_text())
    r = subprocess.run([nvcc, "-arch=sm_90", "-ptx", "-std=c++17", filename, "-o", "out.ptx"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert mark in (tmp_path / "out.ptx").read_text()
