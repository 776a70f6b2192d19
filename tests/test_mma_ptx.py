"""kernels/mma_ptx.cuh (mma.sync m16n8k16, ldmatrix, movmatrix, pack2) against the PTX ISA's
layout tables.

The expected registers are built here, in NumPy, from the tables of the PTX ISA ("Matrix
fragments for mma.m16n8k16 with floating point type", "ldmatrix"), not from the CPU
executor's emulation. Layout checks use values that identify their position (bit patterns
of 16-bit values, small integers whose sums are exact), so a wrong lane, register, half or
row fails bit for bit; random values check the arithmetic with a float32 rounding bound.
The tests marked `gpu` run the same kernels on the GPU and compare with the CPU executor;
test_mma_ptx_errors.py holds the failures (planted bugs, skipped lanes, raw PTX).
"""
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from pagedattn_lab.cpu import KernelAssertionError, SharedMemoryRace
from pagedattn_lab.kernels import KERNEL_DIR
from pagedattn_lab.rawkernel import RawKernel

KERNELS = Path(__file__).parent / "kernels"
BF16 = ml_dtypes.bfloat16
i32, u16, u32, f32 = np.int32, np.uint16, np.uint32, np.float32
LANE = np.arange(32)
G, T = LANE >> 2, LANE & 3   # groupID, threadID_in_group
VARIANTS = [(1, False), (2, False), (4, False), (1, True), (2, True), (4, True)]   # by index


def source() -> str:
    """The probes with mma_ptx.cuh inlined (as pagedattn_lab.kernels does for its kernels),
    so that a header edit changes the source that CuPy caches by."""
    text = (KERNELS / "mma_ptx.cu").read_text()
    at = text.index('#include "mma_ptx.cuh"')
    line = text.count("\n", 0, at) + 1
    header = (KERNEL_DIR / "mma_ptx.cuh").read_text()
    return text.replace('#include "mma_ptx.cuh"',
                        f'#line 1 "mma_ptx.cuh"\n{header}#line {line + 1} "mma_ptx.cu"', 1)


_KERNELS: dict = {}


def kern(name: str) -> RawKernel:
    """pagedattn_lab.RawKernel: NumPy arguments run on the CPU executor, CuPy ones on the GPU."""
    if name not in _KERNELS:
        _KERNELS[name] = RawKernel(source(), name, filename="mma_ptx.cu")
    return _KERNELS[name]


def call_line(kernel: str, call: str) -> int:
    lines = (KERNELS / "mma_ptx.cu").read_text().splitlines()
    start = next(i for i, t in enumerate(lines) if f"void {kernel}(" in t)
    return next(i for i in range(start, len(lines)) if call in lines[i]) + 1


# ---- the PTX ISA's tables, per lane -------------------------------------------------------

def reg(lo, hi):
    """One 32-bit register of two 16-bit bit patterns: lo in the low half."""
    return np.asarray(lo).astype(u32) | (np.asarray(hi).astype(u32) << 16)


def a_regs(a):
    """A (16x16 bits): a0,a1 = A[g][2t,2t+1]; a2,a3 = A[g+8][..]; a4..a7 the same at k + 8."""
    return np.stack([reg(a[G, 2 * T], a[G, 2 * T + 1]), reg(a[G + 8, 2 * T], a[G + 8, 2 * T + 1]),
                     reg(a[G, 2 * T + 8], a[G, 2 * T + 9]),
                     reg(a[G + 8, 2 * T + 8], a[G + 8, 2 * T + 9])], axis=1)


def b_regs(b):
    """B (16x8 bits, k x n): b0,b1 = B[2t,2t+1][g]; b2,b3 = B[2t+8,2t+9][g]."""
    return np.stack([reg(b[2 * T, G], b[2 * T + 1, G]), reg(b[2 * T + 8, G], b[2 * T + 9, G])],
                    axis=1)


