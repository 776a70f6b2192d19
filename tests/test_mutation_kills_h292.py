"""Mutants of session 42's grader and sharding code (git diff a0cbe3b d5355c0) that no test
killed now fail.

Out rows (prefill_rows.out_rows_hint): a row of out is written where any of its elements is
(the mutant that took a row as written only where all were named nothing for a thread that
stored at head 0's row with its dims loop one short); an out written at every right row is
told no row mistake where a form's rows are the right ones (one head: the mutant that dropped
`lost.size` named head 0's row for a right store); a form is named only where every row its
index reaches was written (out written at row 0 alone: the mutant that dropped
`written[theirs[real]].all()` named head 0's row); where two indexes fit (one token: head 0's
row and the row without the heads are both row 0) both are named (the mutant that gave the
first alone); a right row that only a padding token's thread reaches is not one the index
left unwritten (where padding threads store too, the mutant that took the rows reached as the
real threads' alone named nothing).

decode_variants.merge_by_tokens: a partition weighs the tokens it holds, part_len at most (the
mutant that let a full partition weigh part_len + 1 passed). tc_tile_variants: tiles stored 1
float apart (the tile's index with no * 256) are named with that stride (the mutant whose
search began at 2 named nothing); an element no tile covers that holds a value (not the
poison) is no overlap (the mutant that took any uncovered element as fitting named one);
tiles of kv heads past 0 that were written are not the offset without the kv head (the mutant
that dropped `never[1:].all()` named it). kernel_hints.one_size_hint: a kernel right with
pages of 16 whose longest sequence fits one page of 16 is also told the offset may be the
position t (the mutant that dropped that hint named only the fixed page). checks_kernels: the
naive kernel (no shared tile) with a running max started at 0 is not told of a tile element
read before it was loaded (the mutant that asked max0_tile_hint of the naive kernel too).
decode_launch.unstored_lanes_hint: lanes that stored their first dim but not their second
(head_dim 64) are not lanes that stored none (the mutant that took the unwritten dims as the
silent lanes' named lanes 0-31); nor is an output no lane stored (the mutant that dropped
`silent.all()`), nor lanes that stored in some rows (`never[:, silent].all()` dropped), nor
lanes silent beside other lanes' wrong dims (`right[:, ~silent].all()` dropped).

allocator_probes.allocated: an IndexError from a class that hands out page 0 (a list emptied
by taking one page too many), or from one that raises none handing pages out one at a time
(its ids from 1, its error elsewhere), is its own, not "page ids 1..num_pages" (the mutants
that dropped `0 not in seen[0]` or `seen[1]`); a KeyError from a dict keyed by page id, its
ids from 1, is told the ids run one past the end (the mutant whose fresh pool stopped at an
IndexError alone let it through), with the line that raised it (where_raised dropped).
checks_sizing: an empty batch's waste answered with None is not told "return 0.0, not None"
(the mutant that gave that hint to every mismatch of the empty case).

runner.code_cells: a notebook with "cells" is read from them, whatever "worksheets" it also
holds (the mutant that read worksheets first found no code); JSON that is not an object is no
notebook (the mutant that took it as one of no cells said nothing: its inputs are among
test_grade_attack_h280's test_json_with_no_cells_is_no_notebook's). runner.main: after the
last cell the notebook's exit handlers run (the mutant that dropped
`atexit._run_exitfuncs()`), what one printed reaches a buffered stdout (the mutant that
flushed nothing lost it to os._exit), and the notebook's shell is IPython's instance, as
get_ipython() finds it (the mutant that built one outside the singleton left it None).
"""
import os

import numpy as np
import pytest

