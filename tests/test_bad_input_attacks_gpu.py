"""Attacks on the GPU paths (CuPy arrays): run()'s fast check, the checked-once static
scales, the one-shot decode's plan cache, and arrays at a byte offset, which the GPU would
meet with a sticky "misaligned address" fault (the context is lost for the process). Each
must be refused naming the argument before anything launches. Marked `gpu`."""
import numpy as np
import pytest

from pagedattn_lab import attention_decode
from pagedattn_lab.attention_decode import paged_attention_decode
from pagedattn_lab.cache_write import write_kv
from pagedattn_lab.cache_write_quant import write_kv_quant
from pagedattn_lab.prefill_wrapper import BatchPrefillWrapper
from pagedattn_lab.reference import reference_prefill_packed
from pagedattn_lab.wrappers import BatchDecodeWrapper

from .decode_cases import check_close, decode_problem, reference
from .test_decode_quant import compressed_problem
from .test_decode_run_gpu import refuse_launches
from .test_prefill_wrapper import packed_problem

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


def at_byte_offset(cp, x, offset=1):
    """A CuPy copy of NumPy x whose data starts `offset` bytes past a 256-byte boundary,
    filled byte by byte (a float kernel writing it would itself fault)."""
    buf = cp.zeros(x.nbytes + 256, cp.uint8)
    buf[offset:offset + x.nbytes] = cp.asarray(np.ascontiguousarray(x).view(np.uint8).ravel())
    return cp.ndarray(x.shape, x.dtype, memptr=buf.data + offset)


def compressed(rng, cp, scheme, kv_dtype="int8"):
    p = compressed_problem(rng, [40, 9], kv_dtype, scheme)
    d = {n: cp.asarray(p[n]) for n in ("q", "kc", "vc", "ks", "vs", "tables", "lens")}
    w = BatchDecodeWrapper().plan(d["tables"], d["lens"], 4, 2, 64, 16, "float16",
                                  kv_dtype=kv_dtype, scale_scheme=scheme)
    w.run(d["q"], d["kc"], d["vc"], k_scale=d["ks"], v_scale=d["vs"])   # warm
    return p, d, w


def test_q_that_is_the_plans_own_output_buffer_is_refused(rng, cp, monkeypatch):
    args = decode_problem(rng, [40, 9])
    q, k, v, tables, lens = (cp.asarray(a) for a in args)
    w = BatchDecodeWrapper().plan(tables, lens, 4, 2, 64, 16, "float16")
    h = w.run(q, k, v)
    before = h.copy()
    refuse_launches(w, monkeypatch)
    with pytest.raises(ValueError, match="out: shares memory with q.*plan's own buffer"):
        w.run(h, k, v)
    np.testing.assert_array_equal(cp.asnumpy(h), cp.asnumpy(before))


@pytest.mark.parametrize("scheme", ["static", "per_token"])
def test_scales_at_a_byte_offset_are_refused(rng, cp, monkeypatch, scheme):
    p, d, w = compressed(rng, cp, scheme)
    ks = at_byte_offset(cp, p["ks"], 2)
    refuse_launches(w, monkeypatch)
    with pytest.raises(ValueError, match="k_scale: expected data aligned to its 4-byte"):
        w.run(d["q"], d["kc"], d["vc"], k_scale=ks, v_scale=d["vs"])


def test_out_sharing_memory_with_per_token_scales_is_refused(rng, cp, monkeypatch):
    p, d, w = compressed(rng, cp, "per_token", "fp8_e4m3")
    buf = cp.zeros(d["vs"].nbytes + d["q"].nbytes, cp.uint8)
    vs = cp.ndarray(d["vs"].shape, cp.float32, memptr=buf.data)
    vs[...] = d["vs"]
    out = cp.ndarray(d["q"].shape, cp.float16, memptr=buf.data + d["vs"].nbytes - 16)
    before = buf.copy()
    refuse_launches(w, monkeypatch)
    with pytest.raises(ValueError, match="out: shares memory with v_scale"):
        w.run(d["q"], d["kc"], d["vc"], out=out, k_scale=d["ks"], v_scale=vs)
    assert bool((buf == before).all())


def test_a_temporary_static_scale_does_not_vouch_for_the_next_one(rng, cp):
    """Static CuPy scales are read back once per (id, address). A temporary freed after its
    call hands both to the next temporary (CPython reuses the id, CuPy's pool the memory):
    its NaN went unread unless the checked array is kept alive."""
    p, d, w = compressed(rng, cp, "static")
    bad = p["ks"].copy()
    bad[1] = np.nan
    for _ in range(3):
        w.run(d["q"], d["kc"], d["vc"], k_scale=cp.asarray(p["ks"]), v_scale=d["vs"])
        with pytest.raises(ValueError, match=r"k_scale: every scale must be finite.*\[1\]"):
            w.run(d["q"], d["kc"], d["vc"], k_scale=cp.asarray(bad), v_scale=d["vs"])


