"""Hunt 146: wrong kernels a learner really writes for workbooks 02-06 (on the CPU executor),
and right kernels written another way.

Each wrong kernel is the solution with one learner's mistake; it must fail with a hint naming
that mistake. Each right one must pass.
"""
import pytest

from tests.check_helpers import assert_caught, mutate, run_check, solution_source

_SLOT = "long long slot = (long long)page * page_size + t % page_size;"
_ROW_LOOP = """    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
        int kv_head = i / head_dim, d = i % head_dim;"""

GATHER = [
    ("page id as slot", [(_SLOT, "long long slot = page;")], "is a page id, not a slot"),
    ("page not times page_size", [(_SLOT, "long long slot = (long long)page + t % page_size;")],
     "multiply it by page_size"),
    ("pages of 16", [("int page = block_tables[b * max_pages + t / page_size];\n    " + _SLOT,
                      "int page = block_tables[b * max_pages + t / 16];\n"
                      "    long long slot = (long long)page * 16 + t % 16;")],
     "pages of 16 tokens"),
    ("padding rows not zeroed", [("            k_out[out_row + i] = 0.0f;\n"
                                  "            v_out[out_row + i] = 0.0f;\n", "")],
     "must hold zeros"),
    ("t > seq_len", [("if (t >= seq_lens[b])", "if (t > seq_lens[b])")], "t >= seq_lens[b]"),
    ("table rows max_len apart", [("block_tables[b * max_pages + t / page_size]",
                                   "block_tables[b * max_len + t / page_size]")],
     "row b starts at b * max_pages"),
    ("every thread copies the row", [(_ROW_LOOP, _ROW_LOOP.replace("i += blockDim.x", "i += 1"))],
     "stored more than once"),
    ("one value per thread", [(_ROW_LOOP, _ROW_LOOP.replace("i < row_len", "i < blockDim.x"))],
     "with a stride"),
]

GATHER_RIGHT = [
    [(_SLOT, "int offset = t - (t / page_size) * page_size;\n"
             "    long long slot = (long long)page * page_size + offset;")],
    [("""    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
        int kv_head = i / head_dim, d = i % head_dim;
        long long src = (slot * num_kv_heads + kv_head) * head_dim + d;
        k_out[out_row + i] = k_cache[src];
        v_out[out_row + i] = v_cache[src];
    }""", """    const float* ks = k_cache + slot * row_len;
    const float* vs = v_cache + slot * row_len;
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
        k_out[out_row + i] = ks[i];
        v_out[out_row + i] = vs[i];
    }""")],
    [("""    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
        int kv_head = i / head_dim, d = i % head_dim;
        long long src = (slot * num_kv_heads + kv_head) * head_dim + d;
        k_out[out_row + i] = k_cache[src];
        v_out[out_row + i] = v_cache[src];
    }""", """    for (int h = 0; h < num_kv_heads; ++h)
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
            long long src = (slot * num_kv_heads + h) * head_dim + d;
            k_out[out_row + h * head_dim + d] = k_cache[src];
            v_out[out_row + h * head_dim + d] = v_cache[src];
        }""")],
]


@pytest.mark.parametrize("edits, phrase", [m[1:] for m in GATHER], ids=[m[0] for m in GATHER])
def test_gather_kernel_mistake_is_named(edits, phrase):
    source = mutate(solution_source("02_page_access.ipynb", "SOURCE_GATHER"), edits)
    assert_caught("gather_kernel", source, phrase, device="cpu")


@pytest.mark.parametrize("edits", GATHER_RIGHT, ids=["offset by subtraction", "row pointers",
                                                     "a loop per head"])
def test_gather_kernel_written_another_way_passes(edits):
    source = mutate(solution_source("02_page_access.ipynb", "SOURCE_GATHER"), edits)
    result, printed = run_check("gather_kernel", source, device="cpu")
    assert result.passed, printed


# -- workbook 03: the puzzles ------------------------------------------------------------------

