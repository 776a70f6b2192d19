"""Mutants of this round's padding watch, stub test and tensor-parallel interrupt handling
that no test killed now fail.

Padding watch (grading/padding_reads.py, page_indices.py): the bytes of a Fortran-order
.tobytes() or .flatten(order="A"), and a join into a Fortran-order `out`, are not watched
as if in C order (a token or a dim counted from the end would pass for the padding); a
ufunc over the cache and a view of its first page follows the cache; np.frombuffer(buffer=)
keeps the watch; take(mode="clip") reads page 0 for -1, following nothing; the pages'
period of a copy with two axes crossing pages is the longer one; a copy whose tokens lie
between its page axes is left unwatched; an Ellipsis before a token index counts the axes
it stands for. Stub test (grading/escaped_errors.raised_by_stub, report.run_cases): a
NotImplementedError never raised, raised by a check's "returned None", or raised on a
learner's line whose text is unknown is the stub; one raised with no learner's line on the
way is the answer's error, and counts toward stopping the cases. Tensor-parallel step
(distributed/decode.py, shard.py): a rank interrupted while a lower rank refuses raises its
own interrupt; one interrupted sharing its output in the gather still takes it; a
RuntimeError's subclass crosses with its name.
"""
import functools
import numbers

import numpy as np

from pagedattn_lab.distributed.shard import refusal_error, refusal_header, refusal_message
from pagedattn_lab.grading.checks_addressing import _counted
from pagedattn_lab.grading.escaped_errors import raised_by_stub
from pagedattn_lab.grading.padding_reads import conversions_watched
from pagedattn_lab.grading.report import FAILED, NOT_ATTEMPTED
from tests.check_helpers import run_check
from tests.test_bad_input_attack8 import _Interrupt, needs_torch
from tests.test_library_not_implemented import _Fraction, _library_python_raise, _run
from tests.test_tp_refusal_h245 import _rank_inputs, _reference, default_decode, step_with_fault
from tests.thread_ranks import run_ranks

SHAPE = (6, 4, 2, 3)   # pages, tokens a page, KV heads, head dim (float32: pages 96 bytes apart)


def _watched_cache():
    """A watched cache of SHAPE and the list its watch keeps negative page ids in."""
    negative_ids = []
    cache = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    return _counted(cache, [0], negative_ids), negative_ids


# ---- reads that follow no padding stay unflagged ---------------------------------------------

def test_fortran_order_bytes_read_back_in_fortran_order_follow_no_padding():
    cache, ids = _watched_cache()
    with conversions_watched():
        back = np.frombuffer(cache.tobytes(order="F"), cache.dtype).reshape(SHAPE, order="F")
    np.testing.assert_array_equal(back[..., -1], cache[..., -1].view(np.ndarray))
    assert ids == []


def test_a_fortran_copy_flattened_in_its_own_order_follows_no_padding():
    cache, ids = _watched_cache()
    back = cache.copy(order="F").flatten(order="A").reshape(SHAPE, order="F")
    back[..., -1]   # each page's elements' last dim: inside a page
    assert ids == []


def test_a_join_into_a_fortran_order_out_follows_no_padding():
    cache, ids = _watched_cache()
    out = np.empty((SHAPE[0] * SHAPE[1], *SHAPE[2:]), np.float32, order="F")
    np.concatenate(cache, out=out)[..., -1]
    assert ids == []


def test_take_clipping_reads_page_0_for_the_padding():
    cache, ids = _watched_cache()
    np.testing.assert_array_equal(cache.take([-1], axis=0, mode="clip")[0],
                                  cache[0].view(np.ndarray))
    assert ids == []


def test_a_copy_with_its_tokens_between_two_page_axes_follows_no_padding():
    cache, ids = _watched_cache()
    # pages as 3 pairs: the pair and the page within it both cross pages; tokens between
    tokens_inside = cache.reshape(3, 2, *SHAPE[1:]).transpose(0, 2, 1, 3, 4).copy()
    tokens_inside[:, -1]   # each page's last token
    assert ids == []


def test_a_token_after_an_ellipsis_is_no_page():
    cache, ids = _watched_cache()
    cache[..., -1, :, :]
    assert ids == []


# ---- reads through the padding are flagged ---------------------------------------------------

def test_a_ufunc_over_a_page_and_the_cache_follows_the_cache():
    cache, ids = _watched_cache()
    (cache[:1] + cache)[-1]
    assert ids == [-1]


def test_frombuffer_by_keyword_keeps_the_watch():
    cache, ids = _watched_cache()
    with conversions_watched():
        flat = np.frombuffer(buffer=cache, dtype=cache.dtype)
    flat.reshape(SHAPE)[-1]
    assert ids == [-1]


