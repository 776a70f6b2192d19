"""Helper 277: an outsider's grid of the tensor-parallel helpers (pagedattn_lab/distributed).

1. unpack_tables read the lengths and the table at offsets of the sizes it was GIVEN
   (the table at HEADER + max_batch, qo_indptr after max_batch * max_pages entries), and
   the buffer's size cannot tell every pair of sizes apart: a decode buffer packed for 6
   rows of 7 pages read with max_batch=2 (50 entries = 2 + 2 * 24) returned padding as
   the table; a prefill buffer packed for (2, 4) read with (3, 2) (15 entries both) shifted
   the table and qo_indptr. pack_tables now writes the parts back to back, so where each is
   follows from the header alone: every read unpack_tables does not refuse is exact, and
   the buffer (size, 2-value header) is the one lesson 13 and workbook 13 count.
2. The grid: pack/unpack round trips (batch 0, pages 0, full buffers), refusals in every
   buffer a step uses, TPDecode / TPPrefill against the one-process wrappers at 1, 2 and 4
   ranks (threads, tests/thread_ranks.py; one launch of gloo processes), refusals of every
   kind from every rank crossing, and the next step running after them.
3. unpack_tables of a torch tensor (pack_tables takes torch arrays) raised "'<' not
   supported between instances of 'builtin_function_or_method' and 'int'" (a tensor's .size
   is a method): it now reads the array sharing the tensor's memory.
"""
import itertools

import numpy as np
import pytest

from pagedattn_lab.distributed import (TPDecode, TPPrefill, launch, pack_tables, shard_cache,
                                       table_capacity, unpack_tables)
from pagedattn_lab.distributed.shard import REFUSAL_WORDS, is_refusal, refusal_header
from pagedattn_lab.prefill_wrapper import BatchPrefillWrapper
from pagedattn_lab.wrappers import BatchDecodeWrapper
from tests.test_tp_refusal_h245 import HANG, needs_torch
from tests.thread_ranks import run_ranks


def _tables(rng, batch, pages, prefill):
    """Distinct values in every part (a part read from another's place cannot pass)."""
    tables = rng.integers(1000, 2000, (batch, pages)).astype(np.int32)
    lens = rng.integers(1, 999, batch).astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(rng.integers(0, 3, batch))]).astype(np.int32) \
        if prefill else None
    return tables, lens, indptr


# ---- 1. the read is exact, whatever sizes unpack_tables is given ------------------------------

def test_a_decode_buffer_read_with_another_max_batch_of_its_size_reads_the_packed_table():
    tables, lens = np.array([[5, 6, 7], [8, 9, 10]], np.int32), np.array([9, 12], np.int32)
    buf = pack_tables(tables, lens, 6, 7)   # 50 entries: also 2 + 2 * (1 + 23)
    got_tables, got_lens = unpack_tables(buf, 2)
    assert got_tables.tolist() == tables.tolist() and got_lens.tolist() == lens.tolist()


def test_a_prefill_buffer_read_with_other_sizes_of_its_size_reads_what_was_packed():
    tables, lens = np.array([[5, 6], [8, 9]], np.int32), np.array([7, 8], np.int32)
    indptr = np.array([0, 3, 4], np.int32)
    buf = pack_tables(tables, lens, 2, 4, indptr)   # 15 entries, as (3, 2)'s
    assert buf.size == table_capacity(3, 2, True)
    got = unpack_tables(buf, 3, 2)
    assert [g.tolist() for g in got] == [tables.tolist(), lens.tolist(), indptr.tolist()]