_MAP = "out[i] = a[i] + 10.0f;"
_GUARD = "if (i < n) out[i] = a[i] + b[i];"
_SHUFFLE = "v += __shfl_xor_sync(0xffffffffu, v, offset);"
_LOAD_Q = "for (int d = threadIdx.x; d < head_dim; d += blockDim.x)\n        q_shared[d] = q[d];"

PUZZLES = [
    ("map", "SOURCE_MAP", "a * 10", [(_MAP, "out[i] = a[i] * 10.0f;")], "add 10, do not multiply"),
    ("map", "SOURCE_MAP", "int", [(_MAP, "out[i] = (int)a[i] + 10;")], "truncates"),
    ("map", "SOURCE_MAP", "thread 0 only", [(_MAP, "if (i == 0) " + _MAP)],
     "only thread 0 wrote"),
    ("map", "SOURCE_MAP", "next element", [(_MAP, "out[i] = a[i + 1] + 10.0f;")],
     "its index into a is wrong"),
    ("map", "SOURCE_MAP", "out read", [(_MAP, "out[i] = out[i] + 10.0f;")], "never read a"),
    ("guard", "SOURCE_GUARD", "n - 1", [("if (i < n)", "if (i < n - 1)")], "stops one short"),
    ("guard", "SOURCE_GUARD", "<= n", [("if (i < n)", "if (i <= n)")], "guard with i < n"),
    ("guard", "SOURCE_GUARD", "no guard", [(_GUARD, "out[i] = a[i] + b[i];")], "guard with i < n"),
    ("guard", "SOURCE_GUARD", "threadIdx only", [(
        "int i = blockIdx.x * blockDim.x + threadIdx.x;", "int i = threadIdx.x;")],
     "not threadIdx.x alone"),
    ("guard", "SOURCE_GUARD", "blockIdx + threadIdx", [(
        "int i = blockIdx.x * blockDim.x + threadIdx.x;", "int i = blockIdx.x + threadIdx.x;")],
     "several threads wrote the same element"),
    ("2d", "SOURCE_2D", "x and y swapped", [(
        "int col = blockIdx.x * blockDim.x + threadIdx.x;\n"
        "    int row = blockIdx.y * blockDim.y + threadIdx.y;",
        "int row = blockIdx.x * blockDim.x + threadIdx.x;\n"
        "    int col = blockIdx.y * blockDim.y + threadIdx.y;")], "x and y are exchanged"),
    ("2d", "SOURCE_2D", "bias by row", [("+ bias[col]", "+ bias[row]")], "indexed by the row"),
    ("2d", "SOURCE_2D", "rows apart by rows", [(
        "out[row * cols + col] = x[row * cols + col]",
        "out[row * rows + col] = x[row * rows + col]")], "r * cols + c"),
    ("2d", "SOURCE_2D", "row guard only", [("if (row < rows && col < cols)", "if (row < rows)")],
     "guard the row AND the column"),
    ("2d", "SOURCE_2D", "|| guard", [("row < rows && col < cols", "row < rows || col < cols")],
     "guard the row AND the column"),
    ("shared", "SOURCE_SHARED", "no barrier", [("    __syncthreads();\n", "")],
     "no __syncthreads() between"),
    ("shared", "SOURCE_SHARED", "one value per thread", [(
        _LOAD_Q, "if (threadIdx.x < head_dim) q_shared[threadIdx.x] = q[threadIdx.x];")],
     "some threads must load more than one"),
    ("shared", "SOURCE_SHARED", "return before the barrier", [(
        "    " + _LOAD_Q + "\n    __syncthreads();\n"
        "    int t = blockIdx.x * blockDim.x + threadIdx.x;\n    if (t < n) {",
        "    int t = blockIdx.x * blockDim.x + threadIdx.x;\n    if (t >= n) return;\n"
        "    " + _LOAD_Q + "\n    __syncthreads();\n    {")], "must reach every barrier"),
    ("shared", "SOURCE_SHARED", "k by columns", [("k[t * head_dim + d]", "k[d * n + t]")],
     "k was read column after column"),
    ("shared", "SOURCE_SHARED", "thread 0 loads q", [(
        _LOAD_Q, "if (threadIdx.x == 0) for (int d = 0; d < head_dim; ++d) q_shared[d] = q[d];")],
     "by too few threads"),
    ("warp_sum", "SOURCE_WARP_SUM", "from offset 8", [("for (int offset = 16;",
                                                       "for (int offset = 8;")],
     "only lanes 0-15"),
    ("warp_sum", "SOURCE_WARP_SUM", "down to offset 2", [("offset > 0", "offset > 1")],
     "only the even lanes"),
    ("warp_sum", "SOURCE_WARP_SUM", "no 0 past n", [("float v = i < n ? a[i] : 0.0f;",
                                                    "float v = a[i];")],
     "a thread past n has no element"),
    ("warp_sum", "SOURCE_WARP_SUM", "return past n", [(
        "float v = i < n ? a[i] : 0.0f;", "if (i >= n) return;\n    float v = a[i];")],
     "every lane in the mask must reach every __shfl"),
    ("warp_sum", "SOURCE_WARP_SUM", "every lane writes", [(
        "if (i % 32 == 0 && warp * 32 < n)", "if (warp * 32 < n)")], "let one thread own"),
    ("block_sum", "SOURCE_BLOCK_SUM", "no barrier", [("    __syncthreads();\n", "")],
     "no __syncthreads() between"),
    ("block_sum", "SOURCE_BLOCK_SUM", "all 32 totals read", [(
        "v = lane < blockDim.x / 32 ? warp_totals[lane] : 0.0f;", "v = warp_totals[lane];")],
     "its indices run 0..7"),
    ("block_sum", "SOURCE_BLOCK_SUM", "buffer of 4", [("__shared__ float warp_totals[8];",
                                                      "__shared__ float warp_totals[4];")],
     "its indices run 0..3"),
    ("block_sum", "SOURCE_BLOCK_SUM", "out by thread", [(
        "if (lane == 0) out[blockIdx.x] = v;", "if (lane == 0) out[threadIdx.x] = v;")],
     "several threads wrote the same element"),
    ("block_sum", "SOURCE_BLOCK_SUM", "no 0 past n", [("float v = i < n ? a[i] : 0.0f;",
                                                      "float v = a[i];")],
     "a thread past n has no element"),
]

