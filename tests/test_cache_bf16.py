"""bfloat16 pages in PagedKVCache and PagedAttentionManager: rows rounded as ml_dtypes rounds
them, gathered back bit for bit, attention within bfloat16's error of a float64 reference,
and what no kernel reads refused when the cache or manager is built.

On the CPU the pages are ml_dtypes.bfloat16 arrays; on CuPy uint16 arrays of the bits (the
`gpu` cases). Shapes are small: the attention kernels run on the CPU executor.
"""

import ml_dtypes
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import cache as cache_module
from pagedattn_lab import manager as manager_module
from pagedattn_lab.backend import to_numpy
from pagedattn_lab.cache import page_bytes
from pagedattn_lab.manager import PagedAttentionManager
from tests.test_bad_input_attack3 import no_memory
from tests.test_paging import assert_same_state, cache_state
from tests.test_reference import dense_attention

BF16 = np.dtype(ml_dtypes.bfloat16)
U = 2.0 ** -8   # bfloat16's unit roundoff: 8 significant bits, rounded to nearest
DEVICES = ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)]


def bits(x):
    """The bfloat16 bits of a cache's array or a result, wherever it lives (compared as
    integers: NaN equals NaN, -0 differs from +0)."""
    return to_numpy(x).view(np.uint16)


def as_float(x):
    """A bfloat16 result (ml_dtypes array, or uint16 bits from the GPU) as float64."""
    return bits(x).view(BF16).astype(np.float64)


def rounded(x):
    """x as the cache must hold it: ml_dtypes' cast from x's own dtype (one rounding)."""
    return np.asarray(x).astype(BF16)


def on(device, x):
    """Float rows on the device under test (bfloat16 rows stay NumPy: CuPy has none)."""
    if device == "gpu" and x.dtype != BF16:
        import cupy  # noqa: PLC0415 - only the gpu cases
        return cupy.asarray(x)
    return x


def awkward_rows(rng, n, heads, dim, dtype):
    """Random rows with values where rounding is easy to get wrong: halfway cases (ties to
    even, both ways), a float64 just past a float32 tie (rounding through float32 first would
    round it down), signed zero, a bfloat16 subnormal, infinities, NaN."""
    x = rng.standard_normal((n, heads, dim)) * 4
    specials = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1 + 2**-8 + 2**-30, -0.0,
                         3e-39, np.inf, -np.inf, np.nan], np.float64)
    flat = x.reshape(-1)
    flat[:min(flat.size, specials.size)] = specials[:flat.size]
    return x.astype(dtype)


# ---- the cache ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["bfloat16", ml_dtypes.bfloat16, BF16, "torch.bfloat16"])
def test_cache_takes_each_spelling_of_bfloat16(dtype):
    if dtype == "torch.bfloat16":
        dtype = pytest.importorskip("torch").bfloat16
    cache = pl.PagedKVCache(4, 3, 2, 8, dtype=dtype, device="cpu")
    assert cache.dtype == BF16 and cache.k_cache.dtype == BF16 == cache.v_cache.dtype
    assert cache.page_bytes == 3 * 2 * 2 * 8 * 2 == page_bytes(3, 2, 8, dtype)   # 2 bytes each
    assert cache.bytes_per_token * 2 == page_bytes(1, 2, 8, np.float32)
    assert "bfloat16" in repr(cache)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, BF16])
def test_append_then_gather_is_ml_dtypes_rounding_bit_for_bit(rng, device, dtype):
    """Chunks of 1, 6 and 4 tokens over pages of 3 (never a page multiple), two sequences
    interleaved, GQA-sized heads: gather gives back each row as ml_dtypes rounds it."""
    cache = pl.PagedKVCache(12, 3, 2, 5, dtype="bfloat16", device=device)
    if device == "gpu":   # the pages hold bits; the element type is still bfloat16
        assert cache.k_cache.dtype == np.uint16 and cache.dtype == BF16
    a, b = cache.add_sequence(), cache.add_sequence()
    rows = {a: [], b: []}
    for n in (1, 6, 4):
        for seq in (a, b):
            k, v = (awkward_rows(rng, n, 2, 5, dtype) for _ in range(2))
            cache.append(seq, on(device, k), on(device, v))
            rows[seq].append((k, v))
    for seq in (a, b):
        k_got, v_got = cache.gather(seq)
        assert k_got.dtype == (np.uint16 if device == "gpu" else BF16)
        for got, want in ((k_got, [k for k, _ in rows[seq]]), (v_got, [v for _, v in rows[seq]])):
            np.testing.assert_array_equal(bits(got), bits(rounded(np.concatenate(want))))


