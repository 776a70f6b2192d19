"""What lesson 06's two kernel checks share: the warp launch, the NaN-tailed problems, the
merge's mistakes, the hints for dims no lane reaches or no lane stores, and the partition
check's for states stored at the wrong rows.

Each kernel runs one warp per block. A fault, a lane missing from a shuffle, or an index past
an output gets a message in the decode layouts (q [batch, num_heads, head_dim], out like q).
"""
from __future__ import annotations

import numpy as np

from ..words import ranges
from .cases import nan_tails, paged_problem
from .checks_kernels import _Compiled
from .faults import kernel_message, left_out_of_mask_hint
from .kernel_runner import KERNEL_TIMEOUT, unwritten
from .puzzle_runner import count_then_check
from .compare import ATOL, RTOL
from .report import Mismatch
from .stub_params import stub_buffer

WARP = 32   # both kernels run one warp per block
NOTHING_WRITTEN = ("the kernel wrote nothing (its outputs are still the NaN the check filled "
                   "them with): write the kernel body where the // TODO is")

_M_FOR_L = ("the weight's factor is the partition's max m_p where its sum l_p belongs: w_p = "
            "l_p * exp(m_p - m){where}; m_p enters only through the exponent.")
MERGE_HINTS = {
    "no_rescale": "each l_p is a sum measured against its own partition's max m_p: bring them "
                  "to one scale, weight w_p = l_p * exp(m_p - m) with m = max of the m_p.",
    "no_sum": "each o_p is already an average over its own partition, so a partition's weight "
              "is its whole share of the softmax sum, l_p * exp(m_p - m), not exp(m_p - m) "
              "alone (a partition of 8 tokens counts more than one of 2).",
    "mean": "a plain average of the o_p treats every partition alike: weight each by "
            "l_p * exp(m_p - m).",
    "no_divide": "divide by the sum of the weights: the result is a weighted average.",
    "divide_by_l": "divide by the sum of the weights w_p = l_p * exp(m_p - m), not by the sum "
                   "of the l_p: each l_p is measured against its own m_p.",
    "o_unnormalized": "o_p is already divided by l_p (it is the partition's softmax average): "
                      "weight it by l_p * exp(m_p - m) and divide by the sum of those weights.",
    "exp2": "m_p and l_p come from exp (base e): weight by l_p * exp(m_p - m), not "
            "l_p * 2^(m_p - m); exp2 needs its exponent times log2(e) = 1.4427.",
    "log2_lse": "a partition's log-sum-exp is m_p + log(l_p) with the natural log, as its sum "
                "is of exp: log2(l_p) mixes two bases. Weight by exp(m_p + log(l_p) - max), "
                "that is l_p * exp(m_p - m).",
    "inverted": "the exponent is reversed: weight w_p = l_p * exp(m_p - m), at most l_p; "
                "exp(m - m_p) weighs most the partitions whose max is lowest.",
    "m_for_l": _M_FOR_L.format(where=""),
    "times_m": "the partition's max m_p is multiplied into its weight: w_p = l_p * exp(m_p - m); "
               "m_p enters only through the exponent.",
    "stale_rescale": "your running merge sets the max before it takes the rescale factor, so "
                     "exp(m_old - m_new) is exp(0) = 1 and the partitions merged before a "
                     "larger m_p keep their old, too large scale: take the factor from the old "
                     "max first, then update the max (or take the max over every partition "
                     "before weighting).",
}
# the merge hints of decode_merge's kernel, whose pairs are read from part_ml (merge_partitions,
# in NumPy, is given m and l apart)
KERNEL_MERGE_HINTS = {**MERGE_HINTS, "m_for_l": _M_FOR_L.format(
    where=" (in the kernel l_p is ml[2 * p + 1], m_p ml[2 * p])")}

# The decode layouts, for a fault in these buffers (faults.py's own hints are prefill's).
DECODE_BUFFER_HINTS = {
    "part_out": ("each (sequence, head) row holds max_parts partition slots, of which only the "
                 "first ceil(seq_len / part_len) exist: count the partitions you read."),
    "q": ("q is [batch, num_heads, head_dim]: the row of (sequence b, head h) starts at "
          "(b * num_heads + h) * head_dim."),
    "out": ("out is [batch, num_heads, head_dim]: block (h, b) writes the row starting at "
            "(b * num_heads + h) * head_dim, dims 0..head_dim - 1."),
}
DECODE_BUFFER_HINTS["part_ml"] = DECODE_BUFFER_HINTS["part_out"]
# A store past the states (the partition kernel's): where a partition's values go, not how
# many partitions there are to read.
DECODE_WRITE_HINTS = {
    "part_out": ("part_out is [batch, num_heads, max_parts, head_dim]: partition p of row "
                 "(b, h) stores its values from ((b * num_heads + h) * max_parts + p) * "
                 "head_dim on, one per dim d < head_dim."),
    "part_ml": ("part_ml is [batch, num_heads, max_parts, 2]: partition p of row (b, h) stores "
                "m at slot * 2 and l at slot * 2 + 1, slot = (b * num_heads + h) * max_parts "
                "+ p."),
}