PUZZLES_RIGHT = [
    ("map", "SOURCE_MAP", [(_MAP, "float x = a[i];\n    out[i] = x + 10;")]),
    ("map", "SOURCE_MAP", [(_MAP, "*(out + i) = *(a + i) + 10.0f;")]),
    ("map", "SOURCE_MAP", [(_MAP, "out[threadIdx.x] = 10.0f + a[threadIdx.x];")]),
    ("guard", "SOURCE_GUARD", [(_GUARD, "if (i >= n) return;\n    out[i] = a[i] + b[i];")]),
    ("guard", "SOURCE_GUARD", [(_GUARD, "for (; i < n; i += gridDim.x * blockDim.x) "
                                        "out[i] = a[i] + b[i];")]),
    ("guard", "SOURCE_GUARD", [(_GUARD, "if (!(i >= n)) out[i] = b[i] + a[i];")]),
    ("2d", "SOURCE_2D", [("if (row < rows && col < cols) out",
                          "if (row >= rows || col >= cols) return;\n    out")]),
    ("2d", "SOURCE_2D", [("if (row < rows && col < cols) out[row * cols + col] = "
                          "x[row * cols + col] + bias[col];",
                          "int at = row * cols + col;\n"
                          "    if (col < cols && row < rows) out[at] = x[at] + bias[col];")]),
    ("2d", "SOURCE_2D", [("int col = blockIdx.x * blockDim.x + threadIdx.x;\n"
                          "    int row = blockIdx.y * blockDim.y + threadIdx.y;",
                          "int row = threadIdx.y + blockDim.y * blockIdx.y;\n"
                          "    int col = threadIdx.x + blockDim.x * blockIdx.x;")]),
    ("shared", "SOURCE_SHARED", [(_LOAD_Q, "int d = threadIdx.x;\n"
                                           "    while (d < head_dim) { q_shared[d] = q[d]; "
                                           "d += blockDim.x; }")]),
    ("shared", "SOURCE_SHARED", [("float dot = 0.0f;", "double dot = 0.0;"),
                                 ("scores[t] = dot;", "scores[t] = (float)dot;")]),
    ("shared", "SOURCE_SHARED", [("k[t * head_dim + d]", "(k + t * head_dim)[d]")]),
    ("warp_sum", "SOURCE_WARP_SUM", [(_SHUFFLE, "v += __shfl_down_sync(0xffffffffu, v, offset);")]),
    ("warp_sum", "SOURCE_WARP_SUM", [("for (int offset = 16; offset > 0; offset /= 2)",
                                      "for (int offset = 1; offset < 32; offset *= 2)")]),
    ("warp_sum", "SOURCE_WARP_SUM", [("if (i % 32 == 0 && warp * 32 < n)",
                                      "if ((threadIdx.x & 31) == 0 && warp * 32 < n)")]),
    ("block_sum", "SOURCE_BLOCK_SUM", [("        for (int offset = 16; offset > 0; offset /= 2)\n"
                                        "            v += __shfl_xor_sync(0xffffffffu, v, offset);"
                                        "\n        if (lane == 0) out",
                                        "        for (int offset = 4; offset > 0; offset /= 2)\n"
                                        "            v += __shfl_xor_sync(0xffffffffu, v, offset);"
                                        "\n        if (lane == 0) out")]),
    ("block_sum", "SOURCE_BLOCK_SUM",
     [(_SHUFFLE, "v += __shfl_down_sync(0xffffffffu, v, offset);")]),
    ("block_sum", "SOURCE_BLOCK_SUM", [("int lane = threadIdx.x % 32, warp = threadIdx.x / 32;",
                                        "int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;")]),
]


