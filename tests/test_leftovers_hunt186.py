"""Hunt 186: the leftovers of today's grids.

- A PagedKVCache whose one page is past the memory (num_kv_heads=2**31, a huge head_dim or
  page_size) was refused naming num_pages, "use fewer pages": no number of pages fits.
- prefill_masks.packed_masks blamed q_len (an argument it does not take) for a decreasing
  qo_indptr or a q_len past seq_len, and kept the shorter of qo_indptr and seq_lens.
- The refcounts check never forked a list holding a page twice: a fork that counted one
  owner per distinct id (a set()) passed, and freeing the list it returned then released a
  page its first owner still held.
- quant.per_token_scales / static_scales returned an inf scale for an inf x (or a float64
  past float32's range), refused later, by another name (k_scale), by the cache.
"""
import json
import re
import warnings
from collections import deque

import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab import quant
from pagedattn_lab.cache import PagedKVCache
from pagedattn_lab.prefill_masks import causal_mask, packed_masks
from pagedattn_lab.validate_memory import check_memory
from tests.check_helpers import REPO, GoodAllocator, assert_caught, run_check


@pytest.fixture
def one_mib(monkeypatch):
    """A machine of 1 MiB: the refusals below do not depend on this one's memory."""
    monkeypatch.setattr("pagedattn_lab.validate_memory.device_memory_bytes", lambda device: 2**20)


# -- 1. a page past the memory names the page's sizes, not num_pages ---------------------

PAGE_TOO_BIG = (r"^num_kv_heads x head_dim x page_size: one page \(K and V\) would take "
                r"2\.0 GiB, more than the 1\.0 MiB of memory this machine has; no number of "
                r"pages fits")



@pytest.mark.parametrize("memory, needed, said", [
    (900, 1001, "1.0 KiB, more than the 900 bytes"),
    (1, 2, "2 bytes, more than the 1 byte"),
    (3 << 9, 2**20 - 1, "1.0 MiB, more than the 1.5 KiB"),   # (before: 1,024.0 KiB)
    (2**30 - 1, 2**30, "1.0 GiB, more than the 1.0 GiB"),    # (before: 1,024.0 MiB)
])
def test_a_size_is_shown_in_the_largest_unit_it_rounds_to_one_in(monkeypatch, memory, needed,
                                                                  said):
    monkeypatch.setattr("pagedattn_lab.validate_memory.device_memory_bytes", lambda device: memory)
    with pytest.raises(ValueError, match=rf"^n: the pages would take {re.escape(said)} of "
                                         r"memory this machine has$"):
        check_memory(needed, "cpu", "n", "the pages")


@pytest.mark.parametrize("sizes", [
    dict(page_size=16, num_kv_heads=2**20, head_dim=16),
    dict(page_size=16, num_kv_heads=2, head_dim=2**23),
    dict(page_size=2**22, num_kv_heads=4, head_dim=16),
    dict(page_size=16, num_kv_heads=2**23, head_dim=4, kv_dtype="int8", scale_scheme="per_token"),
], ids=["heads", "head_dim", "page_size", "int8-per-token"])
def test_a_cache_whose_one_page_is_past_the_memory_names_the_page_sizes(one_mib, sizes):
    with pytest.raises(ValueError, match=PAGE_TOO_BIG):
        PagedKVCache(num_pages=1, device="cpu", **sizes)


def test_a_cache_of_too_many_small_pages_still_names_num_pages(one_mib):
    # a page of 16 x 2 x 64 float32, K and V: 16 KiB; 65 of them are past 1 MiB, 64 fit
    with pytest.raises(ValueError, match=r"^num_pages: the K and V caches would take .*; use "
                                         r"fewer pages$"):
        PagedKVCache(65, 16, 2, 64, device="cpu")
    assert PagedKVCache(64, 16, 2, 64, device="cpu").num_pages == 64


# -- 2. packed_masks names qo_indptr and seq_lens ------------------------------------------

@pytest.mark.parametrize("qo_indptr, seq_lens, error, match", [
    ([0, 3, 1], [3, 3], ValueError, r"^qo_indptr\[2\]: 1 is less than qo_indptr\[1\] = 3"),
    ([0, 3, 5], [3, 1], ValueError, r"^seq_lens\[1\]: expected at least q_len = 2 \(the new "
                                    r"tokens are the sequence's last\), got 1$"),
    ([0, 2, 5], [4], ValueError, r"^seq_lens: expected 2 lengths \(one per sequence of "
                                 r"qo_indptr\), got 1$"),
    ([1, 2], [3], ValueError, r"^qo_indptr\[0\]: expected 0"),
    ([0, 0], [-1], ValueError, r"^seq_lens\[0\]: expected a length >= 0, got -1$"),
    ([0, 2.5], [3], TypeError, r"^qo_indptr\[1\]: expected an integer offset, got 2\.5"),
], ids=["decreasing", "q-past-seq", "lengths-short", "not-from-0", "negative-len", "float"])
def test_packed_masks_names_the_entry_of_its_own_arguments(qo_indptr, seq_lens, error, match):
    with pytest.raises(error, match=match):
        packed_masks(qo_indptr, seq_lens)


