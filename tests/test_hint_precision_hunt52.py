"""Hunt 52: the hint of a failed check names the mistake the evidence shows, not a generic
restatement of the spec. Each case is the solution notebook's kernel with one classic mistake
edited in; the check must fail with the hint that names it (and no other). Right kernels
written another way must pass.
"""
import pytest

from tests.test_check_mistakes import assert_caught, mutate, run_check, solution_source

NOTEBOOK_09 = "09_tensor_core_decode.ipynb"

TILE_MISTAKES = [
    ("page number not multiplied by page_size",
     [("block_table[t / page_size] * page_size + t % page_size",
       "block_table[t / page_size] + t % page_size")],
     "multiply it by page_size", ["S[r][c] ="]),
    ("scores stored tile-major", [("((long long)kv_head * gridDim.x + tile) * 256",
                                   "((long long)tile * gridDim.y + kv_head) * 256")],
     "not (tile * gridDim.y + kv_head)", ["S[r][c] =", "transposed"]),
]



@pytest.mark.parametrize("name, edits, phrase, not_phrases", TILE_MISTAKES,
                         ids=[m[0] for m in TILE_MISTAKES])
def test_tc_tile_scores_hint_names_the_mistake(name, edits, phrase, not_phrases):
    assert_caught("tc_tile_scores", mutate(solution_source(NOTEBOOK_09, "SOURCE_TILE"), edits),
                  phrase, not_phrases=not_phrases, device="cpu")


NOTEBOOK_06 = "06_decode_kernel.ipynb"

PARTITION_MISTAKES = [
    ("page number not multiplied by page_size",
     [("(long long)table[t / page_size] * page_size + t % page_size",
       "(long long)table[t / page_size] + t % page_size")], "multiply it by page_size"),
    ("every sequence reads sequence 0's table", [("block_tables + (long long)b * max_pages",
                                                  "block_tables")], "sequence 0's pages"),
    ("q row of the kv head", [("((long long)b * num_heads + h) * head_dim;",
                               "((long long)b * num_heads + kv_head) * head_dim;")],
     "its own q row"),
]


@pytest.mark.parametrize("name, edits, phrase", PARTITION_MISTAKES,
                         ids=[m[0] for m in PARTITION_MISTAKES])
def test_decode_partition_hint_names_the_mistake(name, edits, phrase):
    assert_caught("decode_partition",
                  mutate(solution_source(NOTEBOOK_06, "SOURCE_PARTITION"), edits), phrase,
                  not_phrases=["must be softmax(scores of partition p)"], device="cpu")


def test_decode_partition_passes_a_reduction_written_upward():
    result, printed = run_check("decode_partition", mutate(
        solution_source(NOTEBOOK_06, "SOURCE_PARTITION"),
        [("for (int offset = 16; offset > 0; offset /= 2)",
          "for (int offset = 1; offset < 32; offset *= 2)")]), device="cpu")
    assert result.passed, printed


def test_naive_kernel_hint_names_a_page_number_not_multiplied_by_page_size():
    assert_caught("naive_kernel", mutate(
        solution_source("04_naive_kernel.ipynb", "SOURCE_NAIVE"),
        [("(long long)table[j / page_size] * page_size + j % page_size",
          "(long long)table[j / page_size] + j % page_size")]), "multiply it by page_size",
        not_phrases=["follow the prompt's recipe"], device="cpu")