@pytest.mark.parametrize("puzzle, variable, edits, phrase", [p[:2] + p[3:] for p in PUZZLES],
                         ids=[f"{p[0]}-{p[2]}" for p in PUZZLES])
def test_puzzle_mistake_is_named(puzzle, variable, edits, phrase):
    source = mutate(solution_source("03_cuda_onramp.ipynb", variable), edits)
    assert_caught(f"puzzle_{puzzle}", source, phrase, device="cpu")


@pytest.mark.parametrize("puzzle, variable, edits", PUZZLES_RIGHT,
                         ids=[f"{p[0]}-{i}" for i, p in enumerate(PUZZLES_RIGHT)])
def test_puzzle_written_another_way_passes(puzzle, variable, edits):
    source = mutate(solution_source("03_cuda_onramp.ipynb", variable), edits)
    result, printed = run_check(f"puzzle_{puzzle}", source, device="cpu")
    assert result.passed, printed


# -- workbooks 04-06: the attention kernels ---------------------------------------------------

_NAIVE_SLOT = "long long slot = (long long)table[j / page_size] * page_size + j % page_size;"
_KV_HEAD = "int kv_head = h / (num_heads / num_kv_heads);"
_TILED_SLOT = "long long slot = (long long)page * page_size + i / head_dim;"
_PART_SLOT = "long long slot = (long long)table[t / page_size] * page_size + t % page_size;"
_MERGE_W = "float w = ml[2 * p + 1] * expf(ml[2 * p] - m_all);"

