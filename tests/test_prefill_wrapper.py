"""BatchPrefillWrapper (tensor-core prefill over pages) against the float64 packed reference.

Packed batches mixing all-new prompts, chunks over a cached prefix and decode tokens; GQA and
MQA; scattered pages with NaN in every unused slot; lengths that are and are not tile and
page multiples; outputs poisoned with NaN. A small grid runs on the CPU executor (CI), the
whole grid on the GPU (`gpu` marker).
"""
import numpy as np
import pytest

from pagedattn_lab.prefill_wrapper import BatchPrefillWrapper, Variant, work_list
from pagedattn_lab.reference import reference_prefill_packed

TOL = {"float16": 2e-3, "bfloat16": 1e-2}   # ||out - ref|| / ||ref||: 16-bit inputs and P, fp32 sums


def bf16():
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


def packed_problem(rng, lens, q_lens, page_size, num_heads, num_kv_heads, head_dim, dtype):
    """Pages scattered over a pool with spare pages; every slot no sequence owns is NaN."""
    pages = [-(-n // page_size) for n in lens]
    num_pages = sum(pages) + 3
    order = rng.permutation(num_pages)
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    k_cache = np.full(shape, np.nan, np.float32)
    v_cache = np.full(shape, np.nan, np.float32)
    tables = np.full((len(lens), max(pages + [1])), -1, np.int32)
    nxt = 0
    for b, n in enumerate(lens):
        for j in range(pages[b]):
            tables[b, j] = order[nxt]
            rows = min(page_size, n - j * page_size)
            k_cache[order[nxt], :rows] = rng.standard_normal((rows, num_kv_heads, head_dim))
            v_cache[order[nxt], :rows] = rng.standard_normal((rows, num_kv_heads, head_dim))
            nxt += 1
    indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = rng.standard_normal((int(indptr[-1]), num_heads, head_dim)).astype(np.float32)
    cast = lambda a: a.astype(dtype)  # noqa: E731
    return cast(q), cast(k_cache), cast(v_cache), indptr, tables, np.array(lens, np.int32)


def rel_err(got, ref):
    return float(np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref))


def check_wrapper(xp, rng, lens, q_lens, page_size, num_heads, num_kv_heads, head_dim,
                  dtype=np.float16, causal=True, variant=None, decode_variant=None):
    q, k, v, indptr, tables, seq_lens = packed_problem(rng, lens, q_lens, page_size, num_heads,
                                                       num_kv_heads, head_dim, dtype)
    ref = reference_prefill_packed(q.astype(np.float32), k.astype(np.float32),
                                   v.astype(np.float32), indptr, tables, seq_lens, causal=causal)
    dev = (lambda a: xp.asarray(a)) if xp is not np else (lambda a: a)
    if xp is not np and dtype != np.float16:   # bf16 travels to CuPy as its bits
        dev = lambda a: xp.asarray(a.view(np.uint16) if a.dtype == bf16() else a)  # noqa: E731
    w = BatchPrefillWrapper().plan(dev(indptr), dev(tables), dev(seq_lens), num_heads,
                                   num_kv_heads, head_dim, page_size, dtype, causal=causal,
                                   variant=variant, decode_variant=decode_variant)
    poison = np.uint16(0x7FC0) if dev(q).dtype == np.uint16 else np.nan   # bf16 bits: NaN
    out = xp.full(q.shape, poison, dtype=dev(q).dtype)
    res = w.run(dev(q), dev(k), dev(v), out=out)
    assert res is out
    host = res.get() if xp is not np else res
    if host.dtype == np.uint16:
        host = host.view(bf16())
    host = host.astype(np.float32)
    assert np.isfinite(host).all(), "some outputs were not written (or NaN leaked from a slot)"
    tol = TOL["float16" if np.dtype(dtype) == np.float16 else "bfloat16"]
    assert rel_err(host, ref) < tol, f"relative error {rel_err(host, ref):.2e}"
    own = w.run(dev(q), dev(k), dev(v))   # out=None: the plan's buffer (bf16 bits on CuPy)
    assert own.dtype == res.dtype and bool((own == res).all()), "run(out=None) differs"
    return w


CPU_CASES = [
    # lens, q_lens, page, heads, kv heads, head_dim
    ([70, 1, 9], [70, 1, 9], 16, 2, 1, 32),        # all-new prompts: one tile and a bit, 1, 9
    ([40, 23], [5, 1], 7, 4, 2, 64),               # a chunk over a prefix, a decode; page 7
    ([17], [17], 1, 2, 2, 80),                     # page size 1, head_dim 80
]


@pytest.mark.parametrize("lens, q_lens, page_size, num_heads, num_kv_heads, head_dim", CPU_CASES)
def test_prefill_wrapper_on_the_cpu_executor(rng, lens, q_lens, page_size, num_heads,
                                             num_kv_heads, head_dim):
    check_wrapper(np, rng, lens, q_lens, page_size, num_heads, num_kv_heads, head_dim)


def test_bf16_and_non_causal_on_the_cpu_executor(rng):
    check_wrapper(np, rng, [30, 12], [30, 4], 8, 2, 1, 32, dtype=bf16(), causal=False)


# Each variant family once: rows per warp 1/2/4, K/V tile 32/64/128, 2-4 stages, Q in
# registers, partial unrolling; a batch with a long prompt, a chunk and a decode token.
VARIANTS = ["w4r2k32u2", "w2r2k64p3u1", "w1r4k32p4u1", "w8r1k128u2", "w4r1k64p3qu2",
            "w2r1k32u8", "w8r2k32u1"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_on_the_cpu_executor(rng, variant):
    check_wrapper(np, rng, [150, 40, 33], [150, 9, 1], 16, 4, 2, 64, variant=variant)


def test_decode_tokens_of_a_kv_head_share_a_tile(rng):
    """q_len * group <= 16: the query heads of one KV head are packed into one tile (MQA, 16
    heads; a short chunk of 3 tokens x 4 heads with GQA)."""
    w = check_wrapper(np, rng, [37, 5, 80], [1, 1, 80], 7, 16, 1, 32)
    assert [(p.pack, p.sequences) for p in w.parts] == [(1, 1), (16, 2)]
    assert w.parts[1].grid == (2, 1)   # one tile per sequence, one KV head
    w = check_wrapper(np, rng, [20, 3], [3, 3], 4, 8, 2, 96, decode_variant="w1r1k64p3u1")
    assert [(p.pack, p.variant.name) for p in w.parts] == [(4, "w1r1k64p3u1")]


def test_work_list_puts_the_longest_tiles_first():
    indptr = np.array([0, 100, 101, 131])
    lens = np.array([100, 4000, 31])
    work = work_list(indptr, lens, 64, causal=True)
    assert work.tolist() == [[1, 0], [0, 64], [0, 0], [2, 0]]


def test_work_list_of_packed_rows():
    """pack 4: query i is rows 4i..4i+3; a tile of 16 rows covers 4 queries."""
    indptr = np.array([0, 1, 6])
    lens = np.array([50, 9])
    work = work_list(indptr, lens, 16, causal=True, pack=4)
    assert work.tolist() == [[0, 0], [1, 16], [1, 0]]   # keys 50, 9 (query 4), 8 (query 3)


def test_variant_names_round_trip_and_bad_names_are_refused():
    for name in VARIANTS:
        assert Variant.parse(name).name == name
    for bad in ["w3r2k32u2", "w4r2k48u2", "w4r2k32u3", "w4r2k32p5u1", "w4r2k32", 42]:
        with pytest.raises(ValueError, match="^variant: "):
            Variant.parse(bad)


def test_run_refuses_what_does_not_match_the_plan(rng):
    q, k, v, indptr, tables, lens = packed_problem(rng, [20], [20], 8, 2, 2, 32, np.float16)
    w = BatchPrefillWrapper().plan(indptr, tables, lens, 2, 2, 32, 8, np.float16)
    with pytest.raises(ValueError, match=r"q: expected shape \(20, 2, 32\)"):
        w.run(q[:10], k, v)
    with pytest.raises(ValueError, match="k_cache: the plan reads page"):
        w.run(q, k[:1], v[:1])
    with pytest.raises(TypeError, match="v_cache: expected dtype float16"):
        w.run(q, k, v.astype(np.float32))
    with pytest.raises(ValueError, match=r"^v_cache: expected the shape of k_cache"):
        w.run(q, k, np.concatenate([v, v]))   # was accepted: K and V of two page pools


def test_run_without_out_returns_the_plans_buffer_and_allocates_nothing(rng, monkeypatch):
    """run(out=None) allocated a fresh output on every layer's call (DESIGN: run allocates
    nothing); it now returns the plan's own buffer, as BatchDecodeWrapper.run does."""
    q, k, v, indptr, tables, lens = packed_problem(rng, [20, 9], [20, 3], 8, 2, 1, 32,
                                                   np.float16)
    w = BatchPrefillWrapper().plan(indptr, tables, lens, 2, 1, 32, 8, np.float16)
    first = w.run(q, k, v).copy()
    allocated = []
    for name in ("empty", "zeros", "full", "empty_like"):
        real = getattr(np, name)
        monkeypatch.setattr(np, name, lambda *a, _real=real, _n=name, **kw:
                            allocated.append(_n) or _real(*a, **kw))
    again = w.run(q, k, v)
    monkeypatch.undo()
    assert allocated == [], f"run(out=None) allocated with {allocated}"
    assert again is w.run(q, k, v), "run(out=None) should return the plan's own buffer"
    np.testing.assert_array_equal(again, first)
    ref = reference_prefill_packed(q.astype(np.float32), k.astype(np.float32),
                                   v.astype(np.float32), indptr, tables, lens)
    assert rel_err(again.astype(np.float32), ref) < TOL["float16"]
    with pytest.raises(ValueError, match="^out: shares memory with q.*plan's own buffer"):
        w.run(again, k, v)   # the last result as the next query: both would be corrupted


@pytest.mark.parametrize("change, match", [
    (dict(head_dim=48), "head_dim: expected one of"),
    (dict(num_heads=3), "num_heads: 3 is not a multiple"),
    (dict(dtype=np.float32), "dtype: expected float16 or bfloat16"),
    (dict(qo_indptr=np.array([0, 30], np.int32)), "sequence 0 has 30 queries but seq_lens"),
    (dict(qo_indptr=np.array([1, 5], np.int32)), r"^qo_indptr\[0\]: expected 0"),
    (dict(variant="w4r2k32"), "variant: expected a name like"),
    (dict(decode_variant="w4r1k32u1"), "decode_variant: expected a variant of 16 rows"),
    # more shared memory than any block gets: was planned, then refused only by run()'s
    # launch ("shared_mem=264192 bytes", no argument named; on the GPU a CUDA error)
    (dict(variant="w8r4k128p4u1"), "^variant: w8r4k128p4u1 needs 264192 bytes of shared"),
    (dict(block_tables=np.full((1, 3), 2**28, np.int32)), "int32 cache slots"),
    (dict(block_tables=np.full((1, 3), 2**31 - 1, np.int32)), "^block_tables: page 2147483647 "
     "x page_size 8 is past"),   # was 'out of range for a cache of 2147483647 pages'
    (dict(dtype=None), "^dtype: expected float16 or bfloat16, got None$"),   # was 'float64'
    # one choice of the three: the other was dropped unseen (warps=3 not even checked)
    (dict(variant="w4r2k32u2", warps=3), "^warps: variant 'w4r2k32u2' fixes the warps"),
    (dict(warps=2, decode_variant="mw1r1k64"), "^decode_variant: variant or warps runs"),
    (dict(variant="w4r2k32u2", decode_variant="mw1r1k64"), "^decode_variant: variant or"),
])
def test_plan_refuses_bad_input_and_keeps_the_old_plan(rng, change, match):
    _, _, _, indptr, tables, lens = packed_problem(rng, [20], [20], 8, 2, 2, 32, np.float16)
    w = BatchPrefillWrapper().plan(indptr, tables, lens, 2, 2, 32, 8, np.float16)
    before = dict(w.__dict__)
    args = dict(qo_indptr=indptr, block_tables=tables, seq_lens=lens, num_heads=2,
                num_kv_heads=2, head_dim=32, page_size=8, dtype=np.float16)
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        w.plan(**args)
    assert w.__dict__.keys() == before.keys() and all(w.__dict__[k] is before[k] for k in before)


@pytest.mark.parametrize("change, name", [
    (dict(variant="mw2r2k64p3"), "variant"),
    (dict(decode_variant="mw1r1k128p3q"), "decode_variant"),
])
def test_plan_refuses_variants_past_the_shared_memory_at_their_head_dim(rng, change, name):
    """Variants that fit at head_dim 32 but not at 256 (K/V stages, Q rows of 264 halves):
    plan names the argument instead of run failing at launch."""
    _, _, _, indptr, tables, lens = packed_problem(rng, [33, 1], [33, 1], 8, 2, 1, 256,
                                                   np.float16)
    w = BatchPrefillWrapper()
    with pytest.raises(ValueError, match=f"^{name}: .* bytes of shared memory per block at "
                                         f"head_dim 256, more than the 227 KiB"):
        w.plan(indptr, tables, lens, 2, 1, 256, 8, np.float16, **change)
    assert not w.planned
    w.plan(indptr, tables, lens, 2, 1, 256, 8, np.float16)   # the default variants fit


GPU_CASES = [
    ([2048, 2048], [2048, 2048], 16, 8, 8, 64),
    ([4096 + 512, 4096 + 100, 33], [512, 100, 33], 16, 32, 8, 128),   # chunks over prefixes
    ([2048, 1, 77] + [300] * 5, [2048, 1, 77] + [1] * 5, 16, 32, 32, 128),   # mixed
    ([129, 65, 1], [129, 65, 1], 1, 16, 1, 96),                          # MQA, page 1
    ([500, 257], [300, 257], 256, 8, 2, 256),
    ([200], [200], 64, 4, 4, 112),
    ([333, 64], [333, 64], 32, 8, 4, 192),
    ([1000], [17], 16, 64, 8, 80),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("lens, q_lens, page_size, num_heads, num_kv_heads, head_dim", GPU_CASES)
def test_prefill_wrapper_on_the_gpu(rng, dtype, lens, q_lens, page_size, num_heads,
                                    num_kv_heads, head_dim):
    import cupy
    dt = np.float16 if dtype == "float16" else bf16()
    check_wrapper(cupy, rng, lens, q_lens, page_size, num_heads, num_kv_heads, head_dim, dt)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_on_the_gpu(rng, variant):
    import cupy
    check_wrapper(cupy, rng, [700, 300, 33], [700, 37, 1], 16, 8, 2, 128, variant=variant)
