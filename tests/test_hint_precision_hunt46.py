"""Hunt 46: a wrong answer's hint names the one mistake the evidence shows.

Each wrong kernel is the solution notebook's with ONE classic mistake edited in; before this
hunt these got the check's catch-all (S[r][c] = ..., "follow the prompt's recipe", the tiled
kernel's list of everything to look at) or, worse, a hint that blamed the online softmax for
NaN the kernel read from the cache's unused slots. Right kernels written another way must still pass.
"""
import pytest

from tests.check_helpers import assert_caught, mutate, run_check, solution_source

TC = ("09_tensor_core_decode.ipynb", "SOURCE_TILE")
NAIVE = ("04_naive_kernel.ipynb", "SOURCE_NAIVE")
TILED = ("05_tiled_kernel.ipynb", "SOURCE_TILED")
TC_SLOT = "(long long)block_table[t / page_size] * page_size + t % page_size"
NAIVE_SLOT = "table[j / page_size] * page_size + j % page_size"
CATCH_ALL = ["S[r][c] = q[kv_head", "follow the prompt's recipe", "look at the arithmetic"]
# its first case (MHA) reads q's NaN tail, which proves nothing: the catch-all is right there
NAN_FIRST = {"group rows stepped by num_kv_heads"}

MISTAKES = [
    ("tc_tile_scores", TC, "k0 loop 16 short",
     [("k0 < head_dim; k0 += 16", "k0 < head_dim - 16; k0 += 16")], "stops 16 short", []),
    ("tc_tile_scores", TC, "no block table", [(TC_SLOT, "(long long)t")],
     "as if the cache were not paged", []),
    ("tc_tile_scores", TC, "page and offset swapped",
     [(TC_SLOT, "(long long)block_table[t % page_size] * page_size + t / page_size")],
     "swaps / and %", []),
    ("tc_tile_scores", TC, "page number not times page_size",
     [(TC_SLOT, "(long long)block_table[t / page_size] + t % page_size")],
     "a page starts at its number times page_size", []),
    ("tc_tile_scores", TC, "Q read column-major",
     [("__half, wmma::row_major> a", "__half, wmma::col_major> a")],
     "A operand read row-major", ["K^T is the B operand"]),
    ("tc_tile_scores", TC, "group rows stepped by num_kv_heads",
     [("(kv_head * group + r)", "(kv_head * num_kv_heads + r)")],
     "not j * num_kv_heads + r", ["not j + r", "not j, j + num_kv_heads"]),
    ("naive_kernel", NAIVE, "page and offset swapped",
     [(NAIVE_SLOT, "table[j % page_size] * page_size + j / page_size")], "swaps / and %",
     ["computed nan", "online softmax"]),
    ("naive_kernel", NAIVE, "page number not times page_size",
     [(NAIVE_SLOT, "table[j / page_size] + j % page_size")],
     "a page starts at its number times page_size", []),
    ("naive_kernel", NAIVE, "divided by the scale", [("score *= scale;", "score /= scale;")],
     "not divide by it", ["not scaled"]),
    ("naive_kernel", NAIVE, "values from k_cache",
     [("weight * v_cache[kv + d]", "weight * k_cache[kv + d]")], "the values come from v_cache",
     []),
    ("naive_kernel", NAIVE, "never divided by the sum",
     [("out[row + d] = acc[d] / running_sum", "out[row + d] = acc[d]")],
     "divide the accumulator by the running sum", ["rescale"]),
    ("tiled_kernel", TILED, "pages rounded down",
     [("int pages = (keys_needed + page_size - 1) / page_size;",
       "int pages = keys_needed / page_size;")], "yours rounds down", ["stops one key early"]),
]


@pytest.mark.parametrize("task, notebook, name, edits, phrase, not_phrases", MISTAKES,
                         ids=[f"{m[0]}-{m[2]}" for m in MISTAKES])
def test_the_hint_names_the_mistake(task, notebook, name, edits, phrase, not_phrases):
    assert_caught(task, mutate(solution_source(*notebook), edits), phrase,
                  not_phrases=[*([] if name in NAN_FIRST else CATCH_ALL), *not_phrases],
                  device="cpu")


RIGHT = [
    ("tc_tile_scores", TC, "k0 from the last column",
     [("for (int k0 = 0; k0 < head_dim; k0 += 16)",
       "for (int k0 = head_dim - 16; k0 >= 0; k0 -= 16)")]),
    ("tc_tile_scores", TC, "an extra __syncwarp in the copies and before the store",
     [("        k_tile[i] = k;\n    }", "        k_tile[i] = k;\n        __syncwarp();\n    }"),
      ("    float* out =", "    __syncwarp();\n    float* out =")]),
    ("naive_kernel", NAIVE, "keys from the last", [("for (int j = 0; j <= t; ++j)",
                                                   "for (int j = t; j >= 0; --j)")]),
]


@pytest.mark.parametrize("task, notebook, name, edits", RIGHT, ids=[f"{m[0]}-{m[2]}" for m in RIGHT])
def test_a_right_kernel_written_another_way_passes(task, notebook, name, edits):
    result, printed = run_check(task, mutate(solution_source(*notebook), edits), device="cpu")
    assert result.status == "passed", printed