KERNELS = [
    ("naive_kernel", "page id as slot", [(_NAIVE_SLOT, "long long slot = table[j / page_size];")],
     "is a page id, not a slot"),
    ("naive_kernel", "pages of 16", [(_NAIVE_SLOT, "long long slot = (long long)table[j / 16] "
                                                   "* 16 + j % 16;")], "pages of 16 tokens"),
    ("naive_kernel", "MHA only", [(_KV_HEAD, "int kv_head = h;")], "(GQA)"),
    ("naive_kernel", "no max", [("float rescale = expf(running_max - new_max);  // 0 for the "
                                 "first key\n        float weight = expf(score - new_max);",
                                 "float rescale = 1.0f;\n        float weight = expf(score);")],
     "no max is subtracted"),
    ("naive_kernel", "scale twice", [("score *= scale;", "score *= scale * scale;")],
     "scaled twice"),
    ("naive_kernel", "j < t", [("for (int j = 0; j <= t; ++j) {", "for (int j = 0; j < t; ++j) {")],
     "stops one key early"),
    ("naive_kernel", "no causal mask", [("for (int j = 0; j <= t; ++j) {",
                                         "for (int j = 0; j < seq_lens[b]; ++j) {")],
     "no causal mask"),
    ("naive_kernel", "padding rows left", [(
        "        for (int d = 0; d < head_dim; ++d) out[row + d] = 0.0f;\n        return;",
        "        return;")], "must hold zeros"),
    ("naive_kernel", "acc too small", [("#define MAX_HEAD_DIM 128", "#define MAX_HEAD_DIM 32")],
     "the array has 32 elements"),
    ("tiled_kernel", "no barrier after the load", [(
        "__syncthreads();                         // the tile is loaded", "")],
     "no barrier between"),
    ("tiled_kernel", "no barrier before the next load", [(
        "__syncthreads();                         // everyone is done before the next load",
        "")], "no barrier between"),
    ("tiled_kernel", "V tile over the K tile", [(
        "float* v_tile = smem + page_size * head_dim;", "float* v_tile = smem;")],
     "must not overlap the K tile"),
    ("tiled_kernel", "pages of 16", [(_TILED_SLOT, "long long slot = (long long)page * 16 "
                                                   "+ i / head_dim;")], "pages of 16 tokens"),
    ("tiled_kernel", "return before the barriers", [(
        "bool active = t < seq_len;                   // a real query (no early return: "
        "barriers!)", "if (t >= seq_len) { for (int d = 0; d < head_dim; ++d) out[row + d] = "
                      "0.0f; return; }\n    bool active = true;")],
     "must reach every __syncthreads()"),
    ("tiled_kernel", "MHA only", [(_KV_HEAD, "int kv_head = h;")], "(GQA)"),
    ("decode_partition", "no shuffle", [(
        "        for (int offset = 16; offset > 0; offset /= 2)     // every lane gets the full "
        "dot\n            dot += __shfl_xor_sync(0xffffffffu, dot, offset);\n", "")],
     "no __shfl_xor_sync reduction"),
    ("decode_partition", "shuffle down", [(
        "dot += __shfl_xor_sync(0xffffffffu, dot, offset);",
        "dot += __shfl_down_sync(0xffffffffu, dot, offset);")], "lane 0 alone"),
    ("decode_partition", "pages of 16", [(_PART_SLOT, "long long slot = (long long)"
                                                      "table[t / 16] * 16 + t % 16;")],
     "pages of 16 tokens"),
    ("decode_partition", "MHA only", [(_KV_HEAD, "int kv_head = h;")], "not KV head h"),
    ("decode_partition", "partition slots packed", [(
        "long long slot_out = ((long long)b * num_heads + h) * max_parts + part;",
        "long long slot_out = ((long long)b * num_heads + h) + part;")],
     "stored at another partition's slot"),
    ("decode_partition", "o not divided by l", [(
        "part_out[slot_out * head_dim + d] = acc[i] / l;",
        "part_out[slot_out * head_dim + d] = acc[i];")], "divide the accumulator by l"),
    ("decode_merge", "no max", [(_MERGE_W, "float w = ml[2 * p + 1] * expf(ml[2 * p]);")],
     "exponentiate m_p minus the largest m_p"),
    ("decode_merge", "every slot", [("int n_parts = (seq_lens[b] + part_len - 1) / part_len;",
                                     "int n_parts = max_parts;")], "one partition too many"),
    ("decode_merge", "partitions rounded down", [(
        "int n_parts = (seq_lens[b] + part_len - 1) / part_len;",
        "int n_parts = seq_lens[b] / part_len;")], "the last, shorter partition is missing"),
    ("decode_merge", "first m as the max", [(
        "for (int p = 0; p < n_parts; ++p) m_all = fmaxf(m_all, ml[2 * p]);",
        "m_all = ml[0];")], "not the first partition's"),
    ("decode_merge", "no l", [(_MERGE_W, "float w = expf(ml[2 * p] - m_all);")],
     "not exp(m_p - m) alone"),
    ("decode_merge", "exponent reversed", [(_MERGE_W, "float w = ml[2 * p + 1] * "
                                                      "expf(m_all - ml[2 * p]);")],
     "the exponent is reversed"),
]

