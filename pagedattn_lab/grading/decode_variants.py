"""Split-K decode with the classic mistakes switched on, to recognize them in a result.

`partials_variant` computes every partition's (m, l, o) in float64 the way a kernel walks
the tokens (through the block table, slot by slot), with optional bugs:

    kv_map="mod" / "same"     query head h reads kv head h % num_kv_heads / h (GQA)
    kv_map="by_kv_heads"      query head h reads kv head h / num_kv_heads (not h / group)
    kv_map="mod_group"        query head h reads kv head h % group (its place in its group)
    scale=1.0                 the missing 1/sqrt(head_dim)
    bounds="inclusive"        a partition reads tokens start..end (one past its end)
    bounds="unclipped"        a partition reads part_len tokens even past seq_len
    bounds="skip_first"       a partition starts one token late
    bounds="drop_last"        the last partition stops one token early (at seq_len - 1)
    bounds="page_start"       partition p starts at token p * page_size, not p * part_len
    bounds="to_seq_len"       every partition runs on to seq_len (end = seq_len)
    bounds="part_start"       partition p starts at token p, not p * part_len (start = part)
    online_bug="acc"/"sum"    the online softmax forgets to rescale acc / the running sum
    online_bug="max0"         the running max starts at 0 instead of -inf
    online_bug="acc_reset"    acc set to 0 at every token (inside the token loop): only the
                              last token's weighted value is left, over the whole sum l
    online_bug="sum_reset"    l set to 0 at every token: the last token's weight alone
    base2=True                m stored in base-2 units (scores times log2(e))
    normalized=False          o stored as the weighted sum, not divided by l
    scaled_values=True        the values multiplied by scale as well as the scores
    paging="unscaled"         a slot is block_table[t / page_size] + t % page_size (the page
                              number not multiplied by page_size)
    paging="first_table"      every sequence reads sequence 0's block-table row
    paging="next_page"        a token's page is block_table[t / page_size + 1], the next one
    paging="parts_stride"     sequence b's block-table row read from b * max_parts on (the
                              partition count for the table's width max_pages)
    paging="head_stride"      a row is at slot * head_dim + kv_head * head_dim (the guide's
                              bug: the head stride without num_kv_heads)
    q_head="kv"               query head h reads q's row of its kv head, not its own
    swap="keys_from_values"   the keys are read from v_cache too ("values_from_keys": the
                              values from k_cache)
    reduced=(8, 4, 2, 1)      the dot product's xor reduction over these offsets only: lanes
                              0-15 and 16-31 (or, (16, 8, 4, 2), the even and the odd lanes)
                              each sum, and weigh the keys by, their own lanes' dims
                              (lane d % 32); lane 0's group stores m and l
    shuffle=("up", 32, True)  the dot product reduced by the tree warp_trees.tree(op, width,
                              add) runs: each lane weighs the keys by the dot it ends with
                              and stores its own dims; lane 0 stores m and l

A token whose page is block-table padding (or past the row) makes its partition NaN: a
kernel would fault there, so such a variant only matches where it stays in bounds. Tokens
in unused slots read whatever the cache holds there (the checks put NaN in them).

`merge_variant` is the merge with its classic mistakes; `merge_by_tokens` and `pairs_by_p`
give two more, which need the lengths or the raw (m, l) pairs, and `merge_carried` the sums
declared outside the loop over d (CARRIED_HINTS).
"""
from __future__ import annotations

import numpy as np

from ..split_k import partition_bounds
from ..validate_scale import LOG2E
from .compare import one_of
from .online_variants import online_state
from .variants import kv_head_of
from .warp_trees import tree


def _token_range(start: int, end: int, seq_len: int, part_len: int, bounds: str,
                 page_size: int) -> range:
    if bounds == "page_start":
        first = start // part_len * page_size
        return range(first, min(seq_len, first + part_len))
    if bounds == "part_start":
        first = start // part_len
        return range(first, min(seq_len, first + part_len))
    if bounds == "inclusive":
        return range(start, end + 1)
    if bounds == "unclipped":
        return range(start, start + part_len)
    if bounds == "skip_first":
        return range(start + 1, end)
    if bounds == "drop_last" and end == seq_len:
        return range(start, end - 1)
    if bounds == "to_seq_len":
        return range(start, seq_len)
    return range(start, end)


