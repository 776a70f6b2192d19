"""Hunt 25: answers right only for what the checks of workbooks 04 and 06-13 happened to use.

Every page size, kv_tile and GQA group some checks used was a power of two, so shifts and
masks (`t >> log2(p)`, `t & (p - 1)`) passed for // and %; and every kernel check launched
with scale = 1/sqrt(head_dim), so a kernel that ignored its `scale` argument and worked the
scale out itself passed (as did a manager that left the attention's scale at its default);
attend_one's scores stayed small, so exp(score) without the max passed. Each check now has a
case that is not so (page_size 6 or 12, kv_tile 20, group 3, 3 KV heads, scale 0.3) and a hint naming
the shortcut; the right answers still pass (the solutions' own tests, and the ones here).
"""

import numpy as np
import pytest

import pagedattn_lab as pl
from pagedattn_lab.engine.prefix_cache import hash_block
from tests.check_helpers import assert_caught, mutate, run_check, solution_source
from tests.serve_loops import serve_loop, spec_admission
from tests.test_check_mistakes_engine import step_model


def _lg(n):
    return int(n).bit_length() - 1


POW2 = "only when n is a power of two"
KERNEL_POW2 = "only when n is a power of two, and page_size = 6"


# -- Python answers ----------------------------------------------------------------------------

