"""Mutants of session 42's grader code (git diff a0cbe3b d5355c0) that no test killed now
fail: the files helper 292 did not reach (its tests: test_mutation_kills_h292.py).

checks_addressing._rows_of (the gather's hints' rows, as NumPy reads the slots): a negative
slot is read from the end (the mutant that took slots from 0 only gave None), a slot one past
the cache is refused (the mutant bounding by <= raised IndexError), no slots read no rows (the
mutant without `not slots.size` raised on the empty min). The gather's // and % swapped is
named where the row holds exactly page_size entries (the mutant bounding by < named nothing).

checks_block_tables: an empty table is not told the pages it holds were taken again (the mutant
that dropped `before and` told it). checks_engine.cached_prefix: bytes that are not the blocks'
hashes are not told they are (`p in hashes` dropped), a long wrong return is shown in 200
characters (`[:200]` dropped), wrong pages are not told the page-short cap alone (`got[0] ==
expected[0]` dropped). checks_paging / checks_refcounts: every allocate of the cases
(allocate(3), the rest, allocate(num_pages), the out-of-pages case's first and last, the bad
free's, the bad lists', the random steps', the fork's order, bad lists and random steps) names
page ids 1..num_pages (each mutant that dropped its (cls, num_pages) raised the IndexError
raw). serve_hints.admission_hint: a wait that promising the running request's whole total
explains, and counting its prompt's pages as held does not, names the first alone (the mutant
that counted the whole total for the prompt's named both). checks_system: the fork's case names
another row of k (its `_other_row` dropped). faults._race_hint: two stores of one line are one
part's element given to two threads (`line != other_line` dropped), a line unknown names no
lines (`None not in` dropped), a static shared variable is no extern array's overlap (`dynamic
and` dropped). checks_tc_decode: tiles stored 16 floats apart are named by the check itself
(the mutant that dropped the overlap hint from the tile case named nothing).
"""
import numpy as np
import pytest

from pagedattn_lab.cpu.errors import SharedMemoryRace
from pagedattn_lab.grading import checks_paging, checks_refcounts
from pagedattn_lab.grading.checks_addressing import SWAPPED_HINT, _gather_np_case, _rows_of
from pagedattn_lab.grading.checks_block_tables import ALL_AGAIN_HINT, _append_case
from pagedattn_lab.grading.checks_engine import _prefix_case
from pagedattn_lab.grading.checks_system import _decode_fork
from pagedattn_lab.grading.faults import _race_hint
from pagedattn_lab.grading.report import Mismatch
from pagedattn_lab.grading.serve_hints import _ADMIT_HINTS, _PROMPT_HELD_HINT, admission_hint
from tests.check_helpers import kernel_mutant, run_check, solution_allocator, solution_of


# ---- the gather's rows ---------------------------------------------------------------------

_FLAT = np.arange(12.0).reshape(6, 2)


def test_a_negative_slot_is_read_from_the_end():
    assert np.array_equal(_rows_of(_FLAT, np.array([-1, 0])), _FLAT[[-1, 0]])


def test_a_slot_one_past_the_cache_reads_nothing():
    assert _rows_of(_FLAT, np.array([0, len(_FLAT)])) is None
    assert _rows_of(_FLAT, np.array([-len(_FLAT) - 1])) is None


def test_no_slots_read_no_rows():
    assert _rows_of(_FLAT, np.array([], dtype=np.int64)).shape == (0, 2)


def test_swapped_page_and_offset_named_where_the_row_holds_page_size_entries():
    """14 tokens in pages of 4 with no padding: a row of 4 entries, row[t % 4] inside it."""
    def gather(k_cache, block_table_row, seq_len):
        t = np.arange(seq_len)
        page_size = k_cache.shape[1]
        slots = np.asarray(block_table_row)[t % page_size] * page_size + t // page_size
        return k_cache.reshape(-1, *k_cache.shape[2:])[slots]
    with pytest.raises(Mismatch) as caught:
        _gather_np_case(gather, 0, 12, 4, 2, 8, 14, padding=0)
    assert SWAPPED_HINT in str(caught.value.hint)


