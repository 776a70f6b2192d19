"""Hunt 180: wrong answers learners write that the checks passed, or failed with a hint that
named nothing (or named it in one case only), across the workbooks' Python tasks.

Each wrong answer must fail with a hint naming its mistake; each right one must pass. No
kernel of its own: only decode_step's check runs one, the decode kernel the suite's other
decode_step tests compile already.
"""
from collections import deque

import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab.engine.prefix_cache import hash_block
from tests.check_helpers import as_params, assert_caught, run_check


def _ceil(a, b):
    return -(-a // b)


# -- lesson 04 ----------------------------------------------------------------------------------

class _KeepsFirstValue:
    """Keeps the first value array itself as acc, then updates acc in place: every later
    update writes into the caller's first array (in attend_one, a view of v_cache)."""

    def __init__(self, head_dim):
        self.acc = None

    def update(self, score, value):
        if self.acc is None:
            self.m, self.l, self.acc = score, 1.0, value
            return
        m_new = max(self.m, score)
        rescale, weight = np.exp(self.m - m_new), np.exp(score - m_new)
        self.l = self.l * rescale + weight
        self.acc *= rescale
        self.acc += weight * value
        self.m = m_new

    def result(self):
        return self.acc / self.l


class _CopiesFirstValue(_KeepsFirstValue):
    """Right: the same in-place updates, on a copy of the first value."""

    def update(self, score, value):
        super().update(score, value.copy() if self.acc is None else value)


def _attend(scale_of):
    def attend_one(q_vec, k_cache, v_cache, row, seq_len, t, kv_head, scale):
        p, j = k_cache.shape[1], np.arange(t + 1)
        pages = np.asarray(row)[j // p]
        s = k_cache[pages, j % p, kv_head].astype(np.float64) @ q_vec * scale_of(scale)
        w = np.exp(s - s.max())
        return w @ v_cache[pages, j % p, kv_head] / w.sum()
    return attend_one


# -- lesson 07 ----------------------------------------------------------------------------------

class _SwapsKeyAndValue(pl.PagedAttentionManager):
    """Appends each new token as cache.append(seq_id, v, k)."""

    def decode_step(self, seq_ids, q, k, v):
        seq_ids, alloc = list(seq_ids), self.cache.allocator
        needed = sum(_pages_for_next_token(self.cache, s) for s in seq_ids)
        if needed > alloc.num_free:
            raise pl.OutOfPagesError(needed, alloc.num_free, alloc.num_pages)
        for i, seq_id in enumerate(seq_ids):
            self.cache.append(seq_id, v[i:i + 1], k[i:i + 1])
        tables, lens = self.cache.block_tables(seq_ids)
        return pl.paged_attention_decode(self.xp.asarray(q, dtype=self.cache.dtype),
                                         self.cache.k_cache, self.cache.v_cache, tables, lens,
                                         self.scale)


def _pages_for_next_token(cache, seq_id):
    if cache.seq_len(seq_id) % cache.page_size == 0:
        return 1
    return int(cache.allocator.ref_count(cache.block_table(seq_id)[-1]) > 1)


def _serve(decode_at=lambda held: held, prompt_at=0):
    """The solution's loop, each decode asking kv_for for token `decode_at(seq_len)` and each
    prompt read from token `prompt_at`."""
    def serve(cache, requests, kv_for):
        waiting, running, finished = deque(range(len(requests))), {}, []
        while waiting or running:
            while waiting:
                i = waiting[0]
                promised = sum(_ceil(sum(requests[j]), cache.page_size)
                               - _ceil(cache.seq_len(s), cache.page_size)
                               for j, s in running.items())
                if _ceil(sum(requests[i]), cache.page_size) > \
                        cache.allocator.num_free - promised:
                    break
                waiting.popleft()
                running[i] = cache.add_sequence()
                cache.append(running[i], *kv_for(i, prompt_at, requests[i][0]))
            for i, seq_id in list(running.items()):
                if cache.seq_len(seq_id) < sum(requests[i]):
                    cache.append(seq_id, *kv_for(i, decode_at(cache.seq_len(seq_id)), 1))
                if cache.seq_len(seq_id) >= sum(requests[i]):
                    cache.free_sequence(seq_id)
                    del running[i]
                    finished.append(i)
        return finished
    return serve


# -- lessons 00, 08 -----------------------------------------------------------------------------

def _reserved_per_request(L, m):
    """The mean of the requests' empty slots: a count, not a fraction."""
    return float(np.mean(m - L)) if len(L) else 0.0


def _paged_per_request(L, p):
    return float(np.mean(_ceil(L, p) * p - L)) if L.sum() else 0.0


def _kv_bytes_itemsize_on_type(seq_lens, num_heads, num_kv_heads, head_dim, dtype):
    """dtype.itemsize read on np.float16 itself: a descriptor, not a number."""
    return int(np.sum(seq_lens)) * 2 * num_kv_heads * head_dim * dtype.itemsize


# -- lessons 12, 13 -----------------------------------------------------------------------------

def _block_hashes_one_short(token_ids, page_size):
    """Each block sliced as if the slice's end were inclusive: page_size - 1 tokens."""
    hashes, parent = [], None
    for start in range(0, len(token_ids) - page_size + 1, page_size):
        parent = hash_block(parent, token_ids[start:start + page_size - 1])
        hashes.append(parent)
    return hashes


def _wire_bytes_one_row(seq_lens, num_heads, num_kv_heads, head_dim, page_size, world_size,
                        itemsize):
    """The table counted as one row of the longest sequence's pages."""
    batch = len(seq_lens)
    pages = _ceil(int(max(seq_lens)), page_size)
    return (4 * (2 + batch + pages), batch * (num_heads // world_size) * head_dim * itemsize,
            int(np.sum(seq_lens)) * 2 * (num_kv_heads // world_size) * head_dim * itemsize)


MISTAKES = [
    ("online_softmax", _KeepsFirstValue, "kept that array itself (acc = value)"),
    ("attend_one", _attend(lambda scale: 1 / scale), "not divide by it"),
    ("decode_step", _SwapsKeyAndValue, "key and value were swapped"),
    # each said "request i already held all its tokens" (it held one less), "holds the wrong
    # keys" or "free each finished sequence once" (it was freed once)
    ("serve", _serve(decode_at=lambda held: held + 1), "its next token is token 5"),
    ("serve", _serve(decode_at=lambda held: held - 1), "not token 4"),
    ("serve", _serve(prompt_at=1), "kv_for(i, 0, prompt_len), from token 0, not 1"),
    ("reserved_waste", _reserved_per_request, "the empty slots per request, a count"),
    ("paged_waste", _paged_per_request, "the empty slots per request, a count"),
    ("kv_bytes", _kv_bytes_itemsize_on_type, "np.dtype(dtype).itemsize"),
    ("block_hashes", _block_hashes_one_short, "a slice's end is not included"),
    ("wire_bytes", _wire_bytes_one_row, "the table has a row per sequence"),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_named(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


def test_every_case_names_seconds_truncated_before_the_times_1000():
    """n // (GB/s * 1e9) * 1e3: whole seconds, 0 ms for a laptop's 5 ms. The D64 case named it
    (there its 0.86 ms truncated is 0 too); the laptop's case gave no hint at all."""
    result, printed = run_check("decode_floor_ms", lambda n, b: n // (b * 1e9) * 1e3)
    failed = [c for c in result.cases if not c.passed]
    assert len(failed) >= 2, printed
    assert all("a second before the x 1000" in c.hint for c in failed), printed


def test_attend_one_with_that_state_is_told_it_writes_into_v_cache():
    """The same state in attend_one writes into v_cache (each value is a view of it): told
    there too, also under the grader, where the online softmax check cannot see it (the
    sandbox's copy of an earlier value is never copied back)."""
    assert_caught("attend_one", _attend_with(_KeepsFirstValue), "acc = value: a view of v_cache")


def _attend_with(state_cls):
    def attend_one(q_vec, k_cache, v_cache, row, seq_len, t, kv_head, scale):
        p, state = k_cache.shape[1], state_cls(k_cache.shape[-1])
        for j in range(t + 1):
            page, offset = row[j // p], j % p
            score = float(q_vec @ k_cache[page, offset, kv_head].astype(np.float64)) * scale
            state.update(score, v_cache[page, offset, kv_head])
        return state.result()
    return attend_one


@pytest.mark.parametrize("task, impl", [
    ("online_softmax", _CopiesFirstValue),
    ("attend_one", _attend(lambda scale: scale)),
    ("attend_one", _attend_with(_CopiesFirstValue)),
    ("kv_bytes", lambda L, H, K, D, dt: int(np.sum(L)) * 2 * K * D * np.dtype(dt).itemsize),
    ("serve", _serve()),
], ids=["online-copy", "attend", "attend-copy", "kv_bytes", "serve"])
def test_right_answers_pass(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed
