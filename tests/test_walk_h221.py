"""Workbooks 09 and 12 walked as a learner, wrong answers first: mistakes whose check used to
print only the general recipe, or a hint naming another mistake, now get a hint that names
them.

Workbook 09: the group's heads laid out after the zero rows or in reverse order (Task 1, and
the kernel's Q rows in Task 2), scores scaled in the tile step, a K element offset that leaves
num_kv_heads out, a mask made for the last tile only (a tile wholly past seq_len is not an
inverted comparison's evidence). Workbook 12: a hash chain whose parent stays block 0's hash,
num_computed one short on a partial hit, pages rounded down in the scheduler. The kernels are
the solution's with one edit, run on the CPU executor.
"""
import numpy as np
import pytest

from tests.check_helpers import assert_caught, mutate, solution_source
from pagedattn_lab.engine.prefix_cache import hash_block


def _laid_out(q, kv_head, group, *, front=False, reverse=False):
    n_rows = -(-group // 16) * 16
    heads = q[kv_head * group:(kv_head + 1) * group]
    tiles = np.zeros((n_rows, q.shape[1]), q.dtype)
    start = n_rows - group if front else 0
    tiles[start:start + group] = heads[::-1] if reverse else heads
    return tiles.reshape(-1, 16, q.shape[1])


def rows_after_padding(q, kv_head, group):
    return _laid_out(q, kv_head, group, front=True)


def rows_reversed(q, kv_head, group):
    return _laid_out(q, kv_head, group, reverse=True)


def mask_in_the_last_tile_only(s, tile, seq_len, scale):
    out = s * np.float32(scale)
    if tile == (seq_len - 1) // 16:
        out[:, seq_len - 16 * tile:] = -np.inf
    return out


def hashes_chained_on_block_0(token_ids, page_size):
    out, parent = [], None
    for start in range(0, len(token_ids) - page_size + 1, page_size):
        out.append(hash_block(parent, token_ids[start:start + page_size]))
        parent = parent or out[0]
    return out


def prefix_one_short(hashes, cached, num_tokens, page_size):
    pages = []
    for h in hashes:
        if h not in cached:
            break
        pages.append(cached[h])
    return pages, max(0, min(len(pages) * page_size, num_tokens) - 1)


def schedule_rounding_pages_down(running, waiting, budget, free_pages, watermark, page_size,
                                 max_chunk):
    batch, free = [], free_pages
    for req in running:
        if budget == 0:
            break
        n = min(req.num_tokens - req.num_computed, budget, max_chunk)
        free -= max(0, (req.num_computed + n) // page_size - req.num_pages)
        batch.append((req.rid, n))
        budget -= n
    for req in waiting:
        if budget == 0:
            break
        n = min(req.num_tokens, budget, max_chunk)
        if n // page_size + watermark > free:
            break
        free -= n // page_size
        batch.append((req.rid, n))
        budget -= n
    return batch


NUMPY_MISTAKES = [
    ("group_rows", rows_after_padding, "the zero rows come first", ("is missing",)),
    ("group_rows", rows_reversed, "reverse order", ()),
    ("mask_tile", mask_in_the_last_tile_only, "even in a tile that does not hold",
     ("inverted",)),
    ("block_hashes", hashes_chained_on_block_0, "chained on block 0's hash", ()),
    ("cached_prefix", prefix_one_short, "num_computed is one short", ()),
    ("schedule_step", schedule_rounding_pages_down, "counted rounded down", ()),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", NUMPY_MISTAKES,
                         ids=[f"{m[0]}-{m[1].__name__}" for m in NUMPY_MISTAKES])
def test_python_mistake_is_named(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


Q_ROW = "q[(long long)(kv_head * group + r) * head_dim + d]"
K_ELEMENT = "(slot * num_kv_heads + kv_head) * head_dim + d"
STORE = "float* out = scores"

TILE_MISTAKES = [
    ("group's rows reversed", [(Q_ROW, "q[(long long)(kv_head * group + group - 1 - r) * "
                                       "head_dim + d]")], "in reverse order"),
    ("scores scaled", [(STORE, "for (int i = 0; i < s.num_elements; i++) "
                               "s.x[i] *= rsqrtf((float)head_dim);\n    " + STORE)],
     "with no scale"),
    ("no head stride at all", [(K_ELEMENT, "slot * head_dim + d")],
     "yours reads (slot * head_dim + d)"),
    ("num_kv_heads left out", [(K_ELEMENT, "(slot + kv_head) * head_dim + d")],
     "leaving num_kv_heads out of the slot's stride"),
]


@pytest.mark.parametrize("name, edits, phrase", TILE_MISTAKES, ids=[m[0] for m in TILE_MISTAKES])
def test_tile_mistake_is_named(name, edits, phrase):
    source = mutate(solution_source("09_tensor_core_decode.ipynb", "SOURCE_TILE"), edits)
    assert_caught("tc_tile_scores", source, phrase, device="cpu")
