"""Final read of helpers 280-282 (helper 285).

tc_tile_scores with A loaded from `q_tile + k0 * 16` (not q_tile + k0) was told "yours made
one step, k0 = 0" on the case of 4-head groups at head_dim 64: the rows it reads past the group
are the tile's zeroed rows, so its scores are the first 16 dimensions' too, and naming the
one-step loop alone blamed a mistake it did not make. Now that mistake is a variant of its own
(tc_tile_variants, TileProblem.product's a_step): named alone where its scores are its own
(16-head groups at head_dim 32), with the one-step loop where both give the same scores.

A kernel whose every block took kv head 0 (kv_head = blockIdx.z) leaves kv head 0's tiles right
and the others unwritten: it was told only that the store offset lacks the kv head
(heads_share_tiles, helper 282), which it had right. Both are named where kv head 0's tiles hold
its own scores (tc_tile_variants.shared_tile_hints).
"""
import pytest

from tests.check_helpers import _flat, mutate, run_check, solution_source

_A_BASE = "A's tile at step k0 starts at q_tile + k0 (column k0 of row 0), not q_tile + k0 * 16"
_ONE_STEP = "yours made one step, k0 = 0"


def _cases(edits):
    source = mutate(solution_source("09_tensor_core_decode.ipynb", "SOURCE_TILE"), edits)
    result, printed = run_check("tc_tile_scores", source, device="cpu")
    return {(c.params["num_heads"] // c.params["num_kv_heads"], c.params["head_dim"]):
            _flat(c.hint or "") for c in result.cases if not c.passed}, printed


def test_a_loaded_at_k0_times_16_is_named_and_with_one_step_where_both_fit():
    hints, printed = _cases([("load_matrix_sync(a, q_tile + k0, head_dim)",
                              "load_matrix_sync(a, q_tile + k0 * 16, head_dim)")])
    assert _flat(_A_BASE) in hints[(16, 32)] and _flat(_ONE_STEP) not in hints[(16, 32)], printed
    assert _flat(_A_BASE) in hints[(4, 64)] and _flat(_ONE_STEP) in hints[(4, 64)], printed


def test_a_loop_of_one_step_is_not_told_it_read_a_at_k0_times_16_where_that_differs():
    hints, printed = _cases([("k0 < head_dim; k0 += 16", "k0 < 16; k0 += 16")])
    assert hints and all(_flat(_ONE_STEP) in hint for hint in hints.values()), printed
    assert _flat(_A_BASE) not in hints[(16, 32)], printed


_OFFSET = "the kv head is left out of where the tile goes"
_ONE_KV_HEAD = "every block took kv head 0"


@pytest.mark.parametrize("edits, named, not_named", [
    # kv_head from blockIdx.z (always 0): was told only that the store offset lacks kv_head
    ([("int kv_head = blockIdx.y;", "int kv_head = blockIdx.z;")], (_OFFSET, _ONE_KV_HEAD), ()),
    # the offset alone: the executor runs kv head 0's blocks first, so the last kv head's
    # tiles are left in kv head 0's place, which no block of kv head 0 alone leaves
    ([("((long long)kv_head * gridDim.x + tile) * 256", "(long long)tile * 256")], (_OFFSET,),
     (_ONE_KV_HEAD,))])
def test_kv_heads_past_0_never_written_name_what_fits(edits, named, not_named):
    hints, printed = _cases(edits)
    assert hints, printed
    for hint in hints.values():
        assert all(_flat(n) in hint for n in named), printed
        assert not any(_flat(n) in hint for n in not_named), printed
