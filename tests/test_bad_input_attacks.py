"""Attacks on the public API that got through once, on the CPU executor: each call here was
accepted (or failed with the wrong kind of error, or halfway) before its fix. Bad input must
raise a ValueError/TypeError naming the argument before anything launches, and a call that
fails must leave the plan, the tables and the caches as they were."""
import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import wrappers
from pagedattn_lab.cache_write import write_kv
from pagedattn_lab.cache_write_quant import write_kv_quant
from pagedattn_lab.prefill_wrapper import BatchPrefillWrapper
from pagedattn_lab.reference import reference_prefill_packed

from .decode_cases import check_close, decode_problem, poisoned, reference
from .test_decode_quant import compressed_problem
from .test_decode_run import no_general_path, planned, refuse_launches
from .test_prefill_wrapper import packed_problem


def at_byte_offset(x, offset=1):
    """A copy of x whose data starts `offset` bytes past an aligned address (a view of a
    uint8 buffer: NumPy allows it, the GPU faults on its loads)."""
    buf = np.empty(x.nbytes + 16, np.uint8)
    start = (-buf.ctypes.data) % 16 + offset
    y = buf[start:start + x.nbytes].view(x.dtype).reshape(x.shape)
    y[...] = x
    return y


# ---- BatchDecodeWrapper.run -----------------------------------------------------------------

@pytest.mark.parametrize("warm", [False, True], ids=["first call", "after a good call"])
def test_q_that_is_the_plans_own_output_buffer_is_refused(rng, monkeypatch, warm):
    """run(out=None) returns the plan's buffer; feeding it back as q (h = w.run(h, ...))
    would have the kernels write the array they read."""
    args = decode_problem(rng, [40, 9], dtype="float32")
    q, k, v = args[:3]
    w = planned(args)
    h = w.run(q, k, v)
    if warm:
        w.run(q, k, v, out=poisoned(q.shape, "float32"))
    before = h.copy()
    refuse_launches(w, monkeypatch)
    for q_bad in (h, h[:]):   # the buffer itself, or a view of it
        with pytest.raises(ValueError, match="out: shares memory with q.*plan's own buffer"):
            w.run(q_bad, k, v)
    np.testing.assert_array_equal(h, before)
    monkeypatch.undo()
    check_close(w.run(h.copy(), k, v), reference((before, *args[1:])), "float32")


@pytest.mark.parametrize("scheme", ["static", "per_token"])
def test_out_sharing_memory_with_a_scale_array_is_refused(rng, monkeypatch, scheme):
    p = compressed_problem(rng, [40, 9], "int8", scheme, q_dtype="float32")
    w = pl.BatchDecodeWrapper().plan(p["tables"], p["lens"], 4, 2, 64, 16, "float32",
                                     kv_dtype="int8", scale_scheme=scheme)
    w.run(p["q"], p["kc"], p["vc"], k_scale=p["ks"], v_scale=p["vs"])
    buf = np.zeros(p["vs"].size + p["q"].size, np.float32)   # v_scale, then out over it
    vs = buf[:p["vs"].size].reshape(p["vs"].shape)
    vs[...] = p["vs"]
    start = 0 if scheme == "static" else vs.size - 4   # out's first 16 bytes: v_scale's
    out = buf[start:start + p["q"].size].reshape(p["q"].shape)
    before = buf.copy()
    refuse_launches(w, monkeypatch)
    with pytest.raises(ValueError, match="out: shares memory with v_scale"):
        w.run(p["q"], p["kc"], p["vc"], out=out, k_scale=p["ks"], v_scale=vs)
    np.testing.assert_array_equal(buf, before)


@pytest.mark.parametrize("name", ["k_scale", "v_scale"])
def test_scales_at_a_byte_offset_are_refused(rng, monkeypatch, name):
    p = compressed_problem(rng, [40, 9], "fp8_e4m3", "per_token")
    w = pl.BatchDecodeWrapper().plan(p["tables"], p["lens"], 4, 2, 64, 16, "float16",
                                     kv_dtype="fp8_e4m3", scale_scheme="per_token")
    scales = dict(k_scale=p["ks"], v_scale=p["vs"])
    w.run(p["q"], p["kc"], p["vc"], **scales)   # warm: the fast path takes per-token scales
    scales[name] = at_byte_offset(scales[name])
    refuse_launches(w, monkeypatch)
    with pytest.raises(ValueError, match=f"{name}: expected data aligned to its 4-byte"):
        w.run(p["q"], p["kc"], p["vc"], **scales)


