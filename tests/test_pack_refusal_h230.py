"""Tables rank 0 refuses in a tensor-parallel step: every rank raises rank 0's error, none waits.

pack_tables, given page_size, refuses the tables' values as the wrappers' plan does (it packed
them, and every rank then planned them only to refuse them). TPDecode / TPPrefill send a
refusal in place of the tables, and its message in one more broadcast: before, a refusal on
rank 0 (a float table, a missing qo_indptr) came before the broadcast, where the other ranks
waited. The buffer's pieces are tested in one process; the ranks as threads
(tests/thread_ranks.py).
"""
import re

import numpy as np
import pytest

from pagedattn_lab.distributed import TPDecode, TPPrefill, pack_tables, torch_missing, unpack_tables
from pagedattn_lab.distributed.shard import (is_refusal, refusal_error, refusal_header,
                                             refusal_message, table_capacity)
from pagedattn_lab.prefill_wrapper import BatchPrefillWrapper
from pagedattn_lab.wrappers import BatchDecodeWrapper
from tests.thread_ranks import run_ranks

needs_torch = pytest.mark.skipif(torch_missing() is not None,
                                 reason=f"torch.distributed: {torch_missing()}")
PAGE = 8


def i32(values):
    return np.array(values, np.int32)


BAD_VALUES = [   # (tables, lens, qo_indptr or None for decode, the error's start)
    (i32([[0, 1], [2, -3]]), i32([16, 9]), None, r"block_tables\[1, 1\]: page id -3 is out"),
    (i32([[0, -1, 2]]), i32([20]), None, r"block_tables\[0, 1\]: page id -1 is out"),  # padding
    (i32([[0, 1]]), i32([17]), None, r"seq_lens\[0\]: 17 tokens do not fit in a block table "
                                     r"row of 2 pages x 8 tokens = 16"),
    (i32([[0, 1], [2, 3]]), i32([5, 0]), None, r"seq_lens\[1\]: expected a length >= 1"),
    (i32([[0, 1], [2, 3]]), i32([5, 9]), i32([0, 3, 2]), r"qo_indptr\[2\]: 2 is less than"),
    (i32([[0, 1], [2, 3]]), i32([5, 9]), i32([1, 3, 5]), r"qo_indptr\[0\]: expected 0"),
    (i32([[0, 1], [2, 3]]), i32([4, 9]), i32([0, 5, 6]), r"qo_indptr: sequence 0 has 5 "
                                                         r"queries but seq_lens\[0\] is 4")]


def _plan_error(tables, lens, indptr) -> str:
    """The message the wrapper's plan refuses these tables with."""
    with pytest.raises(ValueError) as caught:
        if indptr is None:
            BatchDecodeWrapper().plan(tables, lens, 8, 4, 32, PAGE, "float32")
        else:
            BatchPrefillWrapper().plan(indptr, tables, lens, 8, 4, 32, PAGE, "float16")
    return str(caught.value)


@pytest.mark.parametrize("tables, lens, indptr, match", BAD_VALUES)
def test_pack_tables_refuses_what_the_plan_refuses_with_its_message(tables, lens, indptr,
                                                                    match):
    with pytest.raises(ValueError, match=f"^{match}") as caught:
        pack_tables(tables, lens, 4, 4, indptr, page_size=PAGE)
    assert str(caught.value) == _plan_error(tables, lens, indptr)


def test_pack_tables_takes_padding_past_the_pages_a_sequence_reads():
    buf = pack_tables(i32([[0, -1], [3, 2]]), i32([5, 16]), 2, 2, page_size=PAGE)
    tables, lens = unpack_tables(buf, 2)
    np.testing.assert_array_equal(tables, [[0, -1], [3, 2]])
    assert not is_refusal(buf)


@pytest.mark.parametrize("error", [ValueError("seq_lens[1]: expected a length >= 1, got 0"),
                                   TypeError("block_tables: expected dtype int32, got float32")])
def test_a_refusal_comes_back_as_the_same_error(error):
    header = refusal_header(table_capacity(2, 2), error)
    assert is_refusal(header) and header.size == table_capacity(2, 2)
    rebuilt = refusal_error(header, refusal_message(error))
    assert type(rebuilt) is type(error) and str(rebuilt) == str(error)
    with pytest.raises(ValueError, match=r"^buf: it holds rank 0's refusal of this step, not "
                                         r"tables"):
        unpack_tables(header, 2)


def test_a_long_message_crosses_whole():
    """A message of any length crosses whole: the refusal's words carry its size."""
    error = ValueError("seq_lens: " + "é…𝄞" * 400)   # 2, 3 and 4 bytes each in UTF-8
    message = refusal_message(error)
    header = refusal_header(4, error)
    assert message.dtype == np.uint8 and message.size == int(header[2]) == 3610
    assert str(refusal_error(header, message)) == str(error)