def _attend(q_vec, k_cache, v_cache, row, t, kv_head, scale, *, shift=False, max_sub=True):
    p = k_cache.shape[1]
    m, l, acc = -np.inf, 0.0, np.zeros(k_cache.shape[-1])
    for j in range(t + 1):
        page, off = (row[j >> _lg(p)], j & (p - 1)) if shift else (row[j // p], j % p)
        s = float(q_vec @ k_cache[page, off, kv_head].astype(np.float64)) * scale
        if not max_sub:
            w = np.exp(s)
            l, acc = l + w, acc + w * v_cache[page, off, kv_head]
            continue
        m_new = max(m, s)
        r, w = np.exp(m - m_new), np.exp(s - m_new)
        l, acc, m = l * r + w, acc * r + w * v_cache[page, off, kv_head], m_new
    return acc / l


def attend_shifted(q, k, v, row, n, t, kvh, scale):
    return _attend(q, k, v, row, t, kvh, scale, shift=True)


def attend_own_scale(q, k, v, row, n, t, kvh, scale):
    return _attend(q, k, v, row, t, kvh, 1 / np.sqrt(len(q)))


def attend_no_max(q, k, v, row, n, t, kvh, scale):
    return _attend(q, k, v, row, t, kvh, scale, max_sub=False)


def attend_float32(q, k, v, row, n, t, kvh, scale):     # right: float32 arithmetic
    p = k.shape[1]
    j = np.arange(t + 1)
    s = k[row[j // p], j % p, kvh] @ q * np.float32(scale)
    w = np.exp(s - s.max())
    return w / w.sum() @ v[row[j // p], j % p, kvh]


def next_page_masked(cache, seq_id):
    n, p = cache.seq_len(seq_id), cache.page_size
    if n & (p - 1) == 0:
        return 1
    return 1 if cache.allocator.ref_count(cache.block_table(seq_id)[-1]) > 1 else 0


def _tile_work(qo_indptr, seq_lens, rows, kv_tile, ceil):
    work = []
    for b, (q_len, n) in enumerate(zip(np.diff(qo_indptr), seq_lens)):
        for first in range(0, int(q_len), rows):
            keys = int(n) - int(q_len) + min(first + rows, int(q_len))
            work.append((b, first, ceil(keys, kv_tile)))
    return work


def tile_work_shifted(qo_indptr, seq_lens, rows, kv_tile):
    return _tile_work(qo_indptr, seq_lens, rows, kv_tile, lambda k, t: (k + t - 1) >> _lg(t))


def tile_work_right(qo_indptr, seq_lens, rows, kv_tile):
    return _tile_work(qo_indptr, seq_lens, rows, kv_tile, lambda k, t: -(-k // t))


def block_hashes_shifted(token_ids, page_size):
    hashes, parent = [], None
    for i in range(len(token_ids) >> _lg(page_size)):
        parent = hash_block(parent, token_ids[i * page_size:(i + 1) * page_size])
        hashes.append(parent)
    return hashes


def cached_prefix_shifted(hashes, cached, num_tokens, page_size):
    pages = []
    for h in hashes:
        if h not in cached:
            break
        pages.append(cached[h])
    return pages, min(len(pages) << _lg(page_size), num_tokens - 1)


def wire_bytes_shifted(seq_lens, num_heads, num_kv_heads, head_dim, page_size, world, size):
    batch = len(seq_lens)
    pages = (int(max(seq_lens)) + page_size - 1) >> _lg(page_size)
    return (4 * (2 + batch + batch * pages), batch * (num_heads // world) * head_dim * size,
            int(np.sum(seq_lens)) * 2 * (num_kv_heads // world) * head_dim * size)


# the spec's step with every page count a shift, as if page_size were a power of two
schedule_step_shifted = step_model(shifted=True)


# the spec's serve with its page count a shift, as if page_size were a power of two
serve_shifted = serve_loop(spec_admission,
                           pages_for=lambda n, page_size: (n + page_size - 1) >> _lg(page_size))


PYTHON_MISTAKES = [
    ("attend_one", attend_shifted, POW2),
    ("attend_one", attend_own_scale, "use the scale you are given (0.3 here)"),
    ("attend_one", attend_no_max, "overflows float64"),
    ("pages_for_next_token", next_page_masked, POW2),
    ("serve", serve_shifted, POW2),
    ("tile_work", tile_work_shifted, "kv_tile = 20 here is not"),
    ("block_hashes", block_hashes_shifted, POW2),
    ("cached_prefix", cached_prefix_shifted, POW2),
    ("wire_bytes", wire_bytes_shifted, "page_size = 12 here is not"),
    ("schedule_step", schedule_step_shifted, "only when page_size is a power of two"),
]


@pytest.mark.parametrize("task, impl, phrase", PYTHON_MISTAKES,
                         ids=[f"{t}-{f.__name__}" for t, f, _ in PYTHON_MISTAKES])
def test_an_answer_right_only_for_the_old_cases_fails(task, impl, phrase):
    assert_caught(task, impl, phrase)


@pytest.mark.parametrize("task, impl", [("attend_one", attend_float32),
                                        ("tile_work", tile_work_right)],
                         ids=lambda x: getattr(x, "__name__", x))
def test_a_right_answer_written_another_way_passes(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed


# -- decode_step: the manager's scale ---------------------------------------------------------

def _pages_for_next_token(cache, seq_id):
    n = cache.seq_len(seq_id)
    if n % cache.page_size == 0:
        return 1
    return 1 if cache.allocator.ref_count(cache.block_table(seq_id)[-1]) > 1 else 0


def _manager(scale_of):
    class Manager(pl.PagedAttentionManager):
        def decode_step(self, seq_ids, q, k, v):
            seq_ids = list(seq_ids)
            needed = sum(_pages_for_next_token(self.cache, s) for s in seq_ids)
            if needed > self.cache.allocator.num_free:
                raise pl.OutOfPagesError(needed, self.cache.allocator.num_free,
                                         self.cache.allocator.num_pages)
            for i, seq_id in enumerate(seq_ids):
                self.cache.append(seq_id, k[i:i + 1], v[i:i + 1])
            tables, lens = self.cache.block_tables(seq_ids)
            return pl.paged_attention_decode(self.xp.asarray(q, dtype=self.cache.dtype),
                                             self.cache.k_cache, self.cache.v_cache, tables,
                                             lens, scale_of(self))
    return Manager


def test_decode_step_with_the_attentions_default_scale_fails():
    assert_caught("decode_step", _manager(lambda m: None), "pass self.scale to the attention")


def test_decode_step_with_self_scale_passes():
    result, printed = run_check("decode_step", _manager(lambda m: m.scale))
    assert result.passed, printed


# -- kernels: the solution with one shortcut edited in ----------------------------------------

_SHIFT_T = ("table[j / page_size] * page_size + j % page_size",
            "table[j >> (__ffs(page_size) - 1)] * page_size + (j & (page_size - 1))")
_OWN_SCALE = "not by 1/sqrt(head_dim) (0.2041) worked out in the kernel"
KERNEL_MISTAKES = [
    ("naive_kernel", "04_naive_kernel.ipynb", "SOURCE_NAIVE", "page shift", [_SHIFT_T],
     KERNEL_POW2),
    ("naive_kernel", "04_naive_kernel.ipynb", "SOURCE_NAIVE", "own scale",
     [("score *= scale;", "score *= rsqrtf((float)head_dim);")], _OWN_SCALE),
    ("naive_kernel", "04_naive_kernel.ipynb", "SOURCE_NAIVE", "group shift",
     [("int kv_head = h / (num_heads / num_kv_heads);",
       "int kv_head = h >> (__ffs(num_heads / num_kv_heads) - 1);")],
     "kv head h / (num_heads / num_kv_heads)"),
    ("tiled_kernel", "05_tiled_kernel.ipynb", "SOURCE_TILED", "head_dim shift",
     [("i / head_dim;", "(i >> (__ffs(head_dim) - 1));"),
      ("i % head_dim;", "(i & (head_dim - 1));")], KERNEL_POW2),
    ("tiled_kernel", "05_tiled_kernel.ipynb", "SOURCE_TILED", "page count shift",
     [("(keys_needed + page_size - 1) / page_size",
       "(keys_needed + page_size - 1) >> (__ffs(page_size) - 1)")], KERNEL_POW2),
    ("tiled_kernel", "05_tiled_kernel.ipynb", "SOURCE_TILED", "own scale",
     [("q[row + d] * scale", "q[row + d] * rsqrtf((float)head_dim)")], _OWN_SCALE),
    ("decode_partition", "06_decode_kernel.ipynb", "SOURCE_PARTITION", "own scale",
     [("q_row[d] * scale", "q_row[d] * rsqrtf((float)head_dim)")],
     "not 1/sqrt(head_dim) worked out in the kernel"),
    ("tc_tile_scores", "09_tensor_core_decode.ipynb", "SOURCE_TILE", "group by a shift",
     [("int group = num_heads / num_kv_heads;",
       "int group = num_heads >> (__ffs(num_kv_heads) - 1);")],
     "only when n is a power of two, and num_kv_heads = 3"),
    ("dequant_decode", "11_kv_compression.ipynb", "SOURCE_READ", "own scale",
     [("float s = dot * scale;", "float s = dot * rsqrtf((float)head_dim);")],
     "not 1/sqrt(head_dim) worked out in the kernel"),
]


@pytest.mark.parametrize("task, notebook, variable, name, edits, phrase", KERNEL_MISTAKES,
                         ids=[f"{m[0]}-{m[3]}" for m in KERNEL_MISTAKES])
def test_a_kernel_right_only_for_the_old_cases_fails(task, notebook, variable, name, edits,
                                                     phrase):
    assert_caught(task, mutate(solution_source(notebook, variable), edits), phrase,
                  device="cpu")


@pytest.mark.parametrize("task, notebook, variable", sorted({m[:3] for m in KERNEL_MISTAKES}))
def test_the_solution_kernels_pass_the_new_cases(task, notebook, variable):
    result, printed = run_check(task, solution_source(notebook, variable), device="cpu")
    assert result.passed, printed