def _table_row(prob, b: int, paging: str, max_parts: int):
    """The block-table entries sequence b reads as its row (to the table's end for
    "parts_stride": a kernel reads on past its row there)."""
    if paging == "parts_stride":
        return prob.block_tables.reshape(-1)[b * max_parts:]
    return prob.block_tables[0 if paging == "first_table" else b]


def spare_page_padding(prob, rng):
    """`prob` with every -1 of its block table pointing at a page no sequence holds, which
    `rng` fills with finite values: a kernel that faulted reading rows max_parts apart
    ("parts_stride") reads that page instead of the padding. None without such a page."""
    spare = np.setdiff1d(np.arange(prob.k_cache.shape[0]), prob.block_tables)
    if not spare.size:
        return None
    for cache in (prob.k_cache, prob.v_cache):
        cache[spare[0]] = rng.standard_normal(cache.shape[1:])
    prob.block_tables = np.where(prob.block_tables < 0, spare[0], prob.block_tables).astype(
        prob.block_tables.dtype)
    return prob


def _rows(prob, b: int, kv_head: int, tokens: range, paging: str = "right", max_parts=0):
    """K and V rows [n, head_dim] of `tokens` of sequence b, read at the flat offsets a kernel
    computes (so a kv head past the cache's heads reads the next token's row); NaN rows for a
    token whose page is padding or past the table, or whose row is past the buffer."""
    _, page_size, num_kv_heads, head_dim = prob.k_cache.shape
    k_flat = prob.k_cache.reshape(-1).astype(np.float64)
    v_flat = prob.v_cache.reshape(-1).astype(np.float64)
    row = _table_row(prob, b, paging, max_parts)
    keys = np.full((len(tokens), head_dim), np.nan)
    values = np.full((len(tokens), head_dim), np.nan)
    for i, t in enumerate(tokens):
        vpage = t // page_size + (paging == "next_page")
        if vpage >= len(row) or row[vpage] < 0:
            continue
        slot = int(row[vpage]) * (1 if paging == "unscaled" else page_size) + t % page_size
        base = (slot + kv_head) * head_dim if paging == "head_stride" else \
            (slot * num_kv_heads + kv_head) * head_dim
        if base + head_dim <= k_flat.size:
            keys[i], values[i] = k_flat[base:base + head_dim], v_flat[base:base + head_dim]
    return keys, values


def _state(scores, values, online_bug):
    """(m, l, o) of one partition's scores, through the online softmax with `online_bug`."""
    if online_bug:
        m, total, acc = online_state(scores[None], values, online_bug)
        return m[0], total[0], acc[0] / total[0]
    m_p = scores.max()
    w = np.exp(scores - m_p)
    return m_p, w.sum(), w @ values / w.sum()


def _weighed(owner, dot_of, values, scale, online_bug):
    """(m, l of lane 0, o) where the dims of each owner (`owner`: a dim's lane, or lane
    group, d % 32) hold o weighed by that owner's dot over the keys (`dot_of(owner)`)."""
    o_p = np.empty(len(owner))
    for g in sorted(set(owner), reverse=True):   # lane 0's last: it stores m and l
        m_p, l_p, o_g = _state(dot_of(g) * scale, values, online_bug)
        o_p[owner == g] = o_g[owner == g]
    return m_p, l_p, o_p


def _by_lane_groups(keys, values, q_row, scale, online_bug, reduced):
    """(m, l of lane 0, o) where the xor offsets `reduced` join the lanes into groups: lanes
    that the offsets never connect keep their partial dots apart."""
    group_of = np.arange(len(q_row)) % 32 & ~sum(reduced)
    return _weighed(group_of, lambda g: keys[:, group_of == g] @ q_row[group_of == g],
                    values, scale, online_bug)


def _by_lane_dots(keys, values, q_row, scale, online_bug, shuffle):
    """(m, l of lane 0, o) where lane L weighs the keys by its own dot after the shuffle tree
    `shuffle` = (op, width, add) over the lanes' partial dots (lane L's: its dims d % 32 =
    L), and stores its dims of o."""
    lane_of = np.arange(len(q_row)) % 32
    partial = np.zeros((32, len(keys)))
    np.add.at(partial, lane_of, (keys * q_row).T)
    dots = tree(partial.T, *shuffle)                 # [tokens, 32]
    return _weighed(lane_of, lambda lane: dots[:, lane], values, scale, online_bug)


