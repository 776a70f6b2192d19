"""Hunt 34: wrong answers to workbooks 07, 08 and 11 that their checks passed.

1. choose_page_size: with no candidate under the limit the spec returns the smallest; every
   such case had the smallest also waste least, so falling back to the least wasteful passed.
2. decode_step: the OutOfPagesError was only caught, never read: one raised with its counts
   in the wrong order (or the count of one sequence) passed, though its message then lies.
3. quantize_write: every per-token row had an amax far above 1e-3, so a threshold on amax or a
   floor on the scale (small rows then stored as 0, or too small) passed; kv_scales (Task 1)
   already had rows down to 1e-5.
4. dequant_decode: the static case was GQA 4/2, whose group (2) equals num_kv_heads, so reading
   the static scales at h / num_kv_heads, not h / group, passed. It is GQA 6/3 now.
"""
import numpy as np
import pytest

import pagedattn_lab as pl
from tests.check_helpers import assert_caught, mutate, run_check, solution_source

QUANT = "11_kv_compression.ipynb"


# -- 1. choose_page_size: the fallback is the smallest candidate -------------------------------

def _waste(lens, p):
    lens = np.asarray(lens, np.int64)
    allocated = int((-(-lens // p)).sum()) * p
    return 1 - lens.sum() / allocated if allocated else 0.0


def choose_least_wasteful_fallback(seq_lens, candidates, max_waste):
    good = [p for p in candidates if _waste(seq_lens, p) <= max_waste]
    return max(good) if good else min(candidates, key=lambda p: _waste(seq_lens, p))


def choose_right(seq_lens, candidates, max_waste):
    good = [p for p in candidates if _waste(seq_lens, p) <= max_waste]
    return int(max(good)) if good else int(min(candidates))


def test_the_least_wasteful_fallback_fails():
    assert_caught("choose_page_size", choose_least_wasteful_fallback,
                  "not the one that wastes least", not_phrases=["just above max_waste"])


def choose_first_fallback(seq_lens, candidates, max_waste):
    good = [p for p in candidates if _waste(seq_lens, p) <= max_waste]
    return max(good) if good else candidates[0]


def test_the_first_candidate_fallback_is_not_told_it_chose_the_least_wasteful():
    assert_caught("choose_page_size", choose_first_fallback, "min(candidates)",
                  not_phrases=["wastes least"])


def test_the_smallest_fallback_passes():
    result, printed = run_check("choose_page_size", choose_right)
    assert result.passed, printed


# -- 2. decode_step: the error's counts ----------------------------------------------------------

def step_manager(error_args):
    """The solution's step, raising OutOfPagesError(*error_args(needed, free, total))."""
    class Manager(pl.PagedAttentionManager):
        def decode_step(self, seq_ids, q, k, v):
            seq_ids, alloc = list(seq_ids), self.cache.allocator
            needed = sum(self.cache.pages_needed(s, 1) for s in seq_ids)
            if needed > alloc.num_free:
                raise pl.OutOfPagesError(*error_args(needed, alloc.num_free, alloc.num_pages))
            for i, s in enumerate(seq_ids):
                self.cache.append(s, k[i:i + 1], v[i:i + 1])
            tables, lens = self.cache.block_tables(seq_ids)
            return pl.paged_attention_decode(self.xp.asarray(q, dtype=self.cache.dtype),
                                             self.cache.k_cache, self.cache.v_cache, tables,
                                             lens, self.scale)
    return Manager


@pytest.mark.parametrize("error_args, phrase", [
    (lambda needed, free, total: (needed, total, free), "num_free and num_pages are swapped"),
    (lambda needed, free, total: (1, free, total), "the pages the whole step needs"),
], ids=["swapped", "one sequence's page"])
def test_an_error_with_wrong_counts_fails(error_args, phrase):
    assert_caught("decode_step", step_manager(error_args), phrase,
                  not_phrases=["all or nothing"])


def test_an_error_with_the_spec_counts_passes():
    result, printed = run_check("decode_step", step_manager(lambda *counts: counts))
    assert result.passed, printed


# -- 3. quantize_write: no threshold or floor on a per-token scale -------------------------------

GUARD = "scale = amax > 0.0f ? amax / 127.0f : 1.0f;"


@pytest.mark.parametrize("scale, phrase", [
    ("scale = amax > 1e-3f ? amax / 127.0f : 1.0f;",       # a threshold on amax
     "only an all-zero row gets scale 1"),
    ("scale = fmaxf(amax / 127.0f, 1e-4f);", "scales stop at"),   # a floor on the scale
], ids=["threshold", "floor"])
def test_a_threshold_or_floor_on_the_scale_fails(scale, phrase):
    source = mutate(solution_source(QUANT, "SOURCE_WRITE"), [(GUARD, scale)])
    assert_caught("quantize_write", source, phrase, not_phrases=["abs", "reduce"])


def test_an_epsilon_that_only_zero_rows_reach_passes():
    source = mutate(solution_source(QUANT, "SOURCE_WRITE"),
                    [(GUARD, "scale = fmaxf(amax / 127.0f, 1e-30f);")])
    result, printed = run_check("quantize_write", source)
    assert result.passed, printed


# -- 4. dequant_decode: the static scales of query head h's own KV head --------------------------

INDEX = "long long at = per_token ? slot * num_kv_heads + kv_head : kv_head;"


@pytest.mark.parametrize("head, phrase", [
    ("h / num_kv_heads", "read at kv head h / num_kv_heads"),
    ("h % num_kv_heads", "read at kv head h % num_kv_heads"),
], ids=["h / num_kv_heads", "h % num_kv_heads"])
def test_static_scales_of_another_kv_head_fail(head, phrase):
    source = mutate(solution_source(QUANT, "SOURCE_READ"),
                    [(INDEX, f"long long at = per_token ? slot * num_kv_heads + kv_head : "
                             f"{head};")])
    assert_caught("dequant_decode", source, phrase, not_phrases=["v scale", "swapped"])


def test_the_scales_at_the_group_head_pass():
    source = mutate(solution_source(QUANT, "SOURCE_READ"),
                    [(INDEX, "long long at = per_token ? slot * num_kv_heads + kv_head : "
                             "h / (num_heads / num_kv_heads);")])
    result, printed = run_check("dequant_decode", source)
    assert result.passed, printed
