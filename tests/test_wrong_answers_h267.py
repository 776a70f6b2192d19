"""Wrong CUDA C answers to workbooks 04-06, 09 and 11 whose hints restated the spec: each is
the solution with one learner's mistake, and every case it fails must name that mistake
(or, where the evidence fits several, name it among them). The machinery is
test_wrong_answers_h265's; the kernels run on the CPU executor, in the checks' own shapes.
"""
import pytest

from tests.check_helpers import _flat, assert_caught, mutate, solution_source
from tests.test_wrong_answers_h265 import _NOTEBOOKS

_TILED_V = "v_tile[i] = v_cache[src];"
_TILED_ACC = "weight * v_tile[j * head_dim + d]"
_PAGES = "int pages = (keys_needed + page_size - 1) / page_size;"
_DEQUANT_W = "float rescale = expf(m - m_new), w = expf(s - m_new);"
_WRITE_DST = "signed char* dst = k_cache + (slot * num_kv_heads + head) * head_dim;"
_TILE_SPLIT = "int r = i / head_dim, d = i % head_dim;"
_LAST_PAGE = "on each block's last page (p == pages - 1) the keys were summed as the values"

# (task, name, edits, the phrase every failed case's message or hint holds)
MISTAKES = [
    ("decode_partition", "table rows max_parts apart",
     [("block_tables + (long long)b * max_pages", "block_tables + (long long)b * max_parts")],
     "yours reads rows max_parts apart"),
    ("tiled_kernel", "last page's V tile loaded from k_cache",
     [(_TILED_V, "v_tile[i] = p == pages - 1 ? k_cache[src] : v_cache[src];")], _LAST_PAGE),
    ("tiled_kernel", "last page weighs k_tile",
     [(_TILED_ACC, "weight * (p == pages - 1 ? k_tile : v_tile)[j * head_dim + d]")],
     _LAST_PAGE),
    ("dequant_decode", "weight expf(s)",
     [(_DEQUANT_W, "float rescale = expf(m - m_new), w = expf(s);")],
     "subtract the running max"),
    ("dequant_decode", "no max at all",
     [(_DEQUANT_W, "float rescale = 1.0f, w = expf(s);")], "subtract the running max"),
    ("quantize_write", "codes at slot * head_dim + head",
     [(_WRITE_DST, "signed char* dst = k_cache + slot * head_dim + head;")],
     "not k_cache[slot * head_dim + head + d]"),
    ("quantize_write", "per-token scale at k_scale[head]",
     [("k_scale[slot * num_kv_heads + head] = scale;", "k_scale[head] = scale;")],
     "yours wrote every token's scale at k_scale[head]"),
    ("tc_tile_scores", "copy split by 16",
     [(_TILE_SPLIT, "int r = i / 16, d = i % 16;")], "yours splits i by 16"),
    ("tc_tile_scores", "copy split by 16, swapped",
     [(_TILE_SPLIT, "int r = i % 16, d = i / 16;")], "yours takes r = i % 16, d = i / 16"),
    ("tc_tile_scores", "a single k0 step",
     [("k0 < head_dim; k0 += 16", "k0 < 16; k0 += 16")], "yours made one step, k0 = 0"),
    ("naive_kernel", "offset j / page_size",
     [("* page_size + j % page_size;", "* page_size + j / page_size;")],
     "the offset inside the page is t % page_size, not t / page_size"),
    ("tiled_kernel", "pages = keys_needed / page_size + 1",
     [(_PAGES, "int pages = keys_needed / page_size + 1;")],
     "the page count rounds up wrongly"),
    ("tiled_kernel", "pages loop p <= pages",
     [("for (int p = 0; p < pages; ++p)", "for (int p = 0; p <= pages; ++p)")],
     "the page count rounds up wrongly"),
]


@pytest.mark.parametrize("task, edits, phrase", [(m[0], m[2], m[3]) for m in MISTAKES],
                         ids=[f"{m[0]}-{m[1]}" for m in MISTAKES])
def test_kernel_mistake_is_named_in_every_failed_case(task, edits, phrase):
    source = mutate(solution_source(*_NOTEBOOKS[task]), edits)
    result, printed = assert_caught(task, source, phrase, device="cpu")
    for case in result.cases:
        assert case.passed or _flat(phrase) in _flat(f"{case.message} {case.hint}"), printed
