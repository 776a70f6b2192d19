"""Workbooks 07 and 13 walked as a learner, wrong answers first: mistakes whose check printed
the general recipe, another mistake's hint or a wrong count now get a hint that names them.

Workbook 07: a page with room taken for shared (ref_count >= 1), the block tables of every
live sequence on the fork's step, num_used passed to OutOfPagesError, admission that ignores
the pages promised to the running sequences (the cache runs dry mid-step), a prompt admitted
one token short, a finish test that never fires. Workbook 13: ranks numbered from the end,
(start, count) pairs, a KV stop on the last head, group = num_heads // world_size, the ranks'
blocks summed as an all-reduce, one head's bytes for a rank's, seq_lens counted one more.
"""
from collections import deque

import numpy as np
import pytest

import pagedattn_lab as pl
from tests.check_helpers import assert_caught, run_check
from tests.serve_loops import serve_loop, spec_admission

# -- workbook 07, task 1 --------------------------------------------------------------------


def next_page_ref_count_at_least_one(cache, seq_id):
    n = cache.seq_len(seq_id)
    if n % cache.page_size == 0:
        return 1
    return int(cache.allocator.ref_count(cache.block_table(seq_id)[-1]) >= 1)


def test_a_page_with_room_taken_for_shared_is_named():
    result, printed = assert_caught("pages_for_next_token", next_page_ref_count_at_least_one,
                                    "a page is shared when ref_count > 1")
    assert "a sequence of 1 token (page_size 4)" in printed, printed


# -- workbook 07, task 2 --------------------------------------------------------------------

def _needed(cache, seq_id):
    n = cache.seq_len(seq_id)
    if n % cache.page_size == 0:
        return 1
    return int(cache.allocator.ref_count(cache.block_table(seq_id)[-1]) > 1)


def step_manager(*, every_table=False, free_of=lambda alloc: alloc.num_free):
    class Manager(pl.PagedAttentionManager):
        def decode_step(self, seq_ids, q, k, v):
            alloc = self.cache.allocator
            needed = sum(_needed(self.cache, s) for s in seq_ids)
            if needed > alloc.num_free:
                raise pl.OutOfPagesError(needed, free_of(alloc), alloc.num_pages)
            for i, s in enumerate(seq_ids):
                self.cache.append(s, k[i:i + 1], v[i:i + 1])
            tables, lens = self.cache.block_tables(None if every_table else seq_ids)
            return pl.paged_attention_decode(q, self.cache.k_cache, self.cache.v_cache, tables,
                                             lens, self.scale)
    return Manager


def test_every_live_table_is_named_on_the_forks_step():
    """The fork's step ran with one sequence of three left out: its ValueError reached the
    learner as "read the error above"."""
    result, printed = run_check("decode_step", step_manager(every_table=True))
    fork = next(c for c in result.cases if "fork" in c.name)
    assert not fork.passed and "self.cache.block_tables(seq_ids)" in fork.hint, printed


def test_pages_in_use_passed_as_free_is_named():
    assert_caught("decode_step", step_manager(free_of=lambda alloc: alloc.num_used),
                  "the pages in use (num_used)", not_phrases=["the pages the whole step needs"])


# -- workbook 07, task 3 --------------------------------------------------------------------

def test_admission_without_promised_pages_is_named_where_the_pool_runs_dry():
    """The loop frees every finished sequence; the request that completed in the decode that
    ran dry was blamed for holding its pages."""
    result, printed = run_check("serve", serve_loop(lambda a: a.total <= a.free))
    case = next(c for c in result.cases if c.name == "a pool too small for all at once")
    hint = " ".join(case.hint.split())
    assert not case.passed and "not <= num_free alone" in hint, printed
    assert "still held their pages" not in hint, printed


# The spec's loop, but admission appends prompt_len - 1 tokens (the decode the last).
serve_prompt_one_short = serve_loop(spec_admission, admitted_tokens=lambda n: max(1, n - 1))


def test_a_prompt_admitted_one_token_short_is_named_not_a_late_finish():
    assert_caught("serve", serve_prompt_one_short,
                  "one step longer per prompt token held back",
                  not_phrases=["finished a step late"])


