"""Right answers written otherwise than the solutions, for workbooks 03, 06, 09, 10, 13 and
00: each passes its check with no hint.

Refused before: a puzzle kernel (workbook 03) whose parameters have names of its own (the
launch passes them by position; the check looked the counts up by the stub's names and
raised KeyError). Told wrongly before: decode_partition reading q once per token (over the
prompt's budget, as the prompt says) was told that its lanes read whole rows. And two
prompts now say what their checks insist on: merge_partitions' result in float64, and no
cooperative groups on the CPU executor (the hint of that compile error says so too).
"""
import json
import math

import numpy as np
import pytest

from tests.check_helpers import (REPO, assert_caught, assert_passes_without_hint, mutate,
                                 solution_source, with_solution_body)


def _puzzle(variable, edits):
    return mutate(solution_source("03_cuda_onramp.ipynb", variable), edits)


# --- refused before: kernel parameters named otherwise -------------------------------------

RENAMED_PUZZLES = [
    ("puzzle_map", "SOURCE_MAP", [("const float* a, float* out", "const float* src, float* dst"),
                                  ("out[i] = a[i] + 10.0f;", "dst[i] = src[i] + 10.0f;")]),
    ("puzzle_shared", "SOURCE_SHARED", [
        ("const float* q, const float* k, float* scores", "const float* query, const float* "
                                                          "keys, float* s"),
        ("q_shared[d] = q[d];", "q_shared[d] = query[d];"),
        ("k[t * head_dim + d]", "keys[t * head_dim + d]"), ("scores[t] = dot;", "s[t] = dot;")]),
    ("puzzle_warp_sum", "SOURCE_WARP_SUM", [("const float* a, float* out, int n",
                                             "const float* x, float* sums, int len"),
                                            ("i < n ? a[i]", "i < len ? x[i]"),
                                            ("warp * 32 < n) out[warp]",
                                             "warp * 32 < len) sums[warp]")]),
]


@pytest.mark.parametrize("task, variable, edits", RENAMED_PUZZLES,
                         ids=[p[0] for p in RENAMED_PUZZLES])
def test_a_puzzle_with_parameters_of_its_own_names_passes(task, variable, edits):
    assert_passes_without_hint(task, _puzzle(variable, edits), device="cpu")


def test_a_renamed_puzzle_is_still_told_its_mistake_by_the_stubs_names():
    wrong = _puzzle("SOURCE_MAP", [("const float* a, float* out", "const float* src, float* dst"),
                                   ("out[i] = a[i] + 10.0f;", "dst[i] = dst[i] + 10.0f;")])
    assert_caught("puzzle_map", wrong, "never read a", device="cpu")


# --- told wrongly before: q read once per token --------------------------------------------

def _q_per_token(names=False):
    source = mutate(solution_source("06_decode_kernel.ipynb", "SOURCE_PARTITION"), [
        ("if (d < head_dim) dot += my_q[i] * k_cache[row + d];",
         "if (d < head_dim) dot += q_row[d] * scale * k_cache[row + d];")])
    if names:   # the inputs named otherwise: the hint finds q by its position
        source = mutate(source, [("const float* q,", "const float* query,"),
                                 ("q + ((long long)b", "query + ((long long)b"),
                                 ("k_cache", "keys"), ("v_cache", "values")])
    return source


@pytest.mark.parametrize("names", [False, True], ids=["stub names", "own names"])
def test_q_read_once_per_token_is_told_so(names):
    assert_caught("decode_partition", _q_per_token(names), "q was read",
                  not_phrases=["not shared out", "whole rows"], device="cpu")


# --- the prompts say what the checks insist on ---------------------------------------------

def _markdown(notebook):
    cells = json.loads((REPO / "solutions" / notebook).read_text(encoding="utf-8"))["cells"]
    return " ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def test_merge_partitions_prompt_asks_for_float64_and_the_check_refuses_float32():
    prompt = " ".join(_markdown("06_decode_kernel.ipynb").split())
    assert "`[head_dim]` in float64" in prompt

    def merged_in_float32(m, l, o):
        w = l * np.exp(m - m.max())
        return (w @ o / w.sum()).astype(np.float32)
    assert_caught("merge_partitions", merged_in_float32, "keep the merge in float64")