from pagedattn_lab.grading import runner
from pagedattn_lab.grading.allocator_probes import allocated
from pagedattn_lab.grading.decode_launch import unstored_lanes_hint
from pagedattn_lab.grading.decode_variants import merge_by_tokens
from pagedattn_lab.grading.kernel_hints import WHOLE_TOKEN_OFFSET_HINT, one_size_hint
from pagedattn_lab.grading.kernel_runner import poisoned
from pagedattn_lab.grading.prefill_rows import out_rows_hint
from pagedattn_lab.grading.report import Mismatch
from pagedattn_lab.grading.tc_tile_variants import shared_tile_hints, tiles_overlap_hint
from tests.check_helpers import kernel_mutant, run_check
from tests.test_grade_attack_h280 import _events_of_runner, _write
from tests.test_sizing_empty_hint_h291 import _reserved_waste

_HEAD0 = "head 0's row: + h is missing"


# ---- the rows out was written at ---------------------------------------------------------------

def _never(batch, max_len, heads, dim, rows, dims=None):
    """The never-written mask of an out [batch, max_len, heads, dim] whose flat rows `rows`
    (units of head_dim) were written at `dims` (all of them if None)."""
    never = np.ones((batch * max_len * heads, dim), bool)
    never[np.ix_(np.asarray(rows), np.arange(dim) if dims is None else np.asarray(dims))] = False
    return never.reshape(batch, max_len, heads, dim)


def _valid(seq_lens, max_len):
    return (np.arange(max_len)[None, :] < np.asarray(seq_lens)[:, None])[:, :, None, None]


def test_rows_written_in_part_are_rows_written():
    """Every real token's thread stored at head 0's row, (b * max_len + t) * num_heads, with
    its dims loop one short: those rows are written (but for their last element)."""
    batch, max_len, heads, dim = 2, 3, 2, 4
    rows = [(b * max_len + t) * heads for b in range(batch) for t in range(max_len)]
    never = _never(batch, max_len, heads, dim, rows, dims=range(dim - 1))
    hint = out_rows_hint(never, _valid([3, 3], max_len))
    assert hint is not None and _HEAD0 in hint


def test_an_out_written_at_every_right_row_is_told_no_row_mistake():
    """One head: head 0's row is the right row, so every thread stored where it should."""
    never = _never(2, 3, 1, 4, range(6))
    assert out_rows_hint(never, _valid([3, 2], 3)) is None


def test_a_form_whose_rows_were_not_all_written_is_not_named():
    """Only the first token's head 0 row was written: head 0's rows of the other tokens were
    not, so no thread stored at (b * max_len + t) * num_heads."""
    never = _never(2, 3, 2, 4, [0])
    assert out_rows_hint(never, _valid([3, 3], 3)) is None


def test_every_index_that_fits_is_named():
    """One sequence of one token, two heads: row 0 alone written is head 0's row and the row
    without the heads alike."""
    hint = out_rows_hint(_never(1, 1, 2, 4, [0]), _valid([1], 1))
    assert hint is not None and _HEAD0 in hint and "leaves out num_heads and h" in hint


def test_padding_threads_that_store_too_still_show_the_index():
    """Sequence lengths [3, 1] of max_len 3, two heads, every thread (padding ones too)
    storing at b * max_len + t: rows 0..5 written, sequence 1's token 0 rows (6, 7) never.
    Rows 4 and 5 are right rows of sequence 0, written by sequence 1's padding threads."""
    never = _never(2, 3, 2, 4, range(6))
    hint = out_rows_hint(never, _valid([3, 1], 3))
    assert hint is not None and "leaves out num_heads and h" in hint


# ---- the merge weighted by tokens --------------------------------------------------------------

def test_the_merge_by_tokens_weighs_each_partition_by_the_tokens_it_holds():
    """10 tokens in partitions of 4: weights 4, 4 and 2 (and 0 for a fourth slot past them)."""
    o = np.arange(8, dtype=np.float64).reshape(1, 1, 4, 2)
    m = l = np.zeros((1, 1, 4))
    got = merge_by_tokens(m, l, o, np.array([10]), 4)
    expected = (4 * o[0, 0, 0] + 4 * o[0, 0, 1] + 2 * o[0, 0, 2]) / 10
    np.testing.assert_allclose(got[0, 0], expected)


# ---- tensor-core tiles stored overlapping ------------------------------------------------------

