"""Wrong answers for workbooks 00-06 that a review found passing, or failing with a message
that named the wrong mistake (or no call): each fails now, with a hint that fits the evidence.
"""
import numpy as np
import pytest

from tests.check_helpers import (GoodAllocator, as_params, assert_caught, mutate,
                                 solution_source)


# -- online softmax: the max never moves ------------------------------------------------------

def online_class(update):
    class Online:
        def __init__(self, head_dim):
            self.m, self.l, self.acc = -np.inf, 0.0, np.zeros(head_dim)

        def update(self, score, value):
            update(self, score, value)

        def result(self):
            return self.acc / self.l
    return Online


def _first_score_as_max(s, score, value):   # m set once, never raised: no rescale at all
    if s.m == -np.inf:
        s.m = score
    w = np.exp(score - s.m)
    s.l, s.acc = s.l + w, s.acc + w * value


def _running_min(s, score, value):          # min for max: right unless the scores spread far
    m_new = score if s.m == -np.inf else min(s.m, score)
    r, w = np.exp(s.m - m_new), np.exp(score - m_new)
    s.l, s.acc, s.m = s.l * r + w, s.acc * r + w * value, m_new


# -- tile_pages: the tile's last key left out --------------------------------------------------

def _ceil(a, b):
    return -(-a // b)


def tile_pages_one_key_short(n, q0, tq, p):   # keys 0 .. q0 + tq - 2: the last query's own key
    return list(range(_ceil(min(n, q0 + tq - 1), p))) if q0 < n else []


def tile_pages_round_down(n, q0, tq, p):
    return list(range(min(n, q0 + tq) // p)) if q0 < n else []


# -- allocate(0) refused -------------------------------------------------------------------

class ZeroRefusingAllocator(GoodAllocator):
    def allocate(self, n):
        if n <= 0:
            raise ValueError("n must be positive")
        return super().allocate(n)


# -- block tables: the pair the wrong way round -------------------------------------------------

def _tables(seq_lens, page_size, alloc):
    rows = [alloc.allocate(_ceil(n, page_size)) for n in seq_lens]
    width = max([len(r) for r in rows] + [1])
    table = np.full((width, len(seq_lens)), -1, np.int32)   # built columns first
    for i, row in enumerate(rows):
        table[:len(row), i] = row
    return table


def tables_pair_swapped(seq_lens, page_size, alloc):
    table = np.ascontiguousarray(_tables(seq_lens, page_size, alloc).T)
    return np.asarray(seq_lens, np.int32), table


# -- gather: the right tokens, one kv head ------------------------------------------------------

def gather_head_zero(k, row, n):
    p = k.shape[1]
    t = np.arange(n)
    return k.reshape(-1, *k.shape[2:])[np.asarray(row)[t // p] * p + t % p][:, :1]


MISTAKES = [
    ("online_softmax", online_class(_first_score_as_max), "m stayed at the first score"),
    ("online_softmax", online_class(_running_min), "m is the max so far"),
    ("tile_pages", tile_pages_one_key_short, "one key short", ["round up"]),
    ("tile_pages", tile_pages_round_down, "round up", ["one key short"]),
    ("allocator", ZeroRefusingAllocator, "allocate(0) raised ValueError",
     ["read the error above"]),
    ("block_tables", tables_pair_swapped, "in that order", ["as an int32 array"]),
    ("gather_numpy", gather_head_zero, "the token axis is right",
     ["return exactly seq_len tokens:"]),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_caught(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


# -- kernels: a division by zero, a max from the first partition, a shuffle down -------------

KERNELS = [
    ("naive_kernel", "04_naive_kernel.ipynb", "SOURCE_NAIVE", "GQA group the wrong way (0)",
     [("h / (num_heads / num_kv_heads);", "h / (num_kv_heads / num_heads);")],
     "division or modulo by 0", ["buffer's index", "out-of-bounds"]),
    ("decode_merge", "06_decode_kernel.ipynb", "SOURCE_MERGE", "first partition's m as the max",
     [("for (int p = 0; p < n_parts; ++p) m_all = fmaxf(m_all, ml[2 * p]);", "m_all = ml[0];")],
     "not the first partition's", ["expf(m_p) overflows"]),
    ("decode_partition", "06_decode_kernel.ipynb", "SOURCE_PARTITION", "shuffle down",
     [("dot += __shfl_xor_sync(0xffffffffu, dot, offset);",
       "dot += __shfl_down_sync(0xffffffffu, dot, offset);")], "only lane 0's dims", []),
]


@pytest.mark.parametrize("task, notebook, variable, name, edits, phrase, not_phrases", KERNELS,
                         ids=[f"{k[0]}-{k[3]}" for k in KERNELS])
def test_kernel_mistake_is_caught(task, notebook, variable, name, edits, phrase, not_phrases):
    source = mutate(solution_source(notebook, variable), edits)
    result, printed = assert_caught(task, source, phrase, device="cpu")
    failed = " ".join(f"{c.message} {c.hint}" for c in result.cases if not c.passed).lower()
    for wrong in not_phrases:
        assert wrong.lower() not in failed, printed