@pytest.mark.parametrize("notebook", ["03_cuda_onramp.ipynb", "06_decode_kernel.ipynb"])
def test_kernel_workbooks_say_the_executor_has_no_cooperative_groups(notebook):
    assert "no cooperative groups" in " ".join(_markdown(notebook).split())


def test_cooperative_groups_are_told_the_executor_has_none():
    kernel = with_solution_body("03_cuda_onramp.ipynb", "SOURCE_WARP_SUM", """
    auto warp = cooperative_groups::tiled_partition<32>(cooperative_groups::this_thread_block());
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? a[i] : 0.0f;
    for (int o = 16; o > 0; o /= 2) v += warp.shfl_down(v, o);
    if (warp.thread_rank() == 0 && i < n) out[i / 32] = v;
""")
    assert_caught("puzzle_warp_sum", "#include <cooperative_groups.h>\n" + kernel,
                  "the CPU executor, which runs the check and counts its accesses, has none",
                  device="cpu")


# --- kernels that already pass --------------------------------------------------------------

GUARD_STRIDED = """
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
"""

# thread 0 adds the 8 warp totals itself, after shuffles down
BLOCK_SUM_SERIAL = """
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? a[i] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) warp_totals[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int w = 0; w < 8; ++w) s += warp_totals[w];
        out[blockIdx.x] = s;
    }
"""

# each lane a contiguous run of dims, the page read by lane 0 and shuffled, the score
# reduced down to lane 0 and broadcast, m and l stored by lane 31
PARTITION_CHUNKED = """
    int seq_len = seq_lens[b];
    int start = part * part_len;
    if (start >= seq_len) return;
    int end = min(seq_len, start + part_len);
    int kv_head = h / (num_heads / num_kv_heads);
    const int* table = block_tables + (long long)b * max_pages;
    const float* q_row = q + ((long long)b * num_heads + h) * head_dim;
    int per = (head_dim + 31) / 32;
    int d0 = lane * per, d1 = min(head_dim, d0 + per);
    float qv[4], acc[4];
    for (int i = 0; i < 4; ++i) { qv[i] = d0 + i < d1 ? q_row[d0 + i] : 0.0f; acc[i] = 0.0f; }
    float m = -1e30f, l = 0.0f;
    for (int t = start; t < end; ++t) {
        int page = lane == 0 ? table[t / page_size] : 0;
        page = __shfl_sync(0xffffffffu, page, 0);
        long long row = (((long long)page * page_size + t % page_size) * num_kv_heads
                         + kv_head) * head_dim;
        float dot = 0.0f;
        for (int i = 0; i < per; ++i) if (d0 + i < d1) dot += qv[i] * k_cache[row + d0 + i];
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_down_sync(0xffffffffu, dot, o);
        dot = __shfl_sync(0xffffffffu, dot, 0) * scale;
        float mn = fmaxf(m, dot), c = __expf(m - mn), w = __expf(dot - mn);
        l = l * c + w;
        for (int i = 0; i < per; ++i)
            if (d0 + i < d1) acc[i] = acc[i] * c + w * v_cache[row + d0 + i];
        m = mn;
    }
    long long so = ((long long)b * num_heads + h) * max_parts + part;
    for (int i = 0; i < per; ++i) if (d0 + i < d1) part_out[so * head_dim + d0 + i] = acc[i] / l;
    if (lane == 31) { part_ml[so * 2] = m; part_ml[so * 2 + 1] = l; }
"""

# the partitions merged one after another, each dim's running (m, l, o) in registers
MERGE_ONLINE = """
    long long row = (long long)b * num_heads + h;
    int n_parts = (int)ceilf((float)seq_lens[b] / part_len);
    for (int d = threadIdx.x; d < head_dim; d += 32) {
        float M = part_ml[row * max_parts * 2], L = part_ml[row * max_parts * 2 + 1];
        float O = part_out[row * max_parts * head_dim + d];
        for (int p = 1; p < n_parts; ++p) {
            float mp = part_ml[(row * max_parts + p) * 2];
            float lp = part_ml[(row * max_parts + p) * 2 + 1];
            float mn = fmaxf(M, mp), x = L * expf(M - mn), y = lp * expf(mp - mn);
            O = (O * x + part_out[(row * max_parts + p) * head_dim + d] * y) / (x + y);
            L = x + y;
            M = mn;
        }
        out[row * head_dim + d] = O;
    }
"""

