"""Compressed pages in PagedKVCache, the manager and the serving simulator."""
import numpy as np
import pytest

from pagedattn_lab import quant, sim
from pagedattn_lab.cache import PagedKVCache, page_bytes, pages_in
from pagedattn_lab.manager import PagedAttentionManager
from pagedattn_lab.paging import OutOfPagesError

HEADS, DIM = 2, 64


def _cache(kv_dtype, scheme, num_pages=12, page_size=4, dtype=np.float16):
    scales = np.array([0.02, 0.05], np.float32)
    return PagedKVCache(num_pages, page_size, HEADS, DIM, dtype=dtype, device="cpu",
                        kv_dtype=kv_dtype, scale_scheme=scheme, k_scale=scales,
                        v_scale=scales * 2)


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("scheme", ["static", "per_token"])
def test_appended_tokens_come_back_dequantized(rng, kv_dtype, scheme):
    cache = _cache(kv_dtype, scheme)
    assert cache.k_cache.dtype == quant.kv_format(kv_dtype).storage
    a = cache.add_sequence()
    k1, v1 = (rng.standard_normal((6, HEADS, DIM)).astype(np.float16) for _ in range(2))
    cache.append(a, k1, v1)
    b = cache.fork_sequence(a)                       # shares a partly filled last page
    k2, v2 = (rng.standard_normal((3, HEADS, DIM)).astype(np.float16) * 5 for _ in range(2))
    cache.append(b, k2, v2)                          # copy on write, scales included
    k3, v3 = (rng.standard_normal((1, HEADS, DIM)).astype(np.float16) for _ in range(2))
    cache.append(a, k3, v3)
    for seq, ks, vs in ((a, [k1, k3], [v1, v3]), (b, [k1, k2], [v1, v2])):
        got_k, got_v = cache.gather(seq)
        for got, rows, which in ((got_k, ks, 0), (got_v, vs, 1)):
            want = []
            for r in rows:
                static = np.array([0.02, 0.05], np.float32) * (1 + which)
                codes, s = quant.quantize_rows(r, kv_dtype, scheme, static)
                want.append(quant.dequantize(codes, kv_dtype, s))
            np.testing.assert_array_equal(got, np.concatenate(want).astype(np.float16))


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
def test_a_failed_transaction_puts_back_the_per_token_scales(rng, kv_dtype):
    """Per-token scales live beside the codes: a rolled-back write must restore both (a copy
    on write and fresh slots among the writes)."""
    cache = _cache(kv_dtype, "per_token")
    a = cache.add_sequence()
    cache.append(a, *(rng.standard_normal((5, HEADS, DIM)).astype(np.float16) for _ in range(2)))
    b = cache.fork_sequence(a)                       # shares a's partly filled last page
    before = [x.copy() for x in (cache.k_cache, cache.v_cache, cache.k_scale, cache.v_scale)]
    with pytest.raises(RuntimeError, match="a kernel failed"):
        with cache.transaction():
            for seq, n in ((b, 6), (a, 2)):
                cache.append(seq, *(rng.standard_normal((n, HEADS, DIM)).astype(np.float16) * 50
                                    for _ in range(2)))
            raise RuntimeError("a kernel failed")
    names = ("k_cache", "v_cache", "k_scale", "v_scale")
    for name, old, now in zip(names, before, (cache.k_cache, cache.v_cache, cache.k_scale,
                                              cache.v_scale)):
        assert np.array_equal(old, now), f"{name} was not put back"
    assert (cache.seq_len(a), cache.seq_len(b)) == (5, 5)


def test_page_bytes_halve_for_one_byte_codes():
    fp16 = page_bytes(16, 8, 128, np.float16)
    assert fp16 == 16 * 8 * 2 * 128 * 2
    assert page_bytes(16, 8, 128, np.float16, "fp8_e4m3") * 2 == fp16
    assert page_bytes(16, 8, 128, np.float16, "int8", "per_token") == 16 * 8 * (256 + 8)
    assert _cache("int8", "static").page_bytes == 4 * HEADS * 2 * DIM


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
def test_twice_the_sequences_fit_in_the_same_memory(rng, kv_dtype):
    memory, page_size, length = 30 * 2048, 4, 12     # 30 fp16 pages of 2 KiB, 3 per sequence
    fitted = []
    for kv in (None, kv_dtype):
        n_pages = pages_in(memory, page_size=page_size, num_kv_heads=HEADS, head_dim=DIM,
                           dtype=np.float16, kv_dtype=kv)
        cache = _cache(kv, "static", num_pages=n_pages, page_size=page_size)
        rows = rng.standard_normal((length, HEADS, DIM)).astype(np.float16)
        count = 0
        while True:
            s = cache.add_sequence()
            try:
                cache.append(s, rows, rows)
            except OutOfPagesError:
                break
            count += 1
        fitted.append(count)
    assert fitted == [10, 20]