def test_one_shot_cached_plan_checks_the_arrays_and_reads_the_new_ones(rng, cp):
    """A cached plan (same shapes, same table values) still refuses what a first call
    refuses, and computes with this call's arrays, not the first call's."""
    args = decode_problem(rng, [40, 17, 33], num_heads=8, num_kv_heads=2, spare_pages=4)
    q, k, v, tables, lens = (cp.asarray(a) for a in args)
    attention_decode._plans.clear()
    paged_attention_decode(q, k, v, tables, lens)
    offset = cp.empty(q.size + 8, cp.float16)[1:1 + q.size].reshape(q.shape)
    offset[...] = q
    for call, match in [(dict(out=q), "out: shares memory with q"),
                        (dict(out=cp.empty(q.shape[:2], cp.float16)), "out: expected 3 dim"),
                        (dict(q=offset), "q: expected data starting on a 16-byte"),
                        (dict(q=q.astype(cp.float32)), "q: .*float16"),
                        (dict(k=cp.asfortranarray(k)), "k_cache: expected a C-contiguous")]:
        c = dict(q=q, k=k, v=v, out=None) | call
        with pytest.raises((ValueError, TypeError), match=match):
            paged_attention_decode(c["q"], c["k"], c["v"], tables, lens, out=c["out"])
    # another cache of the same shape, and K and V swapped: the same plan, their values
    k2 = cp.asarray(rng.standard_normal(k.shape).astype(np.float16))
    for kk, vv, ref in [(k2, v, reference((args[0], cp.asnumpy(k2), *args[2:]))),
                        (v, k, reference((args[0], args[2], args[1], *args[3:])))]:
        check_close(cp.asnumpy(paged_attention_decode(q, kk, vv, tables, lens)), ref,
                    "float16")
    # the lengths changed in place: planned again (under the same key), the new lengths
    lens[1] = 5
    lens_h = args[4].copy()
    lens_h[1] = 5
    check_close(cp.asnumpy(paged_attention_decode(q, k, v, tables, lens)),
                reference((*args[:4], lens_h)), "float16")
    assert [entry[1].tolist() for entry in attention_decode._plans.values()] == [lens_h.tolist()]


def test_prefill_plan_keeps_its_own_tables_on_the_gpu(rng, cp):
    q, k, v, indptr, tables, lens = packed_problem(rng, [20, 9], [5, 9], 8, 2, 2, 32,
                                                   np.float16)
    ref = reference_prefill_packed(*(a.astype(np.float32) for a in (q, k, v)), indptr,
                                   tables, lens)
    d_tables, d_lens = cp.asarray(tables), cp.asarray(lens)
    w = BatchPrefillWrapper().plan(cp.asarray(indptr), d_tables, d_lens, 2, 2, 32, 8,
                                   np.float16)
    d_tables[0, 0], d_lens[1] = int(np.setdiff1d(np.arange(k.shape[0]), tables)[0]), 1
    out = cp.asnumpy(w.run(*(cp.asarray(a) for a in (q, k, v))))
    assert np.isfinite(out).all()
    assert float(np.abs(out.astype(np.float64) - ref).max()) < 2e-3


def test_cache_writes_refuse_arrays_at_a_byte_offset(rng, cp):
    rows = rng.standard_normal((3, 2, 32)).astype(np.float32)
    slots = cp.asarray(np.array([0, 5, 9], np.int64))
    k_cache = cp.zeros((4, 8, 2, 32), cp.float32)
    v_cache = at_byte_offset(cp, np.zeros((4, 8, 2, 32), np.float32), 2)
    with pytest.raises(ValueError, match="v_cache: expected data aligned to its 4-byte"):
        write_kv(cp.asarray(rows), cp.asarray(rows), k_cache, v_cache, slots)
    codes = cp.zeros((4, 8, 2, 32), cp.int8)
    scales = cp.full(2, 0.05, cp.float32)
    with pytest.raises(ValueError, match="k: expected data aligned to its 4-byte"):
        write_kv_quant(at_byte_offset(cp, rows, 1), cp.asarray(rows), codes, codes.copy(),
                       slots, "int8", "static", k_scale=scales, v_scale=scales.copy())
    assert not bool(k_cache.any()) and not bool(codes.any())


def test_gather_kv_of_an_fp16_cache_two_bytes_past_a_word(rng, cp):
    """4-byte word copies from a cache at an address 2 mod 4 faulted (misaligned address)."""
    from pagedattn_lab import gather_kv, gather_kv_reference
    shape = (6, 4, 2, 8)
    n = int(np.prod(shape))
    k_h = rng.standard_normal(shape).astype(np.float16)
    k = cp.zeros(n + 8, cp.float16)[1:1 + n].reshape(shape)
    k[...] = cp.asarray(k_h)
    assert k.data.ptr % 4 == 2
    row = np.array([3, 1, 4, -1], np.int32)
    got = gather_kv(k, cp.asarray(-k_h), cp.asarray(row), 10)
    for g, want in zip(got, gather_kv_reference(k_h, -k_h, row, 10)):
        np.testing.assert_array_equal(cp.asnumpy(g), want)


def test_cuda_tensors_that_require_grad_or_come_alone_as_v(rng, cp):
    """DLPack refused a tensor that requires grad with a RuntimeError naming nothing; a torch
    v_cache beside CuPy q and k_cache was refused as 'expected ... a torch tensor'."""
    torch = pytest.importorskip("torch")
    args = decode_problem(rng, [40, 9])
    q, k, v, tables, lens = (cp.asarray(a) for a in args)
    w = BatchDecodeWrapper().plan(tables, lens, 4, 2, 64, 16, "float16")
    check_close(cp.asnumpy(w.run(q, k, torch.from_dlpack(v))), reference(args), "float16")
    grad_q = torch.from_dlpack(q).float().requires_grad_().half()   # a non-leaf that requires grad
    with pytest.raises(TypeError, match="q: a torch tensor that requires grad"):
        w.run(grad_q, k, v)
