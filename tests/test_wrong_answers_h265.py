"""Wrong CUDA C answers to workbooks 04-06, 09 and 11, each the solution with one learner's
mistake, that no earlier test fed the checks: each must fail with a hint naming that mistake
(and, where the evidence fits several, naming it among them), never one the answer did not
make. Kernels run on the CPU executor, in the shapes the checks already compile.
"""
import pytest

from tests.check_helpers import _flat, assert_caught, mutate, solution_source

_NOTEBOOKS = {"naive_kernel": ("04_naive_kernel.ipynb", "SOURCE_NAIVE"),
              "tiled_kernel": ("05_tiled_kernel.ipynb", "SOURCE_TILED"),
              "decode_partition": ("06_decode_kernel.ipynb", "SOURCE_PARTITION"),
              "decode_merge": ("06_decode_kernel.ipynb", "SOURCE_MERGE"),
              "tc_tile_scores": ("09_tensor_core_decode.ipynb", "SOURCE_TILE"),
              "quantize_write": ("11_kv_compression.ipynb", "SOURCE_WRITE"),
              "dequant_decode": ("11_kv_compression.ipynb", "SOURCE_READ")}

_KV_HEAD = "int kv_head = h / (num_heads / num_kv_heads);"
_BY_MOD_GROUP = "int kv_head = h % (num_heads / num_kv_heads);"
_NAIVE_ROW = "long long kv = (slot * num_kv_heads + kv_head) * head_dim;"
_TILED_SRC = "long long src = (slot * num_kv_heads + kv_head) * head_dim"
_PART_ROW = "long long row = (slot * num_kv_heads + kv_head) * head_dim;"
_MERGE_W = "float w = ml[2 * p + 1] * expf(ml[2 * p] - m_all);"
_AT = "long long at = per_token ? slot * num_kv_heads + kv_head : kv_head;"
_SUM = "running_sum = running_sum * rescale + weight;"
_GQA_ROW = "not num_heads: kv head kv_head's row is (slot * num_kv_heads + kv_head)"
_STRIDE = "the head stride is missing num_kv_heads"

