"""Refusals on the run side of the attention calls, and the shared helpers behind them
(attention_common, validate): each names the argument and the reason, and leaves `out` and
the plan as they were. Runs on the CPU executor (NumPy)."""
import numpy as np
import pytest

from pagedattn_lab import validate_memory
from pagedattn_lab.attention_common import MAX_GRID_YZ, dtype_name, element_dtype
from pagedattn_lab.attention_decode import paged_attention_decode
from pagedattn_lab.attention_prefill import paged_attention_prefill
from pagedattn_lab.prefill_wrapper import BatchPrefillWrapper
from pagedattn_lab.reference import reference_decode, reference_prefill
from pagedattn_lab.validate import check_attention_inputs
from pagedattn_lab.validate_memory import check_memory, device_memory_bytes

from .test_bad_input_new_apis import assert_same, snapshot
from .test_prefill_wrapper import packed_problem


def offset_view(shape, dtype, fill=np.nan):
    """A C-contiguous array whose data starts 4 bytes past a 16-byte boundary."""
    n = int(np.prod(shape))
    base = np.zeros((n + 16) * 8, np.uint8)
    start = (-base.ctypes.data) % 16 + 4
    view = base[start:start + n * np.dtype(dtype).itemsize].view(dtype).reshape(shape)
    view[...] = fill
    assert view.ctypes.data % 16 == 4 and view.flags.c_contiguous
    return view


def decode_problem(rng, batch=2, heads=2, kv_heads=1, dim=32, page=4):
    k = rng.standard_normal((6, page, kv_heads, dim)).astype(np.float32)
    v = rng.standard_normal((6, page, kv_heads, dim)).astype(np.float32)
    tables = np.array([[0, 1], [2, 3]], np.int32)[:batch]
    lens = np.array([7, 5], np.int32)[:batch]
    q = rng.standard_normal((batch, heads, dim)).astype(np.float32)
    return q, k, v, tables, lens


# ---- out= of paged_attention_decode -------------------------------------------------------

@pytest.mark.parametrize("make_out, exc, match", [
    (lambda: np.full((2, 2, 16), np.nan, np.float32), ValueError,
     r"^out: expected shape \(2, 2, 32\), got \(2, 2, 16\)$"),
    (lambda: offset_view((2, 2, 32), np.float32), ValueError,
     r"^out: expected an array whose data starts on a 16-byte boundary"),
])
def test_decode_refuses_an_out_of_the_wrong_shape_or_alignment(rng, make_out, exc, match):
    q, k, v, tables, lens = decode_problem(rng)
    out = make_out()
    with pytest.raises(exc, match=match):
        paged_attention_decode(q, k, v, tables, lens, out=out)
    assert np.isnan(out).all()


def test_grid_limits_name_q(rng):
    """Batch and heads past CUDA's grid y/z limit on the simt kernel (a block per sequence in
    z, per KV head in y) are refused before any launch, naming q and k_cache, which give them
    (the plan's check, per kernel: test_outsider_grid_hunt145 has the tensor-core one's)."""
    k = np.zeros((1, 1, 1, 16), np.float32)
    lens = np.ones(MAX_GRID_YZ + 1, np.int32)
    tables = np.zeros((MAX_GRID_YZ + 1, 1), np.int32)
    q = np.zeros((MAX_GRID_YZ + 1, 1, 16), np.float32)
    limit = rf"past CUDA's limit of {MAX_GRID_YZ} blocks in y and z"
    with pytest.raises(ValueError, match=rf"^q, k_cache: {MAX_GRID_YZ + 1} sequences .*{limit}"):
        paged_attention_decode(q, k, k, tables, lens)
    q = np.zeros((1, MAX_GRID_YZ + 1, 16), np.float32)
    k = np.zeros((1, 1, MAX_GRID_YZ + 1, 16), np.float32)
    with pytest.raises(ValueError, match=rf"^q, k_cache: 1 sequences and {MAX_GRID_YZ + 1} query "
                                         rf"heads over {MAX_GRID_YZ + 1} KV heads .*{limit}"):
        paged_attention_decode(q, k, k, tables[:1], lens[:1])


