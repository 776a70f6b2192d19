"""What a benchmarked workload must do: its floating-point operations and the fewest bytes
it must move, recomputed from a bench record's "shape" (as `pagedattn_lab.bench.workloads`
describes it) with the bench's own formulas. The bench's records carry either bytes (decode)
or FLOPs (prefill), not both; the roofline needs both.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..attention_common import element_dtype
from ..validate import check_gqa_heads, check_int

_DECODE_SHAPE = re.compile(r"(?P<batch>\d+) seqs, (?P<tokens>\d+) tokens, (?P<heads>\d+)/"
                           r"(?P<kv_heads>\d+) heads, d(?P<head_dim>\d+), page \d+, (?P<dtype>\w+)")
_PREFILL_SHAPE = re.compile(r"(?P<batch>\d+) x (?P<seq_len>\d+) tokens, (?P<heads>\d+) heads, "
                            r"d(?P<head_dim>\d+), causal, (?P<dtype>\w+)")


@dataclass(frozen=True)
class Cost:
    """What one call of a workload must do: FLOPs, bytes moved (the fewest possible), dtype."""
    flops: float
    bytes: float
    dtype: str

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes


def decode_cost(batch: int, tokens: int, num_heads: int, num_kv_heads: int, head_dim: int,
                dtype: str = "float16") -> Cost:
    """Decode: every query head scores every cached token of its sequence (q.k, head_dim
    multiply-adds) and adds its value (p.v, head_dim more): 4 x head_dim FLOPs per (token,
    query head). Bytes: every cached K and V element once, q read and out written once (the
    block table, a few KB, is left out)."""
    batch = check_int(batch, "batch", minimum=1)
    tokens = check_int(tokens, "tokens")
    if tokens < batch:   # a decode step reads at least the one token each sequence holds
        raise ValueError(f"tokens: expected at least one cached token per sequence (>= batch "
                         f"{batch}), got {tokens}")
    num_heads, num_kv_heads = check_gqa_heads(num_heads, num_kv_heads)
    head_dim = check_int(head_dim, "head_dim", minimum=1)
    dtype = element_dtype(dtype)
    item = dtype.itemsize
    flops = 4 * tokens * num_heads * head_dim
    nbytes = (2 * tokens * num_kv_heads + 2 * batch * num_heads) * head_dim * item
    return Cost(float(flops), float(nbytes), dtype.name)


def prefill_cost(batch: int, seq_len: int, num_heads: int, head_dim: int,
                 dtype: str = "float32") -> Cost:
    """Causal prefill: query t scores keys 0..t, so L(L+1)/2 (query, key) pairs per head, 4 x
    head_dim FLOPs each. Bytes: q, K and V read once and out written once."""
    batch = check_int(batch, "batch", minimum=1)
    seq_len = check_int(seq_len, "seq_len", minimum=1)
    num_heads = check_int(num_heads, "num_heads", minimum=1)
    head_dim = check_int(head_dim, "head_dim", minimum=1)
    dtype = element_dtype(dtype)
    item = dtype.itemsize
    pairs = seq_len * (seq_len + 1) // 2
    flops = 4 * batch * num_heads * pairs * head_dim
    nbytes = 4 * batch * seq_len * num_heads * head_dim * item
    return Cost(float(flops), float(nbytes), dtype.name)


def workload_cost(record: dict) -> Cost | None:
    """The Cost of a bench record, from its "shape"; None when the shape is not one the bench
    writes. A decode record's own "bytes" (which also counts the block table) is kept."""
    shape = record.get("shape") or ""
    if m := _DECODE_SHAPE.search(shape):
        g = {k: (v if k == "dtype" else int(v)) for k, v in m.groupdict().items()}
        cost = decode_cost(g["batch"], g["tokens"], g["heads"], g["kv_heads"], g["head_dim"],
                           g["dtype"])
        if record.get("bytes"):
            cost = Cost(cost.flops, float(record["bytes"]), cost.dtype)
        return cost
    if m := _PREFILL_SHAPE.search(shape):
        g = {k: (v if k == "dtype" else int(v)) for k, v in m.groupdict().items()}
        return prefill_cost(g["batch"], g["seq_len"], g["heads"], g["head_dim"], g["dtype"])
    return None