def test_refusal_error_refuses_a_header_that_is_no_refusal():
    buf = pack_tables(i32([[0]]), i32([1]), 1, 1)
    with pytest.raises(ValueError, match=r"^header: expected \(-1, 0\.\.2, 3, 0\), what "
                                         r"refusal_header writes for this 3-byte message, "
                                         r"got \(1, 1, 1, 0\)$"):
        refusal_error(buf, np.zeros(3, np.uint8))


# ---- the ranks as threads: rank 0 refuses, every rank raises its error, the next step runs ----

GOOD = (i32([[0, 1], [2, 3]]), i32([9, 16]))
GOOD_INDPTR = i32([0, 2, 3])
REFUSED = [   # (step, rank 0's arguments, the error's start)
    *((TPDecode, (tables, lens), match) for tables, lens, indptr, match in BAD_VALUES
      if indptr is None),
    *((TPPrefill, (tables, lens, indptr), match) for tables, lens, indptr, match in BAD_VALUES
      if indptr is not None),
    (TPDecode, (GOOD[0].astype(np.float32), GOOD[1]), r"block_tables: expected dtype int32"),
    (TPDecode, (np.zeros((5, 1), np.int32), i32([1] * 5)), r"block_tables: the buffer holds "
                                                           r"at most 4 rows of 4 pages"),
    (TPPrefill, GOOD, r"qo_indptr: rank 0 gives a prefill step's qo_indptr")]


def _refuse_then_share(rank, world, step, bad):
    """Rank 0 shares bad tables, then good ones; returns (the error, the good tables)."""
    tp = step(8, 4, 32, PAGE, "float16", 4, 4)
    good = (*GOOD, GOOD_INDPTR) if step is TPPrefill else GOOD
    try:
        tp.share_tables(*(bad if rank == 0 else ()))
        error = None
    except (ValueError, TypeError) as refused:
        error = refused
    return error, [np.array(t) for t in tp.share_tables(*(good if rank == 0 else ()))]


@needs_torch
@pytest.mark.parametrize("step, bad, match", REFUSED)
def test_every_rank_raises_rank_0s_refusal_and_the_next_step_runs(monkeypatch, step, bad,
                                                                  match):
    results, errors, group = run_ranks(monkeypatch, _refuse_then_share, 2, step, bad)
    assert errors == [None, None], errors
    refusals = [error for error, _ in results]
    assert refusals[0] is not None and re.match(match, str(refusals[0])), refusals[0]
    assert {(type(e), str(e)) for e in refusals} == {(type(refusals[0]), str(refusals[0]))}
    capacity = 4 * table_capacity(4, 4, step is TPPrefill)
    message = len(str(refusals[0]).encode())   # the message crosses whole, no padding
    assert group.log[1:] == [("broadcast", capacity), ("broadcast", message),
                             ("broadcast", capacity)]
    for _, tables in results:   # the next step: rank 0's good tables on every rank
        np.testing.assert_array_equal(tables[0], GOOD[0])
        np.testing.assert_array_equal(tables[1], GOOD[1])


def test_an_error_of_another_kind_crosses_as_a_runtime_error_naming_it():
    """A ValueError or TypeError crosses as itself; another kind (a rank's step can fail with
    any) as a RuntimeError whose message names it. What is no exception is refused by name."""
    error = KeyError("the GPU fell off the bus")
    rebuilt = refusal_error(refusal_header(4, error), refusal_message(error))
    assert type(rebuilt) is RuntimeError and str(rebuilt) == "KeyError: 'the GPU fell off the bus'"
    with pytest.raises(TypeError, match=r"^error: expected an exception, got str$"):
        refusal_header(4, "the GPU fell off the bus")


@needs_torch
@pytest.mark.parametrize("indptr", [None, GOOD_INDPTR], ids=["decode", "prefill"])
def test_pack_tables_takes_torch_tensors_as_the_plan_does(indptr):
    """The wrappers' plan takes int32 torch tensors (as the arrays sharing their memory);
    pack_tables refused them as no NumPy or CuPy array."""
    import torch
    as_tensors = [torch.from_numpy(a.copy()) for a in (*GOOD, *([] if indptr is None
                                                                else [indptr]))]
    packed = pack_tables(*as_tensors[:2], 4, 4, *as_tensors[2:], page_size=PAGE)
    np.testing.assert_array_equal(packed, pack_tables(*GOOD, 4, 4, indptr, page_size=PAGE))
    bad = torch.from_numpy(i32([[0, 1], [2, -3]]))
    with pytest.raises(ValueError, match=r"^block_tables\[1, 1\]: page id -3 is out"):
        pack_tables(bad, *as_tensors[1:2], 4, 4, *as_tensors[2:], page_size=PAGE)
