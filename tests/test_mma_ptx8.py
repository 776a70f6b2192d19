"""kernels/mma_ptx.cuh's mma over 8-bit values (mma_m16n8k32_e4m3, mma_m16n8k32_s8) against
the PTX ISA's layout table ("Matrix Fragments for mma.m16n8k32"), built here in NumPy, not
from the CPU executor's emulation:

    a[0] = A[g][4t .. 4t+3]   a[1] = A[g+8][4t ..]   a[2] = A[g][4t+16 ..]   a[3] = A[g+8][4t+16 ..]
    b[0] = B[4t .. 4t+3][g]   b[1] = B[4t+16 .. 4t+19][g]     (the lowest k in the lowest byte)
    c, d = as m16n8k16's: C[g][2t, 2t+1], C[g+8][2t, 2t+1]

int8 sums are exact integers, so the s8 tests compare bit for bit; e4m3 products are exact in
float, so values whose sums are exact (small integers) compare bit for bit and random codes
within float32 rounding. The tests marked `gpu` run the same probe on the GPU.
"""
import ml_dtypes
import numpy as np
import pytest

from pagedattn_lab.rawkernel import RawKernel

from .test_mma_ptx import G, T, c_regs, kern, source

E4M3 = ml_dtypes.float8_e4m3fn
i32, u8, u32, f32 = np.int32, np.uint8, np.uint32, np.float32


def pack4(x):
    """Four bytes per register, x[..., 0] in the lowest byte."""
    x = x.astype(u8).astype(u32)
    return x[..., 0] | x[..., 1] << 8 | x[..., 2] << 16 | x[..., 3] << 24


def a_regs8(a):
    """A (16x32 bytes) per lane: rows g, g + 8 at k 4t .. 4t + 3, then at k 16 + 4t .."""
    cols = 4 * T[:, None] + np.arange(4)
    return np.stack([pack4(a[G[:, None], cols]), pack4(a[G[:, None] + 8, cols]),
                     pack4(a[G[:, None], cols + 16]), pack4(a[G[:, None] + 8, cols + 16])],
                    axis=1)


def b_regs8(b):
    """B (32x8 bytes, k x n) per lane: column g at k 4t .. 4t + 3, then at k 16 + 4t .."""
    rows = 4 * T[:, None] + np.arange(4)
    return np.stack([pack4(b[rows, G[:, None]]), pack4(b[rows + 16, G[:, None]])], axis=1)


def case(rng, s8, small, warps=2):
    """Per warp A (16x32), B (32x8) as codes (uint8 bits) and their values, and C."""
    if s8:
        a = rng.integers(-128, 128, (warps, 16, 32))
        b = rng.integers(-128, 128, (warps, 32, 8))
        c = rng.integers(-2**20, 2**20, (warps, 16, 8))
        return a.astype(np.int8).view(u8), b.astype(np.int8).view(u8), a, b, c
    if small:   # integers and halves: every product and sum is exact in float
        a = rng.integers(-8, 9, (warps, 16, 32)) / 2
        b = rng.integers(-8, 9, (warps, 32, 8)).astype(np.float64)
        c = rng.integers(-64, 65, (warps, 16, 8)).astype(np.float64)
        ca, cb = a.astype(E4M3), b.astype(E4M3)
    else:   # every finite code, subnormals included
        codes = np.setdiff1d(np.arange(256), [0x7f, 0xff]).astype(u8)
        ca = rng.choice(codes, (warps, 16, 32)).view(E4M3)
        cb = rng.choice(codes, (warps, 32, 8)).view(E4M3)
        c = rng.standard_normal((warps, 16, 8)) * 1000
    return ca.view(u8), cb.view(u8), ca.astype(np.float64), cb.astype(np.float64), c


def inputs(ca, cb, c, s8):
    ra = np.concatenate([a_regs8(x) for x in ca])
    rb = np.concatenate([b_regs8(x) for x in cb])
    rc = np.concatenate([c_regs(x) for x in c])
    return ra, rb, (rc.astype(i32) if s8 else rc.astype(f32)).view(u32)


def run(ra, rb, rc, s8, xp=np, name="mma8_probe", k=None):
    d = xp.full(rc.shape, 0xDEADBEEF, u32)
    (k or kern(name))(1, ra.shape[0], (xp.asarray(ra), xp.asarray(rb), xp.asarray(rc), d, i32(s8)))
    d = d if xp is np else xp.asnumpy(d)
    return d.view(i32) if s8 else d.view(f32)


