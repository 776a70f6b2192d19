"""Hunt 33: wrong answers to workbooks 00-06 that passed, or failed with a hint that named
another mistake.

1. block_tables (01): a table built [max_pages, batch] and returned as its `.T` view passed
   (NumPy indexes the view right; a kernel reads its memory, which is transposed), and a
   square transposed table (batch = max_pages) got "the rows hold the right page counts in
   another order".
2. online_softmax (04): an OnlineSoftmax with no running max (float32 or float64) got "start
   the running max at -inf (not 0)" on scores near -1000 and "m stayed at the first score" on
   rising scores; it now gets the missing max on every case, found by probes that tell the
   mistakes apart. A right OnlineSoftmax that keeps its scores in float32 (as the kernel
   does) failed the scores near +-1000, whose float32 rounding moves the answer past the
   tolerance; the answer for the rounded scores is accepted too.
3. paged_waste (00): page_size - L % page_size for a last page's free slots (page_size, not 0,
   when L is a multiple of page_size) got no hint.
4. Kernels (02, 04, 05, 06): a block table read transposed ([p * batch + b]) got hints about
   the online softmax or a generic recipe; a launch on a full square table now shows it.
   Values multiplied by `scale`, kv head h / num_kv_heads (h / group meant) and a last
   partition that stops at seq_len - 1 got no hint (attend_one too); a gather whose rows past
   seq_len hold copies got "ran the softmax over no keys"; seq_lens[0] as every sequence's
   bound (gather, prefill, merge) got hints about one partition too many or none.
5. merge_partitions and the merge kernel (06): the weighted sum over the sum of the l_p got
   no hint; m_p minus the first (or smallest) m_p, which overflows, got "a NaN or inf
   appeared".
6. puzzle_shared (03): thread 0 loading all of q for its block got "keep a value you need
   twice in a register"; q's reads in all show one load per block, by too few threads.
"""
import numpy as np
import pytest

from tests.check_helpers import assert_caught, kernel_mutant, run_check


# -- 1. block_tables ------------------------------------------------------------------------