# (task, name, edits, phrase that every failed case's message or hint holds, phrases no hint
# holds[, "some": where the other failed cases show other evidence, one case holds the phrase])
MISTAKES = [
    # the GQA group's index taken as the KV head: where it reads what h / num_kv_heads or
    # h % num_kv_heads reads, the hint named only that one
    ("naive_kernel", "h % group", [(_KV_HEAD, _BY_MOD_GROUP)],
     "not h % (num_heads / num_kv_heads)", ()),
    ("tiled_kernel", "h % group", [(_KV_HEAD, _BY_MOD_GROUP)],
     "not h % (num_heads / num_kv_heads)", ()),
    ("decode_partition", "h % group", [(_KV_HEAD, _BY_MOD_GROUP)],
     "not h % (num_heads / num_kv_heads)", ()),
    # the cache's slot stride written with num_heads: the hint named only the head index
    ("naive_kernel", "slot stride num_heads",
     [(_NAIVE_ROW, _NAIVE_ROW.replace("slot * num_kv_heads", "slot * num_heads"))], _GQA_ROW, ()),
    ("tiled_kernel", "slot stride num_heads",
     [(_TILED_SRC, _TILED_SRC.replace("slot * num_kv_heads", "slot * num_heads"))], _GQA_ROW, ()),
    ("decode_partition", "slot stride num_heads",
     [(_PART_ROW, _PART_ROW.replace("slot * num_kv_heads", "slot * num_heads"))], _GQA_ROW, ()),
    # ... and with no num_kv_heads at all (MQA alone hides it)
    ("naive_kernel", "slot + kv_head", [(_NAIVE_ROW, "long long kv = (slot + kv_head) * "
                                                     "head_dim;")], _STRIDE, ()),
    ("tiled_kernel", "slot + kv_head",
     [(_TILED_SRC, "long long src = (slot + kv_head) * head_dim")], _STRIDE, ()),
    ("decode_partition", "slot + kv_head",
     [(_PART_ROW, "long long row = (slot + kv_head) * head_dim;")], _STRIDE, ()),
    # a weight against the old max: inf on the first token, NaN everywhere; one case blamed
    # the page arithmetic, whose variant is NaN there too
    ("decode_partition", "weight by the old max",
     [("float weight = expf(dot - m_new);", "float weight = expf(dot - m);")],
     "never by expf(dot - m)", ()),
    # a table row stride of max_parts: right by chance with pages of 16, where the table was
    # max_parts wide, and blamed on a 16 written into the code
    ("decode_partition", "table rows max_parts apart",
     [("block_tables + (long long)b * max_pages", "block_tables + (long long)b * max_parts")],
     "sequence b must use its own row of block_tables", ("is 16 written into the code",),
     "some"),
    ("decode_partition", "acc not rescaled", [("acc[i] = acc[i] * rescale + ", "acc[i] = acc[i] + ")],
     "rescale the accumulator", ()),
    # the merge's weights: the spec restated
    ("decode_merge", "weighted by token counts",
     [(_MERGE_W, "float w = (float)min(part_len, seq_lens[b] - p * part_len);")],
     "weighted by its token count", ()),
    ("decode_merge", "divided by the partition count",
     [("out[row * head_dim + d] = o / total;", "out[row * head_dim + d] = o / n_parts;")],
     "divide by the sum of the weights", ()),
    ("decode_merge", "(m, l) read as ml[p], ml[p + 1]",
     [(_MERGE_W, "float w = ml[p + 1] * expf(ml[p] - m_all);")],
     "yours reads ml[p] and ml[p + 1]", ()),
    ("decode_merge", "max loop from p = 1",
     [("for (int p = 0; p < n_parts; ++p) m_all", "for (int p = 1; p < n_parts; ++p) m_all")],
     "the max skips partition 0", ()),
    ("decode_merge", "part_out rows by p alone",
     [("part_out[(row * max_parts + p) * head_dim + d]", "part_out[(row + p) * head_dim + d]")],
     "it reads another row's states", (), "some"),
    # the block's keys one short of its last query's own: the general arithmetic hint
    ("tiled_kernel", "keys_needed one short",
     [("min(seq_len, first_query + (int)blockDim.x)",
       "min(seq_len, first_query + (int)blockDim.x - 1)")], "a block loads one key too few", ()),
    # the scores summed in __half: near the expected, and given the recipe
    ("naive_kernel", "__half dot product", [
        ("#define MAX_HEAD_DIM 128", "#include <cuda_fp16.h>\n#define MAX_HEAD_DIM 128"),
        ("float score = 0.0f;", "__half score = __float2half(0.0f);"),
        ("score += q[row + d] * k_cache[kv + d];\n        score *= scale;",
         "score = __hadd(score, __float2half(q[row + d] * k_cache[kv + d]));\n"
         "        float scaled = __half2float(score) * scale;"),
        ("fmaxf(running_max, score)", "fmaxf(running_max, scaled)"),
        ("expf(score - new_max)", "expf(scaled - new_max)")], "rounds to a narrower type", ()),
    ("tiled_kernel", "running sum not rescaled", [(_SUM, "running_sum = running_sum + weight;")],
     "rescale the running sum too", ()),
    ("naive_kernel", "running sum not rescaled", [(_SUM, "running_sum = running_sum + weight;")],
     "rescale the running sum too", ()),
    ("tiled_kernel", "V tile loaded from k_cache",
     [("v_tile[i] = v_cache[src];", "v_tile[i] = k_cache[src];")], "loads v_tile from v_cache", ()),
    ("tiled_kernel", "barrier inside if (active)",
     [("        }\n        __syncthreads();                         // everyone is done before "
       "the next load", "            __syncthreads();\n        }")],
     "every thread must reach both", ()),
    ("tiled_kernel", "the page id taken from p", [(
        "long long slot = (long long)page * page_size + i / head_dim;",
        "long long slot = (long long)p * page_size + i / head_dim;")], "block table is ignored", ()),
    ("tiled_kernel", "j <= last", [("for (int j = 0; j < last; ++j)",
                                    "for (int j = 0; j <= last; ++j)")],
     "dynamic shared memory", ()),
    ("tc_tile_scores", "Q rows kv_head + r",
     [("q[(long long)(kv_head * group + r) * head_dim + d]",
       "q[(long long)(kv_head + r) * head_dim + d]")], "not j + r", ()),
    # a static scale indexed by the token's page: the fault's hint blamed the query head
    ("dequant_decode", "static scale per page",
     [(_AT, "long long at = per_token ? slot * num_kv_heads + kv_head : "
            "(long long)(t / page_size) * num_kv_heads + kv_head;")],
     "whatever its slot or page", ("not the query head h",)),
    ("dequant_decode", "V scale forgotten",
     [("w * ((float)v_cache[row + d] * vs)", "w * (float)v_cache[row + d]")],
     "multiply each V code by its scale", ()),
    # the input row read at (token + head): the hint restated the scale's formula
    ("quantize_write", "input row token + head",
     [("k + ((long long)token * num_kv_heads + head) * head_dim",
       "k + ((long long)token + head) * head_dim")], "another (token, head) row of k", (),
     "some"),
    ("quantize_write", "no scale 1 for a zero row",
     [("scale = amax > 0.0f ? amax / 127.0f : 1.0f;", "scale = amax / 127.0f;")],
     "give it scale 1", ()),
    ("quantize_write", "amax of each lane's first element",
     [("for (int d = lane; d < head_dim; d += 32) amax = fmaxf(amax, fabsf(row[d]));",
       "if (lane < head_dim) amax = fabsf(row[lane]);")], "stride the amax loop", ()),
    ("quantize_write", "truncf", [("rintf(row[d] / scale)", "truncf(row[d] / scale)")],
     "truncates toward zero", ()),
]


@pytest.mark.parametrize("task, edits, phrase, not_phrases, every",
                         [m[:1] + m[2:5] + (len(m) == 5,) for m in MISTAKES],
                         ids=[f"{m[0]}-{m[1]}" for m in MISTAKES])
def test_kernel_mistake_is_named(task, edits, phrase, not_phrases, every):
    source = mutate(solution_source(*_NOTEBOOKS[task]), edits)
    result, printed = assert_caught(task, source, phrase, not_phrases=not_phrases, device="cpu")
    for case in result.cases if every else ():
        assert case.passed or _flat(phrase) in _flat(f"{case.message} {case.hint}"), printed