def test_a_fortran_copy_of_paired_pages_comes_round_after_both_page_axes():
    cache, ids = _watched_cache()
    paired = cache.reshape(3, 2, *SHAPE[1:]).copy(order="F")
    paired[0, -1]   # the second page of the first pair, from the end: a page read
    assert ids == [-1]


# ---- which NotImplementedError is the workbook's stub ----------------------------------------

def test_a_not_implemented_never_raised_is_the_stub():
    assert raised_by_stub(NotImplementedError("write this part"))


def test_a_checks_returned_none_is_not_attempted():
    result, printed = run_check("head_split", lambda rank, world, heads, kv: None)
    assert result.status == NOT_ATTEMPTED, printed


def test_a_stub_line_whose_text_is_unknown_is_not_attempted():
    learners = {}
    exec(compile("def answer():\n    raise NotImplementedError\n", "<cell>", "exec"), learners)
    result, printed = _run(learners["answer"])
    assert result.status == NOT_ATTEMPTED, printed


def test_a_library_not_implemented_with_no_learners_line_is_the_answers_error():
    # (the case runs the library's function itself: no frame of the learner's on the way)
    result, printed = _run(functools.partial(numbers.Complex.real.fget, _Fraction(1)))
    assert result.status == FAILED and "Not attempted" not in printed, printed


def test_library_not_implemented_failures_count_toward_stopping():
    result, printed = _run(_library_python_raise, lambda: None, stop_after_failures=1)
    assert [c.status for c in result.cases] == [FAILED], printed
    assert "(stopping after 1 failed cases)" in printed


# ---- a rank interrupted while a lower rank refuses ----------------------------------------

def interrupted_while_rank_0_refuses(rank: int, world_size: int) -> dict:
    """Rank 0's run raises a ValueError, rank 1's an interrupt, in one step: what each
    raised, then a good step."""
    def stop(*args, **kwargs):
        raise (ValueError("q: rank 0's refusal") if rank == 0 else _Interrupt("stop"))

    tp = default_decode()
    shared, q, k, v, _ = _rank_inputs(tp, rank, prefill=False)
    error = step_with_fault(tp, rank, rank, tp.wrapper, "run", stop, shared, q, k, v)
    stopped = None if error is None else (type(error).__name__, str(error))
    return {"stopped": stopped, "out": tp.step(q, k, v, *shared)}


@needs_torch
def test_an_interrupted_rank_raises_its_interrupt_whichever_ranks_error_the_others_raise(
        monkeypatch):
    results, errors, _ = run_ranks(monkeypatch, interrupted_while_rank_0_refuses, 2)
    assert errors == [None, None], errors
    assert results[0]["stopped"] == ("ValueError", "q: rank 0's refusal")   # the lowest's
    assert results[1]["stopped"] == ("_Interrupt", "stop")   # its own interrupt, re-raised
    for r in results:
        np.testing.assert_allclose(r["out"], _reference(False), rtol=0, atol=1e-5)


def test_a_runtime_errors_subclass_crosses_with_its_name():
    """Only a RuntimeError's own name would repeat the rebuilt RuntimeError's."""
    error = NotImplementedError("no kernel for float16")
    rebuilt = refusal_error(refusal_header(4, error), refusal_message(error))
    assert type(rebuilt) is RuntimeError
    assert str(rebuilt) == "NotImplementedError: no kernel for float16"


def interrupted_sharing_its_output(rank: int, world_size: int) -> dict:
    """Rank 1 is interrupted sharing its output in the gather: what each rank raised, then a
    good step."""
    def interrupt(*args, **kwargs):
        raise _Interrupt("stop")

    tp = default_decode()
    shared, q, k, v, _ = _rank_inputs(tp, rank, prefill=False)
    error = step_with_fault(tp, rank, 1, tp, "_share_bytes", interrupt, shared, q, k, v)
    stopped = None if error is None else (type(error).__name__, str(error))
    return {"stopped": stopped, "out": tp.step(q, k, v, *shared)}


@needs_torch
def test_a_rank_interrupted_sharing_its_output_still_takes_the_gather(monkeypatch):
    results, errors, _ = run_ranks(monkeypatch, interrupted_sharing_its_output, 2)
    assert errors == [None, None], errors
    assert results[0]["stopped"] == (
        "RuntimeError", "_Interrupt on rank 1 stopped this step on every rank: stop")
    assert results[1]["stopped"] == ("_Interrupt", "stop")
    for r in results:
        np.testing.assert_allclose(r["out"], _reference(False), rtol=0, atol=1e-5)