def test_simulator_takes_the_compressed_token_size():
    w = sim.Workload(num_requests=200)
    per_token = {kv: page_bytes(1, 8, 128, np.float16, kv) for kv in (None, "fp8_e4m3")}
    runs = {kv: sim.simulate("paged", w, memory_bytes=2**30 // 16, bytes_per_token=b)
            for kv, b in per_token.items()}
    assert runs["fp8_e4m3"].capacity == 2 * runs[None].capacity
    assert runs["fp8_e4m3"].mean_running > 1.5 * runs[None].mean_running
    with pytest.raises(ValueError, match="both or neither"):
        sim.simulate("paged", w, memory_bytes=2**20)


def test_manager_reports_compressed_bytes_per_token():
    scales = np.ones(HEADS, np.float32)
    mgr = PagedAttentionManager(8, 4, 4, HEADS, DIM, dtype=np.float16, device="cpu",
                                kv_dtype="fp8_e4m3", k_scale=scales, v_scale=scales)
    assert mgr.stats().bytes_per_token == HEADS * 2 * DIM


@pytest.mark.parametrize("kwargs, match", [
    (dict(k_scale=None), "k_scale: a quantized cache needs"),
    (dict(v_scale=np.ones(3, np.float32)), r"v_scale: expected shape \(2,\)"),
    (dict(k_scale=np.array([1, np.nan], np.float32)), "finite"),
    (dict(kv_dtype="int4"), "kv_dtype"),
    (dict(scale_scheme="per_tensor"), "scale_scheme"),
])
def test_bad_quantization_arguments_are_refused(kwargs, match):
    args = dict(kv_dtype="int8", scale_scheme="static", k_scale=np.ones(HEADS, np.float32),
                v_scale=np.ones(HEADS, np.float32))
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        PagedKVCache(4, 4, HEADS, DIM, device="cpu", **args)


@pytest.mark.parametrize("scheme", ["static", "per_token"])
def test_manager_attends_over_compressed_pages(rng, scheme):
    from pagedattn_lab.reference import reference_decode, reference_prefill
    scales = np.full(HEADS, 0.01, np.float32)
    mgr = PagedAttentionManager(16, 4, 4, HEADS, DIM, dtype=np.float16, device="cpu",
                                kv_dtype="fp8_e4m3", scale_scheme=scheme, k_scale=scales,
                                v_scale=scales)
    k, v = (rng.standard_normal((9, HEADS, DIM)).astype(np.float16) for _ in range(2))
    q = rng.standard_normal((9, 4, DIM)).astype(np.float16)
    seq, out = mgr.add_sequence(k, v, q)
    kd, vd = mgr.cache.gather(seq)                       # the dequantized cache
    tables = np.array([[0]], np.int32)
    ref = reference_prefill(q[None], kd[None].reshape(1, 9, HEADS, DIM),
                            vd.reshape(1, 9, HEADS, DIM), tables, np.array([9], np.int32))
    assert np.abs(out - ref[0]).max() < 5e-3 * np.abs(ref).max()
    q1, k1, v1 = (rng.standard_normal((1, h, DIM)).astype(np.float16) for h in (4, HEADS, HEADS))
    out1 = mgr.decode_step([seq], q1, k1, v1)
    kd, vd = mgr.cache.gather(seq)
    ref1 = reference_decode(q1, kd.reshape(1, 10, HEADS, DIM), vd.reshape(1, 10, HEADS, DIM),
                            tables, np.array([10], np.int32))
    assert np.abs(out1 - ref1).max() < 5e-3 * np.abs(ref1).max()


def test_manager_refuses_compressed_pages_it_cannot_read():
    with pytest.raises(ValueError, match="kv_dtype: compressed pages"):
        PagedAttentionManager(8, 4, 4, HEADS, DIM, dtype=np.float32, device="cpu",
                              kv_dtype="int8", k_scale=np.ones(HEADS, np.float32),
                              v_scale=np.ones(HEADS, np.float32))



@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(scale_scheme="per_tensor"), ValueError, r"^scale_scheme: expected one of"),
    (dict(dtype=None), TypeError, r"^dtype: expected float32, float16 or bfloat16, got None$"),
    (dict(kv_dtype="int8", k_scale=[1.0, 1.0], v_scale=np.ones(HEADS, np.float32)), TypeError,
     r"^k_scale: expected float32 scales, got a list \(float64\); pass np.array"),
], ids=["scheme-without-kv_dtype", "dtype-None", "scales-list"])
def test_cache_refuses_what_it_used_to_drop_or_misname(kwargs, exc, match):
    """A misspelt scheme without kv_dtype was dropped without a word; dtype=None was named
    float64 (NumPy's reading of it), and a list of scales 'float64'."""
    with pytest.raises(exc, match=match):
        PagedKVCache(4, 4, HEADS, DIM, device="cpu", **kwargs)
    with pytest.raises(exc, match=match):
        PagedAttentionManager(4, 4, 4, HEADS, DIM, device="cpu",
                              **dict(kwargs, dtype=kwargs.get("dtype", np.float16)))


def test_cache_keeps_its_own_copy_of_the_static_scales(rng):
    """The cache kept the caller's scale arrays: a NaN put in after they were checked reached
    every page read."""
    scales = np.array([0.02, 0.05], np.float32)
    cache = PagedKVCache(4, 4, HEADS, DIM, device="cpu", kv_dtype="int8", k_scale=scales,
                         v_scale=scales)
    scales[0] = np.nan
    seq = cache.add_sequence()
    k = rng.standard_normal((3, HEADS, DIM)).astype(np.float32)
    cache.append(seq, k, k)
    assert np.isfinite(cache.gather(seq)[0]).all()
    np.testing.assert_array_equal(cache.k_scale, np.array([0.02, 0.05], np.float32))
