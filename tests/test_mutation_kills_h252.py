"""Mutants of the tensor-parallel refusal path (distributed/shard.py's refusal words and
decode.py's gather and message broadcast) that no earlier test killed: each test here fails
on one such mutant. Ranks as threads (tests/thread_ranks.py)."""
import numpy as np
import pytest

from pagedattn_lab.distributed import torch_missing
from pagedattn_lab.distributed.shard import (REFUSAL_WORDS, REFUSED, refusal_error,
                                             refusal_header, refusal_message, table_capacity)
from tests.test_tp_refusal_h245 import (OUT_SHARE, _rank_inputs, _reference, default_decode,
                                         step_with_fault)
from tests.thread_ranks import run_ranks

needs_torch = pytest.mark.skipif(torch_missing() is not None,
                                 reason=f"torch.distributed: {torch_missing()}")


# ---- shard: the refusal's words and message ------------------------------------------------

def test_a_lone_surrogate_crosses_as_its_escape():
    # UTF-8 cannot carry it: its escape keeps the message readable ("replace" made it "?")
    error = ValueError("seq_lens: \udc80 given")
    message = refusal_message(error)
    assert bytes(message) == b"seq_lens: \\udc80 given"
    assert str(refusal_error(refusal_header(REFUSAL_WORDS, error), message)) == \
        "seq_lens: \\udc80 given"


def test_a_header_whose_last_word_is_not_zero_is_refused():
    words = refusal_header(REFUSAL_WORDS, ValueError("no"))
    words[3] = 7
    with pytest.raises(ValueError, match=rf"^header: expected \({REFUSED}, 0\.\.2, 2, 0\), .*"
                                         rf"got \({REFUSED}, 0, 2, 7\)$"):
        refusal_error(words, refusal_message(ValueError("no")))


def test_a_header_announcing_another_message_size_is_refused():
    # the words say how many bytes crossed: a message of any other size was cut or padded
    words = refusal_header(REFUSAL_WORDS, ValueError("no"))
    with pytest.raises(ValueError, match=rf"^header: expected \({REFUSED}, 0\.\.2, 3, 0\), what "
                                         rf"refusal_header writes for this 3-byte message, "
                                         rf"got \({REFUSED}, 0, 2, 0\)$"):
        refusal_error(words, np.frombuffer(b"no!", np.uint8))


def test_a_message_cut_inside_a_character_reads_it_as_a_replacement():
    # a refusing rank sends the bytes it announced, which may end inside a character
    cut = refusal_message(ValueError("page é"))[:-1]
    words = np.array([REFUSED, 0, cut.size, 0], np.int32)
    assert str(refusal_error(words, cut)) == "page \ufffd"


# ---- decode: rank 0's packing, the message's broadcast, the gather's status ----------------

def _pack_fails_rank(rank: int, world_size: int) -> dict:
    """Rank 0's packing raises a KeyError, then a good step."""
    def fail(*args, **kwargs):
        raise KeyError("allocator freed the table")

    tp = default_decode()
    shared, q, k, v, _ = _rank_inputs(tp, rank, prefill=False)
    error = step_with_fault(tp, rank, 0, tp, "_pack", fail, shared, q, k, v)
    refused = None if error is None else (type(error), str(error))
    # the sizes' all_gather, the refusal's broadcast, the message's: else rank 1 still waits
    # (raised, this stops it at once, not after thread_ranks' wait)
    if tp.dist.local.count != 3:
        raise AssertionError(f"rank {rank} posted {tp.dist.local.count} collectives, not 3")
    return {"refused": refused, "out": tp.step(q, k, v, *shared)}


@needs_torch
def test_rank_0s_packing_failing_with_another_kind_is_raised_on_every_rank(monkeypatch):
    results, errors, _ = run_ranks(monkeypatch, _pack_fails_rank, 2)
    assert errors == [None, None], errors
    assert results[0]["refused"] == (KeyError, "'allocator freed the table'")
    assert results[1]["refused"] == (RuntimeError, "KeyError: 'allocator freed the table'")
    for r in results:
        np.testing.assert_allclose(r["out"], _reference(False), rtol=0, atol=1e-5)


def _empty_message_rank(rank: int, world_size: int) -> dict:
    """Rank 1's run raises ValueError() (an empty message)."""
    def fail(*args, **kwargs):
        raise ValueError()

    tp = default_decode()
    shared, q, k, v, _ = _rank_inputs(tp, rank, prefill=False)
    if rank == 1:
        tp.wrapper.run = fail
    with pytest.raises(ValueError, match=r"^$"):
        tp.step(q, k, v, *shared)
    return {}


@needs_torch
def test_an_empty_message_posts_no_broadcast_of_its_own(monkeypatch):
    _, errors, group = run_ranks(monkeypatch, _empty_message_rank, 2)
    assert errors == [None, None], errors
    assert group.log[1:] == [("broadcast", 4 * table_capacity(6, 5)),
                             ("all_gather", OUT_SHARE + 16)]


def _gather_both_rank(rank: int, world_size: int) -> dict:
    """Rank 1 passes gather both its output and an error."""
    tp = default_decode()
    shared, q, k, v, _ = _rank_inputs(tp, rank, prefill=False)
    tp.plan(*tp.share_tables(*shared))
    out_local = tp.attend(q, k, v)
    try:
        if rank == 1:
            tp.gather(out_local, refused=ValueError("plan failed"))
        else:
            tp.gather(out_local)
    except Exception as error:   # noqa: BLE001 - handed to the test
        return {"refused": (type(error), str(error))}
    return {"refused": None}


@needs_torch
def test_a_gather_given_both_an_output_and_an_error_is_refused_on_every_rank(monkeypatch):
    results, errors, _ = run_ranks(monkeypatch, _gather_both_rank, 2)
    assert errors == [None, None], errors
    expected = (TypeError, "gather: expected out_local (this rank's output) or refused (the "
                           "error its step raised), one of the two")
    assert [r["refused"] for r in results] == [expected, expected]


class _DirtyMemory:
    """NumPy whose `empty` returns memory of 0xFF bytes (an int32 -1, REFUSED, in every
    word), as a reused allocation may: the gather must write its status words."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float):
        return np.full(shape, 0xFF, np.uint8).view(dtype) if np.dtype(dtype) == np.uint8 \
            else np.full(shape, -1, dtype)


def _dirty_memory_rank(rank: int, world_size: int) -> dict:
    tp = default_decode()
    tp.xp = _DirtyMemory()
    shared, q, k, v, _ = _rank_inputs(tp, rank, prefill=False)
    return {"out": tp.step(q, k, v, *shared)}


@needs_torch
def test_a_good_step_writes_its_status_words_whatever_memory_held(monkeypatch):
    results, errors, _ = run_ranks(monkeypatch, _dirty_memory_rank, 2)
    assert errors == [None, None], errors
    for r in results:
        np.testing.assert_allclose(r["out"], _reference(False), rtol=0, atol=1e-5)