def launch_warp(comp: _Compiled, grid, args, outputs, *, count: bool = False):
    """Launch with one warp per block: (outputs, access counts or None). With `count`, the
    kernel first runs once on the CPU executor with its accesses counted (then on the GPU
    too, where the check runs there, and its values must be the CPU run's). A lane missing
    from a shuffle, and an index past the decode buffers, get messages of their own."""
    kern = comp.get()

    def launch():
        return kern.launch(grid, (WARP,), args, outputs=outputs)
    try:
        if not count:
            return launch(), None
        return count_then_check(lambda host: kern.count(grid, (WARP,), host,
                                                        timeout=KERNEL_TIMEOUT),
                                args, outputs, None if kern.device == "cpu" else launch)
    except Exception as exc:
        kind = type(exc).__name__
        buffer = stub_buffer(exc)
        if kind == "KernelFault" and buffer in DECODE_BUFFER_HINTS:
            message = kernel_message(exc)
            hint = DECODE_WRITE_HINTS.get(buffer) if getattr(exc, "access", None) == \
                "write" else None
            raise Mismatch(message, hint or DECODE_BUFFER_HINTS[buffer]) from exc
        if kind != "WarpSyncError":
            raise
        lanes = ranges(getattr(exc, "bad_lanes", None) or [])
        exited = bool(getattr(exc, "exited_threads", None))
        message = f"a warp shuffle can never complete: {exc}"
        hint = left_out_of_mask_hint(exc) or (
            f"lanes {lanes} had left the kernel when the others reached a shuffle whose mask "
            "(0xffffffff) names them: every lane must reach every __shfl_*_sync. A lane with "
            "nothing to load (head_dim < 32) takes part with 0; guard the load with an if, not "
            "a return." if exited else
            f"lanes {lanes} wait at a different shuffle than the others: every lane of the "
            "mask must run the same shuffles in the same order (no shuffle inside a branch "
            "some lanes skip).")
        raise Mismatch(message, hint) from exc