def partials_variant(prob, part_len: int, *, kv_map="div", scale=None, bounds="exact",
                     online_bug=None, base2=False, normalized=True, scaled_values=False,
                     paging="right", q_head="own", reduced=(16, 8, 4, 2, 1), swap=None,
                     shuffle=None):
    """(m, l, o) like `split_k.reference_partials`, with the chosen mistakes (`shuffle`:
    (op, width, add) of warp_trees.tree, the lanes' dot products reduced by that tree)."""
    for name, value, allowed in (
            ("kv_map", kv_map, ("div", "mod", "same", "by_kv_heads", "mod_group")),
            ("bounds", bounds, ("exact", "inclusive", "unclipped", "skip_first", "drop_last",
                                 "page_start", "to_seq_len", "part_start")),
            ("online_bug", online_bug, (None, "acc", "sum", "max0", "acc_reset",
                                        "sum_reset")),
            ("paging", paging, ("right", "unscaled", "first_table", "head_stride",
                                "next_page", "parts_stride")),
            ("q_head", q_head, ("own", "kv")),
            ("swap", swap, (None, "keys_from_values", "values_from_keys"))):
        one_of(name, value, allowed)
    num_heads = prob.q.shape[1]
    num_kv_heads = prob.k_cache.shape[2]
    scale = prob.scale if scale is None else scale
    lens = [int(n) for n in prob.seq_lens]
    max_parts = -(-max(lens) // part_len)
    rows = (len(lens), num_heads, max_parts)
    m, l = np.full(rows, -np.inf), np.zeros(rows)
    o = np.full(rows + (prob.q.shape[2],), np.nan)
    with np.errstate(all="ignore"):
        for b, n in enumerate(lens):
            for h in range(num_heads):
                kvh = kv_head_of(kv_map, h, num_heads, num_kv_heads)
                for p, (start, end) in enumerate(partition_bounds(n, part_len)):
                    tokens = _token_range(start, end, n, part_len, bounds,
                                          prob.k_cache.shape[1])
                    if bounds == "page_start" and not tokens:
                        continue   # (its start is past seq_len: the kernel returns there)
                    keys, values = _rows(prob, b, kvh, tokens, paging, max_parts)
                    if swap:
                        keys, values = (values, values) if swap == "keys_from_values" else \
                            (keys, keys)
                    q_row = prob.q[b, kvh if q_head == "kv" else h].astype(np.float64)
                    if scaled_values:
                        values = values * scale
                    if shuffle:
                        m_p, l_p, o_p = _by_lane_dots(keys, values, q_row, scale, online_bug,
                                                      shuffle)
                    else:
                        m_p, l_p, o_p = _by_lane_groups(keys, values, q_row, scale,
                                                        online_bug, reduced)
                    m[b, h, p] = m_p * (LOG2E if base2 else 1.0)
                    l[b, h, p] = l_p
                    o[b, h, p] = o_p if normalized else o_p * l_p
    return m, l, o


def merge_variant(m, l, o, num_parts, *, bug: str):
    """The merge of partition states [.., P] with one classic mistake (float64).

    no_rescale: weights l_p (maxima ignored); no_sum: weights exp(m_p - m) (sums ignored);
    mean: plain average; no_divide: sum of w_p o_p, never divided; divide_by_l: the sum of
    w_p o_p over the sum of l_p (maxima ignored there); o_unnormalized: weights
    exp(m_p - m) over the divisor sum l_p exp(m_p - m); exp2: weights l_p 2^(m_p - m);
    log2_lse: weights exp(m_p + log2(l_p) - max), the log-sum-exp in two bases; inverted:
    weights l_p exp(m - m_p), the exponent reversed; m_for_l: weights m_p exp(m_p - m), the
    pair's m read where its l belongs; times_m: weights l_p m_p exp(m_p - m); stale_rescale:
    a running merge over the partitions in order that sets its max before taking the rescale
    factor (exp(0) = 1), so each partition keeps the scale of the running max when it was
    added; none: the right merge (to model a wrong partition count, pass that count as
    num_parts)."""
    one_of("bug", bug, ("none", "no_rescale", "no_sum", "mean", "no_divide", "divide_by_l",
                        "o_unnormalized", "exp2", "log2_lse", "inverted", "stale_rescale",
                        "m_for_l", "times_m"))
    m, l, o = (np.asarray(x, dtype=np.float64) for x in (m, l, o))
    used = np.arange(m.shape[-1]) < np.asarray(num_parts)[..., None]
    with np.errstate(all="ignore"):
        m_all = np.where(used, m, -np.inf).max(axis=-1, keepdims=True)
        scale = np.exp(m - m_all)
        running = np.maximum.accumulate(np.where(used, m, -np.inf), axis=-1)
        weights = {"no_rescale": l, "no_sum": scale, "mean": np.ones_like(l),
                   "no_divide": l * scale, "o_unnormalized": scale,
                   "exp2": l * np.exp2(m - m_all), "inverted": l * np.exp(m_all - m),
                   "stale_rescale": l * np.exp(m - running),
                   "m_for_l": m * scale, "times_m": l * m * scale,
                   # exp(m_p + log2 l_p - c): a factor common to every p drops in the divide
                   "log2_lse": scale * l ** (1 / np.log(2))}.get(bug, l * scale)
        w = np.where(used, weights, 0.0)
        top = (w[..., None] * np.where(used[..., None], o, 0.0)).sum(axis=-2)
        if bug == "no_divide":
            return top
        divisor = np.where(used, l * scale, 0.0) if bug == "o_unnormalized" else \
            np.where(used, l, 0.0) if bug == "divide_by_l" else w
        return top / divisor.sum(axis=-1)[..., None]


# A sum declared before the loop over d (float total = 0.0f outside it) keeps adding: a
# thread's dims past its first hold the sums of all its dims so far.
CARRIED_HINTS = {
    "total": "total is not reset for each dim: a thread's dims d >= blockDim.x are divided by "
             "2, 3, ... times the weights' sum (d / blockDim.x + 1 of them). Declare `float "
             "total = 0.0f` inside the loop over d (or sum the weights once, before it).",
    "o": "o is not reset for each dim: a thread's dims d >= blockDim.x add the weighted values "
         "of its dims before them. Declare `float o = 0.0f` inside the loop over d.",
    "both": "total and o are not reset for each dim: a thread's dims d >= blockDim.x carry "
            "the sums of its dims before them. Declare both inside the loop over d.",
}


def merge_carried(m, l, o, num_parts, threads: int, carried: str):
    """The merge by `threads` threads, each over dims d = threadIdx.x, + threads, ..., with
    `carried` ("total", "o" or "both") declared outside its loop over d: a thread's k-th dim
    holds the sums of its k dims so far (the total k times over, o the sum of its dims')."""
    weighted = merge_variant(m, l, o, num_parts, bug="no_divide")
    # the weights' sum in every dim: the undivided merge of partitions whose o is all 1
    total = merge_variant(m, l, np.ones_like(o), num_parts, bug="no_divide")
    rank = np.arange(weighted.shape[-1]) // threads + 1    # the thread's k-th dim, from 1
    if carried != "total":
        for d in range(threads, weighted.shape[-1]):
            weighted[..., d] += weighted[..., d - threads]
    return weighted / (total * rank if carried != "o" else total)


def merge_by_tokens(m, l, o, lens, part_len: int):
    """The merge with partition p weighted by the tokens it holds, not by l_p exp(m_p - m)
    (0 for a slot past the sequence's ceil(lens / part_len) partitions)."""
    p = np.arange(m.shape[-1])
    w = np.clip(lens[:, None, None] - p * part_len, 0, part_len).astype(np.float64)  # [b, 1, p]
    top_sum = (w[..., None] * np.where(w[..., None] > 0, o, 0)).sum(axis=-2)
    return top_sum / w.sum(axis=-1)[..., None]


def pairs_by_p(part_ml):
    """(m, l) of part_ml [batch, heads, parts, 2] read as ml[p] and ml[p + 1] of each row's
    flat pairs, not ml[2 * p] and ml[2 * p + 1]."""
    flat = part_ml.reshape(*part_ml.shape[:2], -1)
    parts = part_ml.shape[2]
    return flat[..., :parts], flat[..., 1:parts + 1]