def test_prefill_refuses_an_unaligned_query_and_runs_its_copy(rng):
    """The kernels load 16 bytes at a time: a q at an offset is refused by name, as decode
    refuses it (it was copied on every call: hidden host work); its copy runs."""
    k = rng.standard_normal((4, 8, 1, 64)).astype(np.float32)
    v = rng.standard_normal((4, 8, 1, 64)).astype(np.float32)
    tables, lens = np.array([[2, 0]], np.int32), np.array([11], np.int32)
    q = offset_view((1, 11, 2, 64), np.float32)
    q[...] = rng.standard_normal(q.shape)
    with pytest.raises(ValueError, match=r"^q: expected data starting on a 16-byte boundary"):
        paged_attention_prefill(q, k, v, tables, lens)
    got = paged_attention_prefill(q.copy(), k, v, tables, lens)
    np.testing.assert_allclose(got, reference_prefill(q, k, v, tables, lens), atol=1e-5)


# ---- dtype names -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, want", [("float", "float32"), ("half", "float16"),
                                        ("float16", "float16"), (np.float32, "float32")])
def test_torch_and_c_names_of_the_dtypes(name, want):
    """'float' and 'half' are torch's names (torch.float, torch.half) of float32 and float16,
    not NumPy's float64."""
    assert dtype_name(name) == want and element_dtype(name) == np.dtype(want)


def test_decode_takes_a_cache_dtype_by_torch_name(rng):
    q, k, v, tables, lens = decode_problem(rng)
    got = paged_attention_decode(q, k, v, tables, lens)
    np.testing.assert_allclose(got, reference_decode(q, k, v, tables, lens), atol=1e-5)
    from pagedattn_lab import BatchDecodeWrapper
    w = BatchDecodeWrapper().plan(tables, lens, 2, 1, 32, 4, "float")
    np.testing.assert_allclose(w.run(q, k, v), got, atol=1e-6)


# ---- validate ------------------------------------------------------------------------------

def test_unknown_machine_memory_refuses_nothing(monkeypatch):
    """Where the OS does not tell its memory, the memory check lets the call through."""
    def no_sysconf(name):
        raise ValueError(f"unrecognized configuration name {name!r}")
    monkeypatch.setattr(validate_memory.os, "sysconf", no_sysconf)
    assert device_memory_bytes("cpu") is None
    check_memory(2**62, "cpu", "num_pages", "the K and V caches")


def test_known_machine_memory_refuses_too_much():
    with pytest.raises(ValueError, match=r"^num_pages: the K and V caches would take .* GiB, "
                                         r"more than the .* GiB of memory this machine has"):
        check_memory(2**62, "cpu", "num_pages", "the K and V caches")


def test_attention_inputs_refuse_an_unknown_mode(rng):
    q, k, v, tables, lens = decode_problem(rng)
    with pytest.raises(ValueError, match=r"^mode: expected 'decode' or 'prefill', got 'append'$"):
        check_attention_inputs(q, k, v, tables, lens, mode="append")


# ---- BatchPrefillWrapper.run ---------------------------------------------------------------

@pytest.fixture
def planned(rng):
    q, k, v, indptr, tables, lens = packed_problem(rng, [20, 9], [5, 9], 8, 2, 2, 32,
                                                   np.float16)
    w = BatchPrefillWrapper().plan(indptr, tables, lens, 2, 2, 32, 8, np.float16)
    return w, q, k, v


def test_prefill_run_before_plan_is_refused():
    with pytest.raises(RuntimeError, match=r"^run: call plan\(...\) first$"):
        BatchPrefillWrapper().run(np.zeros((1, 2, 32), np.float16),
                                  np.zeros((1, 8, 2, 32), np.float16),
                                  np.zeros((1, 8, 2, 32), np.float16))


@pytest.mark.parametrize("change, exc, match", [
    (lambda q, k, v: (q, k[:, :, :1], v[:, :, :1]), ValueError,
     r"^k_cache: expected \[num_pages, 8, 2, 32\] as planned, got \(\d+, 8, 1, 32\)$"),
    (lambda q, k, v: (q, k[:2], v[:2]), ValueError,
     r"^k_cache: the plan reads page \d+ but the cache has 2 pages$"),
    (lambda q, k, v: (q, k, v[:, :4]), ValueError,
     r"^v_cache: expected the shape of k_cache"),
    (lambda q, k, v: (q[:3], k, v), ValueError,
     r"^q: expected shape \(14, 2, 32\) \(total_q, num_heads, head_dim as planned\)"),
    (lambda q, k, v: (q, k.astype(np.float32), v), TypeError,
     r"^k_cache: expected dtype float16 \(as planned\), got float32$"),
])
def test_prefill_run_refuses_arrays_unlike_the_plan(planned, change, exc, match):
    w, q, k, v = planned
    q, k, v = (np.ascontiguousarray(a) for a in change(q, k, v))
    before = snapshot(w)
    with pytest.raises(exc, match=match):
        w.run(q, k, v)
    assert_same(before, w)