# lanes 0-15 copy the Q rows, lanes 16-31 the K rows, one whole row each
TILE_LANE_PER_ROW = """
    int group = num_heads / num_kv_heads;
    int r = lane % 16;
    if (lane < 16) {
        for (int d = 0; d < head_dim; ++d)
            q_tile[r * head_dim + d] = r < group ? q[(kv_head * group + r) * head_dim + d]
                                                 : __float2half(0.0f);
    } else {
        int t = tile * 16 + r;
        const __half* row = t < seq_len ? k_cache + (((long long)block_table[t / page_size]
            * page_size + t % page_size) * num_kv_heads + kv_head) * head_dim : nullptr;
        for (int d = 0; d < head_dim; ++d)
            k_tile[r * head_dim + d] = row ? row[d] : __float2half(0.0f);
    }
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k0 = 0; k0 < head_dim; k0 += 16) {
        wmma::load_matrix_sync(fa, q_tile + k0, head_dim);
        wmma::load_matrix_sync(fb, k_tile + k0, head_dim);
        wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(scores + (blockIdx.y * gridDim.x + blockIdx.x) * 256, acc, 16,
                            wmma::mem_row_major);
"""


@pytest.mark.parametrize("task, notebook, variable, body", [
    ("puzzle_guard", "03_cuda_onramp.ipynb", "SOURCE_GUARD", GUARD_STRIDED),
    ("puzzle_block_sum", "03_cuda_onramp.ipynb", "SOURCE_BLOCK_SUM", BLOCK_SUM_SERIAL),
    ("decode_partition", "06_decode_kernel.ipynb", "SOURCE_PARTITION", PARTITION_CHUNKED),
    ("decode_merge", "06_decode_kernel.ipynb", "SOURCE_MERGE", MERGE_ONLINE),
    ("tc_tile_scores", "09_tensor_core_decode.ipynb", "SOURCE_TILE", TILE_LANE_PER_ROW),
], ids=["guard strided", "block sum serial", "partition chunked dims", "merge online",
        "tile lane per row"])
def test_kernel_variants_pass(task, notebook, variable, body):
    assert_passes_without_hint(task, with_solution_body(notebook, variable, body), device="cpu")


# --- workbooks 06 and 09 in NumPy -----------------------------------------------------------

def merge_by_loop(m, l, o):
    top, num, den = max(m), np.zeros(o.shape[1]), 0.0
    for mp, lp, op in zip(m, l, o):
        w = lp * math.exp(mp - top)
        num, den = num + w * op, den + w
    return num / den


def merge_by_log_sum_exp(m, l, o):
    lse = m + np.log(l)
    w = np.exp(lse - lse.max())
    return (w[:, None] * o).sum(0) / w.sum()


def rows_by_pad(q, kv_head, group):
    rows = q[kv_head * group:(kv_head + 1) * group]
    return np.pad(rows, ((0, (-group) % 16), (0, 0))).reshape(-1, 16, q.shape[1])


