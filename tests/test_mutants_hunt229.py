"""Hunt 229: wrong answers that passed or got only the general hint, and right answers written
differently that must still pass.

1. gather_numpy: indexing the cache with the whole block-table row, -1 padding included, then
   cutting the result to seq_len gave the right values (NumPy wraps -1 to the last page; a
   GPU kernel reads out of bounds): the cache now keeps the negative ids it is indexed with.
   Every row ended in exactly one padding entry, so cutting one off (row[:-1]) passed too;
   the first case's row now ends in 3.
2. puzzle_guard's a[i] + a[i] (or a[i] alone), an int dot product (an int sum, int terms
   or an int score; or a sum started at 1) in puzzle_shared, puzzle_2d's row stepped by
   blockDim.x, a chunk mask offset by q_len (or q_len - 1), reserved_waste as
   1 - max_len / sum or by one max_len: each got the general hint and is named now; a wrong
   bias in puzzle_2d was blamed on x's index, and reserved_waste of the longest request
   alone on floor division.
3. puzzle_2d's "only rows 0-7 were written" fired where those rows were written wrong and
   one other row was not written; it now needs exactly the rows past the first block's
   unwritten (and a block index left out on both sides is named too).

Kernels are the solution notebook's sources with one edit (tests/check_helpers.mutate).
"""
import numpy as np
import pytest

from tests.check_helpers import PADDING, assert_caught, mutate, run_check, solution_source
from tests.test_grade_protocol import remotely

ONRAMP = "03_cuda_onramp.ipynb"
GENERIC_PUZZLE = "compare your kernel with the spec above"


def _passes(task, impl, **kwargs):
    result, printed = run_check(task, impl, **kwargs)
    assert result.passed, printed


# -- 1. gather_numpy: reads through the row's padding ------------------------------------------

def _pages_gather(pages_used):
    """The gather from whole pages: the row's first pages_used(seq_len, page_size, row)
    entries index the cache, and the result is cut to seq_len."""
    def gather_numpy(k_cache, block_table_row, seq_len):
        num_pages, page_size, num_kv_heads, head_dim = k_cache.shape
        pages = block_table_row[:pages_used(seq_len, page_size, block_table_row)]
        return k_cache[pages].reshape(-1, num_kv_heads, head_dim)[:seq_len]
    return gather_numpy


def _whole_row_slots(k_cache, block_table_row, seq_len):
    num_pages, page_size, num_kv_heads, head_dim = k_cache.shape
    slots = (np.asarray(block_table_row)[:, None] * page_size + np.arange(page_size)).ravel()
    return k_cache.reshape(-1, num_kv_heads, head_dim)[slots][:seq_len]


def _whole_row_taken(k_cache, block_table_row, seq_len):
    num_kv_heads, head_dim = k_cache.shape[2:]
    return np.take(k_cache, block_table_row, axis=0).reshape(-1, num_kv_heads, head_dim)[
        :seq_len]


def _whole_row_taken_from_the_end(k_cache, block_table_row, seq_len):
    num_kv_heads, head_dim = k_cache.shape[2:]
    return np.take(k_cache, block_table_row, axis=-k_cache.ndim).reshape(
        -1, num_kv_heads, head_dim)[:seq_len]


def _every_entry_looped(k_cache, block_table_row, seq_len):
    num_kv_heads, head_dim = k_cache.shape[2:]
    pages = [k_cache[p] for p in block_table_row.tolist()]
    return np.concatenate(pages).reshape(-1, num_kv_heads, head_dim)[:seq_len]


WHOLE_ROW = _pages_gather(lambda seq_len, page_size, row: len(row))
READS_PADDING = [
    ("whole row", WHOLE_ROW, "was indexed with -1"),
    ("whole row as slots", _whole_row_slots, "was indexed with -4"),
    ("whole row, np.take", _whole_row_taken, "was indexed with -1"),
    ("whole row, np.take on axis -4", _whole_row_taken_from_the_end, "was indexed with -1"),
    ("loop over every entry", _every_entry_looped, "was indexed with -1"),
    ("one padding entry cut off", _pages_gather(lambda seq_len, page_size, row: len(row) - 1),
     "entries 4-6, -1"),
    ("a page more at full pages", _pages_gather(lambda seq_len, page_size, row:
                                                seq_len // page_size + 1), "entry 3, -1"),
]


@pytest.mark.parametrize("name, fn, phrase", READS_PADDING, ids=[m[0] for m in READS_PADDING])
def test_a_gather_through_the_rows_padding_is_named(name, fn, phrase):
    result, printed = assert_caught("gather_numpy", fn, PADDING)
    failed = next(c for c in result.cases if not c.passed)
    assert phrase in failed.message, printed


def test_a_gather_through_the_padding_fails_under_the_grader_too():
    """The cache's record of negative ids crosses the sandbox and comes back with it."""
    verdict = remotely("gather_numpy", WHOLE_ROW, salt=229)["tasks"]["gather_numpy"]
    assert verdict["status"] == "failed" and PADDING in verdict["summary"], verdict


def _looped_pages(k_cache, block_table_row, seq_len):
    num_pages, page_size, num_kv_heads, head_dim = k_cache.shape
    n_pages = -(-seq_len // page_size)
    pages = [k_cache[block_table_row[p]] for p in range(n_pages)]
    whole = np.concatenate(pages) if pages else k_cache[:0]
    return whole.reshape(-1, num_kv_heads, head_dim)[:seq_len]


def _slots_taken(k_cache, block_table_row, seq_len):
    num_pages, page_size, num_kv_heads, head_dim = k_cache.shape
    t = np.arange(seq_len)
    slots = np.asarray(block_table_row)[t // page_size] * page_size + t % page_size
    return k_cache.reshape(num_pages * page_size, num_kv_heads, head_dim).take(slots, axis=0)


RIGHT_GATHERS = [
    ("row sliced first", _pages_gather(lambda seq_len, page_size, row: -(-seq_len // page_size))),
    ("padding filtered out", _pages_gather(lambda seq_len, page_size, row:
                                           int(np.count_nonzero(row >= 0)))),
    ("loop over the pages", _looped_pages),
    ("slots taken", _slots_taken),
]


@pytest.mark.parametrize("name, fn", RIGHT_GATHERS, ids=[m[0] for m in RIGHT_GATHERS])
def test_right_gathers_that_never_follow_the_padding_pass(name, fn):
    _passes("gather_numpy", fn)


# -- 2. named at last: a + a, an int dot product, a mask offset by q_len, 1 - max_len / sum ----

GUARD_SUM = "if (i < n) out[i] = a[i] + b[i];"
SHARED_SUM, SHARED_STORE = "float dot = 0.0f;", "scores[t] = dot;"
NAMED_KERNEL_MISTAKES = [
    ("puzzle_guard", "SOURCE_GUARD", [(GUARD_SUM, "if (i < n) out[i] = a[i] + a[i];")],
     "every element is a[i] + a[i]: the second term is b[i]"),
    ("puzzle_shared", "SOURCE_SHARED", [(SHARED_SUM, "int dot = 0;")],
     "the sum is kept in an int: each += cuts off the fraction"),
    ("puzzle_shared", "SOURCE_SHARED", [(SHARED_STORE, "scores[t] = (int)dot;")],
     "every score is the dot product with its fraction cut off"),
    ("puzzle_shared", "SOURCE_SHARED", [("dot += q_shared[d] * k[t * head_dim + d];",
                                         "dot += (int)(q_shared[d] * k[t * head_dim + d]);")],
     "each term q[d] * k[t, d] lost its fraction"),
    ("puzzle_2d", "SOURCE_2D", [("blockIdx.x * blockDim.x + threadIdx.x", "threadIdx.x"),
                                ("blockIdx.y * blockDim.y + threadIdx.y", "threadIdx.y")],
     "only rows 0-7 and columns 0-15 were written"),
    # found on the way: each got the general hint, or blamed x's index for a wrong bias
    ("puzzle_guard", "SOURCE_GUARD", [(GUARD_SUM, "if (i < n) out[i] = a[i];")],
     "every element is a[i] alone"),
    ("puzzle_shared", "SOURCE_SHARED", [(SHARED_SUM, "float dot = 1.0f;")],
     "every score is q . k[t] + 1: the dot product's sum starts at 0.0f"),
    ("puzzle_2d", "SOURCE_2D", [("blockIdx.y * blockDim.y", "blockIdx.y * blockDim.x")],
     "rows 8-15, 24-31 were never written: a block's first row is blockIdx.y * blockDim.y"),
    ("puzzle_2d", "SOURCE_2D", [("+ bias[col]", "+ 2.0f * bias[col]")],
     "x is in its place everywhere, but what column c adds is not bias[c]"),
]


@pytest.mark.parametrize("task, variable, edits, phrase", NAMED_KERNEL_MISTAKES,
                         ids=[f"{m[0]}: {m[2][0][1]}" for m in NAMED_KERNEL_MISTAKES])
def test_a_puzzle_mistake_is_named_not_left_to_the_general_hint(task, variable, edits, phrase):
    source = mutate(solution_source(ONRAMP, variable), edits)
    assert_caught(task, source, phrase, not_phrases=[GENERIC_PUZZLE], device="cpu")


def test_a_dot_product_summed_by_fmaf_passes():
    """Right, and every score a fraction: the int hints stay out of its way."""
    source = mutate(solution_source(ONRAMP, "SOURCE_SHARED"), [
        ("dot += q_shared[d] * k[t * head_dim + d];",
         "dot = fmaf(q_shared[d], k[t * head_dim + d], dot);")])
    _passes("puzzle_shared", source, device="cpu")


@pytest.mark.parametrize("less, named", [(0, "not q_len:"), (1, "not q_len - 1:")])
def test_a_chunk_mask_offset_by_q_len_is_named(less, named):
    def chunk_mask(q_len, seq_len):
        return np.arange(seq_len)[None, :] <= q_len - less + np.arange(q_len)[:, None]
    assert_caught("chunk_mask", chunk_mask, "the offset is the cached prefix's length, "
                  f"seq_len - q_len, {named}")


def test_a_chunk_mask_from_np_tri_passes():
    _passes("chunk_mask", lambda q_len, seq_len: np.tri(q_len, seq_len, seq_len - q_len,
                                                        dtype=bool))


@pytest.mark.parametrize("fn, phrase", [
    (lambda seq_lens, max_len: 1 - max_len / np.sum(seq_lens),
     "that is 1 - max_len / sum(seq_lens)"),
    (lambda seq_lens, max_len: 1 - np.sum(seq_lens) / max_len, "not by one max_len"),
    # found on the way: 0 where the longest request fills max_len, and blamed on //
    (lambda seq_lens, max_len: 1 - max(seq_lens) / max_len if len(seq_lens) else 0.0,
     "the waste of the longest request alone"),
], ids=["1 - max_len / sum", "1 - sum / max_len", "1 - max / max_len"])
def test_reserved_waste_over_the_wrong_slots_is_named(fn, phrase):
    assert_caught("reserved_waste", fn, phrase, not_phrases=["true division"])


def test_reserved_waste_from_the_mean_length_passes():
    _passes("reserved_waste", lambda seq_lens, max_len:
            1 - np.mean(seq_lens) / max_len if len(seq_lens) else 0.0)


# -- 3. puzzle_2d: "only rows 0-7 were written" only where exactly those were ----------------

def test_rows_written_wrong_are_not_called_unwritten():
    """Rows 8 and up read x at threadIdx.y's row (written, wrong); only the last row is
    unwritten (the guard stops one short)."""
    source = mutate(solution_source(ONRAMP, "SOURCE_2D"), [
        ("if (row < rows && col < cols)", "if (row < rows - 1 && col < cols)"),
        ("= x[row * cols + col]", "= x[threadIdx.y * cols + col]")])
    assert_caught("puzzle_2d", source, "values landed on the wrong elements",
                  not_phrases=["only rows 0-7 were written"], device="cpu")
