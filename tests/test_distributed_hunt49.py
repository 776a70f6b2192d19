"""Tensor-parallel decode and prefill, hunted: a grid against the one-device step and the float64
reference, ranks built with different sizes, bad tables, workbook 13's hints, lesson 13's prose.

The ranks here are threads of this process: `ThreadGroup` (tests/thread_ranks.py) stands in
for torch.distributed (broadcast, all_gather_into_tensor, all_reduce, as TPDecode calls them)
and records each collective, so a test also sees that a refusal came before any step's
collective. Starting real processes costs seconds each (tests/test_distributed.py does, with
gloo); these take milliseconds.
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab.distributed import (TPDecode, TPPrefill, head_range, pack_tables, shard_cache,
                                       torch_missing)
from pagedattn_lab.distributed.demo import (make_q, make_tables, single_process_decode,
                                            single_process_prefill, tp_decode_rank,
                                            tp_prefill_rank, kv_pool)
from pagedattn_lab.distributed.shard import REFUSAL_WORDS
from pagedattn_lab.reference import reference_decode, reference_prefill_packed
from tests.check_helpers import assert_caught
from tests.thread_ranks import run_ranks

needs_torch = pytest.mark.skipif(torch_missing() is not None,
                                 reason=f"torch.distributed: {torch_missing()}")
REPO = Path(__file__).resolve().parents[1]


def run_ok(monkeypatch, fn, world, *args, **kwargs):
    results, errors, group = run_ranks(monkeypatch, fn, world, *args, **kwargs)
    for e in errors:
        if e is not None and not isinstance(e, ConnectionAbortedError):
            raise e
    return results, group


# ---- (1) the grid: every rank's gathered output = the one-device step, bit for bit ---------

PAGE = 8
AWKWARD = dict(seq_lens=(1, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE + 1, 2 * PAGE),
               forks=((5, 4), (3, 2)),     # 5 and 3 share their parents' full pages
               head_dim=32, page_size=PAGE, num_pages=30, seed=5)
f64 = np.float64


@needs_torch
@pytest.mark.parametrize("world, heads, kv_heads, dtype, splits", [
    (1, 4, 1, "float32", None), (2, 8, 2, "float16", 2), (3, 12, 6, "bfloat16", None),
    (3, 12, 12, "float32", 2), (4, 8, 4, "float16", None), (4, 8, 8, "bfloat16", 2),
    (4, 32, 4, "float32", 3)])
def test_decode_grid_equals_one_device_and_the_reference(monkeypatch, world, heads, kv_heads,
                                                        dtype, splits):
    case = dict(AWKWARD, num_heads=heads, num_kv_heads=kv_heads, dtype=dtype)
    ranks, group = run_ok(monkeypatch, tp_decode_rank, world, case, num_splits=splits)
    one = single_process_decode(case, num_splits=splits)
    up = {n: np.asarray(one[n], f64).astype(np.float32) for n in ("q", "k_cache", "v_cache")}
    ref = reference_decode(up["q"], up["k_cache"], up["v_cache"], one["block_tables"],
                           one["seq_lens"])
    assert np.isnan(np.asarray(one["k_cache"], f64)).any()   # tail slots: NaN, never read
    for r in ranks:
        np.testing.assert_array_equal(np.asarray(r["out"], f64), np.asarray(one["out"], f64))
    tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}[dtype]
    np.testing.assert_allclose(np.asarray(ranks[0]["out"], f64), ref, rtol=0, atol=tol)
    share = len(case["seq_lens"]) * heads // world * case["head_dim"] * \
        np.dtype(ranks[0]["out"].dtype).itemsize
    # once: the sizes agreed; per step: one broadcast of the tables, one gather of the output
    # (each rank's, then its status words)
    assert [n for n, _ in group.log] == ["all_gather", "broadcast", "broadcast", "all_gather"]
    assert group.log[-1] == ("all_gather", share + 4 * REFUSAL_WORDS)


@needs_torch
@pytest.mark.parametrize("world, heads, kv_heads, dtype", [
    (3, 12, 6, "float16"), (4, 8, 4, "bfloat16"), (2, 8, 2, "float16")])
def test_prefill_grid_equals_one_device_and_the_reference(monkeypatch, world, heads, kv_heads,
                                                         dtype):
    case = dict(AWKWARD, page_size=16, seq_lens=(1, 15, 16, 17, 49, 32),
                q_lens=(1, 15, 3, 1, 20, 32), num_heads=heads, num_kv_heads=kv_heads,
                head_dim=64, dtype=dtype)
    ranks, _ = run_ok(monkeypatch, tp_prefill_rank, world, case)
    one = single_process_prefill(case)
    up = {n: np.asarray(one[n], f64).astype(np.float32) for n in ("q", "k_cache", "v_cache")}
    ref = reference_prefill_packed(up["q"], up["k_cache"], up["v_cache"], one["qo_indptr"],
                                   one["block_tables"], one["seq_lens"])
    for r in ranks:
        np.testing.assert_array_equal(np.asarray(r["out"], f64), np.asarray(one["out"], f64))
    tol = {"float16": 4e-3, "bfloat16": 3e-2}[dtype]
    np.testing.assert_allclose(np.asarray(ranks[0]["out"], f64), ref, rtol=0, atol=tol)


@needs_torch
@pytest.mark.parametrize("world, heads, kv_heads, phrase", [
    (4, 8, 2, "world_size: 4 ranks cannot split 2 KV heads"),   # vLLM would copy KV heads
    (3, 8, 4, "world_size: 3 ranks cannot split 4 KV heads"),
    (2, 6, 4, "num_heads: 6 is not a multiple")])
def test_splits_the_lesson_refuses_are_refused_by_name_before_any_collective(
        monkeypatch, world, heads, kv_heads, phrase):
    _, errors, group = run_ranks(monkeypatch, tp_decode_rank, world,
                                 dict(AWKWARD, num_heads=heads, num_kv_heads=kv_heads,
                                      dtype="float32"))
    for e in errors:
        assert isinstance(e, ValueError) and phrase in str(e)
    assert group.log == []


# ---- (2) ranks built with different sizes: every rank refuses, naming the size -------------

BASE = dict(num_heads=8, num_kv_heads=4, head_dim=32, page_size=8, dtype="float32",
            max_batch=4, max_pages=4)


def _mismatched_rank(rank, world, other):
    sizes = dict(BASE, **(other if rank == 1 else {}))
    step = sizes.pop("step", "TPDecode") if rank == 1 else "TPDecode"
    splits = {"num_splits": sizes.pop("num_splits")} if "num_splits" in sizes else {}
    tp = {"TPDecode": TPDecode, "TPPrefill": TPPrefill}[step](
        *(sizes[n] for n in ("num_heads", "num_kv_heads", "head_dim", "page_size", "dtype",
                             "max_batch", "max_pages")), **splits)
    tables, lens = make_tables((1, 7, 9, 17), 8, 30, seed=1)
    h = tp.heads
    k, v = kv_pool(0, h, 30, tp.page_size, tp.head_dim, BASE["dtype"], tables, lens)
    q = make_q(0, 4, tp.num_heads, tp.head_dim, BASE["dtype"])
    q = np.ascontiguousarray(q[:, h.q_start:h.q_stop])
    return tp.step(q, k, v, tables if rank == 0 else None, lens if rank == 0 else None)


@needs_torch
@pytest.mark.parametrize("other, phrase", [
    (dict(page_size=16), "page_size: rank 1 has 16, rank 0 has 8"),   # silently ran before
    (dict(num_kv_heads=8), "num_kv_heads: rank 1 has 8, rank 0 has 4"),   # silently ran
    (dict(max_pages=5), "max_pages: rank 1 has 5, rank 0 has 4"),   # another buffer size
    (dict(max_batch=5), "max_batch: rank 1 has 5, rank 0 has 4"),
    (dict(head_dim=64), "head_dim: rank 1 has 64, rank 0 has 32"),   # gloo: abort()
    (dict(num_heads=16, num_kv_heads=8), "num_heads: rank 1 has 16, rank 0 has 8"),
    (dict(dtype="float16"), "dtype: rank 1 has 'float16', rank 0 has 'float32'"),
    (dict(num_splits=2), "num_splits: rank 1 has 2, rank 0 has None"),
    (dict(step="TPPrefill", dtype="float16"), "step: rank 1 has 'TPPrefill', rank 0 has "
                                              "'TPDecode'")])
def test_ranks_given_different_sizes_all_refuse_before_the_first_step(monkeypatch, other,
                                                                      phrase):
    _, errors, group = run_ranks(monkeypatch, _mismatched_rank, 2, other)
    for e in errors:     # the same error on every rank: none is left waiting in a collective
        assert isinstance(e, ValueError) and phrase in str(e), repr(e)
    assert [n for n, _ in group.log] == ["all_gather"]    # only the sizes' exchange


@needs_torch
@pytest.mark.parametrize("cls, kwargs, error, phrase", [
    (TPDecode, dict(dtype="float64"), "DtypeError", "dtype: expected"),   # was: after a broadcast
    (TPPrefill, dict(dtype="float32"), "DtypeError", "tensor cores take 16-bit"),
    (TPDecode, dict(max_batch=0), "ValueError", "max_batch"),     # was: a 2-entry buffer
    (TPDecode, dict(max_pages=-1), "ValueError", "max_pages"),
    (TPDecode, dict(page_size=0), "ValueError", "page_size"),
    (TPDecode, dict(num_splits=0), "ValueError", "num_splits")])
def test_a_bad_size_is_refused_before_any_collective(monkeypatch, cls, kwargs, error, phrase):
    sizes = {**BASE, "dtype": "float16", **kwargs}
    splits = {"num_splits": sizes.pop("num_splits")} if "num_splits" in sizes else {}

    def build(rank, world):
        return cls(*sizes.values(), **splits)
    _, errors, group = run_ranks(monkeypatch, build, 2)
    for e in errors:
        assert type(e).__name__ == error and phrase in str(e), repr(e)
    assert group.log == []


@needs_torch
def test_prefill_rank_0_without_qo_indptr_names_it(monkeypatch):
    def rank_fn(rank, world):
        tp = TPPrefill(8, 4, 64, 16, "float16", 4, 4)
        tables, lens = make_tables((5, 17), 16, 8)
        return tp.share_tables(tables, lens)      # qo_indptr forgotten
    _, errors, _ = run_ranks(monkeypatch, rank_fn, 2)
    assert isinstance(errors[0], ValueError) and "qo_indptr" in str(errors[0]), errors[0]


def test_pack_tables_refuses_what_the_wrapper_refuses_instead_of_casting():
    tables = np.array([[0, 1], [2, 3]], np.int32)
    # was: 16.9 cut to 16 and 2**32 + 5 wrapped to 5, planned on every rank without a word
    for lens in ([16.9, 3.0], np.array([2**32 + 5, 3]), np.array([16.9, 3.0])):
        with pytest.raises(TypeError, match="seq_lens: expected"):
            pack_tables(tables, lens, 2, 2)
    with pytest.raises(TypeError, match="qo_indptr: expected dtype int32"):
        pack_tables(tables, np.array([5, 3], np.int32), 2, 2,
                    qo_indptr=np.array([0, 2**32 + 1, 3]))


# ---- (3) workbook 13's checks: wrong answers get the hint of their own mistake -------------

def _split(q_range=None, container=tuple):   # container(pair): the learner's pairs
    def fn(rank, world, heads, kv):
        if kv % world:
            raise ValueError("world_size")
        nk, nq = kv // world, heads // world
        kvr, qr = (rank * nk, (rank + 1) * nk), (rank * nq, (rank + 1) * nq)
        if q_range:
            qr = q_range(rank, heads, kv)
        return container(kvr), container(qr)
    return fn


def _wire(tables_per_receiver=False, kv_output=False):
    def fn(seq_lens, heads, kv, dim, ps, world, size):
        batch, pages = len(seq_lens), -(-int(max(seq_lens)) // ps)
        tables = 4 * (2 + batch + batch * pages) * (world - 1 if tables_per_receiver else 1)
        share = batch * ((kv if kv_output else heads) // world) * dim * size
        return tables, share, int(np.sum(seq_lens)) * 2 * kv // world * dim * size
    return fn


@pytest.mark.parametrize("task, impl, phrase, not_phrases", [
    # a range of two heads unpacked as (start, start + 1): was "stop is one past"
    ("head_split", _split(container=lambda p: range(*p)), "range or slice object",
     ["one past"]),
    ("head_split", _split(container=lambda p: slice(*p)), "range or slice object", []),
    # one group of query heads per rank: was the catch-all or "not as many as its KV heads"
    ("head_split", _split(q_range=lambda r, h, k: (r * h // k, (r + 1) * h // k)),
     "not one group", []),
    # the table counted once per receiving rank: was "int32: 4 bytes" alone at 3 ranks
    ("wire_bytes", _wire(tables_per_receiver=True), "not once per receiving rank", []),
    ("wire_bytes", _wire(kv_output=True), "not per KV head", [])])
def test_workbook_13_names_the_mistake(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


# ---- (4) lesson 13's prose about the bytes on the wire --------------------------------------

def _lesson_text() -> str:
    cells = json.loads((REPO / "notebooks/13_multi_gpu.ipynb").read_text(encoding="utf-8"))
    return " ".join(" ".join("".join(c["source"]).split()) for c in cells["cells"])


def test_lesson_13_says_what_each_gpu_sends():
    from pagedattn_lab.bench.workloads import d64_lengths
    from pagedattn_lab.distributed import step_bytes
    text = _lesson_text()
    # each GPU's share goes to each of the R - 1 others: not 1/R of 17 MB leaves a GPU
    assert "of which each GPU sends its 1/R share" not in text
    for world, said in ((2, "8.4 MB at R = 2"), (8, "14.7 MB at R = 8")):
        b = step_bytes(d64_lengths(), 32, 8, 128, 16, world, 2)
        assert said in text and f"{b.output * 32 * (world - 1) / world / 1e6:.1f} MB" in said
    # the all-reduce's array is the gather's size; a ring all-reduce sends it twice
    assert "hidden state: the same size" not in text
    assert "sends about twice a gather's bytes" in text


@pytest.mark.parametrize("forks, index", [
    (((2, 3),), 0),            # the parent comes after the child: was an IndexError
    (((1, 0), (9, 0)), 1),     # past the batch: was dropped without a word
    (((1, 1),), 0),
    (((1, 0), (1, 0)), 1)])    # the same child twice: was the last one kept
def test_make_tables_names_a_bad_fork(forks, index):
    with pytest.raises(ValueError, match=rf"forks\[{index}\]: expected \(child, parent\)"):
        make_tables((5, 20, 30, 4), 4, 40, forks=forks)


@needs_torch
@pytest.mark.parametrize("which, phrase", [
    ("q", r"q_local: rank 1 owns query heads 4..7 \(4 of 8\), so axis 1 holds 4; got shape "
          r"\(4, 8, 32\): pass q\[:, 4:8\]"),
    ("k", r"k_shard: rank 1 owns KV heads 2..3 \(2 of 4\).*shard_cache\(k_cache, tp.heads\)"),
    ("v", r"v_shard: rank 1 owns KV heads 2..3")])
def test_a_rank_given_every_head_is_told_which_are_its_own(monkeypatch, which, phrase):
    """Was the wrapper's "q: expected shape (4, 4, 32) (the plan's ... num_heads ...)": the
    plan's 4 heads, not the 8 the rank was built with, and no word of which are its own."""
    def rank_fn(rank, world):
        tp = TPDecode(*BASE.values())
        tables, lens = make_tables((1, 7, 9, 17), 8, 30, seed=1)
        full = kv_pool(0, head_range(0, 1, 8, 4), 30, 8, 32, "float32", tables, lens)
        k, v = (shard_cache(c, tp.heads) for c in full)
        q = make_q(0, 4, 8, 32, "float32")
        mine = np.ascontiguousarray(q[:, tp.heads.q_start:tp.heads.q_stop])
        if rank == 1:
            mine, k, v = {"q": (q, k, v), "k": (mine, full[0], v), "v": (mine, k, full[1])}[which]
        return tp.step(mine, k, v, tables if rank == 0 else None, lens if rank == 0 else None)
    _, errors, _ = run_ranks(monkeypatch, rank_fn, 2)
    assert isinstance(errors[1], ValueError), errors[1]
    assert re.search(phrase, str(errors[1])), str(errors[1])
