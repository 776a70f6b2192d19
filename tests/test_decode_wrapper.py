"""BatchDecodeWrapper (plan once, run per layer), the CSR page tables, and the host-side
planning (kernel choice, partitions, work lists), on the CPU executor."""
import numpy as np
import pytest

import pagedattn_lab as pl
import pagedattn_lab.wrappers as wrappers
from pagedattn_lab import decode_plan as dp
from pagedattn_lab import decode_work as dw

from .decode_cases import check_close, decode_problem, poisoned, reference


def planned(args, dtype="float16", **kw):
    q, k, v, tables, lens = args
    w = pl.BatchDecodeWrapper()
    w.plan(tables, lens, q.shape[1], k.shape[2], q.shape[2], k.shape[1], dtype, **kw)
    return w


def test_one_plan_runs_every_layer(rng):
    """One plan, three layers with their own caches and queries: each layer's result."""
    lens = [1, 15, 16, 17, 100]
    q, k, v, tables, seq_lens = decode_problem(rng, lens, num_heads=8, num_kv_heads=2)

    def other(x):   # another layer's values, NaN where this one has NaN
        return (x.astype(np.float32) * rng.standard_normal(x.shape)).astype(x.dtype)
    layers = [(q, k, v, tables, seq_lens)]
    layers += [(other(q), other(k), other(v), tables, seq_lens) for _ in range(2)]
    w = planned(layers[0], num_splits=3)
    for args in layers:
        out = poisoned(args[0].shape, "float16")
        assert w.run(*args[:3], out=out) is out
        check_close(out, reference(args), "float16")


def test_run_without_out_returns_the_plans_buffer(rng):
    args = decode_problem(rng, [5, 40], dtype="float32")
    w = planned(args, "float32")
    first = w.run(*args[:3])
    again = w.run(*args[:3])
    assert first is again, "run(out=None) reuses the plan's buffer (documented)"
    check_close(first, reference(args), "float32")


def test_plan_keeps_its_own_copy_of_the_tables(rng):
    args = decode_problem(rng, [20, 33], dtype="float32")
    q, k, v, tables, lens = args
    ref = reference(args)
    w = planned(args, "float32")
    tables[:] = -7          # the caller reuses its arrays for the next step
    lens[:] = 1
    check_close(w.run(q, k, v, out=poisoned(q.shape, "float32")), ref, "float32")


def test_scale_and_plan_attributes(rng):
    args = decode_problem(rng, [300, 7], num_heads=8, num_kv_heads=2, dtype="float32")
    w = planned(args, "float32", num_splits=2)
    assert w.kernel == "simt" and w.max_parts == 2 and w.part_len == 150
    assert "simt" in w.describe() and "150 tokens" in w.describe()
    check_close(w.run(*args[:3], out=poisoned(args[0].shape, "float32"), scale=0.3),
                reference(args, scale=0.3), "float32")


def test_run_refuses_a_cache_smaller_than_the_plan(rng):
    args = decode_problem(rng, [40, 9], dtype="float32", spare_pages=0)
    q, k, v, tables, lens = args
    w = planned(args, "float32")
    out = poisoned(q.shape, "float32")
    small = np.ascontiguousarray(k[: w.max_page])
    with pytest.raises(ValueError, match=f"k_cache: the plan reads page {w.max_page}"):
        w.run(q, small, small.copy(), out=out)
    assert np.isnan(out).all(), "nothing may be written by a refused run"


@pytest.mark.parametrize("what", ["q shape", "q dtype", "v shape", "k layout", "out shape",
                                  "not contiguous", "offset view"])
