"""Hunt 108: plausible learner mistakes in workbooks 00-04 that the checks refused with a hint
naming another mistake (a byte offset called the HND order, a hard-coded number called "one
page too many"), with no hint at all (a percentage), or only restating the spec; and right
answers written another way, which must pass."""
import numpy as np
import pytest

from tests.check_helpers import (_flat, assert_caught, mutate, run_check,
                                 solution_source)


def _ceil(a, b):
    return -(-a // b)


# -- lesson 00: counts and fractions ----------------------------------------------------------

def _reserved(L, m):
    return float(1 - L.sum() / (len(L) * m)) if len(L) else 0.0


def _paged(L, p):
    allocated = _ceil(L, p).sum() * p
    return float(1 - L.sum() / allocated) if allocated else 0.0


@pytest.mark.parametrize("task, impl, phrase, not_phrases", [
    ("reserved_waste", lambda L, m: 100 * _reserved(L, m), "that is a percentage", ()),
    ("paged_waste", lambda L, p: 100 * _paged(L, p), "that is a percentage", ()),
    ("pages_needed", lambda n, p: _ceil(n, 16), "the answer for pages of 16 tokens: use the "
     "page_size argument (4 here)", ()),
    ("paged_waste", lambda L, p: _paged(L, 16), "the answer for pages of 16 tokens", ()),
    # ceil(4 / 10) = 1 = ceil(10 / 16): the swap must not be called a hard-coded 16
    ("pages_needed", lambda n, p: _ceil(p, n) if n else 0, "come as (seq_len, page_size)",
     ("pages of 16 tokens",)),
    # 3 = 8 // 4 + 1: a constant must not be called "one page too many"
    ("pages_needed", lambda n, p: 3, "whatever seq_len and page_size are",
     ("one page too many",)),
], ids=["reserved percent", "paged percent", "pages of 16", "paged waste pages of 16",
        "pages arguments swapped", "pages constant"])
def test_lesson_00_mistakes_are_named(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


# -- lesson 01: block tables ------------------------------------------------------------------

def _tables(width_of):
    def block_tables_for_batch(seq_lens, page_size, allocator):
        tables = [allocator.allocate(_ceil(n, page_size)) for n in seq_lens]
        width = width_of(seq_lens, page_size)
        out = np.full((len(seq_lens), width), -1, dtype=np.int32)
        for row, pages in enumerate(tables):
            out[row, :min(len(pages), width)] = pages[:width]
        return out, np.asarray(seq_lens, dtype=np.int32)
    return block_tables_for_batch


def test_block_tables_width_rounded_down_is_named():
    """max(L // page_size): the longest sequence's last page has no column; the hint only
    restated the shape."""
    assert_caught("block_tables", _tables(lambda L, p: max([n // p for n in L] + [1])),
                  "longest // page_size leaves out the longest sequence's partly filled")


def test_block_tables_width_plus_one_is_named_beside_the_batch_width():
    """max(L // page_size + 1) is 3 for lengths 8, 0, 4 on pages of 4, and so is the batch's
    page count: the hint named the batch's width alone."""
    result, printed = run_check("block_tables",
                                _tables(lambda L, p: max([n // p + 1 for n in L] + [1])))
    hints = {str(c.params["seq_lens"]): _flat(c.hint) for c in result.cases if not c.passed}
    assert "one page too many when the longest sequence fills its last page" in \
        hints["[8, 0, 4]"], printed
    assert "whole batch's page count" in hints["[8, 0, 4]"], printed   # it fits too
    assert "whole batch's page count" not in hints["[32, 4, 7, 10, 8, 32]"], printed


def test_append_tokens_one_token_short_is_named_beside_rounding_down():
    """ceil((seq_len + n_new - 1) / page_size): it rounds up, yet the hint said only "round
    up, not down" (both give 1 page for 5 tokens on pages of 4)."""
    def append_tokens(table, seq_len, n_new, page_size, allocator):
        needed = _ceil(seq_len + n_new - 1, page_size) - len(table)
        if needed > 0:
            table.extend(allocator.allocate(needed))
    assert_caught("append_tokens", append_tokens, "not seq_len + n_new - 1")


# -- lesson 02: kv_offset ---------------------------------------------------------------------

def test_kv_offset_in_bytes_is_named_not_the_hnd_order():
    """4 * offset: at (slot 0, kv_head 0, dim 7) with 4 kv heads that is 28, the HND offset
    too; the hint named the HND order."""
    assert_caught("kv_offset", lambda s, h, d, H, D: 4 * ((s * H + h) * D + d),
                  "that is a byte offset", not_phrases=("HND",))


def test_kv_offset_with_the_first_cases_sizes_written_in_is_named():
    assert_caught("kv_offset", lambda s, h, d, H, D: (s * 4 + h) * 8 + d,
                  "num_kv_heads 4 and head_dim 8, numbers written into the code")


def test_kv_offset_hnd_order_is_still_named():
    assert_caught("kv_offset", lambda s, h, d, H, D: (s * D + d) * H + h, "HND order",
                  not_phrases=("byte offset",))


# -- lessons 03 and 04: kernels (CPU executor) and attend_one --------------------------------

_SHARED = ("03_cuda_onramp.ipynb", "SOURCE_SHARED")


@pytest.mark.parametrize("edit, phrase", [
    (("k[t * head_dim + d]", "k[d * n + t]"), "k was read column after column"),
    (("scores[t] = dot;", "scores[t] = dot * rsqrtf((float)head_dim);"),
     "divided by sqrt(head_dim): this puzzle asks for the plain dot product"),
], ids=["k by columns", "scaled"])
def test_puzzle_shared_mistakes_are_named(edit, phrase):
    assert_caught("puzzle_shared", mutate(solution_source(*_SHARED), [edit]), phrase,
                  device="cpu")


def test_naive_kernel_one_key_past_its_own_is_named():
    source = mutate(solution_source("04_naive_kernel.ipynb", "SOURCE_NAIVE"),
                    [("for (int j = 0; j <= t; ++j)",
                      "for (int j = 0; j <= t + 1 && j < seq_lens[b]; ++j)")])
    assert_caught("naive_kernel", source, "one key too many, the one after the query's own",
                  device="cpu")


def test_attend_one_one_key_past_its_own_is_named():
    def attend_one(q, kc, vc, row, n, t, kv_head, scale):
        p = kc.shape[1]
        keys = range(min(t + 2, n))
        slots = [(row[j // p], j % p) for j in keys]
        s = np.array([q @ kc[pg, off, kv_head] for pg, off in slots], np.float64) * scale
        w = np.exp(s - s.max())
        return w @ np.array([vc[pg, off, kv_head] for pg, off in slots], np.float64) / w.sum()
    assert_caught("attend_one", attend_one, "one key too many, the one after the query's own")


# -- right answers written another way pass ---------------------------------------------------

class _AppendFromSeqLen:
    """New pages from seq_len's own page count, not len(table): the same where they agree."""

    @staticmethod
    def append_tokens(table, seq_len, n_new, page_size, allocator):
        needed = _ceil(seq_len + n_new, page_size) - _ceil(seq_len, page_size)
        if needed > 0:
            table.extend(allocator.allocate(needed))


def _attend_backwards(q, kc, vc, row, n, t, kv_head, scale):
    """The online softmax over keys t..0: any order gives the same softmax."""
    p = kc.shape[1]
    m, total, acc = -np.inf, 0.0, np.zeros(kc.shape[-1])
    for j in range(t, -1, -1):
        key, value = kc[row[j // p], j % p, kv_head], vc[row[j // p], j % p, kv_head]
        s = float(q @ key) * scale
        m_new = max(m, s)
        total = total * np.exp(m - m_new) + np.exp(s - m_new)
        acc = acc * np.exp(m - m_new) + np.exp(s - m_new) * value
        m = m_new
    return acc / total




@pytest.mark.parametrize("task, impl", [
    ("pages_needed", lambda n, p: (n + p - 1) // p),
    ("reserved_waste", lambda L, m: float(1 - L.mean() / m) if len(L) else 0.0),
    ("paged_waste", lambda L, p: float(((-L) % p).sum() / (_ceil(L, p).sum() * p))
     if L.sum() else 0.0),
    ("append_tokens", _AppendFromSeqLen.append_tokens),
    ("kv_offset", lambda s, h, d, H, D: s * H * D + h * D + d),
    ("slot_of", lambda row, t, p: row[t // p] * p + t % p),   # a NumPy int: an int too
    ("attend_one", _attend_backwards),
], ids=["pages (n + p - 1) // p", "reserved 1 - mean / max_len", "paged (-L) % p",
        "append from seq_len", "kv offset expanded", "slot numpy int",
        "attend keys backwards"])
def test_right_answers_written_another_way_pass(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed


@pytest.mark.parametrize("task, notebook, variable, edits", [
    ("puzzle_map", "03_cuda_onramp.ipynb", "SOURCE_MAP", [("a[i] + 10.0f", "a[i] + 10")]),
    ("puzzle_warp_sum", "03_cuda_onramp.ipynb", "SOURCE_WARP_SUM",
     [("int offset = 16; offset > 0; offset /= 2", "int offset = 1; offset < 32; offset *= 2")]),
    ("puzzle_block_sum", "03_cuda_onramp.ipynb", "SOURCE_BLOCK_SUM",
     [("        v = lane < blockDim.x / 32 ? warp_totals[lane] : 0.0f;\n"
       "        for (int offset = 16;",
       "        v = lane < blockDim.x / 32 ? warp_totals[lane] : 0.0f;\n"
       "        for (int offset = 4;")]),
    ("naive_kernel", "04_naive_kernel.ipynb", "SOURCE_NAIVE",
     [("for (int j = 0; j <= t; ++j)", "for (int j = t; j >= 0; --j)")]),
    ("naive_kernel", "04_naive_kernel.ipynb", "SOURCE_NAIVE",
     [("expf(running_max - new_max)", "__expf(running_max - new_max)"),
      ("expf(score - new_max)", "__expf(score - new_max)")]),
], ids=["map int literal", "warp sum offsets rising", "block sum 8 totals from offset 4",
        "naive keys backwards", "naive __expf"])
def test_right_kernels_written_another_way_pass(task, notebook, variable, edits):
    result, printed = run_check(task, mutate(solution_source(notebook, variable), edits),
                                device="cpu")
    assert result.passed, printed
