"""fp8 (cuda_fp8.h) on the CPU executor, against ml_dtypes and, where a CUDA toolkit is
installed, against CUDA's own host implementation of the conversions.

Inputs: all 256 fp8 bit patterns; every finite fp8 value, the midpoints between neighbours
(ties, which must round to even), values around the largest finite numbers and the
subnormals, infinities, NaN, -0.0, and random floats over the whole range.
"""
import ctypes
import functools
import subprocess
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from pagedattn_lab.cpu import RawKernel

KERNELS = Path(__file__).parent / "kernels"
SOURCE = (KERNELS / "fp8.cu").read_text()
E4, E5 = ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2
MAX = {E4: 448.0, E5: 57344.0}


@functools.lru_cache(maxsize=None)
def kern(name: str) -> RawKernel:
    return RawKernel(SOURCE, name, filename="fp8.cu")


def grid(n):
    return ((n + 127) // 128,), (128,)


def sweep() -> np.ndarray:
    bits = np.arange(256, dtype=np.uint8)
    parts = []
    for kind in (E4, E5):
        vals = np.unique(bits.view(kind).astype(np.float64))
        vals = vals[np.isfinite(vals)]
        parts += [vals, (vals[:-1] + vals[1:]) / 2]   # every value and every tie
        m = MAX[kind]
        parts.append(np.array([m * 1.0001, m * 1.0625, m * 1.07, m * 1.0714, m * 1.25, 2 * m]))
    parts.append(np.array([np.inf, np.nan, 0.0, 1e-40, 2.0**-10, 2.0**-10 * 1.001, 2.0**-17,
                           2.0**-17 * 1.01, 2.0**-16 * 0.75, 1e30, 3.4e38]))
    rng = np.random.default_rng(0)
    parts.append(rng.standard_normal(4000) * 10.0 ** rng.integers(-6, 6, 4000))
    x = np.concatenate(parts)
    x = np.concatenate([x, -x]).astype(np.float32)
    raw = rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([x, raw])


def to_fp8(x):
    outs = [np.zeros(x.size, np.uint8) for _ in range(4)]
    kern("float_to_fp8")(*grid(x.size), (x, *outs, np.int32(x.size)))
    return dict(zip([(E4, True), (E4, False), (E5, True), (E5, False)], outs))


def same(got_bits: np.ndarray, want, kind) -> np.ndarray:
    """Per element: equal values (with the sign of zero), or both NaN."""
    g = got_bits.view(kind).astype(np.float32)
    w = np.asarray(want).astype(np.float32)
    return ((g == w) & (np.signbit(g) == np.signbit(w))) | (np.isnan(g) & np.isnan(w))


def test_all_256_patterns_decode_like_ml_dtypes():
    bits = np.arange(256, dtype=np.uint8)
    e4, e5 = np.zeros(256, np.float32), np.zeros(256, np.float32)
    h4, h5 = np.zeros(256, np.float16), np.zeros(256, np.float16)
    kern("fp8_to_wide")(2, 128, (bits, e4, e5, h4, h5, np.int32(256)))
    for kind, f, h in ((E4, e4, h4), (E5, e5, h5)):
        want = bits.view(kind).astype(np.float32)
        np.testing.assert_array_equal(f, want)   # NaN where NaN; -0.0 compared by value...
        np.testing.assert_array_equal(np.signbit(f), np.signbit(want))   # ...and by sign
        nan = np.isnan(want)
        np.testing.assert_array_equal(h[~nan], want[~nan].astype(np.float16))
        assert (h[nan].view(np.uint16) == 0x7FFF).all()   # the canonical half NaN
    assert np.isnan(e4[[0x7F, 0xFF]]).all() and np.isfinite(np.delete(e4, [0x7F, 0xFF])).all()
    assert np.isinf(e5[[0x7C, 0xFC]]).all() and np.isnan(e5[[0x7D, 0x7E, 0x7F]]).all()


@pytest.mark.parametrize("kind", [E4, E5], ids=["e4m3", "e5m2"])
def test_float_to_fp8_without_saturation_is_ml_dtypes(kind):
    x = sweep()
    got = to_fp8(x)[(kind, False)]
    with np.errstate(over="ignore", invalid="ignore"):
        ok = same(got, x.astype(kind), kind)
    assert ok.all(), f"{(~ok).sum()} differ, e.g. {x[~ok][:5]}"


@pytest.mark.parametrize("kind", [E4, E5], ids=["e4m3", "e5m2"])
def test_satfinite_clamps_to_the_largest_finite_value(kind):
    x = sweep()
    got = to_fp8(x)[(kind, True)]
    m = MAX[kind]
    clamped = np.where(np.isnan(x), x, np.clip(x, -m, m))
    with np.errstate(over="ignore", invalid="ignore"):
        ok = same(got, clamped.astype(kind), kind)
    assert ok.all(), f"{(~ok).sum()} differ, e.g. {x[~ok][:5]}"
    values = got.view(kind).astype(np.float32)
    assert np.abs(values[~np.isnan(x)]).max() == m   # reached, never passed
    inf = np.isinf(x)
    np.testing.assert_array_equal(values[inf], np.sign(x[inf]) * m)


def test_nan_rounding_and_overflow_specifics():
    x = np.array([np.nan, -np.nan, 464.0, 464.1, 480.0, -1e9, 61440.0, 61439.0,
                  2.0**-10, 2.0**-10 * 1.0001, 3 * 2.0**-10], np.float32)
    out = to_fp8(x)
    e4n, e4s, e5n = out[(E4, False)], out[(E4, True)], out[(E5, False)]
    assert e4n[0] == e4n[1] == 0x7F and out[(E5, False)][0] == 0x7F   # NaN, sign dropped
    assert e4n[2] == 0x7E and e4n[3] == 0x7F and e4s[3] == 0x7E   # 464: tie to even (448)
    assert e4n[5] == 0xFF and e4s[5] == 0xFE                       # -1e9: NaN / -448
    assert e5n[6] == 0x7C and e5n[7] == 0x7B                       # 61440 ties up to inf
    assert e4n[8] == 0x00 and e4n[9] == 0x01 and e4n[10] == 0x02   # 2^-10: tie to 0; 3*2^-10


def test_classes_half_input_and_x4_pack():
    rng = np.random.default_rng(1)
    h = (rng.standard_normal(1000) * 300).astype(np.float16)
    h[:3] = [np.inf, -np.inf, 1000.0]
    q = np.zeros(1000, E4)   # an ml_dtypes array for a __nv_fp8_e4m3* parameter
    x = (rng.standard_normal(1000) * 100).astype(np.float32)
    back = np.zeros(1000, np.float32)
    kern("half_and_x4")(*grid(1000), (h, q, x, back, np.int32(1000)))
    want = np.clip(h.astype(np.float32), -448, 448).astype(E4)   # the constructor saturates
    np.testing.assert_array_equal(q.view(np.uint8), want.view(np.uint8))
    np.testing.assert_array_equal(back, np.clip(x, -448, 448).astype(E4).astype(np.float32))
    q8 = np.zeros(1000, np.uint8)   # the bits in a uint8 array work too (the GPU's way)
    kern("half_and_x4")(*grid(1000), (h, q8, x, back, np.int32(1000)))
    np.testing.assert_array_equal(q8, want.view(np.uint8))
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        kern("half_and_x4")(*grid(1000), (h, np.zeros(1000, E5), x, back, np.int32(1000)))


def test_float_to_fp8_is_cudas_bit_for_bit(tmp_path):
    """Against CUDA's own host implementation (cuda_fp8.hpp), where a toolkit is installed."""
    from pagedattn_lab.cpu.compiler import compiler
    from pagedattn_lab.rawkernel import cuda_include_dir
    inc = cuda_include_dir()
    if inc is None or not (Path(inc) / "cuda_fp8.hpp").is_file():
        pytest.skip("no CUDA toolkit headers on this machine")
    (tmp_path / "ref.cpp").write_text(
        "#include <cuda_fp8.h>\n"
        'extern "C" void ref(const float* x, unsigned char* out, int n) {\n'
        "  for (int i = 0; i < n; ++i) {\n"
        "    out[4*i] = __nv_cvt_float_to_fp8(x[i], __NV_SATFINITE, __NV_E4M3);\n"
        "    out[4*i+1] = __nv_cvt_float_to_fp8(x[i], __NV_NOSAT, __NV_E4M3);\n"
        "    out[4*i+2] = __nv_cvt_float_to_fp8(x[i], __NV_SATFINITE, __NV_E5M2);\n"
        "    out[4*i+3] = __nv_cvt_float_to_fp8(x[i], __NV_NOSAT, __NV_E5M2);\n"
        "  }\n}\n")
    cmd = [*compiler()[0], "-O1", "-shared", "-fPIC", f"-I{inc}", "ref.cpp", "-o", "ref.so"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"CUDA's cuda_fp8.h does not compile on the host here: {r.stderr[-300:]}")
    lib = ctypes.CDLL(str(tmp_path / "ref.so"))
    x = sweep()
    ref = np.zeros(4 * x.size, np.uint8)
    lib.ref(x.ctypes.data_as(ctypes.c_void_p), ref.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_int(x.size))
    got = to_fp8(x)
    for k, key in enumerate([(E4, True), (E4, False), (E5, True), (E5, False)]):
        np.testing.assert_array_equal(got[key], ref[k::4])