def _filled_by_page(seq_lens, page_size, allocator):
    """A [max_pages, batch] array: column s holds sequence s's pages."""
    tables = [allocator.allocate(-(-n // page_size)) for n in seq_lens]
    width = max([len(t) for t in tables] + [1])
    by_page = np.full((width, len(seq_lens)), -1, dtype=np.int32)
    for s, pages in enumerate(tables):
        by_page[:len(pages), s] = pages
    return by_page, np.asarray(seq_lens, dtype=np.int32)


def tables_transposed_view(seq_lens, page_size, allocator):
    by_page, lens = _filled_by_page(seq_lens, page_size, allocator)
    return by_page.T, lens


def tables_transposed_copy(seq_lens, page_size, allocator):
    by_page, lens = _filled_by_page(seq_lens, page_size, allocator)
    return by_page, lens


def test_a_transposed_view_of_the_table_fails():
    assert_caught("block_tables", tables_transposed_view, "transposed view",
                  not_phrases=["another order"])


def tables_in_fortran_order(seq_lens, page_size, allocator):
    tables = [allocator.allocate(-(-n // page_size)) for n in seq_lens]
    block_tables = np.full((len(seq_lens), max([len(t) for t in tables] + [1])), -1,
                           dtype=np.int32, order="F")
    for row, pages in enumerate(tables):
        block_tables[row, :len(pages)] = pages
    return block_tables, np.asarray(seq_lens, dtype=np.int32)


def test_a_table_made_in_fortran_order_is_named_so():
    """Hunt 66: the hint named only a `.T` view, which this answer never made."""
    assert_caught("block_tables", tables_in_fortran_order, "an array made with order='F'")


def test_a_square_transposed_table_is_named_in_the_first_case():
    result, printed = assert_caught("block_tables", tables_transposed_copy, "transposed",
                                    not_phrases=["another order"])
    first = next(c for c in result.cases if not c.passed)
    assert "transposed" in first.hint and "square" in first.hint, printed


def tables_right_via_copy(seq_lens, page_size, allocator):
    by_page, lens = _filled_by_page(seq_lens, page_size, allocator)
    return np.ascontiguousarray(by_page.T), lens


def test_a_right_table_built_by_page_then_copied_passes():
    result, printed = run_check("block_tables", tables_right_via_copy)
    assert result.passed, printed


# -- 2. online_softmax: no running max ------------------------------------------------------

def _no_max(dtype):
    class NoMax:
        def __init__(self, head_dim):
            self.l, self.acc = dtype(0), np.zeros(head_dim, dtype)

        def update(self, score, value):
            w = np.exp(dtype(score))
            self.l, self.acc = self.l + w, self.acc + w * value.astype(dtype)

        def result(self):
            return self.acc / self.l
    NoMax.__name__ = f"NoMax_{dtype.__name__}"
    return NoMax


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_no_running_max_is_named_in_every_case(dtype):
    result, printed = assert_caught(
        "online_softmax", _no_max(dtype), "you exponentiate the raw score",
        not_phrases=["start the running max at -inf", "m stayed at the first score",
                     "from the first key on"])
    failed = [c for c in result.cases if not c.passed]
    assert len(failed) >= 2 and all("raw score" in c.hint for c in failed), printed


class MaxFromZero32:
    """float32, the running max started at 0: its own hint, as before."""

    def __init__(self, head_dim):
        self.m, self.l, self.acc = np.float32(0), np.float32(0), np.zeros(head_dim, np.float32)

    def update(self, score, value):
        s = np.float32(score)
        m_new = max(self.m, s)
        r, w = np.exp(self.m - m_new), np.exp(s - m_new)
        self.l, self.acc, self.m = self.l * r + w, self.acc * r + w * value, m_new

    def result(self):
        return self.acc / self.l


def test_a_max_started_at_zero_keeps_its_hint():
    assert_caught("online_softmax", MaxFromZero32, "start the running max at -inf",
                  not_phrases=["raw score"])


def _right_float32(all_float32):
    class RightFloat32:
        """Scores (and, with all_float32, the sums) in float32, as the kernel keeps them."""

        def __init__(self, head_dim):
            self.m, self.l = np.float32(-np.inf), np.float32(0)
            self.acc = np.zeros(head_dim, np.float32)

        def update(self, score, value):
            s = np.float32(score)
            m_new = max(self.m, s)
            r, w = np.exp(self.m - m_new), np.exp(s - m_new)
            value = value.astype(np.float32) if all_float32 else value   # (else: float64 sums)
            self.l, self.acc, self.m = self.l * r + w, self.acc * r + w * value, m_new

        def result(self):
            return self.acc / self.l
    return RightFloat32


@pytest.mark.parametrize("all_float32", [True, False], ids=["float32", "float32_scores"])
def test_a_right_online_softmax_with_float32_scores_passes(all_float32):
    """Scores near +-1000 rounded to float32 move the answer by up to 1e-5: not a mistake
    (this failed before, with "acc / l must equal softmax(scores so far) @ values")."""
    result, printed = run_check("online_softmax", _right_float32(all_float32))
    assert result.passed, printed


# -- 2b. attend_one: the values scaled --------------------------------------------------------

def attend_scaled_values(q, k, v, row, n, t, kv_head, scale):
    p, j = k.shape[1], np.arange(t + 1)
    s = k[row[j // p], j % p, kv_head].astype(np.float64) @ q * scale
    w = np.exp(s - s.max())
    return w @ (v[row[j // p], j % p, kv_head] * scale) / w.sum()


def test_attend_one_with_the_values_scaled_fails():
    assert_caught("attend_one", attend_scaled_values, "the values are scaled too")


# -- 3. paged_waste: a full last page counted as empty ----------------------------------------

def waste_full_page_counted(seq_lens, page_size):
    allocated = int((-(-seq_lens // page_size)).sum()) * page_size
    free = np.where(seq_lens > 0, page_size - seq_lens % page_size, 0).sum()
    return float(free / allocated) if allocated else 0.0


def waste_every_length(seq_lens, page_size):
    allocated = int((-(-seq_lens // page_size)).sum()) * page_size
    return float((page_size - seq_lens % page_size).sum() / allocated) if allocated else 0.0


def test_a_full_last_page_counted_as_empty_fails():
    result, printed = assert_caught("paged_waste", waste_full_page_counted,
                                    "the last page is full",
                                    not_phrases=["a request has no token"])
    assert all("(-L) % page_size" in c.hint for c in result.cases if not c.passed), printed


def test_page_size_minus_remainder_for_every_length_names_what_each_case_shows():
    result, printed = assert_caught("paged_waste", waste_every_length, "the last page is full")
    empty = next(c for c in result.cases if not c.passed and "no tokens yet" in c.name)
    assert "a request has no token and no page" in empty.hint, printed


# -- 4. kernels, on the CPU executor ----------------------------------------------------------

TRANSPOSED = "block_tables is read transposed"
KERNELS = ("gather_kernel", "naive_kernel", "tiled_kernel", "decode_partition", "decode_merge",
           "puzzle_shared")
KERNEL_MISTAKES = [
    ("gather_kernel", "transposed, by batch",
     [("block_tables[b * max_pages + t / page_size]",
       "block_tables[(t / page_size) * gridDim.y + b]")], TRANSPOSED),
    ("naive_kernel", "transposed, by batch",
     [("(long long)table[j / page_size]",
       "(long long)block_tables[(j / page_size) * gridDim.z + b]")], TRANSPOSED),
    ("naive_kernel", "transposed, by max_pages",
     [("(long long)table[j / page_size]",
       "(long long)block_tables[(j / page_size) * max_pages + b]")], TRANSPOSED),
    ("tiled_kernel", "transposed, by batch",
     [("int page = table[p];", "int page = block_tables[p * gridDim.z + b];")], TRANSPOSED),
    ("decode_partition", "transposed, by batch",
     [("(long long)table[t / page_size]",
       "(long long)block_tables[(t / page_size) * gridDim.z + b]")], TRANSPOSED),
    ("naive_kernel", "values scaled",
     [("weight * v_cache[kv + d]", "weight * v_cache[kv + d] * scale")],
     "the values are scaled too"),
    ("tiled_kernel", "values scaled",
     [("weight * v_tile[j * head_dim + d]", "weight * v_tile[j * head_dim + d] * scale")],
     "the values are scaled too"),
    ("decode_partition", "values scaled",
     [("weight * v_cache[row + d]", "weight * v_cache[row + d] * scale")],
     "the values are scaled too"),
    ("naive_kernel", "h / num_kv_heads",
     [("int kv_head = h / (num_heads / num_kv_heads);", "int kv_head = h / num_kv_heads;")],
     "not h / num_kv_heads"),
    ("tiled_kernel", "h / num_kv_heads",
     [("int kv_head = h / (num_heads / num_kv_heads);", "int kv_head = h / num_kv_heads;")],
     "not h / num_kv_heads"),
    ("decode_partition", "h / num_kv_heads",
     [("int kv_head = h / (num_heads / num_kv_heads);", "int kv_head = h / num_kv_heads;")],
     "not h / num_kv_heads"),
    ("decode_partition", "the last partition one token short",
     [("int end = min(seq_len, start + part_len);",
       "int end = start + part_len < seq_len ? start + part_len : seq_len - 1;")],
     "the last partition stops one token early"),
    ("puzzle_shared", "thread 0 loads all of q",
     [("for (int d = threadIdx.x; d < head_dim; d += blockDim.x)",
       "if (threadIdx.x == 0) for (int d = 0; d < head_dim; ++d)")],
     "the block's threads share the load"),
    ("decode_merge", "divided by the sum of l",
     [("total += w;", "total += ml[2 * p + 1];")], "not by the sum of the l_p"),
    ("gather_kernel", "seq_lens[0] for every sequence",
     [("if (t >= seq_lens[b])", "if (t >= seq_lens[0])")], "rows below seq_lens[0]"),
    ("naive_kernel", "seq_lens[0] for every sequence",
     [("if (t >= seq_lens[b])", "if (t >= seq_lens[0])")], "rows below seq_lens[0]"),
    ("decode_merge", "seq_lens[0] for every sequence",
     [("int n_parts = (seq_lens[b] + part_len - 1) / part_len;",
       "int n_parts = (seq_lens[0] + part_len - 1) / part_len;")], "sequence 0's"),
]
NOT_SAID = {TRANSPOSED: ["online softmax", "running max"],
            "the block's threads share the load": ["keep a value you need twice"],
            "rows below seq_lens[0]": ["softmax over no keys"]}


@pytest.mark.parametrize("task, name, edits, phrase", KERNEL_MISTAKES,
                         ids=[f"{t}-{n}" for t, n, _, _ in KERNEL_MISTAKES])
def test_a_kernel_mistake_gets_its_own_hint_first(task, name, edits, phrase):
    source = kernel_mutant(task, edits)
    result, printed = assert_caught(task, source, phrase, not_phrases=NOT_SAID.get(phrase, ()),
                                    device="cpu")
    first = next(c for c in result.cases if not c.passed)
    assert phrase.lower() in first.hint.lower(), printed


@pytest.mark.parametrize("task", sorted(KERNELS))
def test_the_solution_kernels_pass_on_the_cpu_executor(task):
    result, printed = run_check(task, kernel_mutant(task, []), device="cpu")
    assert result.passed, printed


# -- 5. merge_partitions (06) ---------------------------------------------------------------

def merge_from_the_first(m, l, o):
    w = l * np.exp(m - m[0])
    return w @ o / w.sum()


def merge_from_the_smallest(m, l, o):
    w = l * np.exp(m - m.min())
    return w @ o / w.sum()


def merge_divided_by_l(m, l, o):
    w = l * np.exp(m - m.max())
    return w @ o / l.sum()


@pytest.mark.parametrize("impl, phrase", [
    (merge_from_the_first, "exponentiate m_p - max_p m_p"),
    (merge_from_the_smallest, "exponentiate m_p - max_p m_p"),
    (merge_divided_by_l, "not by the sum of the l_p")], ids=lambda x: getattr(x, "__name__", ""))
def test_a_merge_mistake_gets_its_own_hint(impl, phrase):
    assert_caught("merge_partitions", impl, phrase, not_phrases=["a NaN or inf appeared"])
