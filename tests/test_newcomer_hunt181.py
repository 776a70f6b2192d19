"""Hunt 181 (newcomer walk of lessons 07-13 and their workbooks, in a browser).

- workbook 07, task 2 (decode_step), the fork case: a step that appended one sequence's token
  before the fork's copy on write ran out of pages was reported as "expected: lengths [5, 6],
  got: lengths [6, 6]" under a case whose parameters read seq_lens=[6, 5, 3]: which sequences
  those lengths belong to (the step's two, the second a fork the parameters never mention) was
  left to guess. The report now names each sequence with its length.
- the same task, the pool running out mid-step: the hint taught "one page per sequence whose
  length is a multiple of page_size", a rule the fork case two cases later fails; it now points
  at Task 1's pages_for_next_token, which the prompt asks for and which sees the copy.
"""
import pytest

import pagedattn_lab as pl
from pagedattn_lab.grading import checks_system
from pagedattn_lab.grading.report import Mismatch


class _NoCount(pl.PagedAttentionManager):
    """Appends every token, then attends: no page count before the appends (a learner's
    first try). Both cases below fail inside the appends, before any kernel runs."""

    def decode_step(self, seq_ids, q, k, v):
        for i, seq_id in enumerate(seq_ids):
            self.cache.append(seq_id, k[i:i + 1], v[i:i + 1])
        raise AssertionError("not reached: the pool runs out in the appends")


class _ModuloCount(pl.PagedAttentionManager):
    """Counts a page only where seq_len % page_size == 0 (misses the fork's copy)."""

    def decode_step(self, seq_ids, q, k, v):
        alloc, size = self.cache.allocator, self.cache.page_size
        needed = sum(self.cache.seq_len(s) % size == 0 for s in seq_ids)
        if needed > alloc.num_free:
            raise pl.OutOfPagesError(needed, alloc.num_free, alloc.num_pages)
        _NoCount.decode_step(self, seq_ids, q, k, v)


def test_fork_case_names_the_sequences_its_lengths_belong_to():
    with pytest.raises(Mismatch) as caught:
        checks_system._decode_fork(_ModuloCount)
    report = caught.value
    assert "sequence 1 got its token" in report.message
    assert "fork of sequence 0" in report.message     # the parameters never mention the fork
    assert report.expected == "sequence 1: 5 tokens, sequence 3: 6 tokens (both unchanged)"
    assert report.got == "sequence 1: 6 tokens, sequence 3: 6 tokens"


def test_out_of_pages_hint_points_at_pages_for_next_token_not_a_modulo_rule():
    with pytest.raises(Mismatch) as caught:
        checks_system._decode_out_of_pages(_NoCount)
    report = caught.value
    assert "pages_for_next_token" in report.hint
    assert "multiple of page_size" not in report.hint   # the rule the fork case fails
    assert report.expected == "sequence 0: 8 tokens, sequence 1: 8 tokens; 1 page free"
    assert report.got == "sequence 0: 9 tokens, sequence 1: 8 tokens; 0 pages free"


def test_head_split_refusal_counts_one_kv_head_in_the_singular():
    """Workbook 13, task 1: "2 ranks cannot share 1 KV heads evenly"."""
    from pagedattn_lab.grading import checks_tp

    def no_refusal(rank, world_size, num_heads, num_kv_heads):
        return (0, 0), (0, num_heads // world_size)

    with pytest.raises(Mismatch) as caught:
        checks_tp._refuse_case(no_refusal, 2, 8, 1)
    assert caught.value.message.startswith("2 ranks cannot share 1 KV head evenly")