def want(a, b, c):
    """Per lane, in float64 (exact for int8): the D registers and sum |a b| + |c|."""
    d = a @ b + c
    size = np.abs(a) @ np.abs(b) + np.abs(c)
    return (np.concatenate([c_regs(x) for x in d]), np.concatenate([c_regs(x) for x in size]))


@pytest.mark.parametrize("seed", [0, 1])
def test_s8_is_the_exact_integer_product(seed):
    ca, cb, a, b, c = case(np.random.default_rng(seed), s8=True, small=True)
    got = run(*inputs(ca, cb, c, True), True)
    np.testing.assert_array_equal(got, want(a, b, c)[0].astype(i32))


def test_e4m3_layout_exact_with_small_values():
    ca, cb, a, b, c = case(np.random.default_rng(2), s8=False, small=True)
    got = run(*inputs(ca, cb, c, False), False)
    np.testing.assert_array_equal(got, want(a, b, c)[0].astype(f32))


@pytest.mark.parametrize("seed", [3, 4])
def test_e4m3_every_code_within_float32_rounding(seed):
    """Codes from the whole range (2^-9 .. 448): 32 products added to C, 33 roundings."""
    ca, cb, a, b, c = case(np.random.default_rng(seed), s8=False, small=False)
    got = run(*inputs(ca, cb, c, False), False)
    d, size = want(a, b, c)
    assert (np.abs(got - d) <= 33 * 2.0**-24 * size).all()


def test_e4m3_nan_code_spoils_its_row_only():
    ca, cb, a, b, c = case(np.random.default_rng(5), s8=False, small=True, warps=1)
    ca[0, 3, 17] = 0x7f   # A[3][17] NaN: row 3 of D is NaN, the rest as before
    got = run(*inputs(ca, cb, c, False), False)
    d = want(a, b, c)[0]
    row3 = (G == 3)[:, None] & (np.arange(4) < 2)
    assert np.isnan(got[row3]).all() and not np.isnan(got[~row3]).any()
    np.testing.assert_array_equal(got[~row3], d[~row3].astype(f32))


@pytest.mark.parametrize("s8, good, bug", [
    (1, "{ __pal_mma_m16n8k32_s8(line, d, a, b, c); }",
     "{ const unsigned s[4] = {a[0], a[2], a[1], a[3]}; "
     "__pal_mma_m16n8k32_s8(line, d, s, b, c); }"),
    (0, "{ __pal_mma_m16n8k32_e4m3(line, d, a, b, c); }",
     "{ const unsigned s[2] = {b[1], b[0]}; __pal_mma_m16n8k32_e4m3(line, d, a, s, c); }")],
    ids=["s8_rows_for_k", "e4m3_k_halves_of_b"])
def test_the_tests_fail_on_a_planted_layout_bug(s8, good, bug):
    """The probe built with A's second and third registers (s8) or B's two (e4m3) swapped
    fails the comparison with the table."""
    assert good in source()
    buggy = RawKernel(source().replace(good, bug, 1), "mma8_probe", filename="mma_ptx.cu")
    ca, cb, a, b, c = case(np.random.default_rng(6), s8=bool(s8), small=True)
    got = run(*inputs(ca, cb, c, bool(s8)), s8, k=buggy)
    assert (got != want(a, b, c)[0]).sum() >= 64


# ---- the GPU: the same table, and the CPU executor's result --------------------------------

@pytest.fixture(scope="module")
def cp():
    return pytest.importorskip("cupy")


@pytest.mark.gpu
@pytest.mark.parametrize("s8, small, seed", [(1, True, 0), (0, True, 2), (0, False, 3)],
                         ids=["s8", "e4m3_small", "e4m3_random"])
def test_gpu_mma8_matches_the_table_and_the_cpu(cp, s8, small, seed):
    ca, cb, a, b, c = case(np.random.default_rng(seed), s8=bool(s8), small=small)
    regs = inputs(ca, cb, c, bool(s8))
    gpu, cpu = run(*regs, s8, xp=cp), run(*regs, s8)
    d, size = want(a, b, c)
    if small:   # exact
        np.testing.assert_array_equal(gpu, d.astype(i32 if s8 else f32))
        np.testing.assert_array_equal(gpu, cpu)
    else:
        assert (np.abs(gpu - d) <= 33 * 2.0**-24 * size).all()
        ulps = np.abs(gpu.view(i32).astype(np.int64) - cpu.view(i32).astype(np.int64)).max()
        print(f"mma e4m3 random: GPU vs CPU at most {ulps} float32 ulps apart")