def _one_apart(written_past=None):
    """(got, expected) for two tiles of one kv head, tile 1 stored last at scores + 1:
    element 0 is tile 0's, elements 1..256 tile 1's, the rest never written but element
    `written_past` (given a value)."""
    expected = np.random.default_rng(0).standard_normal((1, 2, 16, 16))
    flat = np.full(expected.size, np.nan)
    flat[:256], flat[1:257] = expected[0, 0].ravel(), expected[0, 1].ravel()
    if written_past is not None:
        flat[written_past] = 0.5
    return flat.reshape(expected.shape), expected


def test_tiles_stored_one_float_apart_are_named():
    got, expected = _one_apart()
    hint = tiles_overlap_hint(got, expected, np.isnan(got))
    assert hint is not None and "not * 1 (there the tiles overlap" in hint


def test_a_value_where_no_tile_reaches_is_no_overlap():
    got, expected = _one_apart(written_past=300)
    assert tiles_overlap_hint(got, expected, np.isnan(got)) is None


def test_kv_heads_past_0_written_are_not_tiles_without_the_kv_head():
    """kv head 0's tiles right, kv head 1's written, all 0.5."""
    expected = np.random.default_rng(1).standard_normal((2, 2, 16, 16))
    got = expected.copy()
    got[1] = 0.5
    assert shared_tile_hints(got, expected, np.zeros(got.shape, bool)) == []


# ---- a kernel right with pages of 16 -----------------------------------------------------------

def test_a_short_sequence_right_with_pages_of_16_also_names_the_position_as_offset():
    """Right with page_size=16 alone; the longest sequence (10 tokens) fits one page of 16,
    where the position t is the offset too."""
    sizes = dict(page_size=8, num_heads=4, num_kv_heads=4, head_dim=32)
    hint = one_size_hint(lambda **changed: changed == {"page_size": 16}, sizes, longest=10)
    assert "page_size = 8" in hint and WHOLE_TOKEN_OFFSET_HINT.rstrip(".") in hint


# ---- the naive kernel's running max started at 0 -----------------------------------------------

def test_the_naive_kernels_max_at_0_is_not_told_of_a_shared_tile():
    source = kernel_mutant("naive_kernel", [(
        "float running_max = NEG_INF,", "float running_max = 0.0f,")])
    result, printed = run_check("naive_kernel", source, device="cpu")
    assert not result.passed and "running max starts at 0" in printed, printed
    assert "read before it was loaded" not in printed, printed


# ---- lanes that stored none of their dims ------------------------------------------------------

def _stored_dims(dims, head_dim=64):
    """(got, ref, rows) of a decode output [2 sequences, 2 heads, head_dim] right at `dims`
    and never written elsewhere."""
    ref = np.random.default_rng(2).standard_normal((2, 2, head_dim)).astype(np.float32)
    got = poisoned(ref.shape)
    got[..., dims] = ref[..., dims]
    return got, ref, np.ones((2, 2), bool)


def test_lanes_that_stored_their_first_dim_are_not_silent():
    assert unstored_lanes_hint(*_stored_dims(np.arange(32))) is None


def test_an_output_no_lane_stored_is_not_some_lanes_silent():
    assert unstored_lanes_hint(*_stored_dims(np.arange(0))) is None


def test_lanes_that_stored_nothing_are_named():
    """(the rule itself: lanes 1-31 stored neither of their dims, lane 0 both)"""
    hint = unstored_lanes_hint(*_stored_dims([0, 32]))
    assert hint is not None and hint.startswith("lanes 1-31 stored none of their dims")


def test_lanes_that_stored_in_some_rows_are_not_silent():
    """Sequence 0's rows stored by every lane, sequence 1's by lane 0 alone."""
    got, ref, rows = _stored_dims([0, 32])
    got[0] = ref[0]
    assert unstored_lanes_hint(got, ref, rows) is None


def test_silent_lanes_beside_wrong_dims_are_not_named():
    got, ref, rows = _stored_dims([0, 32])
    got[..., 0] += 1
    assert unstored_lanes_hint(got, ref, rows) is None