def test_fork_shares_pages_and_copies_the_tail_exactly(rng):
    """A fork shares the parent's partly filled last page; the first append to either copies
    it (copy on write) with the bits as they were, and each sequence reads its own tokens."""
    cache = pl.PagedKVCache(6, 4, 1, 8, dtype="bfloat16", device="cpu")
    parent = cache.add_sequence()
    prompt = rng.standard_normal((6, 1, 8))
    cache.append(parent, prompt, -prompt)
    child = cache.fork_sequence(parent)
    assert cache.block_table(child) == cache.block_table(parent)
    own = {parent: rng.standard_normal((3, 1, 8)), child: rng.standard_normal((1, 1, 8))}
    for seq, k in own.items():
        cache.append(seq, k, -k)
    assert cache.block_table(child)[0] == cache.block_table(parent)[0]   # full page still shared
    assert cache.block_table(child)[1] != cache.block_table(parent)[1]
    for seq, k in own.items():
        want = rounded(np.concatenate([prompt, k]))
        got_k, got_v = cache.gather(seq)
        np.testing.assert_array_equal(bits(got_k), bits(want))
        np.testing.assert_array_equal(bits(got_v), bits(rounded(-np.concatenate([prompt, k]))))


def test_append_whose_rounding_raises_changes_nothing(monkeypatch):
    """A rounding to bfloat16 that raises (out of memory): it comes before any page is
    taken, so the sequence and the pages are as they were."""
    cache = pl.PagedKVCache(4, 4, 2, 8, dtype="bfloat16", device="cpu")
    seq = cache.add_sequence()
    cache.append(seq, np.ones((3, 2, 8)), np.ones((3, 2, 8)))
    before = cache_state(cache)
    with monkeypatch.context() as patched:
        patched.setattr(cache_module, "to_elements", no_memory)
        with pytest.raises(MemoryError):
            cache.append(seq, np.ones((3, 2, 8)), np.ones((3, 2, 8)))
    assert_same_state(before, cache_state(cache))

    rows = np.full((3, 2, 8), 1e300)   # past bfloat16's range: stored as inf, silently
    cache.append(seq, rows, -rows)
    k, v = cache.gather(seq)
    assert np.isposinf(as_float(k[3:])).all() and np.isneginf(as_float(v[3:])).all()


# ---- the manager: attention on bfloat16 pages ---------------------------------------------
# Bound: the reference is float64 attention of the bfloat16-rounded q, k and v (the rounding
# on the way in is checked bit for bit above), so what is left is the kernels' arithmetic.
# Products of bfloat16 values are exact in float32, sums and the softmax float32 (~1e-7
# relative); then two bfloat16 roundings, each at most U relative: the probabilities before
# P V (tensor-core prefill; perturbing a convex combination's weights by U moves it by at most
# 2 U max|v|) and the output (U |out|). So |out - ref| <= U |ref| + 2 U max|v| + 1e-5.

def bound(ref, v):
    return U * np.abs(ref) + 2 * U * np.abs(as_float(rounded(v))).max() + 1e-5


def reference(q, k, v, causal_offset=None):
    return dense_attention(*(as_float(rounded(x)) for x in (q, k, v)), causal_offset)