_NOTEBOOKS = {"naive_kernel": ("04_naive_kernel.ipynb", "SOURCE_NAIVE"),
              "tiled_kernel": ("05_tiled_kernel.ipynb", "SOURCE_TILED"),
              "decode_partition": ("06_decode_kernel.ipynb", "SOURCE_PARTITION"),
              "decode_merge": ("06_decode_kernel.ipynb", "SOURCE_MERGE")}

KERNELS_RIGHT = [
    ("naive_kernel", [(_KV_HEAD, "int kv_head = (h * num_kv_heads) / num_heads;")]),
    ("naive_kernel", [("float running_max = NEG_INF, running_sum = 0.0f;",
                       "float running_max = -3.0e38f, running_sum = 0.0f;")]),
    ("naive_kernel", [("score *= scale;", "score = score * scale;"),
                      (_NAIVE_SLOT, "int page = table[j / page_size], offset = j - "
                                    "(j / page_size) * page_size;\n        long long slot = "
                                    "(long long)page * page_size + offset;")]),
    ("tiled_kernel", [(_KV_HEAD, "int kv_head = (h * num_kv_heads) / num_heads;")]),
    ("tiled_kernel", [("float* v_tile = smem + page_size * head_dim;",
                       "float* v_tile = &smem[page_size * head_dim];")]),
    ("tiled_kernel", [(_TILED_SLOT, "int key = i / head_dim;\n            long long slot = "
                                    "(long long)page * page_size + key;")]),
    ("decode_partition", [("for (int offset = 16; offset > 0; offset /= 2)     // every lane "
                           "gets the full dot", "for (int offset = 1; offset < 32; offset *= 2)")]),
    ("decode_partition", [("my_q[i] = d < head_dim ? q_row[d] * scale : 0.0f;",
                           "my_q[i] = d < head_dim ? q_row[d] : 0.0f;"),
                          ("float m_new = fmaxf(m, dot);",
                           "dot *= scale;\n        float m_new = fmaxf(m, dot);")]),
    ("decode_partition", [(_KV_HEAD, "int kv_head = (h * num_kv_heads) / num_heads;")]),
    ("decode_merge", [(_MERGE_W, "float w = ml[2 * p + 1] * exp2f((ml[2 * p] - m_all) * "
                                 "1.4426950408889634f);")]),
    ("decode_merge", [("int n_parts = (seq_lens[b] + part_len - 1) / part_len;",
                       "int n_parts = seq_lens[b] / part_len + (seq_lens[b] % part_len != 0);")]),
    ("decode_merge", [("out[row * head_dim + d] = o / total;",
                       "out[row * head_dim + d] = o * (1.0f / total);")]),
]


@pytest.mark.parametrize("task, edits, phrase", [(k[0],) + k[2:] for k in KERNELS],
                         ids=[f"{k[0]}-{k[1]}" for k in KERNELS])
def test_attention_kernel_mistake_is_named(task, edits, phrase):
    source = mutate(solution_source(*_NOTEBOOKS[task]), edits)
    assert_caught(task, source, phrase, device="cpu")


@pytest.mark.parametrize("task, edits", KERNELS_RIGHT,
                         ids=[f"{k[0]}-{i}" for i, k in enumerate(KERNELS_RIGHT)])
def test_attention_kernel_written_another_way_passes(task, edits):
    source = mutate(solution_source(*_NOTEBOOKS[task]), edits)
    result, printed = run_check(task, source, device="cpu")
    assert result.passed, printed
