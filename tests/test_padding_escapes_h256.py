"""gather_numpy's padding watch follows the cache through the conversions left.

A gather that used the row's -1 padding as a page id passed when it converted the cache with
a name imported from NumPy before the call (`from numpy import asarray` at the top of the
cell), read the cache's bytes (np.frombuffer of the cache, its .data, memoryview or
.tobytes(), np.asarray of a memoryview), made a Fortran-order copy (np.asfortranarray,
.copy(order="F"), np.array(order="F")) or indexed its .base: each now fails on the padding,
in the notebook and under the grader. The same conversions with the padding clamped to page
0 (or the right slots) still pass, and the learner's names and NumPy's come back to NumPy's
own functions after every call.
"""
import numpy as np
import pytest
from numpy import array, asarray, ascontiguousarray, frombuffer

from pagedattn_lab.grading.padding_reads import NUMPYS_OWN, WATCHING, conversions_watched
from pagedattn_lab.grading.page_indices import c_strides, copy_pages
from tests.check_helpers import PADDING, assert_caught, run_check
from tests.test_grade_protocol import remotely


def _pages_of(copy_of, clamp=lambda row: row):
    """The gather of every entry's page (`clamp(row)`) from `copy_of(k_cache)`, in the
    cache's shape, cut to seq_len."""
    def gather_numpy(k_cache, block_table_row, seq_len):
        num_kv_heads, head_dim = k_cache.shape[2:]
        pages = copy_of(k_cache)[clamp(block_table_row)]
        return pages.reshape(-1, num_kv_heads, head_dim)[:seq_len]
    return gather_numpy


def _bytes_as_cache(buffer_of):
    """The cache read back from `buffer_of(k_cache)` by np.frombuffer, in its shape."""
    return lambda k: np.frombuffer(buffer_of(k), dtype=k.dtype).reshape(k.shape)


CONVERSIONS = [
    # (each name looked up when the gather runs, as a learner's cell does)
    ("asarray imported from numpy", lambda k: asarray(k)),
    ("array imported from numpy", lambda k: array(k)),
    ("ascontiguousarray imported from numpy", lambda k: ascontiguousarray(k)),
    ("frombuffer imported from numpy",
     lambda k: frombuffer(k, dtype=k.dtype).reshape(k.shape)),
    ("np.frombuffer(k_cache)", _bytes_as_cache(lambda k: k)),
    ("np.frombuffer(k_cache.data)", _bytes_as_cache(lambda k: k.data)),
    ("np.frombuffer of a byte memoryview", _bytes_as_cache(lambda k: memoryview(k).cast("B"))),
    ("np.frombuffer(k_cache.tobytes())", _bytes_as_cache(lambda k: k.tobytes())),
    ("np.frombuffer(bytes(k_cache))", _bytes_as_cache(bytes)),
    ("np.asarray(memoryview(k_cache))", lambda k: np.asarray(memoryview(k))),
    ("np.asfortranarray", lambda k: np.asfortranarray(k)),
    (".copy(order='F')", lambda k: k.copy(order="F")),
    ("np.array(order='F')", lambda k: np.array(k, order="F")),
    ("a C-order copy of a Fortran-order copy",
     lambda k: np.ascontiguousarray(np.asfortranarray(k))),
    ("k_cache.base", lambda k: k.base),
]
IDS = [c[0] for c in CONVERSIONS]


@pytest.mark.parametrize("name, copy_of", CONVERSIONS, ids=IDS)
def test_a_gather_through_the_padding_of_a_conversion_is_named(name, copy_of):
    result, printed = assert_caught("gather_numpy", _pages_of(copy_of), PADDING)
    assert PADDING in result.cases[0].hint, printed


@pytest.mark.parametrize("name, copy_of", CONVERSIONS, ids=IDS)
def test_the_same_conversion_with_the_padding_clamped_passes(name, copy_of):
    result, printed = run_check("gather_numpy",
                                _pages_of(copy_of, clamp=lambda row: np.maximum(row, 0)))
    assert result.passed, printed


@pytest.mark.parametrize("copy_of", [lambda k: asarray(k), lambda k: np.frombuffer(
    k.data, dtype=k.dtype).reshape(k.shape), lambda k: k.copy(order="F")],
                         ids=["asarray imported", "frombuffer of .data", "copy(order='F')"])
