"""Paged attention with the classic mistakes switched on, to recognize them in a result.

`attention_variant` computes paged attention (decode or causal prefill) in float64 the
way a kernel does it, element offsets and all, with optional bugs:

    scale=1.0                  the missing 1/sqrt(head_dim)
    mask="none" / "strict"     no causal mask / a mask that drops the query's own token
    mask="past"                query t also sees key t + 1 (k <= t + 1, within the sequence)
    mask="block"               every query of a block of `block_queries` sees keys up to the
                               block's last
    mask="whole_pages"         causal, but a block of `block_queries` loads only the whole
                               pages of its keys (pages = keys_needed / page_size, rounded down)
    mask="block_short"         causal, but a block of `block_queries` loads one key fewer than
                               its last query needs (keys_needed = first_query + blockDim.x - 1)
    mask="page_local"          a block of `block_queries` loads its keys by pages, and query t
                               reads a page's key j while j <= t (first_key left out)
    shared_table=True          every sequence reads row 0 of block_tables (the guide)
    head_stride_bug=True       slot * head_dim + kv_head * head_dim (no num_kv_heads)
    kv_map="mod" / "same" / "zero"   query head h reads kv head h % num_kv_heads / h / 0
    kv_map="by_kv_heads"       query head h reads kv head h / num_kv_heads (not h / group)
    kv_map="mod_group"         query head h reads kv head h % group (its place in its group)
    values_from_keys=True      the values are read from k_cache too
    keys_from_values=True      the keys are read from v_cache too (a K tile the V tile overwrote)
    scaled_values=True         the values are multiplied by scale as well as the scores
    offset_shift=1             the token's offset inside its page is off by one
    page_shift=1               the token's virtual page is off by one (t / page_size + 1)
    identity_pages=True        the block table is ignored: token t read from slot t
    slot_bug="swap"            block_table[t % page_size] * page_size + t / page_size
    slot_bug="unscaled"        block_table[t / page_size] + t % page_size (no * page_size)
    slot_bug="page_only"       block_table[t / page_size]: the page id taken as the slot
    slot_bug="offset_div"      block_table[t / page_size] * page_size + t / page_size
    pow2_pages=True            t >> log2(page_size) and t & (page_size - 1) for // and %
    kv_map="shift"             h >> log2(num_heads / num_kv_heads) for the GQA division
    drop_last=True             decode ignores the sequence's last cached token
    online_bug="no_div"        the accumulator is never divided by the running sum
    online_bug="new_term"      the rescale multiplies the new key's term, not the accumulator
    online_bug="max_stuck"     the running max is never updated (it stays -inf)

A read out of bounds makes the rows that read it NaN (a real kernel would fault or read
garbage there, so such a variant can only match where it stays in bounds); a causal row
that stops before the first such key keeps its value.
"""
from __future__ import annotations

import numpy as np

from .compare import POW2_HINT, kv_head_rule, one_of, pow2_div, pow2_mod
from .online_variants import online_state
from .offset_hints import (NEXT_PAGE_HINT, OFFSET_DIV_HINT, PAGE_ONLY_HINT, SWAPPED_SLOT_HINT,
                           UNSCALED_PAGES_HINT)
from .report import several_fit

KV_MAPS = ("div", "mod", "same", "zero", "shift", "by_kv_heads", "mod_group")


def kv_head_of(kv_map: str, h: int, num_heads: int, num_kv_heads: int) -> int:
    """The KV head query head h reads under `kv_map` (KV_MAPS; "div" is the right one)."""
    group = num_heads // num_kv_heads
    return {"div": h // group, "mod": h % num_kv_heads, "same": h, "zero": 0,
            "shift": int(pow2_div(h, group)), "by_kv_heads": h // num_kv_heads,
            "mod_group": h % group}[kv_map]


def _flat_indices(table_row, positions, page_size, num_kv_heads, head_dim, kv_head, *,
                  offset_shift=0, identity_pages=False, head_stride_bug=False,
                  pow2_pages=False, slot_bug=None, page_shift=0):
    """Flat element indices [len(positions), head_dim] of one kv head's rows, or None if any
    page id is padding (negative)."""
    positions = np.asarray(positions, dtype=np.int64)
    if identity_pages:
        slots = positions
    else:
        vpage = pow2_div(positions, page_size) if pow2_pages else positions // page_size
        offsets = pow2_mod(positions, page_size) if pow2_pages else positions % page_size
        if slot_bug == "swap":
            vpage, offsets = offsets, vpage
        elif slot_bug == "offset_div":
            offsets = vpage
        vpage = vpage + page_shift
        if vpage.size and vpage.max() >= len(table_row):
            return None
        pages = np.asarray(table_row, dtype=np.int64)[vpage]
        if (pages < 0).any():
            return None
        slots = pages if slot_bug == "page_only" else \
            (pages if slot_bug == "unscaled" else pages * page_size) + offsets + offset_shift
    if head_stride_bug:
        base = slots * head_dim + kv_head * head_dim
    else:
        base = (slots * num_kv_heads + kv_head) * head_dim
    return base[:, None] + np.arange(head_dim)