@pytest.mark.parametrize("make_out, exc, match", [
    (lambda q: q.tolist(), TypeError, r"^out: expected a NumPy or CuPy array, got list$"),
    (lambda q: np.full((q.shape[0] + 1,) + q.shape[1:], np.nan, np.float16), ValueError,
     r"^out: expected shape \(14, 2, 32\), got \(15, 2, 32\)$"),
    (lambda q: offset_view(q.shape, np.float16), ValueError,
     r"^out: expected an array whose data starts on a 16-byte boundary"),
])
def test_prefill_run_refuses_a_bad_out(planned, make_out, exc, match):
    w, q, k, v = planned
    out = make_out(q)
    with pytest.raises(exc, match=match):
        w.run(q, k, v, out=out)
    if isinstance(out, np.ndarray):
        assert np.isnan(out).all()


def test_prefill_run_refuses_codes_of_another_format(rng):
    q, _, _, indptr, tables, lens = packed_problem(rng, [20, 9], [5, 9], 8, 2, 2, 32,
                                                   np.float16)
    w = BatchPrefillWrapper().plan(indptr, tables, lens, 2, 2, 32, 8, np.float16,
                                   kv_dtype="int8")
    codes = np.zeros((5, 8, 2, 32), np.uint8)   # fp8's storage, not int8's
    with pytest.raises(TypeError, match=r"^k_cache: expected dtype int8 \(the codes of int8 "
                                        r"pages, as planned\), got uint8$"):
        w.run(q, codes, codes.copy(), k_scale=np.ones(2, np.float32),
              v_scale=np.ones(2, np.float32))


def test_prefill_plan_with_no_queries_runs_nothing(rng):
    """Every q_len 0 (sequences whose tokens are all cached): nothing to launch; run still
    checks its arrays and returns an empty out."""
    _, k, v, _, tables, lens = packed_problem(rng, [20, 9], [5, 9], 8, 2, 2, 32, np.float16)
    w = BatchPrefillWrapper().plan(np.zeros(3, np.int32), tables, lens, 2, 2, 32, 8,
                                   np.float16)
    assert w.variant == "nothing to do" and w.parts == ()
    out = w.run(np.zeros((0, 2, 32), np.float16), k, v)
    assert out.shape == (0, 2, 32)


@pytest.mark.parametrize("warps, exc, match", [
    (3, ValueError, r"^warps: expected 1, 2, 4 or 8, got 3$"),
    (16, ValueError, r"^warps: expected 1, 2, 4 or 8, got 16$"),
])
def test_prefill_plan_refuses_other_warp_counts(planned, warps, exc, match):
    w, *_ = planned
    _, _, _, indptr, tables, lens = packed_problem(np.random.default_rng(0), [20, 9], [5, 9],
                                                   8, 2, 2, 32, np.float16)
    before = snapshot(w)
    with pytest.raises(exc, match=match):
        w.plan(indptr, tables, lens, 2, 2, 32, 8, np.float16, warps=warps)
    assert_same(before, w)


def test_prefill_plan_with_fixed_warps_matches_the_reference(rng):
    from pagedattn_lab.reference import reference_prefill_packed
    q, k, v, indptr, tables, lens = packed_problem(rng, [40, 9], [12, 9], 8, 2, 1, 32,
                                                   np.float16)
    w = BatchPrefillWrapper().plan(indptr, tables, lens, 2, 1, 32, 8, np.float16, warps=2)
    assert w.variant.startswith("w2r1k") and w.warps == 2
    ref = reference_prefill_packed(*(a.astype(np.float32) for a in (q, k, v)), indptr, tables,
                                   lens)
    np.testing.assert_allclose(w.run(q, k, v).astype(np.float64), ref, atol=5e-3)