def poison_pages(cache):
    """NaN in every slot before any write (0x7fc0: its bits, on the GPU): a slot past a
    sequence's length (its last page's unused tail) read by a kernel would make its output NaN."""
    nan = np.nan if cache.k_cache.dtype == BF16 else 0x7FC0
    cache.k_cache[...] = nan
    cache.v_cache[...] = nan


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (2, 2), (4, 1)], ids=["gqa", "mha", "mqa"])
def test_manager_prefill_and_decode_on_bfloat16_pages(rng, device, heads, kv_heads):
    """Prompts of 7 and 1 tokens over pages of 5, decode steps across a page boundary, a
    forked sequence (shared pages, copy on write) and NaN in every unused slot."""
    dim = 32
    mgr = PagedAttentionManager(16, 5, heads, kv_heads, dim, dtype="bfloat16", device=device)
    assert mgr.prefill_kernel == "tensor_core" and "bfloat16" in repr(mgr)
    poison_pages(mgr.cache)
    history = {}
    for n in (7, 1):
        q, k, v = (rng.standard_normal((n, h, dim)) for h in (heads, kv_heads, kv_heads))
        seq, out = mgr.add_sequence(on(device, k), on(device, v), on(device, q))
        ref = reference(q, k, v, causal_offset=0)
        assert np.all(np.abs(as_float(out) - ref) <= bound(ref, v))
        history[seq] = (k, v)
    first = mgr.seq_ids[0]
    fork = mgr.cache.fork_sequence(first)   # shares the 7-token prompt's half-full page 2
    history[fork] = history[first]
    seqs = mgr.seq_ids
    for _ in range(4):   # the 7-token prompt fills its page and starts a new one
        q = rng.standard_normal((len(seqs), heads, dim))
        k, v = (rng.standard_normal((len(seqs), kv_heads, dim)) for _ in range(2))
        out = mgr.decode_step(seqs, on(device, q), on(device, k), on(device, v))
        for i, s in enumerate(seqs):
            history[s] = tuple(np.concatenate([h, x[i:i + 1]]) for h, x in zip(history[s], (k, v)))
            ref = reference(q[i:i + 1], *history[s])[0]
            assert np.all(np.abs(as_float(out[i]) - ref) <= bound(ref, history[s][1]))
    assert mgr.stats().bytes_per_token == 2 * kv_heads * dim * 2


def test_manager_takes_bfloat16_rows_and_a_torch_dtype(rng):
    """Rows already bfloat16 (ml_dtypes) go in unchanged; torch.bfloat16 names the dtype as
    BatchDecodeWrapper.plan reads it."""
    torch = pytest.importorskip("torch")
    mgr = PagedAttentionManager(4, 4, 2, 1, 32, dtype=torch.bfloat16, device="cpu")
    q, k, v = (rounded(rng.standard_normal((3, h, 32))) for h in (2, 1, 1))
    seq, out = mgr.add_sequence(k, v, q)
    assert out.dtype == BF16
    np.testing.assert_array_equal(bits(mgr.cache.gather(seq)[0]), bits(k))
    ref = reference(q, k, v, causal_offset=0)
    assert np.all(np.abs(as_float(out) - ref) <= bound(ref, v))


def test_failed_decode_on_bfloat16_pages_changes_nothing(rng, monkeypatch):
    """The kernel fails after the new tokens were written: the transaction puts every bit of
    the pages back, and a retry appends once."""
    mgr = PagedAttentionManager(6, 4, 2, 1, 32, dtype="bfloat16", device="cpu")
    seq, _ = mgr.add_sequence(*(rng.standard_normal((4, 1, 32)) for _ in range(2)))
    before = cache_state(mgr.cache)
    q = rng.standard_normal((1, 2, 32))
    k, v = rng.standard_normal((1, 1, 32)), rng.standard_normal((1, 1, 32))

    def fail(*args, **kwargs):
        raise RuntimeError("kernel failed")
    monkeypatch.setattr(manager_module, "paged_attention_decode", fail)
    with pytest.raises(RuntimeError, match="kernel failed"):
        mgr.decode_step([seq], q, k, v)
    assert_same_state(before, cache_state(mgr.cache))
    monkeypatch.undo()
    mgr.decode_step([seq], q, k, v)
    assert mgr.seq_len(seq) == 5