def dims_hint(got, rows, head_dim: int, who: str) -> str | None:
    """When the dims from a multiple of 32 up to head_dim still hold the poison in every row
    that exists (`rows`: bool over got's leading axes): a lane's loop over its dims stops
    early (head_dim / 32 rounds down). `who`: 'lane' or 'thread'."""
    never = unwritten(got)[np.broadcast_to(rows, got.shape[:-1])].all(axis=0)
    first = int(np.argmax(never)) if never.any() else head_dim
    # (no dim at all is a rounded-down count only where head_dim is below a warp's lanes)
    if first % WARP or first == head_dim or not never[first:].all() or \
            first == 0 < head_dim // WARP:
        return None
    per = -(-head_dim // WARP)
    which = "no dim was written" if first == 0 else f"dims {first} and up were never written"
    return (f"{which}: a warp has {WARP} {who}s, so {who} i handles dims i, i + {WARP}, ... "
            f"while they are below head_dim ({head_dim} here: up to ceil({head_dim} / {WARP}) = "
            f"{per} per {who}; head_dim / {WARP} rounds down).")


def dims_step_hint(got, rows, head_dim: int, grid_x: int) -> str | None:
    """When the dims never written, in every row that exists (`rows`: bool over got's leading
    axes), are exactly those with d % step >= 32 for one step above 32: the lanes' loop over
    their dims steps by that instead of blockDim.x (gridDim.x, where it equals `grid_x`)."""
    never = unwritten(got)[np.broadcast_to(rows, got.shape[:-1])]
    dims = np.arange(head_dim)
    for step in range(WARP + 1, head_dim):
        if (never == (dims % step >= WARP)).all():
            what = f"gridDim.x ({step} here)" if step == grid_x else str(step)
            return (f"dims {ranges(np.flatnonzero(never[0]))} were never written in any row: "
                    f"the lanes' loop over dims steps by {what}, so it skips the dims between "
                    f"lane 31's and the next step; step by blockDim.x ({WARP}).")
    return None


def unstored_lanes_hint(got, ref, rows) -> str | None:
    """When some lanes stored none of their dims (d % 32 = lane) in any row that exists
    (`rows`: bool over got's leading axes) and every dim the other lanes stored is right: the
    lanes all had the result, only some stored it (a store kept to lane 0, like part_ml's)."""
    lane_of, rows = np.arange(got.shape[-1]) % WARP, np.broadcast_to(rows, got.shape[:-1])
    never = unwritten(got)[rows]    # [rows, head_dim]
    silent = np.isin(lane_of, lane_of[never.any(axis=0)])
    right = np.isclose(got, ref, rtol=RTOL, atol=ATOL)[rows]
    if not silent.any() or silent.all() or not never[:, silent].all() or \
            not right[:, ~silent].all():
        return None
    return (f"lanes {ranges(np.unique(lane_of[silent]))} stored none of their dims, and every "
            "dim the other lanes stored is right: after the __shfl_xor_sync reduction every "
            "lane holds the whole dot product and the same weights, so each lane stores its own "
            "dims d = lane, lane + 32, ... (only part_ml's two values are stored by one lane).")


def decode_problem(seed, **sizes):
    sizes.setdefault("extra_pages", 2)
    return nan_tails(paged_problem(seed, mode="decode", **sizes))


def misplaced_hint(o, o_ref, used) -> str | None:
    """decode_partition's part_out `o` [batch, num_heads, max_parts, head_dim] against its
    reference `o_ref` (`used`: the partitions that exist): every row written holds a
    partition's right output, none more often than it is expected (one partition's output
    everywhere is a wrong range of tokens, not a wrong slot), but some at another (sequence,
    head, partition): the states are right, where they are stored is not. A row never
    written shows no slot: some row written must be wrong where it is."""
    rows = o.reshape(-1, o.shape[-1])
    right = o_ref[used]                                   # [partitions, head_dim]
    written = ~unwritten(rows).all(axis=-1)
    in_place = np.isclose(rows, o_ref.reshape(rows.shape), rtol=RTOL, atol=ATOL).all(axis=-1)
    if not (written & ~in_place).any():
        return None
    close = np.isclose(rows[written][:, None], right[None], rtol=RTOL, atol=ATOL).all(axis=-1)
    # no output written more often than it is expected (heads of one kv head over a one-token
    # sequence have the same output)
    alike = np.isclose(right[:, None], right[None], rtol=RTOL, atol=ATOL).all(axis=-1)
    if not close.any(axis=1).all() or (close.sum(axis=0) > alike.sum(axis=1)).any():
        return None
    return ("each partition's output is right, but stored at another partition's slot: "
            "part_out is [batch, num_heads, max_parts, head_dim], so block (p, h, b) = "
            "(partition, head, sequence) writes row (b * num_heads + h) * max_parts + p, and "
            "its (m, l) at the same row of part_ml.")


def _head_from_x_hint(o, o_ref, used) -> str | None:
    """The hint where part_out [batch, heads, max_parts, dim] was written, and right, for the
    heads below max_parts (gridDim.x) only, and never for the others: the head came from
    blockIdx.x, the partition's axis (what block (x, y) then computes, whether the partition
    came from blockIdx.y or also from x, is right where it lands)."""
    heads, max_parts = o.shape[1], o.shape[2]
    if max_parts >= heads:
        return None
    never = unwritten(o).all(axis=-1)
    low = np.broadcast_to(np.arange(heads)[None, :, None] < max_parts, used.shape)
    with np.errstate(invalid="ignore"):
        close = np.isclose(o, o_ref, atol=ATOL, rtol=RTOL).all(axis=-1)
    if not (never[used & ~low].all() and (close | ~used)[low].all()):
        return None
    written = "head 0 was" if max_parts == 1 else f"heads 0..{max_parts - 1} were"
    return (f"only {written} written (each right), heads {max_parts} and up never: "
            f"{max_parts} is gridDim.x, the number of partition slots. The grid is "
            "(max_parts, num_heads, batch): the partition is blockIdx.x and the head "
            "blockIdx.y; yours took the head from blockIdx.x.")


def never_stored_hint(o, o_ref, used) -> str | None:
    """The hints read off the part_out entries never stored, where every stored one is right:
    the heads from gridDim.x on (the head read from blockIdx.x), or the lanes that stored
    none of their dims."""
    return _head_from_x_hint(o, o_ref, used) or unstored_lanes_hint(o, o_ref, used)
