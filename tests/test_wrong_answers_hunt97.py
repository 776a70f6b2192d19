"""Hunt 97: plausible learner mistakes in workbooks 09-13 that the checks failed with a hint
naming another mistake, or only restating the spec.

Each answer is the solution with one learner's mistake; the test asserts that the check fails
it with a hint that names that mistake (kernels on the CPU executor).
"""
from functools import partial

import numpy as np
import pytest

from tests.check_helpers import (assert_caught, beyond_held, mutate, schedule_step_answer,
                                 solution_source)
from tests.serve_loops import ceil_pages


def _mask_tile(factor):
    def mask_tile(s, tile, seq_len, scale):
        logits = s * np.float32(factor(scale))
        logits[:, 16 * tile + np.arange(16) >= seq_len] = -np.inf
        return logits
    return mask_tile


@pytest.mark.parametrize("factor, phrase", [
    (lambda scale: scale * scale, "scaled twice"),
    (lambda scale: 1 / scale, "divided by scale"),
], ids=["scale twice", "divided by scale"])
def test_mask_tile_scale_mistakes_are_named(factor, phrase):
    assert_caught("mask_tile", _mask_tile(factor), phrase)


def test_chunk_mask_one_key_past_the_query_is_named():
    """A query placed at seq_len - q_len + i + 1 (counting from 1) sees the key after its own."""
    def chunk_mask(q_len, seq_len):
        i, j = np.arange(q_len)[:, None], np.arange(seq_len)[None, :]
        return j <= seq_len - q_len + i + 1
    assert_caught("chunk_mask", chunk_mask, "one key too many, the one after its own")


def test_tile_work_first_counted_in_the_packed_q_is_named():
    def tile_work(qo_indptr, seq_lens, rows, kv_tile):
        work = []
        for b, (q_len, seq_len) in enumerate(zip(np.diff(qo_indptr), seq_lens)):
            for first in range(0, int(q_len), rows):
                keys = int(seq_len) - int(q_len) + min(first + rows, int(q_len))
                work.append((b, int(qo_indptr[b]) + first, -(-keys // kv_tile)))
        return work
    assert_caught("tile_work", tile_work, "not from the start of the packed q")


READ = "11_kv_compression.ipynb"


def test_dequant_decode_softmax_scale_twice_is_named():
    source = mutate(solution_source(READ, "SOURCE_READ"),
                    [("float s = dot * scale;", "float s = dot * scale * scale;")])
    assert_caught("dequant_decode", source, "softmax scale was applied twice", device="cpu")


def test_quantize_write_floorf_is_named():
    source = mutate(solution_source(READ, "SOURCE_WRITE"), [("rintf(", "floorf(")])
    assert_caught("quantize_write", source, "floorf rounds down", device="cpu")


def test_quantize_write_scale_at_the_slot_alone_is_named():
    source = mutate(solution_source(READ, "SOURCE_WRITE"),
                    [("k_scale[slot * num_kv_heads + head] = scale", "k_scale[slot] = scale")])
    assert_caught("quantize_write", source, "not k_scale[slot]", device="cpu")


def test_tc_tile_scores_k_at_the_groups_first_query_head_is_named():
    source = mutate(solution_source("09_tensor_core_decode.ipynb", "SOURCE_TILE"),
                    [("k_cache[(slot * num_kv_heads + kv_head) * head_dim + d]",
                      "k_cache[(slot * num_kv_heads + kv_head * group) * head_dim + d]")])
    assert_caught("tc_tile_scores", source, "not kv_head * group", device="cpu",
                  not_phrases=("a nan among the scores was read",))


def test_dequant_decode_interleaved_groups_are_named():
    """kv_head = h % num_kv_heads (the stub's line changed): codes and scales of another head."""
    source = mutate(solution_source(READ, "SOURCE_READ"),
                    [("int kv_head = h / (num_heads / num_kv_heads);",
                      "int kv_head = h % num_kv_heads;")])
    assert_caught("dequant_decode", source, "not h % num_kv_heads: the codes and the scales",
                  device="cpu")


# The solution's step with the chunk size `chunk_of(wanted, budget left, max_chunk)` and the
# tokens a request wants `wanted_of(req)`.
_schedule_step = partial(schedule_step_answer, beyond_held(ceil_pages), ceil_pages)


@pytest.mark.parametrize("chunk_of, phrase", [
    (lambda wanted, left, cap: min(wanted, left, cap - 1), "where max_chunk allowed"),
    (lambda wanted, left, cap: min(wanted, left - 1, cap), "where the budget left allowed"),
], ids=["max_chunk - 1", "budget left - 1"])
def test_schedule_step_chunk_one_short_is_named(chunk_of, phrase):
    assert_caught("schedule_step", _schedule_step(chunk_of), phrase)



def test_schedule_step_that_forgets_num_computed_is_named():
    """A request given num_tokens (num_computed forgotten): a decode asks for its whole
    sequence again."""
    assert_caught("schedule_step", _schedule_step(wanted_of=lambda req: req.num_tokens),
                  "wants only num_tokens - num_computed")


def test_dequant_decode_kv_head_over_num_kv_heads_is_named():
    source = mutate(solution_source(READ, "SOURCE_READ"),
                    [("int kv_head = h / (num_heads / num_kv_heads);",
                      "int kv_head = h / num_kv_heads;")])
    assert_caught("dequant_decode", source, "not h / num_kv_heads: the codes and the scales",
                  device="cpu")
