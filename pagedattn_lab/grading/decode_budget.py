"""decode_partition's read budget (workbook 06, task 2): the prompt's condition that the
lanes of a warp share each token's K and V rows, checked on a right answer's access counts;
past it, the hint names the array read more often than a right kernel reads it.

Every count here is a total over the launch (the executor counts per array, not per thread
and array), set against what the prompt allows in all: each K and V value of a partition
once per block, each block's q once, a block-table entry once per token and lane, the
sequence's length once per lane.
"""
from __future__ import annotations

from .decode_launch import WARP
from .puzzle_runner import per_thread_max
from .report import Mismatch

_SPLIT = ("Split each token's K and V rows between the lanes (lane i takes dims i, i + 32, "
          "...) and combine their partial dot products")


def partition_budget(counts, prob, part_len) -> None:
    """A Mismatch when some lane read more than the prompt allows: per token of its
    partition 2 * ceil(head_dim / 32) cache values and a block-table entry, plus once its
    share of q and its sequence's length."""
    head_dim = prob.q.shape[2]
    per_lane = -(-head_dim // WARP)
    budget = part_len * (2 * per_lane + 1) + per_lane + 1
    most, who = per_thread_max(counts, "global_reads")
    if most <= budget:
        return
    raise Mismatch(f"correct, but {who} made {most} global reads for a partition of at most "
                   f"{part_len} tokens; the budget is {budget} (per token 2 x ceil(head_dim / "
                   "32) cache values and a block-table entry, plus q and seq_len)",
                   _over_budget_hint(counts, prob, part_len, per_lane))


def _over_budget_hint(counts, prob, part_len, per_lane: int) -> str:
    """`per_lane`: the dims of a K or V row a lane reads, ceil(head_dim / 32)."""
    batch, num_heads, head_dim = prob.q.shape
    lens = [int(n) for n in prob.seq_lens]
    rows = sum(lens) * num_heads        # (token, query head): a K and a V row each
    blocks = sum(-(-n // part_len) for n in lens) * num_heads   # the partitions that exist
    launched = -(-max(lens) // part_len) * num_heads * batch
    # (the counts are filed under the stub's names, whatever the kernel calls its parameters)
    reads = {name: b.reads for name, b in counts.by_buffer.items()}
    needed = rows * head_dim
    for cache in ("k_cache", "v_cache"):
        got = reads.get(cache, 0)
        if got >= WARP * needed:
            return (f"{cache} was read {got} times, {got // needed} times the {needed} values "
                    f"the partitions hold: every lane reads whole rows. {_SPLIT}.")
        if got > needed:
            return (f"{cache} was read {got} times where {needed} would do: a block reads each "
                    f"{cache[0].upper()} value of its partition once.")
    if reads.get("q", 0) > blocks * head_dim:
        return (f"q was read {reads['q']} times where {blocks * head_dim} would do ({head_dim} "
                f"values for each of the {blocks} blocks of a partition that exists): load "
                "each lane's share of q into registers once, before the token loop, not once "
                "per token.")
    if reads.get("block_tables", 0) > WARP * rows:
        return (f"block_tables was read {reads['block_tables']} times, more than once per "
                f"token by each lane ({WARP * rows}): read a token's entry once and use it "
                "for both its K row and its V row.")
    if reads.get("seq_lens", 0) > WARP * launched:
        return (f"seq_lens was read {reads['seq_lens']} times, more than once by each lane of "
                f"the {launched} blocks: read seq_lens[b] once into a variable.")
    # no array's total is past what a right kernel reads: the lanes shared the rows unevenly
    return (f"the block's reads add up, but some lane read more than its share: per token a "
            f"lane may read ceil(head_dim / 32) = {per_lane} value{'s' * (per_lane > 1)} of "
            "the K row, as many of the V row, and one block-table entry, so that all 32 lanes "
            "share every row. Some lanes read whole rows, or several consecutive dims each (a "
            "float4 load of 4 dims per lane leaves lanes idle when head_dim is below 128), "
            f"while others read less. {_SPLIT}.")
