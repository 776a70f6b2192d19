"""The attention kernels on the CPU executor, against the float64 reference.

Small sizes (CI has two cores), but every case the kernels branch on: fp32 and fp16, MHA,
GQA, MQA and groups larger than one block handles, page sizes around the lengths (1,
page-1, page, page+1), a page size that is not a power of two, split-K partitions,
scattered page ids, outputs poisoned with NaN, and bad input refused before any launch.
"""
import numpy as np
import pytest

import pagedattn_lab.attention_prefill as attention_prefill
import pagedattn_lab.wrappers as wrappers
from pagedattn_lab import reference_decode, reference_prefill
from pagedattn_lab.attention import (
    choose_partitions,
    paged_attention_decode,
    paged_attention_prefill,
)

TOL = {np.float32: 1e-5, np.float16: 2e-3}


def make_problem(rng, lens, *, page_size=16, num_heads=4, num_kv_heads=2, head_dim=64,
                 dtype=np.float32, mode="decode", max_len=None, spare_pages=3):
    """Random inputs with each sequence's pages scattered over a cache with spare pages."""
    pages = [-(-n // page_size) for n in lens]
    num_pages = sum(pages) + spare_pages
    perm = rng.permutation(num_pages)
    tables = np.full((len(lens), max(pages) + 1), -1, dtype=np.int32)
    start = 0
    for b, n in enumerate(pages):
        tables[b, :n] = perm[start:start + n]
        start += n
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    k = rng.standard_normal(shape).astype(dtype)
    v = rng.standard_normal(shape).astype(dtype)
    if mode == "decode":
        q = rng.standard_normal((len(lens), num_heads, head_dim)).astype(dtype)
    else:
        max_len = max(lens) if max_len is None else max_len
        q = rng.standard_normal((len(lens), max_len, num_heads, head_dim)).astype(dtype)
    return q, k, v, tables, np.array(lens, dtype=np.int32)


def rel_err(out, ref):
    out = np.asarray(out, dtype=np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def poisoned(shape, dtype):
    return np.full(shape, np.nan, dtype=dtype)


def check_decode(args, dtype, **kw):
    ref = reference_decode(*args)
    out = paged_attention_decode(*args, out=poisoned(ref.shape, dtype), **kw)
    assert isinstance(out, np.ndarray) and out.dtype == dtype
    assert np.isfinite(out).all(), "some outputs were not written"
    err = rel_err(out, ref)
    assert err < TOL[dtype], f"relative error {err:.2e}"
    return out


def check_prefill(args, dtype, kernel):
    ref = reference_prefill(*args)
    out = paged_attention_prefill(*args, kernel=kernel, out=poisoned(ref.shape, dtype))
    assert np.isfinite(out).all(), "some outputs were not written"
    lens = args[4]
    for b, n in enumerate(lens):
        assert not out[b, n:].any(), f"rows past seq_lens[{b}] must be zero"
    err = rel_err(out, ref)
    assert err < TOL[dtype], f"relative error {err:.2e}"


# ---- decode ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("page_size", [8, 16, 32])
def test_decode_lengths_around_the_page(rng, dtype, page_size):
    lens = [1, page_size - 1, page_size, page_size + 1, 3 * page_size + 5]
    check_decode(make_problem(rng, lens, page_size=page_size, dtype=dtype), dtype)


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,dtype", [
    (2, 2, 64, np.float32),     # MHA
    (4, 1, 32, np.float32),     # MQA, 8 threads per token
    (8, 2, 128, np.float16),    # GQA 4, 16 threads per token
    (16, 1, 32, np.float32),    # group of 16 > 8: two blocks share the KV head
    (6, 2, 64, np.float16),     # group of 3: a GMAX=4 block with an idle head slot
])
def test_decode_head_layouts(rng, num_heads, num_kv_heads, head_dim, dtype):
    args = make_problem(rng, [5, 40], num_heads=num_heads, num_kv_heads=num_kv_heads,
                        head_dim=head_dim, dtype=dtype)
    check_decode(args, dtype)


def test_decode_page_size_not_a_power_of_two(rng):
    check_decode(make_problem(rng, [11, 12, 13, 50], page_size=12), np.float32)


@pytest.mark.parametrize("num_splits", [None, 1, 3, 7])
def test_decode_split_k(rng, num_splits):
    args = make_problem(rng, [700, 130, 1], page_size=16, num_heads=2, num_kv_heads=1)
    check_decode(args, np.float32, num_splits=num_splits)


def test_choose_partitions():
    # A long batch keeps the default partition; a lone sequence is cut finer to fill the SMs.
    assert choose_partitions([4096] * 64, 32, 132) == (512, 8)
    part, parts = choose_partitions([4096], 8, 132)
    assert part == 128 and parts == 32
    assert choose_partitions([128] * 256, 32, 132) == (128, 1)     # short: no split
    assert choose_partitions([1000, 10], 1, 132, num_splits=1) == (1000, 1)
    assert choose_partitions([1000, 10], 1, 132, num_splits=4) == (250, 4)
    assert choose_partitions([3], 1, 132, num_splits=10) == (1, 3)


def test_decode_fp16_long_split(rng):
    args = make_problem(rng, [300, 257], page_size=32, num_heads=4, num_kv_heads=4,
                        dtype=np.float16)
    check_decode(args, np.float16, num_splits=4)


# ---- prefill --------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["naive", "tiled"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_prefill(rng, kernel, dtype):
    lens = [70, 1, 15, 16, 17]   # 70 > 64: two query tiles; a K/V tile crossing pages
    args = make_problem(rng, lens, page_size=16, num_heads=4, num_kv_heads=2, dtype=dtype,
                        mode="prefill", max_len=72)
    check_prefill(args, dtype, kernel)


@pytest.mark.parametrize("kernel", ["naive", "tiled"])
def test_prefill_mqa_head_dim_128_page_8(rng, kernel):
    args = make_problem(rng, [33, 9], page_size=8, num_heads=2, num_kv_heads=1,
                        head_dim=128, mode="prefill")
    check_prefill(args, np.float32, kernel)


def test_prefill_naive_odd_head_dim(rng):
    args = make_problem(rng, [5, 9], page_size=4, num_heads=2, num_kv_heads=1, head_dim=24,
                        mode="prefill")
    check_prefill(args, np.float32, "naive")


def test_prefill_empty_sequence(rng):
    args = make_problem(rng, [20, 1], page_size=8, mode="prefill")
    q, k, v, tables, lens = args
    lens[1] = 0
    check_prefill((q, k, v, tables, lens), np.float32, "tiled")


# ---- bad input: refused before anything is launched ------------------------------------

@pytest.fixture
def no_launch(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a kernel was loaded or launched for invalid input")
    monkeypatch.setattr(wrappers, "load_kernel", refuse)
    monkeypatch.setattr(attention_prefill, "load_kernel", refuse)


def _bad_cases(rng, mode):
    q, k, v, t, lens = make_problem(rng, [5, 17], mode=mode)
    bad_tables = t.copy()
    bad_tables[1, 1] = k.shape[0]
    yield "q", (q.astype(np.float64), k, v, t, lens), {}
    yield "q", (q[..., :32], k, v, t, lens), {}
    yield "v_cache", (q, k, v.astype(np.float16), t, lens), {}
    yield "k_cache", (q, np.asfortranarray(k), v, t, lens), {}
    yield "block_tables", (q, k, v, t.astype(np.int64), lens), {}
    yield "block_tables[1, 1]", (q, k, v, bad_tables, lens), {}
    yield "seq_lens[0]", (q, k, v, t, np.array([10_000, 17], np.int32)), {}
    yield "seq_lens", (q, k, v, t, lens[:1]), {}
    yield "scale", (q, k, v, t, lens, float("nan")), {}
    yield "out", (q, k, v, t, lens), {"out": np.empty((1, 2), np.float32)}
    yield "out", (q, k, v, t, lens), {"out": np.empty(q.shape, np.float16)}


@pytest.mark.usefixtures("no_launch")
def test_decode_bad_input(rng):
    cases = list(_bad_cases(rng, "decode"))
    q, k, v, t, lens = make_problem(rng, [5, 17], head_dim=260)
    cases.append(("head_dim: 260", (q, k, v, t, lens), {}))
    q, k, v, t, lens = make_problem(rng, [5, 17])
    cases.append(("num_splits", (q, k, v, t, lens), {"num_splits": 0}))
    cases.append(("q", (q[:, :3], k, v, t, lens), {}))           # 3 heads over 2 KV heads
    cases.append(("seq_lens[0]", (q, k, v, t, np.array([0, 17], np.int32)), {}))
    for name, args, kw in cases:
        with pytest.raises((ValueError, TypeError)) as info:
            paged_attention_decode(*args, **kw)
        assert name in str(info.value), (name, str(info.value))


@pytest.mark.usefixtures("no_launch")
def test_prefill_bad_input(rng):
    cases = list(_bad_cases(rng, "prefill"))
    q, k, v, t, lens = make_problem(rng, [5, 17], mode="prefill")
    cases.append(("kernel", (q, k, v, t, lens), {"kernel": "fast"}))
    short_q = np.ascontiguousarray(q[:, :10])   # more tokens than q rows
    cases.append(("seq_lens[1]", (short_q, k, v, t, lens), {}))
    q, k, v, t, lens = make_problem(rng, [5, 17], head_dim=32, mode="prefill")
    cases.append(("head_dim 32", (q, k, v, t, lens), {"kernel": "tiled"}))
    q, k, v, t, lens = make_problem(rng, [5, 17], head_dim=136, mode="prefill")
    cases.append(("head_dim 136", (q, k, v, t, lens), {"kernel": "naive"}))
    for name, args, kw in cases:
        with pytest.raises((ValueError, TypeError)) as info:
            paged_attention_prefill(*args, **kw)
        assert name in str(info.value), (name, str(info.value))


def test_cache_is_not_modified(rng):
    args = make_problem(rng, [9, 30])
    before = [a.copy() for a in args]
    paged_attention_decode(*args, num_splits=2)
    for a, b in zip(args, before):
        np.testing.assert_array_equal(a, b)


def test_to_numpy_together_returns_numpy_arrays_as_they_are():
    from pagedattn_lab.backend import to_numpy_together
    a, b = np.arange(6, dtype=np.int32).reshape(2, 3), np.ones(4, np.int32)
    got = to_numpy_together(a, b)
    assert got[0] is a and got[1] is b