def test_run_checks_shapes_and_dtypes(rng, what, monkeypatch):
    args = decode_problem(rng, [40, 9], dtype="float32")
    q, k, v, tables, lens = args
    w = planned(args, "float32")
    out = poisoned(q.shape, "float32")
    bad = {"q shape": dict(q=q[:1]), "q dtype": dict(q=q.astype(np.float16)),
           "v shape": dict(v=v[:-1]), "k layout": dict(k=np.ascontiguousarray(k[:, :, :1])),
           "out shape": dict(out=out[:1]), "not contiguous": dict(q=q[:, ::-1]),
           "offset view": dict(q=np.empty(q.size + 1, np.float32)[1:].reshape(q.shape))}[what]
    call = dict(q=q, k=k, v=v, out=out) | bad
    name = next(iter(bad))
    name = {"k": "k_cache", "v": "v_cache"}.get(name, name)

    def refuse(*a, **kw):
        raise AssertionError("launched")
    monkeypatch.setattr(w, "_launches", [(refuse, 1, 1, lambda *a: (), 0)])
    with pytest.raises((ValueError, TypeError), match=name):
        w.run(call["q"], call["k"], call["v"], out=call["out"])


def test_plan_refuses_bad_tables_before_anything(rng, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a kernel was loaded for invalid input")
    monkeypatch.setattr(wrappers, "load_kernel", refuse)
    q, k, v, tables, lens = decode_problem(rng, [40, 9], dtype="float32")
    w = pl.BatchDecodeWrapper()
    cases = []
    neg = tables.copy()
    neg[1, 0] = -1
    cases.append(("block_tables[1, 0]", (neg, lens)))
    cases.append(("seq_lens[0]", (tables, np.array([0, 9], np.int32))))
    cases.append(("seq_lens[1]", (tables, np.array([9, 10_000], np.int32))))
    cases.append(("block_tables", (tables.astype(np.int64), lens)))
    for name, (t, n) in cases:
        with pytest.raises((ValueError, TypeError), match=name.replace("[", r"\[")):
            w.plan(t, n, 4, 2, 64, 16, "float32")
    with pytest.raises(ValueError, match="num_heads"):
        w.plan(tables, lens, 5, 2, 64, 16, "float32")
    with pytest.raises(TypeError, match="^dtype: expected float32, float16 or bfloat16, got int8"):
        w.plan(tables, lens, 4, 2, 64, 16, "int8")
    with pytest.raises(ValueError,
                       match="kernel: 'tensor_core' with dtype float32: the tensor-core"):
        w.plan(tables, lens, 4, 2, 64, 16, "float32", kernel="tensor_core")
    with pytest.raises(RuntimeError, match="plan"):
        pl.BatchDecodeWrapper().run(q, k, v)


def test_kernel_choice():
    assert dp.choose_kernel("auto", "float32", 4, 128, on_gpu=True) == "simt"
    assert dp.choose_kernel("auto", "float16", 4, 128, on_gpu=True) == "tensor_core"
    assert dp.choose_kernel("auto", "bfloat16", 1, 128, on_gpu=True) == dp.MHA_KERNEL
    assert dp.choose_kernel("auto", "float16", 4, 128, on_gpu=False) == "simt"
    assert dp.choose_kernel("auto", "float16", 4, 40, on_gpu=True) == "simt"   # not 16 x n
    assert dp.choose_kernel("auto", "float16", 4, 256, on_gpu=True) == "tensor_core"  # measured
    assert dp.choose_kernel("tensor_core", "bfloat16", 64, 256, on_gpu=False) == "tensor_core"
    # compressed pages: SIMT up to COMPRESSED_SIMT_MAX_GROUP[scheme] heads per KV head (measured)
    for scheme in ("static", "per_token"):
        limit = dp.COMPRESSED_SIMT_MAX_GROUP[scheme]
        assert dp.choose_kernel("auto", "float16", limit, 128, True, scheme) == "simt"
        assert dp.choose_kernel("auto", "float16", limit + 1, 128, True, scheme) == "tensor_core"
        assert dp.choose_kernel("tensor_core", "float16", 2, 128, True, scheme) == "tensor_core"
    assert dp.choose_kernel("auto", "float16", 4, 128, True, "static") == "tensor_core"
    assert dp.choose_kernel("auto", "float16", 4, 128, True, "per_token") == "tensor_core"
    assert dp.choose_kernel("auto", "float16", 2, 128, True, "static") == "simt"
    with pytest.raises(ValueError, match="kernel"):
        dp.choose_kernel("fast", "float16", 1, 64, on_gpu=True)


@pytest.mark.parametrize("head_dim, batch, tokens, expected", [
    (128, None, None, "simt"),                 # lengths not known: MHA_KERNEL
    (128, 64, 149_713, "simt"),                # D64: level (0.98), SIMT kept
    (128, 8, 8 * 32768, "simt"),               # 8 x 32k: more than MHA_TC_MAX_TOKENS
    (128, 256, 256 * 128, "simt"),             # many short sequences: SIMT leads
    (96, 64, 149_713, "tensor_core"),          # head_dim 96 at any batch of long sequences
    (96, 300, 300 * 512, "tensor_core"),       # mean 512: the first length measured ahead
    (96, 300, 300 * 512 - 1, "simt"),          # mean just under 512
    (96, 256, 256 * 128, "simt"),
    (128, 4, 8192, "tensor_core"),             # a few long sequences, the measured sizes...
    (32, 1, 32768, "simt"),                    # ...but 32 (SIMT ahead at 4 x 2048)...
    (64, 1, 32768, "tensor_core"),
    (256, 16, 16 * 512, "tensor_core"),
    (112, 1, 32768, "simt"),                   # ...but 112 (decode_mma.cu there: slower)
    (48, 1, 32768, "simt"),                    # ...and sizes not measured
    (40, 1, 1024, "simt"),                     # (the tensor cores refuse 40: not 16 x n)
    (8, 4, 8192, "simt"),
    (128, 17, 17 * 1024, "simt"),              # more than MHA_TC_MAX_BATCH sequences
    (128, 2, 32769, "simt"),                   # more than MHA_TC_MAX_TOKENS tokens
    (128, 32, 32 * 256, "simt"),               # mean under 512
    (128, 0, 0, "simt"),                       # an empty batch
])
def test_multi_head_kernel_choice_follows_the_measured_table(head_dim, batch, tokens, expected):
    for dtype in ("float16", "bfloat16"):   # both measured, the same table
        assert dp.choose_kernel("auto", dtype, 1, head_dim, True, None, batch, tokens) == expected
    # compressed pages, fp32, the CPU executor and explicit requests are not this rule's
    assert dp.choose_kernel("auto", "float16", 1, head_dim, True, "static", batch, tokens) == "simt"
    assert dp.choose_kernel("auto", "float32", 1, head_dim, True, None, batch, tokens) == "simt"
    assert dp.choose_kernel("auto", "float16", 1, head_dim, False, None, batch, tokens) == "simt"
    assert dp.choose_kernel("simt", "float16", 1, head_dim, True, None, batch, tokens) == "simt"


def test_the_plan_gives_the_choice_its_batch_and_tokens(monkeypatch):
    seen = []
    real = dp.choose_kernel
    monkeypatch.setattr(dp, "choose_kernel", lambda *a, **k: seen.append(a) or real(*a, **k))
    lens = np.array([700, 1, 64], np.int32)
    tables = np.arange(3 * 44, dtype=np.int32).reshape(3, 44)
    pl.BatchDecodeWrapper().plan(tables, lens, 4, 4, 96, 16, "float16")
    assert seen[-1][-2:] == (3, 765)


@pytest.mark.parametrize("group,head_dim,expected", [
    (1, 128, (1, 1, 1)), (4, 128, (4, 1, 1)), (16, 64, (16, 1, 1)), (20, 64, (20, 1, 2)),
    (40, 96, (40, 1, 4)), (64, 256, (64, 1, 4)), (100, 64, (50, 2, 4)), (130, 128, (44, 3, 4)),
])
def test_tensor_core_rows(group, head_dim, expected):
    assert dp.tc_rows(group, head_dim) == expected


def test_tensor_core_partitions_and_work_list():
    lens = np.array([4096] * 64)
    assert dw.choose_tc_part_len(lens, 8, 132, 1000) == 2048       # >= 4 blocks per SM
    assert dw.choose_tc_part_len(np.array([32768]), 8, 132, 1000) == 512   # <= 64 parts
    assert dw.choose_tc_part_len(np.array([32768]), 8, 132, 32) == 1024    # merge limit
    assert dw.choose_tc_part_len(np.array([100, 7]), 1, 132, 99, num_splits=3) == 34
    with pytest.raises(ValueError, match="num_splits"):
        dw.choose_tc_part_len(np.array([1000]), 1, 132, 8, num_splits=9)
    work, slot_start, slots = dw.tc_work_list(np.array([5, 12, 1, 9]), 4)
    # partitions: seq 0: 4+1, seq 1: 4+4+4, seq 2: 1, seq 3: 4+4+1; longest first
    assert sorted(map(tuple, work.tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2),
                                                 (2, 0), (3, 0), (3, 1), (3, 2)]
    sizes = [min(4, [5, 12, 1, 9][b] - 4 * p) for b, p in work.tolist()]
    assert sizes == sorted(sizes, reverse=True)
    assert slot_start.tolist() == [0, 2, 5, 5] and slots == 8   # seq 2 has one part: no slots


# ---- CSR page tables --------------------------------------------------------------------

def test_csr_example():
    tables = np.array([[7, 3, -1], [5, -1, -1], [2, 9, 4]], np.int32)
    lens = np.array([20, 3, 48], np.int32)
    indptr, indices, last = pl.to_csr(tables, lens, 16)
    assert indptr.tolist() == [0, 2, 3, 6]
    assert indices.tolist() == [7, 3, 5, 2, 9, 4]
    assert last.tolist() == [4, 3, 16]
    back_tables, back_lens = pl.from_csr(indptr, indices, last, 16)
    assert back_lens.tolist() == lens.tolist()
    assert back_tables.tolist() == [[7, 3, -1], [5, -1, -1], [2, 9, 4]]


def test_csr_round_trip_random(rng):
    for _ in range(20):
        page = int(rng.integers(1, 40))
        lens = rng.integers(0, 300, int(rng.integers(1, 9))).astype(np.int32)
        pages = -(-lens // page)
        tables = np.full((lens.size, int(pages.max()) + 2), -1, np.int32)
        for b, n in enumerate(pages):
            tables[b, :n] = rng.permutation(1000)[:n]
        indptr, indices, last = pl.to_csr(tables, lens, page)
        assert indptr.dtype == indices.dtype == last.dtype == np.int32
        t2, l2 = pl.from_csr(indptr, indices, last, page)
        np.testing.assert_array_equal(l2, lens)
        for b, n in enumerate(pages):
            np.testing.assert_array_equal(t2[b, :n], tables[b, :n])
            assert (t2[b, n:] == -1).all()


def test_csr_bad_input():
    i32 = np.int32
    with pytest.raises(ValueError, match="indptr"):
        pl.from_csr(np.array([0, 3, 2], i32), np.arange(2, dtype=i32), np.ones(2, i32), 4)
    with pytest.raises(ValueError, match="indptr"):
        pl.from_csr(np.array([0, 2], i32), np.arange(3, dtype=i32), np.ones(1, i32), 4)
    with pytest.raises(ValueError, match=r"last_page_len\[1\]"):
        pl.from_csr(np.array([0, 1, 2], i32), np.arange(2, dtype=i32), np.array([1, 5], i32), 4)
    with pytest.raises(TypeError, match="indices"):
        pl.from_csr(np.array([0, 1], i32), np.arange(1), np.ones(1, i32), 4)
    with pytest.raises(ValueError, match=r"block_tables\[0, 1\]"):
        pl.to_csr(np.array([[1, -1]], i32), np.array([5], i32), 4)