# ---- an allocator's IndexError -----------------------------------------------------------------

class _OneTooMany:
    """Takes n + 1 pages from the front of its free list for allocate(n): page 0 first."""

    def __init__(self, num_pages):
        self.free = list(range(num_pages))

    @property
    def num_free(self):
        return len(self.free)

    def allocate(self, n):
        return [self.free.pop(0) for _ in range(n + 1)][:n]


class _FromOneFailingAtTwo(_OneTooMany):
    """Ids 1..num_pages, handed out one at a time without an error; allocate(2) raises."""

    def __init__(self, num_pages):
        self.free = list(range(1, num_pages + 1))

    def allocate(self, n):
        if n > 1:
            raise IndexError("list index out of range")
        return [self.free.pop(0)]


class _DictFromOne:
    """A dict of refcounts keyed by page id 0..num_pages-1, ids handed out from 1."""

    def __init__(self, num_pages):
        self.refs, self.next = dict.fromkeys(range(num_pages), 0), 1

    @property
    def num_free(self):
        return len(self.refs) - self.next + 1

    def allocate(self, n):
        pages = list(range(self.next, self.next + n))
        for page in pages:
            self.refs[page] += 1
        self.next += n
        return pages


def test_a_key_error_past_the_last_id_is_told_the_ids_run_past_the_end():
    with pytest.raises(Mismatch) as caught:
        allocated(_DictFromOne(4), 4, "allocate(4)", (_DictFromOne, 4))
    assert "1..num_pages runs one past the end" in caught.value.hint
    assert "self.refs[page] += 1" in caught.value.message   # (where it was raised)


@pytest.mark.parametrize("cls, n", [(_OneTooMany, 4), (_FromOneFailingAtTwo, 2)])
def test_an_index_error_of_another_cause_is_the_learners_own(cls, n):
    with pytest.raises(IndexError):
        allocated(cls(4), n, f"allocate({n})", (cls, 4))


# ---- an empty batch's waste --------------------------------------------------------------------

def test_an_empty_batchs_waste_of_none_is_not_told_to_return_0():
    result, printed = run_check("reserved_waste", _reserved_waste(None))
    assert not result.passed and "returned None" in " ".join(printed.split()), printed
    assert "nothing to waste" not in printed, printed


# ---- the notebook's cells ----------------------------------------------------------------------

def test_a_notebooks_cells_are_read_whatever_worksheets_it_holds(tmp_path):
    path = _write(tmp_path, {"nbformat": 4, "worksheets": [], "cells": [
        {"cell_type": "code", "source": "x = 1"}]})
    assert runner.code_cells(path) == [(0, "x = 1")]


# ---- the runner's end --------------------------------------------------------------------------

def test_the_notebooks_exit_handlers_run_after_its_last_cell(tmp_path):
    sent = _events_of_runner(tmp_path, "import atexit, pathlib\n"
                             "atexit.register(pathlib.Path('handler_ran').write_text, 'yes')")
    assert b"finished" in sent and (tmp_path / "handler_ran").read_text() == "yes"


def test_what_the_notebook_printed_reaches_the_runners_stdout(tmp_path):
    """Printed by an exit handler: after the cells (IPython flushes after each cell), into a
    buffered stdout (a file, PYTHONUNBUFFERED unset)."""
    with open(tmp_path / "stdout", "w") as out:
        _events_of_runner(tmp_path, "import atexit\natexit.register(print, 'printed by the "
                          "notebook')", stdout=out, env={k: v for k, v in os.environ.items()
                                                         if k != "PYTHONUNBUFFERED"})
    assert "printed by the notebook" in (tmp_path / "stdout").read_text()


def test_the_notebooks_shell_is_the_one_get_ipython_finds(tmp_path):
    sent = _events_of_runner(tmp_path, "from IPython import get_ipython\n"
                             "get_ipython().run_line_magic('config', '')")
    assert b"finished" in sent and b"cell_error" not in sent, sent