def test_a_huge_integer_scale_is_a_value_error(rng):
    args = decode_problem(rng, [9], dtype="float32")
    w = planned(args)
    with pytest.raises(ValueError, match="scale: expected a finite number"):
        w.run(*args[:3], scale=10**400)   # float() of it raises OverflowError


# ---- BatchDecodeWrapper.plan ----------------------------------------------------------------

@pytest.mark.parametrize("size", ["num_heads", "head_dim", "page_size"])
def test_plan_refuses_sizes_past_int32(rng, size):
    args = decode_problem(rng, [40, 9], dtype="float16")
    sizes = dict(num_heads=4, num_kv_heads=2, head_dim=64, page_size=16) | {size: 2**31}
    with pytest.raises(ValueError, match=f"{size}: expected an int <= 2147483647"):
        pl.BatchDecodeWrapper().plan(args[3], args[4], sizes["num_heads"],
                                     sizes["num_kv_heads"], sizes["head_dim"],
                                     sizes["page_size"], "float16")


@pytest.mark.parametrize("batch, kv_heads", [(65536, 2), (1, 65536)])
def test_plan_refuses_a_grid_past_cudas_limits(batch, kv_heads):
    """The simt kernel's grid is (partitions, KV heads x head groups, sequences): CUDA takes
    at most 65535 in y and z, so the GPU would refuse run()'s launch."""
    tables, lens = np.zeros((batch, 1), np.int32), np.ones(batch, np.int32)
    with pytest.raises(ValueError, match="^block_tables, num_heads, num_kv_heads: .* CUDA's "
                                         "limit of 65535"):
        pl.BatchDecodeWrapper().plan(tables, lens, kv_heads, kv_heads, 64, 16, "float16",
                                     kernel="simt")


@pytest.mark.parametrize("failure", ["grid", "memory"])
def test_a_plan_that_fails_halfway_keeps_the_previous_plan(rng, monkeypatch, failure):
    """plan() sets its attributes as it goes; one that failed after the first ones left the
    new sizes with no launches, and run() then returned a stale buffer without launching."""
    args = decode_problem(rng, [40, 9], dtype="float32")
    q, k, v = args[:3]
    w = planned(args, num_splits=2)
    w.run(q, k, v)
    if failure == "grid":
        tables, lens = np.zeros((65536, 1), np.int32), np.ones(65536, np.int32)
        exc = ValueError
    else:
        tables, lens = args[3][:1].copy(), args[4][:1].copy()
        exc = MemoryError

        def out_of_memory(*a, **kw):
            raise MemoryError("no memory for the partitions")
        monkeypatch.setattr(wrappers.dp, "choose_partitions", out_of_memory)
    with pytest.raises(exc):
        w.plan(tables, lens, 4, 2, 64, 32, "float32", kernel="simt")
    monkeypatch.undo()
    assert (w.batch, w.page_size, w.max_parts) == (2, 16, 2)
    no_general_path(w, monkeypatch)
    q2 = 3 * q
    out = poisoned(q.shape, "float32")
    assert w.run(q2, k, v, out=out) is out
    check_close(out, reference((q2, *args[1:])), "float32")


# ---- CSR tables -----------------------------------------------------------------------------

def test_from_csr_refuses_lengths_past_int32():
    """3 pages of 2^30 tokens: 3 * 2^30 wrapped around to a negative int32 length."""
    with pytest.raises(ValueError, match=r"indptr, last_page_len: sequence 0 .* past int32"):
        pl.from_csr(np.array([0, 3], np.int32), np.array([0, 1, 2], np.int32),
                    np.array([2**30], np.int32), 2**30)


# ---- BatchPrefillWrapper --------------------------------------------------------------------