def c_regs(c):
    """C/D (16x8): c0,c1 = C[g][2t,2t+1]; c2,c3 = C[g+8][2t,2t+1]."""
    return np.stack([c[G, 2 * T], c[G, 2 * T + 1], c[G + 8, 2 * T], c[G + 8, 2 * T + 1]], axis=1)


def ldmatrix_regs(mats, trans):
    """r[i] of every lane from matrix i (8x8 bits): [g][2t,2t+1], or [2t][g],[2t+1][g]."""
    if trans:
        return np.stack([reg(m[2 * T, G], m[2 * T + 1, G]) for m in mats], axis=1)
    return np.stack([reg(m[G, 2 * T], m[G, 2 * T + 1]) for m in mats], axis=1)


def bits(x, dtype):
    return np.asarray(x).astype(dtype).view(u16)


# ---- ldmatrix ---------------------------------------------------------------------------

def ldmatrix_case(variant, warps=2, seed=0):
    """A tile of 16-byte rows whose 16-bit values are their own position, and per lane a
    random row (each lane of a warp a different one; ignored lanes a valid row too)."""
    rng = np.random.default_rng(seed + 10 * variant)
    nrows = 32 * warps + 8
    tile = np.arange(nrows * 8, dtype=u16) * u16(7) + u16(1)   # distinct, no zero
    rows = np.concatenate([rng.permutation(nrows)[:32] for _ in range(warps)])
    return tile, nrows, rows


def ldmatrix_expected(tile, rows, variant, warps):
    n, trans = VARIANTS[variant]
    m = tile.reshape(-1, 8)
    out = np.full((32 * warps, 4), 0xDEADBEEF, u32)
    for w in range(warps):
        mats = [m[rows[32 * w + 8 * i:32 * w + 8 * i + 8]] for i in range(n)]
        out[32 * w:32 * w + 32, :n] = ldmatrix_regs(mats, trans)
    return out


def run_ldmatrix(tile, nrows, offsets, variant, xp=np):
    out = xp.zeros((offsets.size, 4), u32)
    kern("ldmatrix_probe")(1, offsets.size, (xp.asarray(tile), i32(nrows), xp.asarray(offsets),
                                             out, i32(variant)), shared_mem=nrows * 16)
    return out if xp is np else xp.asnumpy(out)


@pytest.mark.parametrize("variant", range(6))
def test_ldmatrix_layouts(variant):
    tile, nrows, rows = ldmatrix_case(variant)
    got = run_ldmatrix(tile, nrows, (rows * 8).astype(i32), variant)
    np.testing.assert_array_equal(got, ldmatrix_expected(tile, rows, variant, 2))


@pytest.mark.parametrize("variant", [0, 1, 3, 4])
def test_ldmatrix_ignores_the_addresses_of_unused_lanes(variant):
    """x1 reads lanes 0-7's addresses, x2 lanes 0-15's: the others may point anywhere."""
    n = VARIANTS[variant][0]
    tile, nrows, rows = ldmatrix_case(variant, warps=1)
    offsets = (rows * 8).astype(i32)
    offsets[8 * n:] = 3 + 100000 * np.arange(32 - 8 * n)   # misaligned, far out of bounds
    got = run_ldmatrix(tile, nrows, offsets, variant)
    np.testing.assert_array_equal(got, ldmatrix_expected(tile, rows, variant, 1))


def test_ldmatrix_reads_are_race_checked_by_the_lane_that_named_the_row():
    out = np.zeros(32, u32)
    kern("rows_of_neighbours").cpu(1, 32, (out, i32(1)), racecheck=True)   # __syncwarp: fine
    m, named = np.arange(32 * 8, dtype=u16).reshape(32, 8), (LANE + 31) % 32
    np.testing.assert_array_equal(out, ldmatrix_regs([m[named[:8]]], False)[:, 0])   # r[0]
    with pytest.raises(SharedMemoryRace) as info:
        kern("rows_of_neighbours").cpu(1, 32, (out, i32(0)), racecheck=True)
    e = info.value   # lanes run in order: lane 1 is the first to read a row written before it
    assert e.kind == "read after write" and e.thread == (1, 0, 0) and e.other_thread == (0, 0, 0)
    assert e.line == call_line("rows_of_neighbours", "ldmatrix_x4(")


