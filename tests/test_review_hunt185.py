"""Hunt 185: review and mutants of hunts 177-183's changes.

Each test here kills a mutant of those changes that their own tests let live (the mutant in a
comment). Pure Python but for the last tests, which reuse a kernel the suite compiles.
"""
import sys

import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import check, sim
from pagedattn_lab.attention_common import DtypeError
from pagedattn_lab.engine.kv_manager import KVCacheManager
from pagedattn_lab.engine.request import Request, SamplingParams
from pagedattn_lab.grading import checks_engine, checks_serve, checks_softmax, checks_system, judge
from pagedattn_lab.grading.report import Mismatch
from pagedattn_lab.grading.serve_hints import misplaced_tokens
from pagedattn_lab.cpu import KernelFault
from pagedattn_lab.page_bytes import page_bytes
from pagedattn_lab.split_k import merge_partials
from tests.check_helpers import assert_caught
from tests.test_check_mistakes_access import OnlineKeepsFirstValue
from tests.test_advanced_grid_hunt183 import admitted
from tests.test_cpu_state_hunt182 import _write, past_shared  # noqa: F401 - the fixture
from tests.test_wrong_answers_hunt180 import _block_hashes_one_short

# -- grading: the hints hunt 180 added -------------------------------------------------------


def test_the_one_short_hint_counts_the_tokens_each_block_was_hashed_from():
    """(mutant: "its first {page_size} tokens")"""
    with pytest.raises(Mismatch) as caught:
        checks_engine._hash_case(_block_hashes_one_short, 185, 4, 13)
    assert "hashed from its first 3 tokens" in caught.value.hint


def test_another_type_error_in_kv_bytes_is_not_told_about_itemsize():
    """Only the TypeError of `.itemsize` read on a type gets that hint; `len(dtype)` is
    another mistake (mutant: every TypeError turned into the itemsize hint)."""
    def uses_len(seq_lens, num_heads, num_kv_heads, head_dim, dtype):
        return int(np.sum(seq_lens)) * 2 * num_kv_heads * head_dim * len(dtype)

    assert_caught("kv_bytes", uses_len, "TypeError", not_phrases=["np.dtype(dtype).itemsize"])


class _ResetsOnALargeJump(OnlineKeepsFirstValue):
    """Drops a state that a far larger score makes vanish, and keeps the new value array
    itself as acc: the next update writes into the value given at that key (not key 0's)."""

    def update(self, score, value):
        if self.l == 0.0:
            super().update(score, value.copy())
        elif score - self.m > 20:
            self.m, self.l, self.acc = score, 1.0, value
        else:
            super().update(score, value)


def test_a_state_that_keeps_a_later_value_is_told_which_key_it_wrote_into():
    """(mutants: only key 0's value compared; range(i - 1))"""
    values = np.arange(12, dtype=np.float64).reshape(3, 4)
    with pytest.raises(Mismatch) as caught:
        checks_softmax._online_case(_ResetsOnALargeJump, [0.0, 30.0, 29.0], values)
    assert "update() of key 2 wrote into the value array given at key 1" in caught.value.hint


class _LeaksAPage(pl.PagedAttentionManager):
    """Takes a page, then finds the step does not fit: the lengths stay, the page is gone."""

    def decode_step(self, seq_ids, q, k, v):
        alloc = self.cache.allocator
        alloc.allocate(1)
        raise pl.OutOfPagesError(2, alloc.num_free, alloc.num_pages)


def test_a_failed_step_that_keeps_the_lengths_but_takes_a_page_fails():
    """(mutant: only the lengths compared)"""
    with pytest.raises(Mismatch, match="a failed step changed the cache") as caught:
        checks_system._decode_out_of_pages(_LeaksAPage)
    assert caught.value.got == "sequence 0: 8 tokens, sequence 1: 8 tokens; 0 pages free"


# -- grading: serve's misplaced block ----------------------------------------------------------

