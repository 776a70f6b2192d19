"""Check for lesson 06's merge kernel: one warp per (head, sequence) merges the partition
states that `decode_partition` wrote.

The check feeds exact partition states (reference_partials), so it does not depend on the
learner's partition kernel. The slots of partitions that do not exist hold NaN, or in one
case finite leftovers (what an earlier launch left in a reused buffer: a merge that reads
every slot and skips the NaN ones shows there), their m far above the real ones (so a max
taken over every slot, which fmaxf's NaN skipping hides elsewhere, shows too). Other cases:
more dims than lanes (48, not a multiple of 32), partition maxima near +1000 and far below
-88 (expf overflows / underflows in float32).
"""
from __future__ import annotations

import numpy as np

from ..split_k import merge_partials, reference_partials
from .checks_kernels import _Compiled
from .compare import describe_difference, diagnose, fmt
from .decode_launch import (MERGE_HINTS, NOTHING_WRITTEN, decode_problem, dims_hint,
                            launch_warp)
from .decode_variants import merge_variant
from .kernel_runner import poisoned
from .report import Case, CheckResult, Mismatch, NotAttempted, run_cases
from .seeds import case_rng


def _states(prob, part_len, seed, leftovers):
    """(part_ml, part_out, used) in float32: the exact states, NaN (or, with `leftovers`,
    random finite numbers whose m is above every real one) in the slots that do not exist."""
    m, l, o = reference_partials(prob.q, prob.k_cache, prob.v_cache, prob.block_tables,
                                 prob.seq_lens, part_len, prob.scale)
    used = np.isfinite(m)
    fill_ml = np.full(m.shape + (2,), np.nan)
    fill_o = np.full(o.shape, np.nan)
    if leftovers:   # m far above every real one: a max taken over these slots underflows
        rng = case_rng(seed + 1000)   # every real weight expf(m_p - m) to 0 in float32
        fill_ml[..., 0] = m[used].max() + rng.uniform(120, 200, m.shape)
        fill_ml[..., 1] = rng.uniform(1, 5, m.shape)
        fill_o = rng.standard_normal(o.shape)
    part_ml = np.where(used[..., None], np.stack([m, l], axis=-1), fill_ml).astype(np.float32)
    part_out = np.where(used[..., None], o, fill_o).astype(np.float32)
    return part_ml, part_out, used


def _max_over_all_slots(m, l, o, n_parts):
    """The merge in float32 with its max over every slot of the row (NaN skipped, as fmaxf
    does) and its sums over the partitions that exist."""
    used = np.arange(m.shape[-1]) < np.asarray(n_parts)[..., None]
    with np.errstate(all="ignore"):
        w = np.where(used, l * np.exp(m - np.nanmax(m, axis=-1, keepdims=True)), 0)
        top = (w[..., None] * np.where(used[..., None], o, 0)).sum(axis=-2)
        return top / w.sum(axis=-1)[..., None]


def _first_as_max(m, l, o, n_parts):
    """The merge in float32 with the first partition's m taken as the max."""
    used = np.arange(m.shape[-1]) < np.asarray(n_parts)[..., None]
    with np.errstate(all="ignore"):
        w = np.where(used, l * np.exp(m - m[..., :1]), 0).astype(np.float32)
        top = (w[..., None] * np.where(used[..., None], o, 0)).sum(axis=-2)
        return top / w.sum(axis=-1)[..., None]


