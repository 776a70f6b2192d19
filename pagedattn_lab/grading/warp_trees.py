"""Shuffle-tree mistakes of the reduction puzzles (workbook 03's warp_sum and block_sum),
simulated in NumPy with the shuffles' own rules, so that a wrong total can be told apart by
what the writing lane (lane 0) would hold after each mistaken tree. (`sources`, the lane
each lane reads, also drives quant_variants' amax tree of workbook 11.)

The rules (CUDA's): __shfl_xor_sync(m, v, k, w) reads lane ^ k, and a lane whose source lies
in a later group of w lanes gets its own v back; __shfl_down_sync reads lane + k and
__shfl_up_sync lane - k within the lane's group of w (else its own v); __shfl_sync(m, v, s,
w) reads lane s of the caller's group of w.
"""
from __future__ import annotations

import numpy as np

WARP = 32
OFFSETS = (16, 8, 4, 2, 1)


def sources(op: str, arg: int, width: int = WARP) -> np.ndarray:
    """The lane each lane reads from (its own where the shuffle hands its value back): op
    "xor", "down", "up" or "idx" (__shfl_sync), arg the offset or the source lane."""
    lane = np.arange(WARP)
    group, pos = lane // width * width, lane % width
    if op == "xor":
        src = lane ^ arg
        return np.where(src // width > lane // width, lane, src)
    if op == "down":
        return np.where(pos + arg < width, lane + arg, lane)
    if op == "up":
        return np.where(pos - arg >= 0, lane - arg, lane)
    return group + arg % width   # "idx": __shfl_sync


def tree(values, op: str = "xor", width: int = WARP, add: bool = True,
         offsets=OFFSETS) -> np.ndarray:
    """Every lane's value after the tree `for k in offsets: v (+)= shfl_op(v, k, width)`;
    `values` is [..., 32] (a warp's elements on its last axis)."""
    v = np.asarray(values, np.float64)
    for k in offsets:
        got = v[..., sources(op, k, width)]
        v = v + got if add else got
    return v


def lane0_mistakes(lanes) -> list[tuple[str, np.ndarray]]:
    """(hint, each warp's lane-0 value) for the tree mistakes whose lane 0 ends with a wrong
    total; `lanes` is [..., 32]. (__shfl_xor_sync and __shfl_down_sync give lane 0 the same
    value under each of these mistakes, so a hint names the mistake, not the shuffle.)"""
    return [
        ("v = __shfl_*_sync(...) replaced v with the partner's value instead of adding it (v "
         "+= ...): lane 0 ends with one lane's element (lane 31's), not the warp's sum.",
         tree(lanes, add=False)[..., 0]),
        ("the shuffle's width argument (16) splits the warp into groups of 16 lanes: the "
         "offset-16 step hands each lane of the first group its own value back (doubling it), "
         "so lane 0 ends with twice lanes 0-15's sum. Leave the width out (32: the whole "
         "warp).", tree(lanes, width=16)[..., 0]),
        ("__shfl_sync(mask, v, offset) reads lane `offset` itself (the same lane for every "
         "caller), not a partner that depends on the caller's lane: use __shfl_xor_sync (lane "
         "^ offset) or __shfl_down_sync (lane + offset).", tree(lanes, "idx")[..., 0]),
    ]


# decode_partition's dot product, reduced by a mistaken tree: (hint, partials_variant's
# mistakes). Every lane weighs the keys by the dot it ends with and stores its own dims.
_EACH_LANE = "so the lanes weighed the keys by different scores; every lane needs the whole dot"
PARTITION_TREES = [
    ("with __shfl_up_sync only lane 31 ends with the whole dot product (a lane's partner below "
     f"lane 0 hands it back its own value), {_EACH_LANE}: reduce with __shfl_xor_sync.",
     {"shuffle": ("up", WARP, True)}),
    ("the shuffle's width argument (16) splits the warp into groups of 16 lanes: lanes 0-15 "
     "end with twice their own half's dot product (the offset-16 step hands them their own "
     f"value back) and lanes 16-31 with the whole, {_EACH_LANE}: leave the width out (32).",
     {"shuffle": ("xor", 16, True)}),
    *[("dot = __shfl_*_sync(...) replaced the dot with the partner lane's instead of adding it "
       f"(dot += ...): each lane ended with one lane's partial dot, {_EACH_LANE}.",
       {"shuffle": (op, WARP, False)}) for op in ("xor", "down")],
]
