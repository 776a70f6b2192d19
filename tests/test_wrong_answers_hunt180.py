"""Hunt 180: wrong answers learners write that the checks passed, or failed with a hint that
named nothing (or named it in one case only), across the workbooks' Python tasks.

Each wrong answer must fail with a hint naming its mistake; each right one must pass. No
kernel of its own: only decode_step's check runs one, the decode kernel the suite's other
decode_step tests compile already.
"""
import numpy as np
import pytest

from pagedattn_lab.engine.prefix_cache import hash_block
from tests.check_helpers import as_params, assert_caught, run_check
from tests.serve_loops import serve_loop, spec_admission
from tests.test_check_mistakes_access import (OnlineKeepsFirstValue, attend_keeping_first_value,
                                              attend_with)
from tests.test_check_overfit_hunt25 import _manager


def _ceil(a, b):
    return -(-a // b)


# -- lesson 04 ----------------------------------------------------------------------------------

class _CopiesFirstValue(OnlineKeepsFirstValue):
    """Right: the same in-place updates, on a copy of the first value."""

    def update(self, score, value):
        super().update(score, value.copy() if self.l == 0.0 else value)


def _attend(scale_of):
    def attend_one(q_vec, k_cache, v_cache, row, seq_len, t, kv_head, scale):
        p, j = k_cache.shape[1], np.arange(t + 1)
        pages = np.asarray(row)[j // p]
        s = k_cache[pages, j % p, kv_head].astype(np.float64) @ q_vec * scale_of(scale)
        w = np.exp(s - s.max())
        return w @ v_cache[pages, j % p, kv_head] / w.sum()
    return attend_one


# -- lesson 07 ----------------------------------------------------------------------------------

class _SwapsKeyAndValue(_manager(lambda manager: manager.scale)):
    """The right step, handed (v, k): it appends each new token as cache.append(seq_id, v, k)."""

    def decode_step(self, seq_ids, q, k, v):
        return super().decode_step(seq_ids, q, v, k)


def _serve(**mistake):
    """The solution's loop (the spec's admission: the request fits beside what the running
    ones still need), with `mistake`'s decode_at or prompt_at."""
    return serve_loop(spec_admission, **mistake)


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
    ("online_softmax", OnlineKeepsFirstValue, "kept that array itself (acc = value)"),
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
    assert_caught("attend_one", attend_keeping_first_value, "acc = value: a view of v_cache")


@pytest.mark.parametrize("task, impl", [
    ("online_softmax", _CopiesFirstValue),
    ("attend_one", _attend(lambda scale: scale)),
    ("attend_one", attend_with(_CopiesFirstValue)),
    ("kv_bytes", lambda L, H, K, D, dt: int(np.sum(L)) * 2 * K * D * np.dtype(dt).itemsize),
    ("serve", _serve()),
], ids=["online-copy", "attend", "attend-copy", "kv_bytes", "serve"])
def test_right_answers_pass(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed
