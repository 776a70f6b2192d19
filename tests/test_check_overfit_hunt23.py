"""Hunt 23: answers that passed a check only because of the sizes its cases happen to use.

1. gather_numpy's "no Python loop over the tokens" rested on an array that counts its own
   indexing, on the learner's side: `np.asarray(k_cache)`, `.view(np.ndarray)`, a copy of the
   buffer, `row.tolist()` or resetting the count hid a per-token loop. The check now also
   times the function on 131072 tokens against the cheapest per-token Python loop, timed
   next to it (in the judge under the grader), which no conversion of the inputs hides.
2. Every page size, tile size and head_dim of some checks was a power of two, so shifts and
   masks (`t >> 4`, `t & 15`) passed for `// page_size` and `% page_size`.
"""
import numpy as np
import pytest

from tests.check_helpers import assert_caught, run_check
from tests.test_grade_protocol import remotely


def _lg(n):
    return int(n).bit_length() - 1


# -- 1. gather_numpy: a per-token loop, hidden from the indexing count ------------------------

def gather_loop_asarray(k, row, n):
    p = k.shape[1]
    k, row = np.asarray(k), np.asarray(row)
    rows = [k[row[t // p], t % p] for t in range(n)]
    return np.stack(rows) if rows else np.zeros((0, *k.shape[2:]), k.dtype)


def gather_loop_view(k, row, n):
    p = k.shape[1]
    k, row = k.view(np.ndarray), row.view(np.ndarray)
    out = np.empty((n, *k.shape[2:]), k.dtype)
    for t in range(n):
        out[t] = k[row[t // p], t % p]
    return out


def gather_loop_buffer_copy(k, row, n):
    p = k.shape[1]
    k = np.frombuffer(k.tobytes(), k.dtype).reshape(k.shape)
    row = list(row)
    out = np.empty((n, *k.shape[2:]), k.dtype)
    for t in range(n):
        out[t] = k[row[t // p], t % p]
    return out


def gather_slot_list(k, row, n):
    """A comprehension over the tokens computes the slots; one indexing reads them."""
    p, r = k.shape[1], np.asarray(row).tolist()
    return k.reshape(-1, *k.shape[2:])[[r[t // p] * p + t % p for t in range(n)]]


def gather_loop_resetting_the_count(k, row, n):
    p = k.shape[1]
    rows = [np.asarray(k[row[t // p], t % p]) for t in range(n)]
    k.counter[0] = row.counter[0] = 0
    return np.stack(rows) if rows else np.zeros((0, *k.shape[2:]), k.dtype)


LOOPS = [gather_loop_asarray, gather_loop_view, gather_loop_buffer_copy, gather_slot_list,
         gather_loop_resetting_the_count]


@pytest.mark.parametrize("impl", LOOPS, ids=lambda f: f.__name__)
def test_a_per_token_loop_hidden_from_the_count_fails(impl):
    result, printed = assert_caught("gather_numpy", impl, "Python work per token")
    assert "a loop over the pages is fine" in printed


def gather_fancy(k, row, n):
    p = k.shape[1]
    t = np.arange(n)
    return k.reshape(-1, *k.shape[2:])[np.asarray(row)[t // p] * p + t % p]


def gather_take(k, row, n):
    p = k.shape[1]
    t = np.arange(n)
    return np.take(k.reshape(-1, *k.shape[2:]), np.asarray(row)[t // p] * p + t % p, axis=0)


def gather_two_indices(k, row, n):
    t = np.arange(n)
    return k[np.asarray(row)[t // k.shape[1]], t % k.shape[1]]


def gather_whole_pages_then_cut(k, row, n):
    pages = np.asarray(row)[:-(-n // k.shape[1])]
    return k[pages].reshape(-1, *k.shape[2:])[:n]


def gather_repeat_tile(k, row, n):
    p, m = k.shape[1], -(-n // k.shape[1])
    slots = np.repeat(np.asarray(row)[:m].astype(np.int64) * p, p) + np.tile(np.arange(p), m)
    return k.reshape(-1, *k.shape[2:])[slots[:n]]


def gather_page_loop(k, row, n):
    p = k.shape[1]
    pages = [k[row[i]] for i in range(-(-n // p))]
    return np.concatenate(pages)[:n] if pages else np.zeros((0, *k.shape[2:]), k.dtype)


RIGHT = [gather_fancy, gather_take, gather_two_indices, gather_whole_pages_then_cut,
         gather_repeat_tile, gather_page_loop]


@pytest.mark.parametrize("impl", RIGHT, ids=lambda f: f.__name__)
def test_a_vectorized_gather_passes_the_timed_case(impl):
    result, printed = run_check("gather_numpy", impl)
    assert result.passed, printed


@pytest.mark.parametrize("impl", [gather_fancy, gather_page_loop, gather_whole_pages_then_cut],
                         ids=lambda f: f.__name__)
def test_under_the_grader_a_vectorized_gather_passes(impl):
    report = remotely("gather_numpy", impl, salt=23)["tasks"]["gather_numpy"]
    assert report["status"] == "passed", report


@pytest.mark.parametrize("impl", [gather_loop_asarray, gather_loop_resetting_the_count],
                         ids=lambda f: f.__name__)
def test_under_the_grader_the_clock_is_the_judges(impl):
    """The learner's side may reset any count it is sent; the time is measured by the judge."""
    report = remotely("gather_numpy", impl, salt=23)["tasks"]["gather_numpy"]
    assert report["status"] == "failed", report
    assert "Python work per token" in report["summary"], report


def gather_float32_out(k, row, n):
    """Right for a float32 cache only: the output's dtype is fixed."""
    out = np.empty((n, *k.shape[2:]), np.float32)
    out[:] = gather_fancy(k, row, n)
    return out


def test_a_gather_into_float32_fails_on_the_float16_cache():
    assert_caught("gather_numpy", gather_float32_out, "keep the cache's dtype (float16)")


# -- 2. shifts and masks in place of // and %: right for powers of two only ------------------

def paged_waste_masked(seq_lens, p):
    allocated = ((seq_lens + p - 1) & -p).sum()
    return 0.0 if allocated == 0 else float(1 - seq_lens.sum() / allocated)


def paged_waste_shifted(seq_lens, p):
    allocated = (((seq_lens + p - 1) >> _lg(p)) << _lg(p)).sum()
    return 0.0 if allocated == 0 else float(1 - seq_lens.sum() / allocated)


def block_tables_shifted(seq_lens, p, allocator):
    tables = [allocator.allocate((n + p - 1) >> _lg(p)) for n in seq_lens]
    out = np.full((len(seq_lens), max([len(t) for t in tables] + [1])), -1, np.int32)
    for i, pages in enumerate(tables):
        out[i, :len(pages)] = pages
    return out, np.asarray(seq_lens, np.int32)


def gather_shifted(k, row, n):
    p, t = k.shape[1], np.arange(n)
    slots = (np.asarray(row)[t >> _lg(p)] << _lg(p)) | (t & (p - 1))
    return k.reshape(-1, *k.shape[2:])[slots]


def tile_pages_shifted(n, q0, tq, p):
    return list(range((min(n, q0 + tq) + p - 1) >> _lg(p))) if q0 < n else []


POW2 = [
    ("paged_waste", paged_waste_masked),
    ("paged_waste", paged_waste_shifted),
    ("block_tables", block_tables_shifted),
    ("slot_of", lambda row, t, p: (int(row[t >> _lg(p)]) << _lg(p)) | (t & (p - 1))),
    ("slot_of", lambda row, t, p: (int(row[t >> _lg(p)]) << _lg(p)) + (t & (p - 1))),
    ("kv_offset", lambda s, h, d, H, D: ((s * H + h) << _lg(D)) | d),
    ("kv_offset", lambda s, h, d, H, D: ((s * H + h) << _lg(D)) + d),
    ("gather_numpy", gather_shifted),
    ("tile_pages", tile_pages_shifted),
    ("tiled_launch", lambda b, h, n, tq, p, d: (((n + tq - 1) >> _lg(tq), h, b), (tq,),
                                                8 * p * d)),
]


@pytest.mark.parametrize("task, impl", POW2, ids=[f"{t}-{i}" for i, (t, _) in enumerate(POW2)])
def test_shifts_and_masks_for_a_power_of_two_fail(task, impl):
    assert_caught(task, impl, "only when n is a power of two")