# ---- append_tokens: all the pages taken again ----------------------------------------------

def _all_again_twice(table, seq_len, n_new, page_size, alloc):
    """All the sequence's pages taken again (the table's not subtracted), each put in the
    table twice: into an empty table the right pages are taken, the table is wrong."""
    new = alloc.allocate(-(-(seq_len + n_new) // page_size))
    table.extend(new + new)


def test_an_empty_table_is_not_told_it_already_holds_pages():
    """From an empty table, taking all the pages is taking the right ones: the hint that the
    table's pages were taken again belongs to a table that held some."""
    with pytest.raises(Mismatch) as caught:
        _append_case(_all_again_twice, 4, 0, 6)
    assert ALL_AGAIN_HINT not in str(caught.value.hint)
    with pytest.raises(Mismatch) as caught:
        _append_case(_all_again_twice, 4, 5, 6)
    assert ALL_AGAIN_HINT in str(caught.value.hint)


# ---- cached_prefix: what a wrong return is told ---------------------------------------------

def _prefix_mismatch(fn, page_size=4, num_tokens=16, pattern="all"):
    with pytest.raises(Mismatch) as caught:
        _prefix_case(fn, 1211, page_size, num_tokens, pattern)
    return caught.value


def test_bytes_that_are_not_the_hashes_are_not_told_they_are_the_hashes():
    """Pages of bytes, none of them a block's hash: the recipe, not "those are the hashes"."""
    error = _prefix_mismatch(lambda hashes, cached, n, p: ([b"page"] * len(hashes), 0))
    assert "keys of `cached`" not in error.hint
    assert "return pages, num_computed" in error.hint


def test_a_long_wrong_return_is_shown_shortened():
    """A thousand bytes pages: what the report shows of it stops at 200 characters."""
    error = _prefix_mismatch(lambda hashes, cached, n, p: ([b"page"] * 1000, 0))
    assert len(error.got) == 200


def test_wrong_pages_with_the_page_short_cap_are_not_told_only_the_cap():
    """Every page id off by one, num_computed capped at num_tokens - page_size: the pages
    are wrong, so the cap's hint (which says the pages are right) is not the one given."""
    def fn(hashes, cached, num_tokens, page_size):
        pages = [cached[h] + 1 for h in hashes]
        return pages, min(len(pages) * page_size, num_tokens - page_size)
    assert "the cap is num_tokens - 1" not in _prefix_mismatch(fn).hint


# ---- the allocator checks: page ids 1..num_pages named at every allocate --------------------

FROM_ONE = "1..num_pages runs one past the end"
_IDS_FROM_ONE = ("deque(range(num_pages))", "deque(range(1, num_pages + 1))")


def _allocator_from_one(from_the_back: bool):
    """Workbook 01's allocator numbering its pages 1..num_pages (its page-indexed list one
    short): handed out from the back, page num_pages comes first and the first allocate
    raises; from the front, the allocate that reaches page num_pages does."""
    back = [("self._free.popleft() for _ in range(n)]", "self._free.pop() for _ in range(n)]")]
    return solution_allocator([_IDS_FROM_ONE] + back * from_the_back)


@pytest.mark.parametrize("case, args, from_the_back", [
    (checks_paging._alloc_fresh, (8,), True),           # allocate(3)
    (checks_paging._alloc_fresh, (8,), False),          # allocate(num_pages - 3)
    (checks_paging._alloc_reuse, (6,), True),
    (checks_paging._alloc_out_of_pages, (7,), True),    # allocate(num_pages - 2)
    (checks_paging._alloc_out_of_pages, (7,), False),   # the last allocate(2)
    (checks_paging._alloc_bad_free, (5,), True),
    (checks_paging._alloc_bad_lists, (6,), True),
    (checks_paging._alloc_random, (12, 1), True),
    (checks_refcounts._fork_keeps_order, (), True),
    (checks_refcounts._fork_bad_lists, (), True),
    (checks_refcounts._fork_random, (1,), True),
], ids=["fresh-3", "fresh-rest", "reuse", "out-of-pages-first", "out-of-pages-last",
        "bad-free", "bad-lists", "random", "fork-order", "fork-bad-lists", "fork-random"])
def test_every_allocate_of_the_checks_names_ids_from_1(case, args, from_the_back):
    with pytest.raises(Mismatch) as caught:
        case(_allocator_from_one(from_the_back), *args)
    assert FROM_ONE in caught.value.hint


# ---- decode_step: another row of k, in the fork's case --------------------------------------

_APPEND = "self.cache.append(seq_id, k[i:i + 1], v[i:i + 1])"


def test_the_forks_step_names_another_row_of_k():
    """The fork's case alone (its step of two sequences, one page free): a manager appending
    k[-1] to every sequence is told which row its sequence got."""
    manager = solution_of("07", "MyManager", [(_APPEND, _APPEND.replace("i:i + 1", "-1:"))])
    with pytest.raises(Mismatch) as caught:
        _decode_fork(manager)
    assert "row 1 of k as its new token" in caught.value.hint


# ---- faults._race_hint: two stores of a dynamic shared array ---------------------------------

_OVERLAP = "the parts of the extern __shared__ array overlap"


def _race(where, kind, line, other_line, variable=None):
    """The hint for a race of `kind` on `where`, between lines `other_line` and `line`."""
    race = SharedMemoryRace(f"race on {where}", kind=kind, line=line, other_line=other_line,
                            variable=variable)
    return _race_hint(race, "")


def test_two_stores_of_different_lines_name_an_overlap_or_one_part():
    hint = _race("dynamic shared memory", "write after write", 12, 9)
    assert _OVERLAP in hint and "lines 9 and 12" in hint


def test_one_line_storing_twice_is_threads_sharing_an_element():
    """The same line on both sides: one load loop gave an element to two threads."""
    hint = _race("dynamic shared memory", "write after write", 12, 12)
    assert _OVERLAP not in hint and "give each element to one thread" in hint


def test_a_race_with_a_line_unknown_names_no_lines():
    hint = _race("dynamic shared memory", "write after write", None, 9)
    assert _OVERLAP not in hint and "None" not in hint


def test_a_static_shared_variable_written_by_every_thread_is_not_an_extern_overlap():
    hint = _race("shared variable `total`", "write after write", 12, 9, variable="total")
    assert _OVERLAP not in hint and "every thread writes `total`" in hint


# ---- serve: a request left waiting, the running one's pages priced ---------------------------

def test_a_wait_that_the_prompts_pages_do_not_explain_is_not_named_so():
    """Pages of 4; request 0 (prompt 8, 8 more) runs and holds 10 tokens (3 pages, 1 more
    promised); 5 pages free: request 1 (8 tokens, 2 pages) fits with 4 to spare. Promising
    request 0's whole 4 pages leaves 1 (it waits); counting its prompt's 2 pages as held
    leaves 3 (it would fit): the first mistake is named, not the second."""
    hint = admission_hint(1, [(8, 8), (4, 4)], {0: 10}, 5, lambda n: -(-n // 4), False)
    assert _ADMIT_HINTS["whole"] in hint and _PROMPT_HELD_HINT not in hint


# ---- tc_tile_scores: tiles stored 16 floats apart --------------------------------------------

def test_tiles_stored_a_row_apart_are_named_by_the_check():
    """Each tile stored at (kv_head * gridDim.x + tile) * 16: the tiles overlap, and the
    check (not only tiles_overlap_hint) names the stride."""
    source = kernel_mutant("tc_tile_scores", [("((long long)kv_head * gridDim.x + tile) * 256",
                                               "((long long)kv_head * gridDim.x + tile) * 16")])
    result, printed = run_check("tc_tile_scores", source)
    assert not result.passed and "not * 16 (there the tiles overlap" in " ".join(
        printed.split()), printed