def test_prefill_plan_keeps_its_own_copy_of_the_tables(rng):
    """On the CPU the plan kept the caller's tables and lengths: changed in place after plan
    (a serving loop reusing its arrays), run() read pages and lengths never checked."""
    q, k, v, indptr, tables, lens = packed_problem(rng, [20, 9], [5, 9], 8, 2, 2, 32,
                                                   np.float16)
    ref = reference_prefill_packed(*(a.astype(np.float32) for a in (q, k, v)), indptr,
                                   tables, lens)
    w = BatchPrefillWrapper().plan(indptr, tables, lens, 2, 2, 32, 8, np.float16)
    spare = np.setdiff1d(np.arange(k.shape[0]), tables)[0]   # a page of NaN
    tables[0, 0], lens[1] = spare, 1
    out = w.run(q, k, v)
    assert np.isfinite(out).all()
    assert float(np.abs(out.astype(np.float64) - ref).max()) < 2e-3


def test_prefill_run_refuses_out_sharing_memory_with_a_scale_array(rng):
    q, k, v, indptr, tables, lens = packed_problem(rng, [20, 9], [5, 9], 8, 2, 2, 32,
                                                   np.float16)
    w = BatchPrefillWrapper().plan(indptr, tables, lens, 2, 2, 32, 8, np.float16,
                                   kv_dtype="int8", scale_scheme="per_token")
    codes = np.zeros(k.shape, np.int8)
    buf = np.ones(k.shape[0] * 8 * 2 + q.size, np.float32)
    ks = buf[:k.shape[0] * 8 * 2].reshape(k.shape[0], 8, 2)
    out = buf.view(np.float16)[:q.size].reshape(q.shape)
    with pytest.raises(ValueError, match="out: shares memory with k_scale"):
        w.run(q, codes, codes.copy(), out=out, k_scale=ks, v_scale=ks.copy())


# ---- cache writes ---------------------------------------------------------------------------

def test_write_kv_names_the_cache_at_a_byte_offset(rng):
    """A cache at an odd address was refused as 'k: a row ... cannot be moved', naming k."""
    k_cache = np.zeros((4, 8, 2, 32), np.float16)
    rows = rng.standard_normal((3, 2, 32)).astype(np.float16)
    v_cache = at_byte_offset(k_cache)
    with pytest.raises(ValueError, match="v_cache: expected data aligned to its 2-byte"):
        write_kv(rows, rows.copy(), k_cache, v_cache, np.array([0, 5, 9], np.int64))
    assert not v_cache.any() and not k_cache.any()


def test_write_kv_quant_refuses_static_scales_at_a_byte_offset(rng):
    k_cache = np.zeros((4, 8, 2, 32), np.int8)
    rows = rng.standard_normal((3, 2, 32)).astype(np.float32)
    ks = at_byte_offset(np.full(2, 0.05, np.float32), 3)
    with pytest.raises(ValueError, match="k_scale: expected data aligned to its 4-byte"):
        write_kv_quant(rows, rows.copy(), k_cache, k_cache.copy(), np.array([0, 5, 9], np.int64),
                       "int8", "static", k_scale=ks, v_scale=np.full(2, 0.05, np.float32))
    assert not k_cache.any()


# ---- gather_kv ------------------------------------------------------------------------------

def test_gather_kv_moves_words_its_caches_are_aligned_to(rng, monkeypatch):
    """An fp16 cache 2 bytes past a word (an element offset view) was copied as 4-byte words:
    right on the CPU, a misaligned-address fault on the GPU. Every array the kernel gets must
    start on a multiple of its element size."""
    from pagedattn_lab import gather
    real = gather.kernel

    def spy(*args, **kwargs):
        kern = real(*args, **kwargs)

        def launch(grid, block, kernel_args, **kw):
            for a in kernel_args:
                if isinstance(a, np.ndarray):
                    assert a.ctypes.data % a.dtype.itemsize == 0, (a.dtype, a.ctypes.data % 8)
            return kern(grid, block, kernel_args, **kw)
        return launch
    monkeypatch.setattr(gather, "kernel", spy)
    shape = (6, 4, 2, 8)
    n = int(np.prod(shape))
    k = np.zeros(n + 8, np.float16)[1:1 + n].reshape(shape)
    k[...] = rng.standard_normal(shape)
    v = -k
    row = np.array([3, 1, 4, -1], np.int32)
    for got, want in zip(pl.gather_kv(k, v, row, 10), pl.gather_kv_reference(k, v, row, 10)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["k_cache", "v_cache", "k_scale", "v_scale"])
