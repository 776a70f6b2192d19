"""Workbook 09 walked as a newcomer (hunt 90): the feedback says what the evidence shows.

* A kernel whose lanes return before the `__syncwarp()` is stopped at the `__syncwarp()`: the
  message names that call, not "a WMMA call".
* "Wrong in: ... (right: ...)" lists as right only entries the check compared: columns past
  seq_len and padding rows are checked apart, and may be wrong too.
"""
import numpy as np
import pytest

from pagedattn_lab.grading.compare import describe_difference
from tests.check_helpers import mutate, run_check, solution_source

NOTEBOOK = "09_tensor_core_decode.ipynb"


def _failed(source):
    result, printed = run_check("tc_tile_scores", source, device="cpu")
    assert result.status == "failed", printed
    return [c for c in result.cases if not c.passed], printed


def test_lanes_returning_before_the_syncwarp_are_told_it_is_the_syncwarp():
    source = mutate(solution_source(NOTEBOOK, "SOURCE_TILE"),
                    [("    __syncwarp();", "    if (lane >= 16) return;\n    __syncwarp();")])
    failed, printed = _failed(source)
    message, hint = failed[0].message, " ".join(failed[0].hint.split())
    assert "__syncwarp" in message and "a WMMA call" not in message, printed
    assert "lanes 16-31" in hint and "__syncwarp()" in hint, printed
    assert "every lane of the warp must call" in hint, printed


def test_lanes_returning_before_a_wmma_call_are_told_it_is_that_call():
    source = mutate(solution_source(NOTEBOOK, "SOURCE_TILE"),
                    [("    __syncwarp();", "    __syncwarp();\n    if (lane >= 16) return;")])
    failed, printed = _failed(source)
    assert "a WMMA call (wmma::" in failed[0].message, printed
    assert "__syncwarp" not in failed[0].hint, printed


def test_right_lists_only_what_was_compared():
    # one token of one tile (seq_len 1): column 0 wrong, columns 1-15 never compared
    expected = np.zeros((1, 16, 16))
    got = expected.copy()
    got[0, :, :8] = 1.0                      # column 1-7 wrong too, but past seq_len
    mask = np.zeros((1, 16, 16), bool)
    mask[0, :3, 0] = True                    # rows 0-2 (the group), token 0
    got[0, 0, 0] = 0.0                       # row 0 right
    diff = describe_difference(got, expected, ("tile", "row", "token"), mask=mask)
    text = diff.message()
    assert "rows 1-2 (right: 0)" in text, text
    assert "right: 1-15" not in text and "3-15" not in text, text
    assert "token 0" in text, text


def test_right_is_unchanged_without_a_mask():
    got, expected = np.zeros((4, 3)), np.zeros((4, 3))
    got[1:3, 0] = 1.0
    text = describe_difference(got, expected, ("row", "col")).message()
    assert "rows 1-2 (right: 0, 3)" in text and "col 0 (right: 1-2)" in text, text


def test_kv_scales_catches_a_threshold_just_above_the_smallest_rows():
    # the prompt promises rows "down to 1e-5": a threshold at 1e-4 on amax must fail there
    def thresholded(x, qmax):
        amax = np.abs(x).max(axis=-1)
        return np.where(amax > 1e-4, amax / qmax, 1.0).astype(np.float32)

    result, printed = run_check("kv_scales", thresholded)
    assert result.status == "failed", printed
    assert "only an all-zero row gets scale 1" in " ".join(printed.split()), printed


def test_kv_scales_still_passes_the_exact_rule():
    def exact(x, qmax):
        amax = np.abs(x).max(axis=-1)
        return np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)

    result, printed = run_check("kv_scales", exact)
    assert result.passed, printed


def test_a_missing_padding_guard_is_named_in_every_case_it_fails():
    # no `if (slot < 0) return;`: slot -1 writes before k_scale (per-token) or k_cache; where
    # the write is found only after the launch (no block known) the index < 0 is the evidence
    source = mutate(solution_source("11_kv_compression.ipynb", "SOURCE_WRITE"),
                    [("if (slot < 0) return;", "")])
    result, printed = run_check("quantize_write", source, device="cpu")
    assert result.status == "failed", printed
    for case in (c for c in result.cases if not c.passed):
        hint = " ".join(case.hint.split())
        assert "= -1 marks a padding row" in hint, printed
        assert "one static scale per head" not in hint and "block_tables" not in hint, printed


def _read_with(ks_index, vs_index):
    return mutate(solution_source("11_kv_compression.ipynb", "SOURCE_READ"),
                  [("float ks = k_scale[at], vs = v_scale[at];",
                    f"float ks = k_scale[{ks_index}], vs = v_scale[{vs_index}];")])


@pytest.mark.parametrize("ks_index, vs_index, named, not_named", [
    ("kv_head", "at", "K's per-token scale is k_scale[slot * num_kv_heads + kv_head]",
     "v_scale[kv_head]"),
    ("at", "kv_head", "V's per-token scale is v_scale[slot * num_kv_heads + kv_head]",
     "not k_scale[kv_head]"),
], ids=["only K", "only V"])
def test_one_scale_read_at_the_static_index_is_named(ks_index, vs_index, named, not_named):
    result, printed = run_check("dequant_decode", _read_with(ks_index, vs_index), device="cpu")
    assert result.status == "failed", printed
    hints = " ".join(" ".join(c.hint.split()) for c in result.cases if not c.passed)
    assert named in hints, printed
    assert not_named not in hints, printed


def test_quantize_write_catches_a_threshold_just_above_the_smallest_rows():
    # case 6 promises "rows from 1e-5 to 10": a threshold at 1e-4 on amax must fail there
    source = mutate(solution_source("11_kv_compression.ipynb", "SOURCE_WRITE"),
                    [("amax > 0.0f ? amax / 127.0f : 1.0f", "amax > 1e-4f ? amax / 127.0f : 1.0f")])
    result, printed = run_check("quantize_write", source, device="cpu")
    assert result.status == "failed", printed
    assert [c.passed for c in result.cases][-1] is False, printed


def test_a_score_past_seq_len_names_its_tile_as_the_other_messages_do():
    # "tile (0, 2)" read as block (0, 2) points at the wrong block: blocks are (tile, kv head)
    source = mutate(solution_source(NOTEBOOK, "SOURCE_TILE"), [("if (t < seq_len)", "if (true)")])
    failed, printed = _failed(source)
    case = next(c for c in failed if c.params.get("seq_len") == 37)
    message = " ".join(case.message.split())
    assert "tile (kv head 0, tokens 32..47), block (2, 0)" in message, printed


def test_rows_written_max_d_apart_and_loaded_head_dim_apart_are_told_where_rows_start():
    # the copies put row r at r * MAX_D (the arrays' size), the loads use ldm = head_dim as the
    # prompt says: the old hint told this learner "ldm = head_dim", which they already had
    source = mutate(solution_source(NOTEBOOK, "SOURCE_TILE"), [
        ("for (int i = lane; i < 16 * head_dim; i += 32) {",
         "for (int i = lane; i < 16 * MAX_D; i += 32) {"),
        ("int r = i / head_dim, d = i % head_dim;",
         "int r = i / MAX_D, d = i % MAX_D;\n        if (d >= head_dim) continue;")])
    failed, printed = _failed(source)
    hint = " ".join(failed[0].hint.split())
    assert "r * head_dim (not r * MAX_D)" in hint, printed