@pytest.mark.parametrize("prefill", [False, True], ids=["decode", "prefill"])
def test_unpack_tables_refuses_by_name_or_reads_exactly_for_every_size_pair(prefill):
    """Buffers of every size up to 4 x 4 (empty, full, in between), read with every size
    pair up to 9 x 9: each read is refused naming the sizes or the buffer, or exact."""
    rng = np.random.default_rng(277)
    read = 0
    for max_batch, max_pages in itertools.product(range(5), repeat=2):
        for batch, pages in {(0, 0), (max_batch, max_pages), (max_batch // 2, max_pages // 2)}:
            packed = _tables(rng, batch, pages, prefill)
            buf = pack_tables(*packed[:2], max_batch, max_pages, packed[2])
            before = buf.copy()
            for m, p in itertools.product(range(10), repeat=2):
                if not prefill and p:   # (a decode read gives no max_pages)
                    continue
                try:
                    got = unpack_tables(buf, m, p if prefill else None)
                except ValueError as error:
                    assert str(error).startswith(("max_batch, max_pages: ", "buf: ")), error
                else:
                    read += 1
                    for g, want in zip(got, packed):
                        assert g.tolist() == want.tolist(), (max_batch, max_pages, m, p)
                assert np.array_equal(buf, before)   # nothing written into it
    assert read > 100   # (the grid reads, not only refuses)


# ---- 2. round trips, and refusals in every buffer --------------------------------------------

@pytest.mark.parametrize("seed", range(40))
def test_random_tables_round_trip_and_are_never_taken_for_a_refusal(seed):
    rng = np.random.default_rng(seed)
    prefill = bool(seed % 2)
    max_batch, max_pages = (int(n) for n in rng.integers(0, 7, 2))
    batch = int(rng.choice([0, max_batch, rng.integers(0, max_batch + 1)]))
    pages = int(rng.choice([0, max_pages, rng.integers(0, max_pages + 1)]))
    packed = _tables(rng, batch, pages, prefill)
    given = [a.copy() for a in packed if a is not None]
    buf = pack_tables(*packed[:2], max_batch, max_pages, packed[2])
    assert buf.dtype == np.int32 and buf.size == table_capacity(max_batch, max_pages, prefill)
    assert buf[:2].tolist() == [batch, pages] and not is_refusal(buf)
    got = unpack_tables(buf, max_batch, max_pages if prefill else None)
    for g, want in zip(got, packed):
        assert g.tolist() == want.tolist()
    assert all(np.array_equal(a, b) for a, b in zip(given, (a for a in packed if a is not None)))


@pytest.mark.parametrize("kind", [ValueError, TypeError, KeyError, KeyboardInterrupt])
def test_a_refusal_fits_every_buffer_of_a_step_and_no_read_takes_it_for_tables(kind):
    for max_batch, max_pages, prefill in itertools.product(range(1, 5), range(1, 5),
                                                           (False, True)):
        capacity = table_capacity(max_batch, max_pages, prefill)
        assert capacity >= REFUSAL_WORDS   # TPDecode's sizes are >= 1 each
        buf = refusal_header(capacity, kind("rank 0 said no"))
        assert is_refusal(buf) and buf.size == capacity
        with pytest.raises(ValueError, match=r"^buf: it holds rank 0's refusal of this step"):
            unpack_tables(buf, max_batch, max_pages if prefill else None)
    with pytest.raises(ValueError, match=r"^capacity: expected an int >= 4, got 3"):
        refusal_header(table_capacity(1, 0), kind("too small"))


# ---- 3. the split steps against one process ---------------------------------------------------

HEADS, KV_HEADS, DIM, PAGE, POOL = 8, 4, 64, 4, 24
STEPS = [   # (q_lens or None for decode, seq_lens, max_batch, max_pages)
    (None, [], 1, 1),                     # batch 0
    (None, [5, 16, 1], 3, 4),             # the buffer full
    (None, [3], 4, 6),                    # one short row in a large buffer
    ([], [], 1, 1),                       # prefill, batch 0
    ([0, 0], [4, 9], 2, 3),               # no queries at all
    ([3, 1, 0], [3, 16, 7], 3, 4),        # the buffer full
    ([2], [6], 5, 2)]


def _step_inputs(q_lens, lens, max_pages):
    rng = np.random.default_rng(len(lens) * 10 + max_pages)
    dtype = np.float32 if q_lens is None else np.float16
    k, v = (rng.standard_normal((POOL, PAGE, KV_HEADS, DIM)).astype(dtype) for _ in "kv")
    pages = -(-max(lens, default=0) // PAGE)
    tables = rng.permutation(POOL)[:len(lens) * pages].reshape(len(lens), pages)
    indptr = None if q_lens is None else np.concatenate([[0], np.cumsum(q_lens)])
    rows = len(lens) if q_lens is None else int(indptr[-1])
    q = rng.standard_normal((rows, HEADS, DIM)).astype(dtype)
    shared = [tables.astype(np.int32), np.array(lens, np.int32)]
    if indptr is not None:
        shared.append(indptr.astype(np.int32))
    return shared, q, k, v


def _one_process(q_lens, lens, max_pages):
    shared, q, k, v = _step_inputs(q_lens, lens, max_pages)
    if q_lens is None:
        plan = BatchDecodeWrapper().plan(*shared, HEADS, KV_HEADS, DIM, PAGE, "float32",
                                         num_splits=1)
    else:
        plan = BatchPrefillWrapper().plan(shared[2], *shared[:2], HEADS, KV_HEADS, DIM, PAGE,
                                          "float16")
    return plan.run(q, k, v)


def steps_rank(rank: int, world_size: int, steps) -> list:
    """Every step of `steps` in turn, on one TPDecode / TPPrefill per step kind and sizes."""
    outs = []
    for q_lens, lens, max_batch, max_pages in steps:
        shared, q, k, v = _step_inputs(q_lens, lens, max_pages)
        tp = TPDecode(HEADS, KV_HEADS, DIM, PAGE, "float32", max_batch, max_pages,
                      num_splits=1) if q_lens is None else \
            TPPrefill(HEADS, KV_HEADS, DIM, PAGE, "float16", max_batch, max_pages)
        h = tp.heads
        outs.append(tp.step(np.ascontiguousarray(q[:, h.q_start:h.q_stop]), shard_cache(k, h),
                            shard_cache(v, h), *(shared if rank == 0 else ())))
    return outs


@needs_torch
@pytest.mark.parametrize("world", [1, 2, 4])
def test_split_steps_equal_the_one_process_step_bit_for_bit(monkeypatch, world):
    results, errors, _ = run_ranks(monkeypatch, steps_rank, world, STEPS)
    assert errors == [None] * world, errors
    for i, step in enumerate(STEPS):
        one = _one_process(step[0], step[1], step[3])
        for outs in results:
            assert outs[i].shape == one.shape and np.array_equal(outs[i], one), (world, step)


@needs_torch
def test_split_steps_over_gloo_processes_equal_the_one_process_step():
    steps = [STEPS[0], STEPS[1], STEPS[4], STEPS[5]]
    ranks = launch(steps_rank, 2, steps, timeout=HANG)
    for i, step in enumerate(steps):
        one = _one_process(step[0], step[1], step[3])
        assert all(np.array_equal(outs[i], one) for outs in ranks), step


# ---- 4. a refusal of any kind, from any rank, crosses; the next step runs ---------------------

FAILS = [ValueError, TypeError, KeyError, KeyboardInterrupt]


def fail_then_step_rank(rank: int, world_size: int, refuser: int, kind, where: str):
    """A decode step in which rank `refuser` raises `kind` (in rank 0's packing of the
    tables, or in its attend), then the same step unharmed: (what it raised, the output)."""
    q_lens, lens, max_batch, max_pages = STEPS[1]
    shared, q, k, v = _step_inputs(q_lens, lens, max_pages)
    tp = TPDecode(HEADS, KV_HEADS, DIM, PAGE, "float32", max_batch, max_pages, num_splits=1)
    h = tp.heads
    given = (np.ascontiguousarray(q[:, h.q_start:h.q_stop]), shard_cache(k, h),
             shard_cache(v, h), *(shared if rank == 0 else ()))

    def fail(*args, **kwargs):
        raise kind(f"rank {rank} failed")
    owner = tp if where == "_pack" else tp.wrapper
    if rank == refuser:
        setattr(owner, where, fail)
    try:
        tp.step(*given)
        raised = None
    except BaseException as error:   # noqa: BLE001 - handed to the test
        raised = (type(error), str(error))
    if rank == refuser:
        delattr(owner, where)
    return raised, tp.step(*given)


@needs_torch
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("kind", FAILS, ids=lambda k: k.__name__)
def test_a_failure_of_any_kind_on_any_rank_is_raised_on_every_rank_then_the_next_runs(
        monkeypatch, world, kind):
    one = _one_process(None, STEPS[1][1], STEPS[1][3])
    for refuser, where in [(0, "_pack"), *((r, "run") for r in range(world))]:
        results, errors, _ = run_ranks(monkeypatch, fail_then_step_rank, world, refuser, kind,
                                       where)
        assert errors == [None] * world, errors
        text = f"rank {refuser} failed"
        for rank, (raised, out) in enumerate(results):
            if kind is KeyboardInterrupt:   # its own rank re-raises it; the others name it
                expected = (kind, text) if rank == refuser else (
                    RuntimeError, f"KeyboardInterrupt on rank {refuser} stopped this step on "
                                  f"every rank: {text}")
            else:
                expected = (RuntimeError, f"KeyError: '{text}'") if kind is KeyError and \
                    rank != refuser else (kind, repr(text) if kind is KeyError else text)
            assert raised == expected, (refuser, where, rank, raised)
            assert np.array_equal(out, one)


# ---- 5. a torch buffer, as pack_tables takes torch arrays ------------------------------------

@needs_torch
def test_unpack_tables_reads_a_torch_buffer_and_refuses_a_torch_int64_one_by_name():
    """unpack_tables of a torch tensor (the buffer a rank broadcast through torch) raised
    "'<' not supported between instances of 'builtin_function_or_method' and 'int'"."""
    import torch
    tables, lens = np.array([[5, 6], [7, 8]], np.int32), np.array([7, 5], np.int32)
    buf = torch.from_numpy(pack_tables(tables, lens, 3, 2))
    got_tables, got_lens = unpack_tables(buf, 3)
    assert got_tables.tolist() == tables.tolist() and got_lens.tolist() == lens.tolist()
    assert np.shares_memory(got_lens, buf.numpy())   # views, as of a NumPy buffer
    with pytest.raises(TypeError, match=r"^buf: expected the int32 buffer pack_tables "
                                        r"fills, got dtype int64$"):
        unpack_tables(buf.to(torch.int64), 3)
