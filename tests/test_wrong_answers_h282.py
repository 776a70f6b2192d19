"""Wrong CUDA C answers to workbooks 05, 09 and 11, each the solution with one learner's
mistake, that the checks failed with only the spec or with a hint naming another mistake:

1. tc_tile_scores: every token of a tile looked up in the page of the tile's first token,
   block_table[16 * tile / page_size], got the spec where a tile spans pages, and was told
   "block_table[tile]" alone where one tile's page is both (tile 0, pages of 4).
2. tc_tile_scores: the tile stored at scores + tile * 256, the kv head left out of the
   offset (every kv head's blocks write kv head 0's tiles, the others' stay unwritten), got
   the spec.
3. quantize_write: scale = amax * 127, not amax / 127, got the spec.
4. tiled_kernel: v_tile = smem + head_dim (the V tile overlapping the K tile) was told its
   load loop gave an element to two threads; the race was between two different stores.
5. tiled_kernel: k_tile (or v_tile) read at j * page_size + d, page_size where head_dim
   belongs, was asked only whether 16 is written where page_size belongs: with head_dim 16,
   pages of 16 tokens make both right.
"""
import numpy as np
import pytest

from pagedattn_lab.grading import tc_tile_variants
from tests.check_helpers import _flat, assert_caught, mutate, run_check, solution_source

_NOTEBOOKS = {"tiled_kernel": ("05_tiled_kernel.ipynb", "SOURCE_TILED"),
              "tc_tile_scores": ("09_tensor_core_decode.ipynb", "SOURCE_TILE"),
              "quantize_write": ("11_kv_compression.ipynb", "SOURCE_WRITE")}

_SPEC_TILE = "S[r][c] = q[kv_head * group + r] . k(token 16 * tile + c"
_ONE_THREAD = "two threads store the same element of the shared tile"
_PAGE_FOR_DIM = "page_size is written where head_dim belongs"
_SPEC_WRITE = "scale = max |x| over the row's head_dim / 127"
_TILE_PAGE = "yours looks the page up by the token tile, block_table[tile]"
_FIRST_PAGE = ("yours looks every token of a tile up in the page of the tile's first token, "
               "block_table[16 * tile / page_size]")

# (task, name, edits, phrase a failed case's message or hint holds, phrases no hint holds)
MISTAKES = [
    ("tc_tile_scores", "page of the tile's first token",
     [("block_table[t / page_size] * page_size", "block_table[16 * tile / page_size] * "
                                                 "page_size")],
     _FIRST_PAGE, (_SPEC_TILE,)),
    ("tc_tile_scores", "tile stored without its kv head",
     [("((long long)kv_head * gridDim.x + tile) * 256", "(long long)tile * 256")],
     "the kv head is left out of where the tile goes", (_SPEC_TILE,)),
    ("quantize_write", "scale amax * 127", [("amax / 127.0f", "amax * 127.0f")],
     "scale = amax / 127 (a code times it gives the value back), not amax * 127",
     (_SPEC_WRITE,)),
    ("tiled_kernel", "V tile overlapping the K tile",
     [("float* v_tile = smem + page_size * head_dim;", "float* v_tile = smem + head_dim;")],
     "the parts of the extern __shared__ array overlap", (_ONE_THREAD,)),
    ("tiled_kernel", "K tile rows page_size apart",
     [("k_tile[j * head_dim + d]", "k_tile[j * page_size + d]")], _PAGE_FOR_DIM, ()),
    ("tiled_kernel", "V tile rows page_size apart",
     [("v_tile[j * head_dim + d]", "v_tile[j * page_size + d]")], _PAGE_FOR_DIM, ()),
]


@pytest.mark.parametrize("task, edits, phrase, not_phrases", [m[:1] + m[2:] for m in MISTAKES],
                         ids=[f"{m[0]}-{m[1]}" for m in MISTAKES])
def test_mistake_is_named(task, edits, phrase, not_phrases):
    source = mutate(solution_source(*_NOTEBOOKS[task]), edits)
    assert_caught(task, source, phrase, not_phrases=not_phrases, device="cpu")


def test_a_tile_within_one_page_names_both_page_lookups():
    """Tile 0 with pages of 4: block_table[tile] and block_table[16 * tile / page_size] are
    both block_table[0], so the scores cannot tell them apart and the hint names both."""
    source = mutate(solution_source(*_NOTEBOOKS["tc_tile_scores"]), MISTAKES[0][2])
    result, printed = run_check("tc_tile_scores", source, device="cpu")
    case = next(c for c in result.cases if c.params["page_size"] == 4
                and c.params["seq_len"] <= 16 and not c.passed)
    assert _flat(_TILE_PAGE) in _flat(case.hint) and _flat(_FIRST_PAGE) in _flat(case.hint), \
        printed


def test_heads_sharing_tiles_holds_whichever_kv_head_stored_last():
    """The blocks' order decides which kv head's tile is left in kv head 0's place (the GPU
    runs them in no set order): any mix fits; with one kv head there is no such mistake."""
    expected = np.arange(2 * 2 * 16 * 16, dtype=np.float32).reshape(2, 2, 16, 16)
    got = np.full_like(expected, np.nan)
    got[0, 0], got[0, 1] = expected[1, 0], expected[0, 1]
    assert tc_tile_variants.heads_share_tiles(got, expected, np.isnan(got))
    got[0, 1] += 1
    assert not tc_tile_variants.heads_share_tiles(got, expected, np.isnan(got))
    one = expected[:1]
    assert not tc_tile_variants.heads_share_tiles(one, one, np.zeros(one.shape, bool))


@pytest.mark.parametrize("task", sorted(_NOTEBOOKS))
def test_the_solution_still_passes(task):
    result, printed = run_check(task, solution_source(*_NOTEBOOKS[task]), device="cpu")
    assert result.passed, printed
