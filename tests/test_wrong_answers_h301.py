"""Wrong answers to workbooks 12 and 13 that the checks failed with a hint naming another
mistake or none (helper 301 found them).

1. wire_bytes: a fixed itemsize of 4 in output_share alone (or kv_read alone) was told "sent
   plus received" or "a rank reads only its own KV heads" (only both fields fixed was named).
2. gather_heads: rank r's block read from offset r * H/R * head_dim (one sequence's share, the
   batch forgotten) got the generic hint.
3. schedule_step: every running request given 1 token, as a decode, got the generic hint
   (a running request may be mid-prefill).
4. block_hashes: each block hashed with every token before it AND on its parent's hash was
   not named (only the unchained form was): test_check_mistakes_engine's "every token so far"
   now expects the hint that names it.
"""
import math

import numpy as np
import pytest

from tests.check_helpers import assert_caught, run_check, solution_object

NB12, NB13 = "12_serving_engine.ipynb", "13_multi_gpu.ipynb"
_OUTPUT_SHARE = ("output_share = batch * (num_heads // world_size) * head_dim * itemsize",
                 "output_share = batch * (num_heads // world_size) * head_dim * 4")
_KV_READ = ("* 2 * (num_kv_heads // world_size) * head_dim * itemsize",
            "* 2 * (num_kv_heads // world_size) * head_dim * 4")


@pytest.mark.parametrize("edit, phrase", [
    (_OUTPUT_SHARE, "output_share's values are itemsize bytes, the itemsize given: not 4"),
    (_KV_READ, "kv_read's values are itemsize bytes, the itemsize given: not 4"),
])
def test_wire_bytes_names_a_fixed_itemsize_in_one_field(edit, phrase):
    assert_caught("wire_bytes", solution_object(NB13, "wire_bytes", [edit]), phrase)


def _gather_by_rank(block_offset):
    """gather_heads as a loop over the ranks, rank r's block read from block_offset(r, batch,
    its [H/R * head_dim] share of one sequence)."""
    def gather_heads(gathered, world_size, batch, num_heads, head_dim):
        n = num_heads // world_size
        out = np.empty((batch, num_heads, head_dim), gathered.dtype)
        for r in range(world_size):
            start = block_offset(r, batch, n * head_dim)
            out[:, r * n:(r + 1) * n] = \
                gathered[start:start + batch * n * head_dim].reshape(batch, n, head_dim)
        return out
    return gather_heads


def test_gather_heads_names_a_block_offset_without_the_batch():
    assert_caught("gather_heads", _gather_by_rank(lambda r, batch, share: r * share),
                  "rank r's block starts at r * batch * H/R * head_dim")


def test_schedule_step_names_a_running_prefill_given_one_token():
    edit = ("n = min(req.num_tokens - req.num_computed, budget, max_chunk)\n        free -=",
            "n = min(1, budget)\n        free -=")
    assert_caught("schedule_step", solution_object(NB12, "schedule_step", [edit]),
                  "is mid-prefill: it wants num_tokens - num_computed")


def _head_split_by_group(rank, world_size, num_heads, num_kv_heads):
    if num_kv_heads % world_size:
        raise ValueError(f"world_size {world_size} does not divide num_kv_heads")
    group, per_rank = num_heads // num_kv_heads, num_kv_heads // world_size
    kv = (rank * per_rank, (rank + 1) * per_rank)
    return kv, (kv[0] * group, kv[1] * group)


def _wire_bytes_with_ceil(seq_lens, num_heads, num_kv_heads, head_dim, page_size, world_size,
                          itemsize):
    batch, pages = len(seq_lens), math.ceil(int(max(seq_lens)) / page_size)
    per_token = 2 * (num_kv_heads // world_size) * head_dim * itemsize
    return (4 * (2 + batch + batch * pages),
            batch * (num_heads // world_size) * head_dim * itemsize,
            sum(int(n) for n in seq_lens) * per_token)


@pytest.mark.parametrize("task, fn", [
    ("gather_heads", _gather_by_rank(lambda r, batch, share: r * batch * share)),
    ("head_split", _head_split_by_group),
    ("wire_bytes", _wire_bytes_with_ceil),
])
def test_right_variants_pass(task, fn):
    result, printed = run_check(task, fn)
    assert result.status == "passed", printed