def serve_finish_past_the_end(cache, requests, kv_for):
    """The spec's loop, but a sequence counts as finished only past its whole length."""
    waiting, running, finished = deque(range(len(requests))), {}, []
    while waiting or running:
        while waiting and -(-sum(requests[waiting[0]]) // cache.page_size) <= \
                cache.allocator.num_free - sum(
                    -(-sum(requests[j]) // cache.page_size)
                    - -(-cache.seq_len(s) // cache.page_size) for j, s in running.items()):
            i = waiting.popleft()
            running[i] = cache.add_sequence()
            cache.append(running[i], *kv_for(i, 0, requests[i][0]))
        for i, s in list(running.items()):
            if cache.seq_len(s) < sum(requests[i]):
                cache.append(s, *kv_for(i, cache.seq_len(s), 1))
            if cache.seq_len(s) > sum(requests[i]):
                cache.free_sequence(s)
                del running[i]
                finished.append(i)
    return finished


def test_a_finish_test_that_never_fires_says_what_finished_means():
    assert_caught("serve", serve_finish_past_the_end,
                  "hold all their tokens (prompt_len + new_tokens) but still hold their pages")


# -- workbook 13 ----------------------------------------------------------------------------

def split(kv_range, q_range):
    """head_split from `kv_range(rank, world, per_rank_kv, group)` and `q_range(rank, world,
    per_rank_q, the kv range, num_heads)`, refusing a split that does not divide."""
    def head_split(rank, world_size, num_heads, num_kv_heads):
        if num_kv_heads % world_size:
            raise ValueError("world_size does not divide num_kv_heads")
        n_kv, group = num_kv_heads // world_size, num_heads // num_kv_heads
        kv = kv_range(rank, world_size, n_kv, group)
        return kv, q_range(rank, world_size, num_heads // world_size, kv, num_heads)
    return head_split


def _q_right(rank, world, n_q, kv, heads):
    return rank * n_q, (rank + 1) * n_q


HEAD_SPLITS = [
    (split(lambda r, w, n, g: ((w - 1 - r) * n, (w - r) * n),
           lambda r, w, n, kv, h: ((w - 1 - r) * n, (w - r) * n)),
     "not with world_size - 1 - rank"),
    (split(lambda r, w, n, g: (r * n, n), lambda r, w, n, kv, h: (r * n, n)),
     "yours has the count as its second number"),
    (split(lambda r, w, n, g: (r * n, (r + 1) * n - 1), _q_right),
     "yours is that last KV head itself"),
    (split(lambda r, w, n, g: (r * n, (r + 1) * n),
           lambda r, w, n, kv, h: (kv[0] * (h // w), kv[1] * (h // w))),
     "not num_heads // world_size"),
]


@pytest.mark.parametrize("impl, phrase", HEAD_SPLITS,
                         ids=["reversed ranks", "start, count", "kv stop inclusive",
                              "group from world_size"])
def test_head_split_mistakes_are_named(impl, phrase):
    assert_caught("head_split", impl, phrase,
                  not_phrases=["KV heads [r*Hkv/R, (r+1)*Hkv/R), query heads"])


def test_an_assertion_on_one_kv_head_is_worded_in_the_singular():
    def head_split(rank, world_size, num_heads, num_kv_heads):
        assert num_kv_heads % world_size == 0
        n = num_kv_heads // world_size
        return (rank * n, (rank + 1) * n), (rank * n * num_heads // num_kv_heads,
                                            (rank + 1) * n * num_heads // num_kv_heads)
    result, printed = assert_caught("head_split", head_split, "raised AssertionError")
    assert "over 1 KV head raised AssertionError" in " ".join(printed.split()), printed


@pytest.mark.parametrize("reduce, how", [(np.sum, "summed"), (np.mean, "averaged")])
def test_blocks_reduced_as_an_all_reduce_are_named(reduce, how):
    def gather_heads(gathered, world_size, batch, num_heads, head_dim):
        blocks = gathered.reshape(world_size, batch, num_heads // world_size, head_dim)
        return reduce(blocks, axis=0)
    assert_caught("gather_heads", gather_heads, f"the ranks' blocks were {how}, as an "
                  "all-reduce would", not_phrases=["that is one rank's share"])


def wire(share=None, kv_read=None):
    """The spec's byte counts, with output_share `share(batch, heads, head_dim, itemsize,
    world)` and kv_read `kv_read(lens, kv_heads, head_dim, itemsize, world)` where given."""
    def wire_bytes(seq_lens, num_heads, num_kv_heads, head_dim, page_size, world_size,
                   itemsize):
        lens = [int(n) for n in seq_lens]
        batch, pages = len(lens), -(-max(lens) // page_size)
        tables = 4 * (2 + batch + batch * pages)
        out = (share or (lambda b, h, d, s, w: b * (h // w) * d * s))(
            batch, num_heads, head_dim, itemsize, world_size)
        read = (kv_read or (lambda l, k, d, s, w: sum(l) * 2 * (k // w) * d * s))(
            lens, num_kv_heads, head_dim, itemsize, world_size)
        return tables, out, read
    return wire_bytes


def _one_head_out(b, h, d, s, w):
    return b * d * s


def _one_kv_head(lens, k, d, s, w):
    return sum(lens) * 2 * d * s


WIRE = [
    (wire(share=_one_head_out), "output_share counts one head's output"),
    (wire(kv_read=_one_kv_head), "kv_read counts one KV head"),
    (wire(share=_one_head_out, kv_read=_one_kv_head),
     "And kv_read counts one KV head"),
    (wire(kv_read=lambda l, k, d, s, w: (sum(l) + len(l)) * 2 * (k // w) * d * s),
     "seq_lens already counts the step's new token"),
]


@pytest.mark.parametrize("impl, phrase", WIRE,
                         ids=["one head's output", "one KV head", "one head of each",
                              "a token more per sequence"])
def test_wire_bytes_mistakes_are_named(impl, phrase):
    assert_caught("wire_bytes", impl, phrase,
                  not_phrases=["tables: 4 * (2 + batch + batch * pages); output share"])