def test_the_misplaced_block_report_expects_the_sequences_next_token():
    """(mutant: expected named the call's own start)"""
    late = misplaced_tokens((0, 5, 1), 4)
    assert (late.expected, late.got) == ("kv_for(0, 4, 1)", "kv_for(0, 5, 1)")
    assert "its next token is token 4" in late.hint
    prompt = misplaced_tokens((2, 1, 6), 0)
    assert (prompt.expected, prompt.got) == ("kv_for(2, 0, 6)", "kv_for(2, 1, 6)")


def _run_serve(fn):
    with pytest.raises(Mismatch) as caught:
        checks_serve._serve_case(fn, 185, [(4, 2), (6, 2)], 16, 4)
    return caught.value


def test_a_token_appended_to_another_requests_sequence_is_not_called_misplaced():
    """Request 0's token appended to request 1's sequence (and 1's to 0's) is another
    mistake: not "kv_for(0, 4, 1) was appended to request 0's sequence" (mutant: the
    sequence's request not compared)."""
    def crossed(cache, requests, kv_for):
        seqs = []
        for i, (prompt, _) in enumerate(requests):
            seqs.append(cache.add_sequence())
            cache.append(seqs[-1], *kv_for(i, 0, prompt))
        for step in range(2):   # (each request's next token: its own count)
            for i, (prompt, _) in enumerate(requests):
                cache.append(seqs[1 - i], *kv_for(i, prompt + step, 1))
        for s in seqs:
            cache.free_sequence(s)
        return [0, 1]

    report = _run_serve(crossed)
    assert "holds the wrong keys" in report.message and "appended" not in report.message


def test_a_loop_that_returns_after_a_misplaced_block_names_it_not_the_call_past_the_end():
    """Each decode asks for token seq_len + 1 (misplaced), so the last asks past the end; the
    loop skips the empty block and returns: the misplaced block came first (mutant: the call
    past the end named where the loop returns)."""
    def one_ahead(cache, requests, kv_for):
        for i, (prompt, new) in enumerate(requests):
            seq = cache.add_sequence()
            cache.append(seq, *kv_for(i, 0, prompt))
            for _ in range(new):
                k, v = kv_for(i, cache.seq_len(seq) + 1, 1)
                if len(k):
                    cache.append(seq, k, v)
        return [0, 1]

    report = _run_serve(one_ahead)
    assert report.message == "kv_for(0, 5, 1) was appended to request 0's sequence of 4 tokens"


# -- the judge's device rule -------------------------------------------------------------------

def test_arguments_that_fit_no_call_are_passed_on_as_they_came():
    """The check raises for them, as before (mutant: graders_device raised itself)."""
    args = ['extern "C" __global__ void k() {}', "cpu", "one too many"]
    assert judge.graders_device(check.naive_kernel, list(args), {}) == (args, {})
    assert judge.graders_device(check.naive_kernel, [], {"sorce": "x"}) == ([], {"sorce": "x"})


# -- the engine's admit ------------------------------------------------------------------------

def test_admit_takes_a_twins_hits_for_a_request_whose_hashes_are_not_computed_yet():
    """admit hashes the blocks itself, chained (mutants: `i <= len(block_hashes)`, an
    unchained hash)."""
    kv = KVCacheManager(8, 2)
    first = admitted(kv, 0, [1, 2, 3, 4, 5, 6, 7])
    kv.free(first)
    hits, computed = kv.cached_prefix(Request(1, [1, 2, 3, 4, 5, 6, 7], SamplingParams()))
    assert len(hits) == 3 and computed == 6
    req = Request(2, [1, 2, 3, 4, 5, 6, 7], SamplingParams())
    kv.admit(req, hits, computed, 1)
    assert req.pages[:3] == hits and req.num_computed_tokens == 6


