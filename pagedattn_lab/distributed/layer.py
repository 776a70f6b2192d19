"""An attention layer split over ranks as a model runs it (Megatron-LM's, and vLLM's, scheme):
no gather of the attention output at all.

    hidden x [batch, hidden], the same on every rank
    q = x Wq[rank's head rows]^T          column-parallel: each rank computes only its heads
    o = paged decode attention of q over the rank's cache shard (its KV heads)
    y = o Wo[:, rank's head columns]^T    row-parallel: a partial sum of the layer's output
    y = all_reduce(y, sum)                one collective per layer, [batch, hidden]

The K/V of the step's new tokens would come from x Wk, x Wv the same way (the rank's KV-head
rows); here the cache is the demo's seeded pool, whose pages already hold them.
"""
from __future__ import annotations

import numpy as np

from ..wrappers import BatchDecodeWrapper
from .demo import DEFAULT_CASE, _host, kv_pool, make_tables
from .shard import head_range


def layer_weights(case: dict, hidden: int):
    """(x [batch, hidden], Wq [H*D, hidden], Wo [hidden, H*D]): seeded, float32."""
    rng = np.random.default_rng([case["seed"], 4])
    hd = case["num_heads"] * case["head_dim"]
    x = rng.standard_normal((len(case["seq_lens"]), hidden)).astype(np.float32)
    wq = (rng.standard_normal((hd, hidden)) / np.sqrt(hidden)).astype(np.float32)
    wo = (rng.standard_normal((hidden, hd)) / np.sqrt(hd)).astype(np.float32)
    return x, wq, wo


def tp_layer_rank(rank: int, world_size: int, case: dict | None = None,
                  hidden: int = 96) -> dict:
    """One rank of the layer: its rows of Wq, its heads' attention, its columns of Wo, then
    the all_reduce. Returns the layer's output [batch, hidden] and the reduce's bytes."""
    from .decode import TPDecode  # noqa: PLC0415 - needs torch, which only ranks import
    c = {**DEFAULT_CASE, **(case or {})}
    tables = lens = None
    if rank == 0:
        tables, lens = make_tables(c["seq_lens"], c["page_size"], c["num_pages"], c["forks"],
                                   c["seed"])
    tp = TPDecode(c["num_heads"], c["num_kv_heads"], c["head_dim"], c["page_size"],
                  c["dtype"], len(c["seq_lens"]), -(-max(c["seq_lens"]) // c["page_size"]))
    tables, lens = (_host(a).copy() for a in tp.share_tables(tables, lens))
    tp.plan(tables, lens)
    h, d = tp.heads, c["head_dim"]
    k, v = kv_pool(c["seed"], h, c["num_pages"], c["page_size"], d, c["dtype"], tables, lens)
    x, wq, wo = layer_weights(c, hidden)
    rows = slice(h.q_start * d, h.q_stop * d)                 # this rank's heads
    q = (x @ wq[rows].T).reshape(len(lens), h.q_stop - h.q_start, d)
    o = tp.attend(np.ascontiguousarray(q), k, v)
    y = o.reshape(len(lens), -1) @ wo[:, rows].T              # a partial sum
    tp.dist.all_reduce(tp.as_torch(y))                        # in place: the whole output
    return {"rank": rank, "out": y, "reduce_bytes": y.nbytes}


def single_process_layer(case: dict | None = None, hidden: int = 96) -> np.ndarray:
    """The same layer with every head in this process."""
    c = {**DEFAULT_CASE, **(case or {})}
    tables, lens = make_tables(c["seq_lens"], c["page_size"], c["num_pages"], c["forks"],
                               c["seed"])
    every = head_range(0, 1, c["num_heads"], c["num_kv_heads"])
    k, v = kv_pool(c["seed"], every, c["num_pages"], c["page_size"], c["head_dim"],
                   c["dtype"], tables, lens)
    x, wq, wo = layer_weights(c, hidden)
    q = (x @ wq.T).reshape(len(lens), c["num_heads"], c["head_dim"])
    w = BatchDecodeWrapper().plan(tables, lens, c["num_heads"], c["num_kv_heads"],
                                  c["head_dim"], c["page_size"], c["dtype"])
    return w.run(np.ascontiguousarray(q), k, v).reshape(len(lens), -1) @ wo.T