def attention_variant(q, k_cache, v_cache, block_tables, seq_lens, scale, *, mode="prefill",
                      mask="causal", shared_table=False, head_stride_bug=False, kv_map="div",
                      offset_shift=0, identity_pages=False, drop_last=False, online_bug=None,
                      values_from_keys=False, keys_from_values=False, pow2_pages=False,
                      scaled_values=False, block_queries=None, slot_bug=None, page_shift=0,
                      dot=None):
    """Paged attention with the chosen mistakes; float64 NumPy, q's shape. dot(q_rows, keys):
    the scores before the scale, where a mistake computes them another way (q_rows @ keys.T).

    online_bug="acc" / "sum" / "both": the online softmax forgets to rescale the accumulator /
    the running sum / both when the maximum grows; "max0": the running max starts at 0, not -inf;
    "old_max": a key's weight is taken against the max before it, exp(s - m_old); "no_div":
    the accumulator is never divided by the running sum; "new_term": acc + rescale * weight
    * v, the rescale on the new term; "max_stuck": the running max never set to the new one;
    "acc_reset" / "sum_reset": acc / the running sum set to 0 at every key the row reads."""
    for name, value, allowed in (
            ("mode", mode, ("prefill", "decode")),
            ("mask", mask, ("causal", "none", "strict", "past", "block", "whole_pages",
                            "block_short", "page_local")),
            ("kv_map", kv_map, KV_MAPS),
            ("online_bug", online_bug, (None, "acc", "sum", "both", "max0", "old_max", "no_div",
                                        "new_term", "max_stuck", "acc_reset", "sum_reset")),
            ("slot_bug", slot_bug, (None, "swap", "unscaled", "page_only", "offset_div"))):
        one_of(name, value, allowed)
    q = np.asarray(q, dtype=np.float64)
    kf = np.asarray(v_cache if keys_from_values else k_cache, dtype=np.float64).reshape(-1)
    vf = np.asarray(k_cache if values_from_keys else v_cache, dtype=np.float64).reshape(-1)
    if scaled_values:
        vf = vf * scale
    _, page_size, num_kv_heads, head_dim = k_cache.shape
    tables, lens = np.asarray(block_tables), np.asarray(seq_lens)
    if mode == "decode":
        q = q[:, None]  # [batch, 1, heads, dim]
    batch, max_len, num_heads, _ = q.shape
    out = np.zeros(q.shape)
    for b in range(batch):
        n = int(lens[b]) - (1 if drop_last else 0)
        row = tables[0 if shared_table else b]
        if mode == "decode":
            queries = [0]
        else:
            queries = list(range(int(lens[b])))
            n = int(lens[b]) if mask == "none" else min(n, max_len)
        for h in range(num_heads):
            kvh = kv_head_of(kv_map, h, num_heads, num_kv_heads)
            def flat(keys, kvh=kvh):
                return _flat_indices(row, keys, page_size, num_kv_heads, head_dim, kvh,
                                     offset_shift=offset_shift, identity_pages=identity_pages,
                                     head_stride_bug=head_stride_bug, pow2_pages=pow2_pages,
                                     slot_bug=slot_bug, page_shift=page_shift)
            n_ok = _keys_in_bounds(flat, n, kf.size)
            idx = flat(np.arange(n_ok))
            keys, values = kf[idx], vf[idx]
            logits = (q[b, queries, h] @ keys.T if dot is None else
                      dot(q[b, queries, h], keys)) * scale  # [queries, n_ok]
            t = np.arange(len(queries))[:, None]
            seen = np.ones((len(queries), 1), bool)   # the rows that read key n_ok (if any)
            if mode == "prefill" and mask != "none":
                def allowed(j):
                    if mask == "whole_pages":   # a block's keys, its last page left out
                        needed = np.minimum(int(lens[b]), (t // block_queries + 1) *
                                            block_queries)
                        return (j <= t) & (j < needed // page_size * page_size)
                    if mask == "block_short":   # a block's keys but its last query's own
                        return (j <= t) & (j < np.minimum(int(lens[b]), (t // block_queries + 1)
                                                          * block_queries - 1))
                    if mask == "page_local":   # the block's keys, each page's from index 0
                        needed = np.minimum(int(lens[b]), (t // block_queries + 1) *
                                            block_queries)
                        return (j < needed) & (j % page_size <= t)
                    return (j <= t if mask == "causal" else j < t if mask == "strict"
                            else j <= t + 1 if mask == "past"
                            else j < (t // block_queries + 1) * block_queries)
                logits = np.where(allowed(np.arange(n_ok)[None, :]), logits, -np.inf)
                seen = allowed(n_ok)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                if online_bug:
                    _, total, acc = online_state(logits, values, online_bug)
                    rows = acc if online_bug == "no_div" else acc / total[:, None]
                else:
                    m = logits.max(axis=1, keepdims=True) if n_ok else \
                        np.full((len(queries), 1), -np.inf)
                    w = np.exp(logits - m)
                    rows = (w @ values) / w.sum(axis=1, keepdims=True)
            if n_ok < n:   # a row that reads out of bounds is NaN (a kernel faults there)
                rows = np.where(seen, np.nan, rows)
            out[b, queries, h] = rows
    return out[:, 0] if mode == "decode" else out


def _keys_in_bounds(flat, n: int, size: int) -> int:
    """How many of keys 0..n-1 read in bounds before the first that does not (`flat(keys)`:
    their element indices, or None for a padding page or one past the table's row)."""
    if _in_bounds(flat(np.arange(n)), size):
        return n
    return next(j for j in range(n) if not _in_bounds(flat(np.arange(j, j + 1)), size))


BY_KV_HEADS_HINT = (kv_head_rule() + ", not h / num_kv_heads: divide by the group size, the "
                    "query heads per KV head (the two agree only when the group size equals "
                    "num_kv_heads).")
BY_MOD_HINT = kv_head_rule() + " (GQA groups are consecutive query heads), not h % num_kv_heads."
SAME_HEAD_HINT = kv_head_rule() + ", not KV head h."
MOD_GROUP_HINT = (kv_head_rule() + ", not h % (num_heads / num_kv_heads): the remainder is h's "
                  "place inside its group, the quotient is the group, its KV head.")
_KV_MAP_HINTS = {"mod": BY_MOD_HINT, "same": SAME_HEAD_HINT, "by_kv_heads": BY_KV_HEADS_HINT,
                 "mod_group": MOD_GROUP_HINT}


def kv_map_hint(kv_map: str, num_heads: int, num_kv_heads: int) -> str:
    """The hint for query heads read through `kv_map`, naming too each other known mapping
    that sends every query head to the same KV head with these head counts (their results
    are the same, so the evidence cannot tell them apart)."""
    def heads(name):
        return [kv_head_of(name, h, num_heads, num_kv_heads) for h in range(num_heads)]
    return several_fit([hint for name, hint in _KV_MAP_HINTS.items()
                        if heads(name) == heads(kv_map)])


HEAD_STRIDE_HINT = ("the head stride is missing num_kv_heads (the guide's bug): element (slot, "
                    "kv_head, d) is at (slot * num_kv_heads + kv_head) * head_dim + d.")
SCALED_VALUES_HINT = ("the values are scaled too: `scale` multiplies the scores (q . k) only; "
                      "the weighted sum of v is not scaled.")


def twice_hint(scale: float, head_dim: int) -> str:
    """The hint for scores times scale^2, which is also 1/head_dim where the scale is
    1/sqrt(head_dim): then both mistakes give these numbers, and the hint names both."""
    twice = ("multiply q.k by `scale` once (scaling q AND the score, or the score twice, "
             "applies scale^2)")
    if not np.isclose(scale * scale, 1.0 / head_dim):
        return f"the scores are scaled twice: {twice}."
    return (f"the scores are scaled twice or divided by head_dim (scale^2 = 1/head_dim = "
            f"{1 / head_dim:.4g} here, so the two look alike): {twice}, and by `scale`, not "
            "by 1/head_dim.")


def attention_mistakes(case, *, mode="prefill", block_queries=None, shared_tile=False):
    """(hint, thunk) pairs for `compare.diagnose`, most specific first (block_queries: the
    prefill kernel's queries per block, for the mask taken per block; shared_tile: the kernel
    stages K and V in shared memory, so a hint about them may name its tiles)."""
    args = (case.q, case.k_cache, case.v_cache, case.block_tables, case.seq_lens)

    def v(**bugs):
        bugs.setdefault("scale", case.scale)
        scale = bugs.pop("scale")
        return lambda: attention_variant(*args, scale, mode=mode, **bugs)

    _, page_size, num_kv_heads, head_dim = case.k_cache.shape
    group = case.q.shape[-2] // num_kv_heads
    # where K and V are read: the naive kernel reads the cache; only a tiled one has tiles
    v_where = ("; a tiled kernel loads v_tile from v_cache and weighs v_tile, not k_tile)."
               if shared_tile else ").")
    k_where = (", and in shared memory the V tile must not overlap the K tile (v_tile starts "
               "page_size * head_dim floats after k_tile, and the launch gives both)."
               if shared_tile else " (score = q . k; the weighted sum is of v).")
    hints = [
        (f"the scores are not scaled: multiply q.k by `scale` ({case.scale:.4g} here) before "
         "the softmax.", v(scale=1.0)),
        (f"the scale is the kernel's argument `scale` ({case.scale:.4g} here): multiply by "
         f"it, not by 1/sqrt(head_dim) ({1 / np.sqrt(head_dim):.4g}) worked out in the "
         "kernel (the caller chooses it).", v(scale=float(1 / np.sqrt(head_dim)))),
        (POW2_HINT.format(name="page_size", n=page_size), v(pow2_pages=True)),
        (POW2_HINT.format(name="the group num_heads / num_kv_heads", n=group),
         v(kv_map="shift")),
        (twice_hint(case.scale, head_dim), v(scale=case.scale ** 2)),
        (f"the scores are divided by head_dim: multiply q.k by the kernel's argument `scale` "
         f"({case.scale:.4g} here), not by 1/head_dim ({1 / head_dim:.4g}).",
         v(scale=1.0 / head_dim)),
        (SCALED_VALUES_HINT, v(scaled_values=True)),
        (HEAD_STRIDE_HINT, v(head_stride_bug=True)),
        ("every sequence reads row 0 of block_tables: one page table for the whole batch (the "
         "guide's bug). Sequence b's row starts at block_tables + b * max_pages.",
         v(shared_table=True)),
        ("the page offset is off by one: token t sits at offset t % page_size of page "
         "block_table[t / page_size].", v(offset_shift=1)),
        (NEXT_PAGE_HINT, v(page_shift=1)),
        ("the block table is ignored: the cache is not contiguous; translate each token "
         "through its sequence's row of block_tables.", v(identity_pages=True)),
        *[(kv_map_hint(name, case.q.shape[-2], num_kv_heads), v(kv_map=name))
          for name in _KV_MAP_HINTS],
        ("online softmax: when the max grows, rescale the accumulator too: acc[d] = acc[d] * "
         "expf(old_max - new_max) + weight * v[d].", v(online_bug="acc")),
        ("online softmax: when the max grows, rescale the running sum too: sum = sum * "
         "expf(old_max - new_max) + weight.", v(online_bug="sum")),
        ("neither the accumulator nor the running sum was rescaled (a rescale of 1, as when "
         "running_max is set to new_max before expf(running_max - new_max) is worked out): "
         "compute the rescale from the old max, multiply acc and sum by it, and only then set "
         "running_max = new_max.", v(online_bug="both")),
        ("the running max starts at 0: when every score is below about -88, expf(score - 0) "
         "underflows to 0 in float32 and the output is 0/0. Start it at -inf.",
         v(online_bug="max0")),
        ("weigh each key against the new max, expf(score - new_max): against the old one the "
         "first key gives expf(score + inf) = inf, and inf / inf is NaN.",
         v(online_bug="old_max")),
        ("online softmax: the rescale expf(old_max - new_max) multiplies the accumulator, not "
         "the new key's term: acc[d] = acc[d] * rescale + weight * v[d] (on the new term, the "
         "first key's rescale, expf(-inf), drops it).", v(online_bug="new_term")),
        ("the running max is never updated (running_max = new_max after each key): it stays "
         "-inf, so every key's rescale expf(-inf - new_max) is 0 and each output is the value "
         "of the last key it read.", v(online_bug="max_stuck")),
        # after the rest: none of these may pre-empt a hint a kernel already got
        (f"multiply q.k by `scale` ({case.scale:.4g} here), not divide by it.",
         v(scale=1 / case.scale)),
        (SWAPPED_SLOT_HINT, v(slot_bug="swap")),
        (UNSCALED_PAGES_HINT, v(slot_bug="unscaled")),
        (PAGE_ONLY_HINT, v(slot_bug="page_only")),
        (OFFSET_DIV_HINT, v(slot_bug="offset_div")),
        ("the values come from v_cache: yours weighs the keys (read V at the same index as "
         "K, from v_cache" + v_where, v(values_from_keys=True)),
        ("the scores are q . v: the keys your kernel read hold the values. K comes from "
         "k_cache" + k_where, v(keys_from_values=True)),
        ("divide the accumulator by the running sum at the end: out[d] = acc[d] / sum (the "
         "weights sum to 1 only then).", v(online_bug="no_div")),
    ]
    if mode == "prefill":
        masks = [("no causal mask: query t may only attend to keys 0..t (loop k <= t), not "
                  "the whole sequence.", v(mask="none"))]
        if block_queries is not None:
            masks.append(("the causal bound is the block's, not the query's: every query of a "
                          "block attended to the keys up to the block's last query (first_query "
                          "+ blockDim.x - 1). Query t may attend to keys 0..t only: a tile's key "
                          "j while first_key + j <= t.",
                          v(mask="block", block_queries=block_queries)))
            masks.append(("pages = ceil(keys_needed / page_size), in integers (keys_needed + "
                          "page_size - 1) / page_size: yours rounds down, so a block never "
                          "loads the keys of its last, partial page.",
                          v(mask="whole_pages", block_queries=block_queries)))
            masks.append(("a block loads one key too few: its last query, first_query + "
                          "blockDim.x - 1, attends to keys up to its own, so keys_needed = "
                          "min(seq_len, first_query + blockDim.x); only the last query of each "
                          "full block is wrong, missing its own key.",
                          v(mask="block_short", block_queries=block_queries)))
            masks.append(("the causal test compares the tile's index j with t: tile key j is "
                          "key first_key + j, so query t reads it while first_key + j <= t "
                          "(last = min(n_keys, t - first_key + 1)); yours lets a query read "
                          "keys after its own on every page but the first.",
                          v(mask="page_local", block_queries=block_queries)))
        masks.append(("the causal loop stops one key early: query t attends to keys 0..t "
                      "inclusive (k <= t); it must see its own token.", v(mask="strict")))
        masks.append(("the causal loop takes one key too many, the one after the query's own: "
                      "query t attends to keys 0..t (k <= t), not k <= t + 1.", v(mask="past")))
        hints[1:1] = masks
    else:
        hints.append(("the last cached token is skipped: attend to keys 0..seq_len-1 "
                      "inclusive.", v(drop_last=True)))
    return hints


def gather_variant(cache, block_tables, seq_lens, max_len, *, shared_table=False,
                   head_stride_bug=False, offset_shift=0, identity_pages=False, slot_bug=None,
                   page_shift=0):
    """The batched gather [batch, max_len, num_kv_heads, head_dim] with the chosen mistakes;
    rows at or past seq_lens[b] are zero, a row reading out of bounds NaN (each token is
    copied on its own, so the tokens before one that reads the padding keep their values)."""
    flat = np.asarray(cache, dtype=np.float64).reshape(-1)
    _, page_size, num_kv_heads, head_dim = cache.shape
    tables, lens = np.asarray(block_tables), np.asarray(seq_lens)
    out = np.zeros((len(lens), max_len, num_kv_heads, head_dim))
    for b in range(len(lens)):
        n = int(lens[b])
        row = tables[0 if shared_table else b]
        for h in range(num_kv_heads):
            def indices(tokens, h=h):
                return _flat_indices(row, tokens, page_size, num_kv_heads, head_dim, h,
                                     offset_shift=offset_shift, identity_pages=identity_pages,
                                     head_stride_bug=head_stride_bug, slot_bug=slot_bug,
                                     page_shift=page_shift)
            idx = indices(np.arange(n))
            if _in_bounds(idx, flat.size):
                out[b, :n, h] = flat[idx]
                continue
            for t in range(n):
                idx = indices(np.arange(t, t + 1))
                out[b, t, h] = flat[idx[0]] if _in_bounds(idx, flat.size) else np.nan
    return out


def _in_bounds(idx, size: int) -> bool:
    """Whether element indices (None: a padding page) all lie in an array of `size`."""
    return idx is not None and (not idx.size or (idx.max() < size and idx.min() >= 0))
