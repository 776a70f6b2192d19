"""Wrong answers to workbooks 07-13 that passed, crashed the check or got a hint that blamed
another mistake (a review of the checks with a learner's classic mistakes).

Each case asserts that the check fails (not "not attempted"), that a failed case's message or
hint holds the phrase naming the mistake and, where the old hint blamed something else, that
that hint is not given.
"""
from collections import deque

import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab.grading.compare import describe_difference
from tests.check_helpers import as_params, assert_caught, mutate, run_check, solution_source
from tests.test_check_mistakes_engine import step_model


def _needed(cache, sid):
    n = cache.seq_len(sid)
    if n % cache.page_size == 0:
        return 1
    return int(cache.allocator.ref_count(cache.block_table(sid)[-1]) > 1)


def step_manager(how):
    """The lesson's decode step with one mistake: `>=` where `>` is meant, an error of its own
    for OutOfPagesError, the output cast to float16."""
    class Manager(pl.PagedAttentionManager):
        def decode_step(self, seq_ids, q, k, v):
            seq_ids, alloc = list(seq_ids), self.cache.allocator
            needed = sum(_needed(self.cache, s) for s in seq_ids)
            if how == "at_least" and needed and needed >= alloc.num_free:
                raise pl.OutOfPagesError(needed, alloc.num_free, alloc.num_pages)
            if needed > alloc.num_free:
                if how == "runtime_error":
                    raise RuntimeError("not enough pages")
                raise pl.OutOfPagesError(needed, alloc.num_free, alloc.num_pages)
            for i, s in enumerate(seq_ids):
                self.cache.append(s, k[i:i + 1], v[i:i + 1])
            out = pl.reference_decode(q, self.cache.k_cache, self.cache.v_cache,
                                      *self.cache.block_tables(seq_ids), self.scale)
            return out.astype(np.float16) if how == "float16" else out
    return Manager


def serve_whole_output(cache, requests, kv_for):
    """Admits as the spec says, then appends a request's whole output in one call: the
    requests finish in arrival order, though the loop records them as it frees them."""
    pages = lambda n: -(-n // cache.page_size)  # noqa: E731
    waiting, running, done = deque(range(len(requests))), {}, []
    while waiting or running:
        while waiting:
            i = waiting[0]
            promised = sum(pages(sum(requests[j])) - pages(cache.seq_len(s))
                           for j, s in running.items())
            if pages(sum(requests[i])) > cache.allocator.num_free - promised:
                break
            waiting.popleft()
            running[i] = cache.add_sequence()
            cache.append(running[i], *kv_for(i, 0, requests[i][0]))
        for i, s in list(running.items()):
            left = sum(requests[i]) - cache.seq_len(s)
            if left:
                cache.append(s, *kv_for(i, cache.seq_len(s), left))
            cache.free_sequence(s)
            del running[i]
            done.append(i)
    return done


def floor_ms(rounding):
    def fn(nbytes, bandwidth_gbs):
        ms = nbytes / (bandwidth_gbs * 1e9) * 1e3
        return int(ms) if rounding == "int" else round(ms, 2)
    return fn


def mask_one_early(s, tile, seq_len, scale):
    logits = s * np.float32(scale)
    logits[:, 16 * tile + np.arange(16) >= seq_len - 1] = -np.inf
    return logits


def tiles_transposed(q, kv_head, group):
    n = -(-group // 16)
    tiles = np.zeros((n * 16, q.shape[1]), q.dtype)
    tiles[:group] = q[kv_head * group:(kv_head + 1) * group]
    return tiles.reshape(n, 16, q.shape[1]).transpose(0, 2, 1)


def tiles_longest_first(qo_indptr, seq_lens, rows, kv_tile):
    work = []
    for b, (q_len, seq_len) in enumerate(zip(np.diff(qo_indptr), seq_lens)):
        for first in range(0, int(q_len), rows):
            keys = int(seq_len) - int(q_len) + min(first + rows, int(q_len))
            work.append((b, first, -(-keys // kv_tile)))
    return sorted(work, key=lambda w: -w[2])


def wire(returned):
    def fn(seq_lens, num_heads, num_kv_heads, head_dim, page_size, world_size, itemsize):
        batch = len(seq_lens)
        pages = -(-int(max(seq_lens)) // page_size)
        tables = 4 * (2 + batch + batch * pages)
        share = batch * (num_heads // world_size) * head_dim * itemsize
        if returned == "two":            # kv_read forgotten
            return tables, share
        return tables, share, float("inf")   # a division by a zero somewhere
    return fn


MISTAKES = [
    ("pages_for_next_token", lambda cache, sid: None, "returned None", ["free slot"]),
    ("decode_step", step_manager("at_least"), "not needed >= num_free",
     ["count pages_for_next_token"]),
    ("decode_step", step_manager("runtime_error"), "raise pl.OutOfPagesError("),
    ("decode_step", step_manager("float16"), "a cast to float16"),
    ("serve", serve_whole_output, "one call to kv_for", ["arrival order"]),
    ("decode_floor_ms", floor_ms("int"), "unrounded"),
    ("decode_floor_ms", floor_ms("round"), "unrounded"),
    ("mask_tile", mask_one_early, "not >= seq_len - 1"),
    ("group_rows", tiles_transposed, "the shape cannot show it"),
    ("tile_work", tiles_longest_first, "in another order"),
    ("wire_bytes", wire("two"), "three ints", ["K and V"]),
    ("wire_bytes", wire("inf"), "three ints"),
    ("schedule_step", step_model(waiting_price="whole"), "priced at its whole length"),
    ("schedule_step", step_model(running_price="whole"), "the batch differs",
     ["priced at its whole length"]),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_caught(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


def test_wire_bytes_infinity_is_the_learners_answer_not_a_crash():
    result, printed = run_check("wire_bytes", wire("inf"))
    assert "OverflowError" not in printed, printed


def test_dequant_decode_without_the_running_max_overflows():
    """e^s with no max subtracted is right while the logits are small: a case with logits
    past 88 fails it (float32's e^s overflows), naming the overflow."""
    solution = solution_source("11_kv_compression.ipynb", "SOURCE_READ")
    no_max = mutate(solution, [("float m_new = fmaxf(m, s);", "float m_new = 0.0f;")])
    assert_caught("dequant_decode", no_max, "overflows float32", device="cpu")
    result, printed = run_check("dequant_decode", solution, device="cpu")
    assert result.passed, printed


def test_a_difference_below_four_digits_shows_the_digits_that_differ():
    diff = describe_difference(np.array([1.28418]), np.array([1.283693]), ("dim",))
    assert "expected 1.283693, got 1.28418" in diff.message()