# ---- refused --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(dtype="bfloat"), TypeError,
     r"^dtype: expected float32, float16 or bfloat16, got 'bfloat'"),
    (dict(dtype=np.uint16), TypeError,   # the bits' dtype on CuPy, not an element type
     r"^dtype: expected float32, float16 or bfloat16, got uint16"),
    (dict(dtype="torch.float64"), TypeError, r"^dtype: expected float32, float16 or bfloat16"),
    (dict(dtype="bfloat16", kv_dtype="int8", k_scale=np.ones(2, np.float32),
          v_scale=np.ones(2, np.float32)), ValueError,
     r"^kv_dtype: compressed pages are quantized from and gathered as float32 or float16 rows"),
], ids=["unknown-spelling", "uint16", "torch-float64", "compressed"])
def test_cache_refuses(kwargs, exc, match):
    if kwargs["dtype"] == "torch.float64":
        kwargs["dtype"] = pytest.importorskip("torch").float64
    with pytest.raises(exc, match=match):
        pl.PagedKVCache(4, 4, 2, 32, device="cpu", **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(prefill_kernel="tiled"), r"^prefill_kernel: 'tiled' reads float32 or float16 pages, "
                                   r"not bfloat16 pages \(dtype\)"),
    (dict(prefill_kernel="naive"), r"^prefill_kernel: 'naive' reads float32 or float16 pages"),
    (dict(head_dim=40), r"^head_dim: 40 is not supported by the tensor-core prefill kernel, the "
                        r"only one that reads bfloat16 pages; supported: 32, 64, 80"),
    (dict(head_dim=20), r"^head_dim: 20 is not supported by the decode kernel"),
    (dict(kv_dtype="int8", k_scale=np.ones(2, np.float32), v_scale=np.ones(2, np.float32)),
     r"^kv_dtype: compressed pages are read by the tensor-core prefill kernel, which needs "
     r"dtype float16 and head_dim in .*; got bfloat16 and 64"),
], ids=["tiled", "naive", "simt-decode-only", "no-kernel", "compressed"])
def test_manager_refuses_at_construction_what_no_kernel_reads(kwargs, match):
    """head_dim 40: the SIMT decode kernel reads bfloat16 pages of it, but no prefill kernel
    does, so the first add_sequence would fail after storing the prompt."""
    args = dict(num_pages=8, page_size=4, num_heads=4, num_kv_heads=2, head_dim=64,
                dtype="bfloat16", device="cpu") | kwargs
    with pytest.raises(ValueError, match=match):
        PagedAttentionManager(**args)


@pytest.mark.parametrize("cache_dtype, rows, match", [
    # bfloat16 rows into a float32 cache were refused here ("bfloat16 rows go only into a
    # bfloat16 cache"); they are now rounded as float16 rows are (hunt 26,
    # test_api_consistency_hunt26.py), so uint16 bits into float32 stand in for them
    (np.float32, np.uint16, r"^k: expected dtype float16 or float32 or float64 or bfloat16, "
                            r"got uint16"),
    ("bfloat16", np.uint16, r"^k: expected dtype float16 or float32 or float64 or bfloat16, "
                            r"got uint16"),
], ids=["bits-into-float32", "bits-into-bf16"])
def test_append_refuses_rows_it_does_not_take_and_changes_nothing(cache_dtype, rows, match):
    """uint16 bits are not rows (integers), whatever the cache."""
    cache = pl.PagedKVCache(4, 4, 2, 8, dtype=cache_dtype, device="cpu")
    seq = cache.add_sequence()
    before = cache_state(cache) if cache_dtype == "bfloat16" else None
    with pytest.raises(TypeError, match=match):
        cache.append(seq, np.zeros((2, 2, 8), rows), np.zeros((2, 2, 8), rows))
    assert cache.seq_len(seq) == 0 and cache.allocator.num_free == 4
    if before is not None:
        assert_same_state(before, cache_state(cache))


def test_manager_refuses_bad_rows_before_storing_anything(rng):
    mgr = PagedAttentionManager(4, 4, 2, 1, 32, dtype="bfloat16", device="cpu")
    k = rng.standard_normal((3, 1, 32))
    with pytest.raises(ValueError, match=r"^q: expected shape \[n, 2, 32\] \(num_heads"):
        mgr.add_sequence(k, k, rng.standard_normal((3, 1, 32)))
    with pytest.raises(TypeError, match=r"^v: expected dtype .*, got int32"):
        mgr.add_sequence(k, np.zeros((3, 1, 32), np.int32))
    assert mgr.seq_ids == [] and mgr.cache.allocator.num_free == 4


def test_a_manager_of_compressed_pages_names_the_prefill_it_runs():
    """Compressed pages, like bfloat16 ones, are read by the tensor-core prefill alone: the
    manager says so, and a naive or tiled prefill asked for is refused, not run on tensor
    cores silently."""
    scales = dict(kv_dtype="int8", k_scale=np.ones(2, np.float32), v_scale=np.ones(2, np.float32))
    args = (8, 4, 4, 2, 64)
    assert PagedAttentionManager(*args, dtype=np.float16, device="cpu",
                                 **scales).prefill_kernel == "tensor_core"
    for kernel in ("naive", "tiled"):
        with pytest.raises(ValueError, match=f"^prefill_kernel: '{kernel}' reads float32 or "
                                             "float16 pages, not int8 pages \\(kv_dtype\\)"):
            PagedAttentionManager(*args, dtype=np.float16, device="cpu", prefill_kernel=kernel,
                                  **scales)