def test_a_gather_through_the_padding_of_a_conversion_fails_under_the_grader_too(copy_of):
    verdict = remotely("gather_numpy", _pages_of(copy_of), salt=256)["tasks"]["gather_numpy"]
    assert verdict["status"] == "failed" and PADDING in verdict["summary"], verdict


def test_a_clamped_gather_through_an_imported_asarray_passes_under_the_grader():
    fn = _pages_of(lambda k: asarray(k), clamp=lambda row: np.maximum(row, 0))
    verdict = remotely("gather_numpy", fn, salt=256)["tasks"]["gather_numpy"]
    assert verdict["status"] == "passed", verdict


def _token_slots(k_cache, block_table_row, seq_len):
    page_size = k_cache.shape[1]
    t = np.arange(seq_len)
    return np.asarray(block_table_row)[t // page_size], t % page_size


def _slots_of_a_fortran_copy(k_cache, block_table_row, seq_len):
    """A Fortran-order copy made C again by a reshape (a copy), indexed by the right slots."""
    pages, offsets = _token_slots(k_cache, block_table_row, seq_len)
    flat = np.asfortranarray(k_cache).reshape(-1, *k_cache.shape[2:])
    return flat[pages * k_cache.shape[1] + offsets]


def _fortran_tokens_from_the_end(k_cache, block_table_row, seq_len):
    """A Fortran-order copy's tokens counted from the end of their page (an axis inside a
    page, stepping a whole number of the copy's pages: no padding followed)."""
    pages, offsets = _token_slots(k_cache, block_table_row, seq_len)
    return np.asfortranarray(k_cache)[pages, offsets - k_cache.shape[1]]


def _slots_of_the_bytes(k_cache, block_table_row, seq_len):
    pages, offsets = _token_slots(k_cache, block_table_row, seq_len)
    flat = frombuffer(bytes(k_cache), dtype=k_cache.dtype).reshape(-1, *k_cache.shape[2:])
    return flat[pages * k_cache.shape[1] + offsets]


RIGHT_GATHERS = [
    ("the slots of a Fortran-order copy", _slots_of_a_fortran_copy),
    ("a Fortran-order copy's tokens counted from the end", _fortran_tokens_from_the_end),
    ("the slots of the cache's bytes", _slots_of_the_bytes),
]


@pytest.mark.parametrize("name, fn", RIGHT_GATHERS, ids=[r[0] for r in RIGHT_GATHERS])
def test_right_gathers_from_the_conversions_pass(name, fn):
    result, printed = run_check("gather_numpy", fn)
    assert result.passed, printed


def test_a_fortran_order_copys_pages_come_round_every_element():
    shape, itemsize = (5, 4, 2, 3), 4
    fortran = tuple(reversed(c_strides(tuple(reversed(shape)), itemsize)))
    assert copy_pages(shape, c_strides(shape, itemsize), 96, None, fortran) == (4, 20)
    # back to C order from it: pages outermost again
    assert copy_pages(shape, fortran, 4, 20, c_strides(shape, itemsize)) == (96, None)


def _learners_module():
    """A learner's module that imported asarray from NumPy before its gather ran, and the
    gather (which raises)."""
    module = {}
    exec("from numpy import asarray\n"
         "def gather_numpy(*args):\n"
         "    raise RuntimeError('its own error')\n", module)
    return module, module["gather_numpy"]


def test_the_learners_imported_name_is_numpys_own_again_after_an_error():
    module, gather = _learners_module()
    with pytest.raises(RuntimeError):
        with conversions_watched(gather):
            assert module["asarray"] is WATCHING["asarray"] and np.asarray is module["asarray"]
            gather()
    assert module["asarray"] is NUMPYS_OWN["asarray"] and np.asarray is NUMPYS_OWN["asarray"]


def test_overlapping_watches_over_one_learners_module_closed_out_of_order():
    module, gather = _learners_module()
    first, second = conversions_watched(gather), conversions_watched(gather)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert module["asarray"] is WATCHING["asarray"]   # the second's gather still runs
    second.__exit__(None, None, None)
    assert module["asarray"] is NUMPYS_OWN["asarray"] and np.asarray is NUMPYS_OWN["asarray"]


def test_a_name_the_learner_bound_during_the_call_stays_theirs():
    module, gather = _learners_module()
    with conversions_watched(gather):
        module["asarray"] = list
    assert module["asarray"] is list and np.asarray is NUMPYS_OWN["asarray"]