def rows_by_loop(q, kv_head, group):
    out = np.zeros((math.ceil(group / 16), 16, q.shape[1]), q.dtype)
    for i in range(group):
        out[i // 16, i % 16] = q[kv_head * group + i]
    return out


def mask_by_where(s, tile, seq_len, scale):
    cols = 16 * tile + np.arange(16)
    return np.where(cols < seq_len, s * scale, -np.inf).astype(np.float32)


def mask_by_added_row(s, tile, seq_len, scale):
    mask = np.where(16 * tile + np.arange(16) < seq_len, 0.0, -np.inf).astype(np.float32)
    return s * np.float32(scale) + mask


@pytest.mark.parametrize("task, impl", [
    ("merge_partitions", merge_by_loop), ("merge_partitions", merge_by_log_sum_exp),
    ("group_rows", rows_by_pad), ("group_rows", rows_by_loop),
    ("mask_tile", mask_by_where), ("mask_tile", mask_by_added_row),
], ids=lambda v: v.__name__ if callable(v) else v)
def test_workbook_06_09_variants_pass(task, impl):
    assert_passes_without_hint(task, impl)


# --- workbook 10 ----------------------------------------------------------------------------

def mask_by_tri(q_len, seq_len):
    return np.tri(q_len, seq_len, k=seq_len - q_len, dtype=bool)


def keys_by_searchsorted(qo_indptr, seq_lens):
    r = np.arange(qo_indptr[-1])
    b = np.searchsorted(qo_indptr, r, side="right") - 1
    return seq_lens[b] - np.diff(qo_indptr)[b] + (r - qo_indptr[b]) + 1


def keys_as_int32_loop(qo_indptr, seq_lens):
    out = []
    for b, n in enumerate(seq_lens):
        q_len = qo_indptr[b + 1] - qo_indptr[b]
        out += [n - q_len + i + 1 for i in range(q_len)]
    return np.array(out, dtype=np.int32)


def tiles_as_generator(qo_indptr, seq_lens, rows, kv_tile):
    for b, (lo, hi) in enumerate(zip(qo_indptr[:-1], qo_indptr[1:])):
        for first in range(0, hi - lo, rows):
            keys = seq_lens[b] - (hi - lo) + min(first + rows, hi - lo)
            yield b, first, (keys - 1) // kv_tile + 1


def tiles_by_ceil(qo_indptr, seq_lens, rows, kv_tile):
    q_lens = np.diff(qo_indptr)
    out = []
    for b in np.flatnonzero(q_lens):
        firsts = np.arange(0, q_lens[b], rows)
        ends = np.minimum(firsts + rows, q_lens[b])
        out += [(b, f, math.ceil((seq_lens[b] - q_lens[b] + e) / kv_tile))
                for f, e in zip(firsts, ends)]
    return out


@pytest.mark.parametrize("task, impl", [
    ("chunk_mask", mask_by_tri), ("visible_keys", keys_by_searchsorted),
    ("visible_keys", keys_as_int32_loop), ("tile_work", tiles_as_generator),
    ("tile_work", tiles_by_ceil),
], ids=lambda v: v.__name__ if callable(v) else v)
def test_workbook_10_variants_pass(task, impl):
    assert_passes_without_hint(task, impl)


# --- workbooks 13 and 00 --------------------------------------------------------------------

def split_by_group(rank, world_size, num_heads, num_kv_heads):
    per, rest = divmod(num_kv_heads, world_size)
    if rest:
        raise ValueError(f"world_size {world_size} does not divide {num_kv_heads} KV heads")
    group = num_heads // num_kv_heads
    return [rank * per, (rank + 1) * per], [rank * per * group, (rank + 1) * per * group]


def gather_by_loop(gathered, world_size, batch, num_heads, head_dim):
    per = num_heads // world_size
    out = np.zeros((batch, num_heads, head_dim))    # float64: the values are the same
    for r, block in enumerate(np.split(gathered, world_size)):
        out[:, r * per:(r + 1) * per] = block.reshape(batch, per, head_dim)
    return out


def wire_in_numpy(seq_lens, num_heads, num_kv_heads, head_dim, page_size, world_size,
                  itemsize):
    s = np.asarray(seq_lens, dtype=np.int64)
    pages = ((s + page_size - 1) // page_size).max()
    return (4 * (2 + s.size + s.size * pages),
            np.int64(s.size * num_heads // world_size * head_dim * itemsize),
            s.sum() * 2 * num_kv_heads // world_size * head_dim * itemsize)


def pages_by_divmod(seq_len, page_size):
    full, rest = divmod(seq_len, page_size)
    return full + (rest > 0)


def reserved_by_mean(seq_lens, max_len):
    return 1 - np.mean(seq_lens) / max_len if len(seq_lens) else 0.0


def paged_by_tails(seq_lens, page_size):
    tails = (-seq_lens) % page_size
    allocated = seq_lens.sum() + tails.sum()
    return tails.sum() / allocated if allocated else 0


@pytest.mark.parametrize("task, impl", [
    ("head_split", split_by_group), ("gather_heads", gather_by_loop),
    ("wire_bytes", wire_in_numpy), ("pages_needed", pages_by_divmod),
    ("reserved_waste", reserved_by_mean), ("paged_waste", paged_by_tails),
], ids=lambda v: v.__name__ if callable(v) else v)
def test_workbook_13_00_variants_pass(task, impl):
    assert_passes_without_hint(task, impl)