def test_admit_refuses_a_last_hit_that_caches_another_block():
    """(mutant: every hit but the last compared)"""
    kv = KVCacheManager(8, 2)
    a, b = admitted(kv, 0, [1, 2, 3, 4, 5]), admitted(kv, 1, [7, 8, 9, 9, 5])
    pages_a, pages_b = a.pages[:2], b.pages[:2]
    kv.free(a)
    kv.free(b)
    req = Request(2, [1, 2, 3, 4, 5], SamplingParams())
    assert kv.cached_prefix(req) == (pages_a, 4)
    ref_cnt = list(kv.pool.ref_cnt)
    with pytest.raises(ValueError, match=rf"^hits\[1\]: page {pages_b[1]} does not cache "
                                         r"request 2's block 1 \(its tokens 2\.\.3\)"):
        kv.admit(req, [pages_a[0], pages_b[1]], 4, 1)
    assert kv.pool.ref_cnt == ref_cnt and req.pages == []


# -- page_bytes, simulate, merge_partials ------------------------------------------------------

@pytest.mark.parametrize("args, kwargs, match", [
    ((2**31, 1, 1), {}, r"^page_size: expected an int <= 2147483647, got 2147483648"),
    ((4, 2, 64), {"kv_dtype": "int4"}, r"^kv_dtype: expected one of"),
])
def test_page_bytes_refuses_a_page_past_int32_and_an_unknown_format(args, kwargs, match):
    """(mutants: no maximum; kv_format not called)"""
    with pytest.raises(ValueError, match=match):
        page_bytes(*args, **kwargs)


def test_simulate_without_a_capacity_or_a_memory_has_32768_slots():
    """(mutant: CAPACITY_TOKENS off by one)"""
    workload = sim.Workload(num_requests=3, prompt_max=4, min_len=1, max_len=8)
    assert sim.simulate("paged", workload, max_steps=1).capacity == 32768


@pytest.mark.parametrize("m, l, o, num_parts, match", [
    (np.float64(1), np.float64(1), np.ones(3), None, r"^m, l, o: expected m and l of one "),
    (np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 3, 4)), np.array([[1], [2]]),
     r"^num_parts: expected a shape that broadcasts to m's rows \(2,\), got \(2, 1\)"),
])
def test_merge_partials_refuses_a_scalar_state_and_counts_that_widen_the_rows(m, l, o,
                                                                              num_parts, match):
    """A 0-d m was an IndexError; counts of shape (2, 1) broadcast with rows (2,) to (2, 2)
    (mutants: no ndim test; any shape that broadcasts taken)."""
    with pytest.raises(ValueError, match=match):
        merge_partials(m, l, o, num_parts)


# -- the CPU executor's read-only runtime variables ---------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="an ELF section's neighbours")
@pytest.mark.parametrize("target, named", [("gridDim", "`gridDim`"), ("blockDim", "`blockDim`")])
def test_a_write_into_the_z_of_a_read_only_dim3_is_reported(past_shared, target, named):
    """2.0f written into gridDim.z or blockDim.z, 8 bytes in (mutant: x and y compared only).
    The kernel is hunt 166's, compiled by its tests already."""
    kern, symbols, _ = past_shared
    with pytest.raises(KernelFault, match=f"It changed {named}, which kernel code can only "
                                          f"read") as info:
        _write(kern, symbols, symbols[target] + 8, grid=2)
    assert (info.value.region, info.value.block) == ("static shared memory", (0, 0, 0))


@pytest.mark.parametrize("dtype", [np.float64, "banana"])
def test_page_bytes_of_a_compressed_cache_refuses_a_dtype_the_cache_refuses(dtype):
    """Found: with kv_dtype given, dtype was never read: page_bytes(4, 2, 64, np.float64,
    "int8") gave 1024 where PagedKVCache refuses that dtype by name."""
    with pytest.raises(DtypeError, match=r"^dtype: expected float32, float16 or bfloat16"):
        page_bytes(4, 2, 64, dtype, "int8")