@pytest.mark.parametrize("global_, what", [(0, "not 16-byte aligned"),
                                           (1, "not in this block's shared memory")])
def test_a_bad_row_address_names_the_lane(global_, what):
    tile, out = np.arange(256, dtype=u16), np.zeros(32, u32)
    with pytest.raises(KernelAssertionError) as info:
        kern("bad_row").cpu(1, 32, (tile, out, i32(5), i32(global_)))
    e = info.value
    assert e.thread == (5, 0, 0) and "lane 5" in str(e) and what in str(e), str(e)
    assert "ldmatrix_x4" in str(e) and e.line == call_line("bad_row", "ldmatrix_x4(")
    kern("bad_row").cpu(1, 32, (tile, out, i32(-1), i32(0)))   # every lane fine
    np.testing.assert_array_equal(out, reg(tile[G * 8 + 2 * T], tile[G * 8 + 2 * T + 1]))


@pytest.mark.parametrize("extra", [0, 8])
def test_a_row_past_the_end_of_shared_memory_is_refused(extra):
    """The 16 bytes just past the end, or 8 bytes in and 8 past (shared_mem not a multiple
    of 16 bytes)."""
    tile, nrows, rows = ldmatrix_case(2, warps=1)
    offsets = (rows * 8).astype(i32)
    offsets[9] = nrows * 8
    out = np.zeros((32, 4), u32)
    with pytest.raises(KernelAssertionError, match="lane 9 .*runs past the end of shared "
                       f"memory .byte {nrows * 16} of the {nrows * 16 + extra} bytes") as info:
        kern("ldmatrix_probe").cpu(1, 32, (tile, i32(nrows), offsets, out, i32(2)),
                                   shared_mem=nrows * 16 + extra)
    assert info.value.thread == (9, 0, 0)


# ---- mma ----------------------------------------------------------------------------------

def mma_case(rng, dtype, small, warps=2):
    if small:   # integers: every product and sum is exact, so the result is exact
        a = rng.integers(-4, 5, (warps, 16, 16)).astype(dtype)
        b = rng.integers(-4, 5, (warps, 16, 8)).astype(dtype)
        c = rng.integers(-64, 65, (warps, 16, 8)).astype(f32)
    else:
        a = rng.standard_normal((warps, 16, 16)).astype(dtype)
        b = rng.standard_normal((warps, 16, 8)).astype(dtype)
        c = rng.standard_normal((warps, 16, 8)).astype(f32)
    return a, b, c


def mma_inputs(a, b, c, dtype):
    ra = np.concatenate([a_regs(bits(x, dtype)) for x in a])
    rb = np.concatenate([b_regs(bits(x, dtype)) for x in b])
    rc = np.concatenate([c_regs(x) for x in c]).astype(f32)
    return ra, rb, rc


def run_mma(ra, rb, rc, bf16, alias, xp=np):
    d = xp.full(rc.shape, np.nan, f32)
    kern("mma_probe")(1, ra.shape[0], (xp.asarray(ra), xp.asarray(rb), xp.asarray(rc), d,
                                       i32(bf16), i32(alias)))
    return d if xp is np else xp.asnumpy(d)


def mma_want(a, b, c):
    """Per lane, from float64 products: (D registers, the bound of float32 summation)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    d = a64 @ b64 + c
    size = np.abs(a64) @ np.abs(b64) + np.abs(c)
    return (np.concatenate([c_regs(x) for x in d]), np.concatenate([c_regs(x) for x in size]))


@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["f16", "bf16"])
@pytest.mark.parametrize("alias", [0, 1], ids=["d", "d_is_c"])
def test_mma_layout_exact_with_small_integers(dtype, alias):
    a, b, c = mma_case(np.random.default_rng(1 + alias), dtype, small=True)
    got = run_mma(*mma_inputs(a, b, c, dtype), dtype is BF16, alias)
    want, _ = mma_want(a, b, c)
    np.testing.assert_array_equal(got, want.astype(f32))


@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["f16", "bf16"])
@pytest.mark.parametrize("seed", [2, 3])
def test_mma_random_values_within_float32_rounding(dtype, seed):
    a, b, c = mma_case(np.random.default_rng(seed), dtype, small=False)
    got = run_mma(*mma_inputs(a, b, c, dtype), dtype is BF16, seed % 2)
    want, size = mma_want(a, b, c)
    assert (np.abs(got - want) <= 17 * 2.0**-24 * size).all()   # 17 roundings to float32


# ---- pack2 --------------------------------------------------------------------------------

def pack_inputs():
    rng = np.random.default_rng(7)
    special = [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, -1e6, 6e-8, 3e-8, 1e-40,
               1.00048828125, 1.00146484375, 1.0039062, 1.01171875, 3.3895314e38, np.inf,
               -np.inf, 1e-5, 2.9802322e-08]   # ties, overflow, subnormals of both types
    x = np.concatenate([np.array(special, f32), rng.standard_normal(2000).astype(f32) * 100,
                        rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(u32).view(f32)])
    x = x[~np.isnan(x)]
    return x[:x.size // 2 * 2]


def run_pack(x, xp=np):
    n = x.size // 2
    h, b = xp.zeros(n, u32), xp.zeros(n, u32)
    kern("pack2_probe")((n + 127) // 128, 128, (xp.asarray(x), h, b, i32(n)))
    return (h, b) if xp is np else (xp.asnumpy(h), xp.asnumpy(b))


def test_pack2_rounds_to_nearest_even_low_half_first():
    x = pack_inputs()
    h, b = run_pack(x)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(h, reg(bits(x[0::2], np.float16), bits(x[1::2], np.float16)))
    np.testing.assert_array_equal(b, reg(bits(x[0::2], BF16), bits(x[1::2], BF16)))


# ---- all of it together, and the warp rule ------------------------------------------------

def attention_case():
    rng = np.random.default_rng(8)
    q, k, v = (rng.integers(-3, 4, (16, 16)).astype(np.float16) for _ in range(3))
    return q, k, v


def attention_want(q, k, v):
    s = (q.astype(np.float64) @ k.astype(np.float64).T).astype(np.float16)   # |s| <= 144: exact
    return (s.astype(np.float64) @ v.astype(np.float64)).astype(f32)


def test_attention_step_through_registers():
    """S = Q K^T, P = S as __half in registers, O = P V: ldmatrix (plain and .trans), mma and
    pack2 composed as the tensor-core kernels compose them (integers: exact)."""
    q, k, v = attention_case()
    o = np.full((16, 16), np.nan, f32)
    kern("attention_step")(1, 32, (q.view(u16), k.view(u16), v.view(u16), o))
    np.testing.assert_array_equal(o, attention_want(q, k, v))


# ---- movmatrix.trans ----------------------------------------------------------------------

def movmatrix_case(warps=2, seed=3):
    """Per warp an 8x8 matrix of distinct 16-bit values (their position and the warp), and
    each lane's register of it in the non-transposed fragment layout, built from the table."""
    mats = (np.arange(warps * 64, dtype=u16).reshape(warps, 8, 8) * u16(5) + u16(3))
    mats = np.random.default_rng(seed).permutation(mats.ravel()).reshape(warps, 8, 8)
    x = np.concatenate([reg(m[G, 2 * T], m[G, 2 * T + 1]) for m in mats])
    return mats, x


def movmatrix_expected(mats):
    """The PTX ISA ("movmatrix"): lane 4g + t gets row g of M^T, columns 2t, 2t + 1, i.e.
    M[2t][g] (low half) and M[2t + 1][g] (high half)."""
    return np.concatenate([reg(m[2 * T, G], m[2 * T + 1, G]) for m in mats])


def run_movmatrix(x, xp=np):
    out = xp.zeros(x.size, u32)
    kern("movmatrix_probe")(1, x.size, (xp.asarray(x), out))
    return out if xp is np else xp.asnumpy(out)


def test_movmatrix_transposes_each_warps_matrix():
    mats, x = movmatrix_case()
    np.testing.assert_array_equal(run_movmatrix(x), movmatrix_expected(mats))


# ---- the GPU against the CPU executor: the emulation is the hardware's layout ----------------

@pytest.fixture(scope="module")
def cp():
    return pytest.importorskip("cupy")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", range(6))
def test_gpu_ldmatrix_matches_cpu_bit_for_bit(cp, variant):
    tile, nrows, rows = ldmatrix_case(variant)
    offsets = (rows * 8).astype(i32)
    gpu = run_ldmatrix(tile, nrows, offsets, variant, xp=cp)
    np.testing.assert_array_equal(gpu, run_ldmatrix(tile, nrows, offsets, variant))
    np.testing.assert_array_equal(gpu, ldmatrix_expected(tile, rows, variant, 2))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["f16", "bf16"])
@pytest.mark.parametrize("alias", [0, 1], ids=["d", "d_is_c"])
def test_gpu_mma_matches_cpu(cp, dtype, alias):
    """Small integers: bit for bit. Random values: within float32 rounding of float64 on
    both, and the largest GPU-CPU difference in float32 ulps is printed."""
    a, b, c = mma_case(np.random.default_rng(1 + alias), dtype, small=True)
    regs = mma_inputs(a, b, c, dtype)
    gpu = run_mma(*regs, dtype is BF16, alias, xp=cp)
    np.testing.assert_array_equal(gpu, mma_want(a, b, c)[0].astype(f32))   # the tables
    np.testing.assert_array_equal(gpu, run_mma(*regs, dtype is BF16, alias))
    a, b, c = mma_case(np.random.default_rng(5 + alias), dtype, small=False)
    regs = mma_inputs(a, b, c, dtype)
    gpu, cpu = run_mma(*regs, dtype is BF16, alias, xp=cp), run_mma(*regs, dtype is BF16, alias)
    want, size = mma_want(a, b, c)
    assert (np.abs(gpu - want) <= 17 * 2.0**-24 * size).all()
    ulps = np.abs(gpu.view(i32).astype(np.int64) - cpu.view(i32).astype(np.int64)).max()
    print(f"mma {np.dtype(dtype).name} random: GPU vs CPU at most {ulps} float32 ulps apart")


@pytest.mark.gpu
def test_gpu_movmatrix_matches_cpu_bit_for_bit(cp):
    mats, x = movmatrix_case()
    gpu = run_movmatrix(x, xp=cp)
    np.testing.assert_array_equal(gpu, movmatrix_expected(mats))
    np.testing.assert_array_equal(gpu, run_movmatrix(x))


@pytest.mark.gpu
def test_gpu_pack2_and_attention_step_match_cpu(cp):
    x = pack_inputs()
    gpu_h, gpu_b = run_pack(x, xp=cp)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(gpu_h, reg(bits(x[0::2], np.float16),
                                                 bits(x[1::2], np.float16)))
    np.testing.assert_array_equal(gpu_b, reg(bits(x[0::2], BF16), bits(x[1::2], BF16)))
    for gpu, cpu in zip((gpu_h, gpu_b), run_pack(x)):
        np.testing.assert_array_equal(gpu, cpu)
    q, k, v = attention_case()
    o = cp.full((16, 16), np.nan, f32)
    kern("attention_step")(1, 32, (cp.asarray(q.view(u16)), cp.asarray(k.view(u16)),
                                   cp.asarray(v.view(u16)), o))
    np.testing.assert_array_equal(cp.asnumpy(o), attention_want(q, k, v))
    o_cpu = np.full((16, 16), np.nan, f32)
    kern("attention_step")(1, 32, (q.view(u16), k.view(u16), v.view(u16), o_cpu))
    np.testing.assert_array_equal(cp.asnumpy(o), o_cpu)