def test_packed_masks_refuses_masks_that_fit_one_by_one_but_not_together(monkeypatch):
    monkeypatch.setattr("pagedattn_lab.validate_memory.device_memory_bytes", lambda device: 100)
    with pytest.raises(ValueError, match=r"^qo_indptr, seq_lens: the masks' 128 cells would "
                                         r"take"):
        packed_masks([0, 8, 16], [8, 8])          # 64 cells each: each fits alone
    assert len(packed_masks([0, 8, 9], [8, 9])) == 2


def test_packed_masks_of_a_right_batch_are_each_sequences_causal_mask():
    masks = packed_masks(np.array([0, 4, 7, 7, 8], np.int32), [4, 9, 3, 5])
    want = [causal_mask(4, 4), causal_mask(3, 9), causal_mask(0, 3), causal_mask(1, 5)]
    assert len(masks) == 4 and all(np.array_equal(m, w) for m, w in zip(masks, want))
    assert packed_masks([0], []) == []             # an empty batch has no masks


# -- 3. the refcounts check forks a table that lists a page twice ---------------------------

class _SetCountFork(GoodAllocator):
    """Checks every id, then adds one owner per distinct page."""

    def fork(self, pages):
        pages = list(pages)
        self._valid(pages)
        if any(self.refs[p] == 0 for p in pages):
            raise ValueError("a free page")
        for p in set(pages):
            self.refs[p] += 1
        return pages


class _RefusesRepeatsFork(GoodAllocator):
    def fork(self, pages):
        if len(set(pages)) != len(pages):
            raise ValueError("a page listed twice")
        return super().fork(pages)


class _DedupReturnFork(GoodAllocator):
    """Counts right, returns each id once (in order)."""

    def fork(self, pages):
        return list(dict.fromkeys(super().fork(pages)))


@pytest.mark.parametrize("impl, phrase", [
    (_SetCountFork, "a set() of the ids counts one"),
    (_RefusesRepeatsFork, "every page listed is in use, so the call is valid"),
    (_DedupReturnFork, "return every id as given, a repeated one too"),
], ids=["set-count", "refuses", "dedup-return"])
def test_the_refcounts_check_catches_a_fork_that_counts_a_repeated_page_once(impl, phrase):
    result, _ = assert_caught("refcounts", impl, phrase, not_phrases=["does not copy"])
    failed = [c.name for c in result.cases if not c.passed]
    assert failed == ["fork of a table listing a page twice"]


def _solution_allocator():
    """Workbook 01's MySharingAllocator, from its solution cells."""
    cells = json.loads((REPO / "solutions" / "01_page_table.ipynb").read_text())["cells"]
    scope = {"pl": pl, "deque": deque}
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith(("class MyAllocator",
                                                              "class MySharingAllocator")):
            exec(source, scope)  # noqa: S102 - our own notebook
    return scope["MySharingAllocator"]


@pytest.mark.parametrize("impl", [_solution_allocator(), GoodAllocator, pl.BlockAllocator],
                         ids=["solution", "good", "package"])
def test_the_right_allocators_pass_the_repeated_page_case(impl):
    result, printed = run_check("refcounts", impl)
    assert result.status == "passed", printed
    assert "fork of a table listing a page twice" in [c.name for c in result.cases]


# -- 4. the scale functions refuse an x whose scale would be inf ----------------------------

@pytest.mark.parametrize("x, where", [
    (np.array([[[1.0, np.inf]], [[2.0, 3.0]]], np.float32), r"x\[0, 0, 1\] = inf"),
    (np.array([[[1.0, 2.0], [3.0, -1e39]]]), r"x\[0, 1, 1\] = -1e\+39"),
    ([[[0.5, 0.25]], [[-np.inf, 1.0]]], r"x\[1, 0, 0\] = -inf"),
], ids=["inf", "float64-past-float32", "list-minus-inf"])
@pytest.mark.parametrize("scales", [quant.per_token_scales, quant.static_scales],
                         ids=["per_token", "static"])
def test_scales_refuse_an_x_past_float32_naming_the_first_entry(scales, x, where):
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # (no "overflow encountered in cast" first)
        with pytest.raises(ValueError, match=r"^x: expected finite values within float32's "
                                             r"range \(\+-3\.4e38\), got " + where + "$"):
            scales(x, "int8")


def test_scales_still_ignore_nan_and_take_float32s_largest_values():
    big = np.float32(np.finfo(np.float32).max)
    x = np.array([[[np.nan, -254.0]], [[big, 1.0]]], np.float32)
    np.testing.assert_array_equal(quant.per_token_scales(x, "int8"),
                                  np.array([[2.0], [big / np.float32(127)]], np.float32))
    assert np.isfinite(quant.static_scales(x, "fp8_e4m3")).all()