def _merge_kernel_case(comp, seed, part_len, leftovers=False, **sizes) -> None:
    prob = decode_problem(seed, **sizes)
    batch, num_heads, head_dim = prob.q.shape
    part_ml, part_out, used = _states(prob, part_len, seed, leftovers)
    max_parts = used.shape[-1]
    args = (part_out, part_ml, prob.seq_lens, poisoned(prob.q.shape), np.int32(num_heads),
            np.int32(head_dim), np.int32(part_len), np.int32(max_parts))
    (got,), _ = launch_warp(comp, (num_heads, batch), args, outputs=(3,))
    if np.isnan(got).all() and "TODO" in comp.source:
        raise NotAttempted(NOTHING_WRITTEN)
    expected = prob.expected
    diff = describe_difference(got, expected, ("sequence", "head", "dim"))
    if diff is None:
        return
    lens = prob.seq_lens.astype(np.int64)
    n_parts = -(-lens // part_len)[:, None]
    states = (part_ml[..., 0], part_ml[..., 1], part_out)
    held = ("whatever an earlier launch left there (finite numbers here, so a test for NaN or "
            "for l > 0 cannot tell them apart)" if leftovers else "NaN here")
    variants = [(text, lambda bug=bug: merge_variant(*states, n_parts, bug=bug))
                for bug, text in MERGE_HINTS.items()]
    variants += [
        ("the last, shorter partition is missing: a sequence has ceil(seq_len / part_len) "
         "partitions.", lambda: merge_partials(*states, (lens // part_len)[:, None])),
        # (only where sequence 0 is not the longest: else this is the max_parts read below)
        (f"every row merged sequence 0's {int(n_parts[0, 0])} partition"
         f"{'s' if n_parts[0, 0] != 1 else ''}: the count is "
         "ceil(seq_lens[b] / part_len), from the row's own sequence b, not seq_lens[0].",
         lambda: merge_variant(*states, np.full_like(n_parts, n_parts[0, 0]), bug="none")
         if n_parts[0, 0] < max_parts else None),
        ("one partition too many is read: a sequence has ceil(seq_len / part_len) partitions; "
         f"the slots after them hold {held}.",
         lambda: merge_variant(*states, np.minimum(n_parts + 1, max_parts), bug="none")),
        (f"all max_parts = {max_parts} slots of a row were read: only the first "
         f"ceil(seq_len / part_len) exist; the others hold {held}.",
         lambda: merge_variant(*states, np.full_like(n_parts, max_parts), bug="none")),
        (f"the max m was taken over all max_parts = {max_parts} slots of a row, not over the "
         f"ceil(seq_len / part_len) that exist; the others hold {held}, whose m lies far above "
         "the real ones here, so every real weight expf(m_p - m) underflowed to 0 (0 / 0).",
         lambda: _max_over_all_slots(*states, n_parts)),
        ("m must be the largest m_p of the row, not the first partition's: a later partition's "
         "m_p lies far above it here, and expf(m_p - m_0) overflowed float32 (inf / inf). Take "
         "the max over the partitions first (fmaxf from NEG_INF), then weight.",
         lambda: _first_as_max(*states, n_parts)),
    ]
    m = part_ml[..., 0][used]
    hint = diagnose(got, expected, variants) or dims_hint(got, True, head_dim, "thread")
    if hint is None and m.max() > 80 and not np.isfinite(got).all():
        hint = ("m is large here (up to " + fmt(m.max()) + "): expf(m_p) overflows "
                "float32; exponentiate m_p minus the largest m_p.")
    if hint is None and m.max() < -88 and not np.isfinite(got).all():
        hint = (f"every m_p is far below -88 here (the largest is {fmt(m.max())}), where expf "
                "underflows to 0 in float32, and 0 / 0 made NaN: start the max at -inf "
                "(NEG_INF), not 0, and weight by expf(m_p - m) with m the largest m_p.")
    b, h, _ = diff.first()
    raise Mismatch(diff.message() + f"\nRow (sequence {b}, head {h}) is written by block "
                   f"({h}, {b}); it merges {int(n_parts[b, 0])} partitions.",
                   hint or "out[b, h] = sum_p w_p o_p / sum_p w_p, w_p = l_p exp(m_p - m).")


def decode_merge(source: str, device: str = "auto") -> CheckResult:
    """Check `decode_merge`: grid (num_heads, batch), block (32,)."""
    comp = _Compiled(source, "decode_merge", device)
    specs = [
        ("three sequences, 3, 2 and 4 partitions", 70, 16,
         dict(seq_lens=[40, 17, 64], num_heads=2, num_kv_heads=2, head_dim=32, page_size=8)),
        ("head_dim 64, one partition each", 71, 16,
         dict(seq_lens=[10, 16], num_heads=2, num_kv_heads=1, head_dim=64, page_size=4)),
        ("many short partitions, a one-token sequence", 72, 3,
         dict(seq_lens=[1, 20, 11], num_heads=4, num_kv_heads=2, head_dim=16, page_size=4)),
        ("large scores (m near 1000)", 73, 8,
         dict(seq_lens=[30, 12], num_heads=2, num_kv_heads=2, head_dim=32, page_size=8,
              scale=60.0)),
        ("very negative scores (every m_p far below -88)", 74, 8,
         dict(seq_lens=[19, 30], num_heads=2, num_kv_heads=1, head_dim=32, page_size=4,
              negative_scores=True)),
        ("head_dim 48, leftovers in the slots of partitions that do not exist", 75, 10,
         dict(seq_lens=[45, 7, 26], num_heads=3, num_kv_heads=1, head_dim=48, page_size=6,
              leftovers=True)),
    ]
    cases = [Case(name, {"part_len": part_len, **sizes},
                  lambda seed=seed, part_len=part_len, sizes=sizes:
                  _merge_kernel_case(comp, seed, part_len, **sizes))
             for name, seed, part_len, sizes in specs]
    return run_cases("decode_merge", "decode_merge kernel: one warp per (head, sequence)", cases,
                     lint=comp.get)