def test_write_kv_quant_with_a_read_only_output_writes_nothing(rng, name):
    """A read-only output was refused by the CPU executor after the launch, the others
    already written: codes without their per-token scales."""
    arrays = dict(k_cache=np.zeros((4, 4, 2, 8), np.int8), v_cache=np.zeros((4, 4, 2, 8), np.int8),
                  k_scale=np.ones((4, 4, 2), np.float32), v_scale=np.ones((4, 4, 2), np.float32))
    arrays[name].setflags(write=False)
    before = {n: a.copy() for n, a in arrays.items()}
    rows = 3 * rng.standard_normal((3, 2, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=f"{name}: expected a writeable array"):
        write_kv_quant(rows, rows.copy(), arrays["k_cache"], arrays["v_cache"],
                       np.array([0, 5, 9], np.int64), "int8", "per_token",
                       k_scale=arrays["k_scale"], v_scale=arrays["v_scale"])
    for n, a in arrays.items():
        np.testing.assert_array_equal(a, before[n], err_msg=n)


def test_write_kv_refuses_a_read_only_cache_before_the_launch(rng, monkeypatch):
    from pagedattn_lab import cache_write
    monkeypatch.setattr(cache_write, "kernel", lambda *a: pytest.fail("launched"))
    k_cache, v_cache = np.zeros((4, 4, 2, 8), np.float32), np.zeros((4, 4, 2, 8), np.float32)
    v_cache.setflags(write=False)
    rows = rng.standard_normal((3, 2, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="v_cache: expected a writeable array"):
        write_kv(rows, rows.copy(), k_cache, v_cache, np.array([0, 5, 9], np.int64))


def test_write_kv_quant_refuses_per_token_scales_over_the_codes(rng):
    k_cache, v_cache = np.zeros((4, 4, 2, 8), np.int8), np.zeros((4, 4, 2, 8), np.int8)
    k_scale = k_cache.reshape(-1).view(np.float32)[:32].reshape(4, 4, 2)   # the codes' bytes
    rows = rng.standard_normal((3, 2, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="k_scale: shares memory with k_cache"):
        write_kv_quant(rows, rows.copy(), k_cache, v_cache, np.array([0, 5, 9], np.int64),
                       "int8", "per_token", k_scale=k_scale, v_scale=np.ones((4, 4, 2), np.float32))
    assert not k_cache.any()


# ---- torch tensors --------------------------------------------------------------------------

def test_run_takes_a_torch_v_cache_beside_numpy_arrays(rng):
    """Only a torch v_cache: refused as 'expected a NumPy array or a torch tensor, got
    torch.Tensor' (the conversion looked at every argument but v_cache)."""
    torch = pytest.importorskip("torch")
    args = decode_problem(rng, [40, 9], dtype="float32")
    w = planned(args)
    q, k, v = args[:3]
    check_close(w.run(q, k, torch.from_numpy(v)), reference(args), "float32")


@pytest.mark.parametrize("name", ["q", "k_cache", "out"])
def test_a_tensor_that_requires_grad_is_a_type_error_naming_it(rng, name):
    """torch refused it with a RuntimeError naming no argument (.numpy() of such a tensor)."""
    torch = pytest.importorskip("torch")
    args = decode_problem(rng, [40, 9], dtype="float32")
    w = planned(args)
    call = dict(q=torch.from_numpy(args[0]), k_cache=torch.from_numpy(args[1]),
                v_cache=torch.from_numpy(args[2]), out=torch.empty(args[0].shape))
    call[name] = call[name].requires_grad_()
    with pytest.raises(TypeError, match=f"{name}: a torch tensor that requires grad"):
        w.run(call["q"], call["k_cache"], call["v_cache"], out=call["out"])
    with pytest.raises(TypeError, match=f"{name}: a torch tensor that requires grad"):
        pl.paged_attention_decode(call["q"], call["k_cache"], call["v_cache"],
                                  torch.from_numpy(args[3]), torch.from_numpy(args[4]),
                                  out=call["out"])


@pytest.mark.parametrize("name", ["block_tables", "seq_lens"])
def test_one_shot_decode_names_tables_that_are_no_array(rng, name):
    """A list was turned into an int64 array first, then refused as 'expected dtype int32,
    got int64'; None as 'expected 2 dimensions, got shape ()'."""
    q, k, v, tables, lens = decode_problem(rng, [40, 9], dtype="float32")
    good = dict(block_tables=tables, seq_lens=lens)
    for bad in (good[name].tolist(), None):
        call = good | {name: bad}
        with pytest.raises(TypeError, match=f"{name}: expected a NumPy or CuPy array, got"):
            pl.paged_attention_decode(q, k, v, call["block_tables"], call["seq_lens"])


# ---- token_slots ----------------------------------------------------------------------------

@pytest.mark.parametrize("row, seq_len, page_size, exc, match", [
    ([2, -1], 6, 4, ValueError, r"block_table_row\[1\]: entry -1 is padding"),   # slots -4, -3
    ([2], 6, 4, ValueError, "6 tokens need 2 pages, but the row has only 1"),     # IndexError
    ([2, 1], 6.7, 4, TypeError, "seq_len: expected an int"),                      # 7 slots
    ([2, 1], -3, 4, ValueError, "seq_len: expected an int >= 0"),                 # no slots
    ([2, 1], 5, 0, ValueError, "page_size: expected an int >= 1"),                # zeros
    ([2.0, 1.0], 5, 4, ValueError, "block_table_row: expected a 1-D list of integer"),
    (np.array([2**63], np.uint64), 3, 4, ValueError,                             # -2**63 * 4
     r"block_table_row\[0\]: page id 9223372036854775808 is past int32"),
])
def test_token_slots_refuses_what_gave_wrong_slots(row, seq_len, page_size, exc, match):
    with pytest.raises(exc, match=match):
        pl.token_slots(np.array(row), seq_len, page_size)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: pl.physical_page([5, 7], -1, 4), ValueError, "^token: expected an int >= 0"),
    (lambda: pl.physical_slot([5, 7], 9, 4), ValueError,
     "^token: position 9 needs virtual page 2, but the block table row has only 2 entries"),
    (lambda: pl.physical_slot([5, -1], 4, 4), ValueError, r"^block_table_row\[1\]: entry -1 is"),
    (lambda: pl.physical_slot([5, 7], 3, 0), ValueError, "^page_size: expected an int >= 1"),
    (lambda: pl.physical_page([5, 7], 3.5, 4), TypeError, "^token: expected an int"),
    (lambda: pl.token_slots([[1], 2], 3, 4), ValueError,
     "^block_table_row: expected a 1-D list of integer page ids .* got a ragged list"),
], ids=["negative-token", "past-the-row", "padding", "page_size-0", "float-token", "ragged-row"])
def test_address_lookups_refuse_what_they_answered_wrongly(call, exc, match):
    """physical_page / physical_slot checked nothing: token -1 read the row's last entry (a
    page of another part of the sequence) and a padding entry gave a negative slot, silently;
    page_size 0 divided by zero, a row past its end raised IndexError, and a ragged list
    NumPy's message, none naming the argument."""
    with pytest.raises(exc, match=match):
        call()


def test_prefill_plan_refuses_a_grid_past_cudas_limits(rng):
    """One block per query head (group 1): 65536 heads are 65536 blocks in grid y, which the
    GPU refuses at the launch; the plan took them."""
    w = BatchPrefillWrapper()
    with pytest.raises(ValueError, match="num_heads: 65536 query heads .* CUDA's limit of 65535"):
        w.plan(np.array([0, 1], np.int32), np.zeros((1, 1), np.int32), np.ones(1, np.int32),
               65536, 65536, 32, 8, np.float16)
    assert not w.planned
