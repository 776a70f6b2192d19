"""Helper 289: wrong answers that were right on every case a check ran and wrong elsewhere.

1. decode_merge: every case had head_dim 64 or below, so a merge whose lanes each handle a
   fixed two dims (i and i + 32), as if head_dim were at most 64, passed; at head_dim 128
   (the most common one) it leaves dims 64 and up unwritten. A head_dim 128 case shows it.
2. tile_work: rows or kv_tile written into the code (16, 32, 64, 128 where the argument is
   another) failed with the spec restated, though every case's answer is the one for that
   size; it is named now (only where the answer is that size's on the fixed cases too).
3. kv_bytes: head_dim 128 written into the code was told "float16 is 2 bytes, not 4" where
   head_dim is 64 in fp16 (twice the bytes either way), and got no hint in fp32; head_dim 64
   written in was told "count both K and V" where head_dim is 128. The answer for another
   head_dim tells them apart: a head_dim written in is named first where it shows there.
4. tiled_launch and head_split: a tile_q of 16 (a world_size of 2) written into the code was
   told only that shifts and masks need a power of two where the argument is 12 (3), since a
   mask's remainder test (a shift by log2) gives the same count there; and got the spec
   restated elsewhere. The size written in is named, with the shift where both fit.
5. block_hashes: pages of 16 written into the code were told "41 tokens hold 5 full blocks of
   8" or the spec restated, where the hashes are exactly the chain of 16-token blocks.
"""
import numpy as np
import pytest

from pagedattn_lab.engine.prefix_cache import hash_block

from tests.check_helpers import assert_caught, kernel_mutant, run_check, solution_of

_DIMS_LOOP = "for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {"


def _lanes_of(dims_per_lane: int):
    return (_DIMS_LOOP, f"for (int i = 0; i < {dims_per_lane}; ++i) {{ int d = threadIdx.x + "
                        "32 * i; if (d >= head_dim) break;")


@pytest.mark.parametrize("dims_per_lane", [2, 3])
def test_a_merge_with_a_fixed_count_of_dims_per_lane_is_caught(dims_per_lane):
    assert_caught("decode_merge", kernel_mutant("decode_merge", [_lanes_of(dims_per_lane)]),
                  f"dims {32 * dims_per_lane} and up were never written", device="cpu")


@pytest.mark.parametrize("edit", [None, _lanes_of(4)], ids=["solution", "four dims per lane"])
def test_right_merges_pass(edit):
    # four dims a lane reach head_dim 128, the partition kernel's own limit
    source = kernel_mutant("decode_merge", [edit] if edit else [])
    result, printed = run_check("decode_merge", source, device="cpu")
    assert result.passed, printed


# -- 2. tile_work: a tile size written into the code ------------------------------------------

def _tile_work_with(rows=None, kv_tile=None):
    right = solution_of("10", "tile_work")

    def tile_work(qo_indptr, seq_lens, rows_arg, kv_tile_arg):
        return right(qo_indptr, seq_lens, rows or rows_arg, kv_tile or kv_tile_arg)
    return tile_work


@pytest.mark.parametrize("sizes, phrase", [
    ({"rows": 16}, "query tiles of 16 rows: use the rows argument"),
    ({"rows": 64}, "query tiles of 64 rows: use the rows argument"),
    ({"kv_tile": 32}, "K/V tiles of 32 keys: use the kv_tile argument"),
    ({"kv_tile": 128}, "K/V tiles of 128 keys: use the kv_tile argument"),
], ids=["rows 16", "rows 64", "kv_tile 32", "kv_tile 128"])
def test_a_tile_size_written_into_the_code_is_named(sizes, phrase):
    assert_caught("tile_work", _tile_work_with(**sizes), phrase, not_phrases=(
        "one (b, first, kv_tiles) per query tile",))


# -- 3. kv_bytes: head_dim written into the code ------------------------------------------------

def _kv_bytes(dim=None, halved=False):
    def kv_bytes(seq_lens, num_heads, num_kv_heads, head_dim, dtype):
        per_token = (1 if halved else 2) * num_kv_heads * (dim or head_dim)
        return int(np.sum(seq_lens)) * per_token * np.dtype(dtype).itemsize
    return kv_bytes


@pytest.mark.parametrize("dim, wrong", [(128, "float16 is 2 bytes, not 4"),
                                        (64, "count both K and V")])
def test_a_head_dim_written_into_the_code_is_named(dim, wrong):
    result, _ = assert_caught("kv_bytes", _kv_bytes(dim), f"not {dim} written into the code",
                              not_phrases=(wrong,))
    assert all(c.hint for c in result.cases if not c.passed)


def test_a_forgotten_k_or_v_is_still_named_so():
    assert_caught("kv_bytes", _kv_bytes(halved=True), "count both K and V",
                  not_phrases=("written into the code",))


# -- 4. tiled_launch and head_split: a size written into the code -------------------------------

def _tiled_launch_16(batch, num_heads, max_len, tile_q, page_size, head_dim):
    return solution_of("05", "tiled_launch")(batch, num_heads, max_len, 16, page_size, head_dim)


def _head_split_2(rank, world_size, num_heads, num_kv_heads):
    return solution_of("13", "head_split")(rank, 2, num_heads, num_kv_heads)


@pytest.mark.parametrize("task, impl, phrase", [
    ("tiled_launch", _tiled_launch_16, "query tiles of 16 queries: use the tile_q argument"),
    ("head_split", _head_split_2, "the split for world_size 2: use the world_size argument"),
], ids=["tiled_launch", "head_split"])
def test_a_size_written_into_the_code_is_named_beside_the_shift(task, impl, phrase):
    result, _ = assert_caught(task, impl, phrase)
    shift_hints = [c.hint for c in result.cases if "shifts and masks" in c.hint]
    assert shift_hints and all(phrase in " ".join(h.split()) for h in shift_hints)


# -- 5. block_hashes: pages of 16 written into the code ----------------------------------------

def _hashes_of_16(token_ids, page_size):
    hashes, parent = [], None
    for start in range(0, len(token_ids) - 16 + 1, 16):
        parent = hash_block(parent, token_ids[start:start + 16])
        hashes.append(parent)
    return hashes


def test_pages_of_16_written_into_the_code_are_named():
    assert_caught("block_hashes", _hashes_of_16, "the answer for pages of 16 tokens",
                  not_phrases=("hold 5 full blocks of 8", "as returned (bytes), parent None"))
