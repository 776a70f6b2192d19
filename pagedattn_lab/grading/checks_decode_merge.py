"""Checks for lesson 06's merges: task 1 in NumPy (`merge_partitions`: partition states of
tokens cut at known places, scores near +-1000 and far apart), and the merge kernel: one warp
per (head, sequence) merges the partition states that `decode_partition` wrote.

The kernel's check feeds exact partition states (reference_partials), so it does not depend on the
learner's partition kernel. The slots of partitions that do not exist hold NaN, or in one
case finite leftovers (what an earlier launch left in a reused buffer: a merge that reads
every slot and skips the NaN ones shows there), their m far above the real ones (so a max
taken over every slot, which fmaxf's NaN skipping hides elsewhere, shows too). Other cases:
more dims than lanes (48, not a multiple of 32; 128 in 40 heads, more blocks in x than a warp
has lanes), partition maxima near +1000 and far below -88 (expf overflows / underflows in
float32), and a sequence whose length is a multiple of part_len while a longer one sets
max_parts (a count of seq_len / part_len + 1 reads inside the buffer there). A merge that
comes out right is launched twice more with different finite leftovers in the first slot past
each row's partitions: a row whose output moves read that slot (the NaN there was skipped, by
fmaxf or a test), and its hint names the rows.
"""
from __future__ import annotations

import numpy as np

from ..split_k import merge_partials, partial_state, reference_partials
from ..words import counted
from .checks_kernels import _Compiled
from .compare import (changed_input, describe_difference, diagnose, fitting_hints, fmt,
                      matches)
from .decode_launch import (KERNEL_MERGE_HINTS, MERGE_HINTS, NOTHING_WRITTEN, WARP,
                            decode_problem, dims_hint, dims_step_hint, launch_warp)
from .decode_variants import (CARRIED_HINTS, merge_by_tokens, merge_carried, merge_variant,
                              pairs_by_p)
from .kernel_runner import poisoned
from .merge_rows import (first_counts_and_slots, reads_other_rows, rows_elsewhere,
                         swapped_rows_hint, with_states)
from .report import Case, CheckResult, Mismatch, NotAttempted, probe, run_cases, several_fit
from .seeds import case_rng


# -- task 1: the merge in NumPy ------------------------------------------------------------

FLOAT32_STEP_HINT = ("every value is within about 1e-6 of the expected, not within 1e-7: one "
                     "step of your merge rounds to float32 (a float32 array, an astype, a "
                     "np.float32 scalar); keep every step in float64.")


def _merge_case(fn, scores, values, cuts) -> None:
    scores, values = np.asarray(scores, np.float64), np.asarray(values, np.float64)
    edges = [0, *cuts, len(scores)]
    states = [partial_state(scores[a:b], values[a:b]) for a, b in zip(edges, edges[1:])]
    m = np.array([s[0] for s in states])
    l = np.array([s[1] for s in states])
    o = np.array([s[2] for s in states])
    w = np.exp(scores - scores.max())
    expected = w @ values / w.sum()
    passed = {"m": m.copy(), "l": l.copy(), "o": o.copy()}
    got = fn(*passed.values())
    changed = changed_input("merge_partitions", {"m": m, "l": l, "o": o}, passed)
    if changed is not None:
        raise changed
    if got is None:
        raise Mismatch("returned None", "return the merged output, shape [head_dim].")
    narrow = np.asarray(got).dtype
    got = np.asarray(got, dtype=np.float64)
    if got.shape != expected.shape:
        raise Mismatch("wrong shape", "one merged value per dimension: [head_dim].",
                       str(expected.shape), str(got.shape))
    if narrow.kind == "f" and narrow.itemsize < 8:   # its rounding fails 1e-7 only at times
        raise Mismatch(f"the merged output is {narrow}", "m, l and o are float64: keep the "
                       f"merge in float64 (one {narrow} array or astype in it narrows the "
                       f"result); {narrow} keeps about "
                       f"{np.finfo(narrow).precision} digits, and the check compares to 1e-7.",
                       expected="float64", got=str(narrow))
    diff = describe_difference(got, expected, ("dim",), atol=1e-9, rtol=1e-7, unwritten=False)
    if diff is None:
        return
    sizes = [b - a for a, b in zip(edges, edges[1:])]
    where = (f"{counted(len(sizes), 'partition')} of {sizes} tokens, m = "
             f"[{', '.join(fmt(x) for x in m)}]: ")
    if not np.isfinite(got).all():
        if m.max() > 700:
            hint = ("exp overflowed (m is near 1000 here, and exp(710) is already inf in "
                    "float64): exponentiate m_p - max_p m_p, never m_p itself.")
        elif m.max() < -700:
            hint = ("exp underflowed to 0 (m is near -1000 here) and 0 / 0 made NaN: "
                    "exponentiate m_p - max_p m_p, never m_p itself.")
        elif m.max() - m.min() > 700:
            hint = (f"the m_p here lie {fmt(m.max() - m.min())} apart, and exp of anything past "
                    "709 overflows float64: exponentiate m_p - max_p m_p (every exponent is "
                    "then at most 0), not m_p minus another partition's m (the first, the "
                    "last, the smallest) or their mean.")
        else:
            hint = "a NaN or inf appeared: exp of a large positive number, or 0 / 0?"
    else:
        fitting = list(fitting_hints(got, expected, [
            (text, lambda bug=bug: merge_variant(m, l, o, len(m), bug=bug))
            for bug, text in MERGE_HINTS.items()], atol=1e-9, rtol=1e-7))
        hint = (fitting and several_fit(fitting)) \
            or (np.allclose(got, expected, rtol=1e-5, atol=1e-7) and FLOAT32_STEP_HINT) \
            or "the merged output must equal softmax(all scores) @ values."
    raise Mismatch(where + diff.message(), hint)


def merge_partitions(fn) -> CheckResult:
    """Check `fn(m, l, o)` -> merged output: m, l [P], o [P, head_dim]."""
    rng = case_rng(6)
    d = 6

    def data(n, shift=0.0, spread=2.0):
        return shift + spread * rng.standard_normal(n), rng.standard_normal((n, d))

    rising = np.linspace(-4, 4, 20) + 0.3 * rng.standard_normal(20), rng.standard_normal((20, d))
    cases = [
        ("three partitions of different sizes", data(20), [8, 16]),
        ("the max grows from partition to partition", rising, [5, 10, 15]),
        ("one partition", data(7), []),
        ("one-token partitions", data(4), [1, 2, 3]),
        ("scores near +1000", data(12, shift=1000.0), [6]),
        ("scores near -1000", data(12, shift=-1000.0), [3]),
        ("one partition far below the rest", (np.r_[np.full(5, -800.0), rng.standard_normal(9)],
                                               rng.standard_normal((14, d))), [5]),
        # the first partition holds the max: exp(m_p - m_last) overflows as exp(m_p - m_first)
        # does above (the max is no partition's by position)
        ("the partitions after the first far below it",
         (np.r_[rng.standard_normal(4), np.full(8, -800.0)], rng.standard_normal((12, d))),
         [4, 8]),
        # the largest m_p lies 750 above their mean: exp(m_p - mean) overflows float64, where
        # the spreads above (two partitions 800 apart) keep every exponent under 709
        ("three partitions far below the last",
         (np.r_[np.full(6, -1000.0), rng.standard_normal(3)], rng.standard_normal((9, d))),
         [2, 4, 6]),
    ]
    return run_cases("merge_partitions", "merge_partitions: split-K partition states, merged", [
        Case(name, {"tokens": len(sc), "partitions": len(cuts) + 1},
             lambda sc=sc, v=v, cuts=cuts: _merge_case(fn, sc, v, cuts))
        for name, (sc, v), cuts in cases])


# -- the merge kernel, in CUDA C ------------------------------------------------------------

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


def _weighted_by(m, l, o, n_parts, top: str):
    """The merge in float32 with the first ("first") or the last ("last") partition's m
    taken as the max, the max of all but the first ("after_first": its loop from p = 1), or
    with none subtracted ("none")."""
    n_parts = np.asarray(n_parts)
    used = np.arange(m.shape[-1]) < n_parts[..., None]
    pick = np.broadcast_to(n_parts - 1 if top == "last" else np.zeros_like(n_parts),
                           m.shape[:-1])[..., None]
    with np.errstate(all="ignore"):
        if top == "none":
            shift = 0.0
        elif top == "after_first":
            shift = np.where(used & (np.arange(m.shape[-1]) > 0), m, -np.inf).max(
                axis=-1, keepdims=True)
        else:
            shift = np.take_along_axis(m, pick, axis=-1)
        w = np.where(used, l * np.exp(m - shift), 0).astype(np.float32)
        top_sum = (w[..., None] * np.where(used[..., None], o, 0)).sum(axis=-2)
        return top_sum / w.sum(axis=-1)[..., None]


BY_TOKENS_HINT = ("each partition was weighted by its token count: o_p is the softmax average "
                  "of its own tokens, and its share of the whole is its share of the softmax "
                  "sum, w_p = l_p * exp(m_p - m), whatever the number of tokens it holds.")
FIRST_AS_MAX_HINT = ("m must be the largest m_p of the row, not the first partition's: a later "
                     "partition's m_p lies far above it here, and expf(m_p - m_0) overflowed "
                     "float32 (inf / inf). Take the max over the partitions first (fmaxf from "
                     "NEG_INF), then weight.")
LAST_AS_MAX_HINT = ("m must be the largest m_p of the row, not the last partition's: an earlier "
                    "partition's m_p lies far above it here, and expf(m_p - m_last) overflowed "
                    "float32 (inf / inf). Take the max over the partitions first (fmaxf from "
                    "NEG_INF), then weight.")
NO_MAX_HINT = "expf(m_p) overflows float32 here: exponentiate m_p minus the largest m_p."


def _last_as_max(states, n_parts):
    """(hint, the merge weighted from the last partition's m): where every row's last m lies
    far below its max and m is large, that is inf / inf everywhere, as expf(m_p) with no max
    subtracted gives, and the hint names both."""
    last = _weighted_by(*states, n_parts, "last")
    alike = matches(last, _weighted_by(*states, n_parts, "none"))
    return (several_fit([LAST_AS_MAX_HINT, NO_MAX_HINT]) if alike else LAST_AS_MAX_HINT), last


def _slot_past_end(comp, args, part_ml, part_out, n_parts, seed, slot):
    """[(sequence, head)] of the rows whose output depends on partition slot `slot` [batch,
    1] (past n_parts: a slot that does not exist; -1 for none): two launches with different
    finite leftovers in that slot of every row (the other slots as they were) tell the rows
    that read it and weighed it in, what a GPU's reused buffer would feed them. None if a
    launch fails (it proves nothing)."""
    used = np.arange(part_ml.shape[2]) < n_parts[..., None]      # [batch, 1, max_parts]
    past = np.arange(part_ml.shape[2]) == slot[..., None]
    if not past.any():
        return []
    rng = case_rng(seed + 2000)
    outs = []
    for _ in range(2):
        ml, o = part_ml.copy(), part_out.copy()
        ml[..., 0] = np.where(past, part_ml[..., 0][np.broadcast_to(used, ml.shape[:3])]
                              .max() + rng.uniform(1, 5, ml.shape[:3]), ml[..., 0])
        ml[..., 1] = np.where(past, rng.uniform(1, 5, ml.shape[:3]), ml[..., 1])
        o[:] = np.where(past[..., None], rng.standard_normal(o.shape), o)
        launched = probe(launch_warp, comp, (part_ml.shape[1], part_ml.shape[0]),
                         with_states(args, ml, o), (3,))
        if launched is None:
            return None
        outs.append(launched[0][0])
    with np.errstate(invalid="ignore"):
        differ = ~((outs[0] == outs[1]) | (np.isnan(outs[0]) & np.isnan(outs[1])))
    return [tuple(int(i) for i in r) for r in np.argwhere(differ.any(axis=-1))]


def _past_end_hint(rows, lens, part_len, n_parts, max_parts, held) -> str | None:
    """The over-read's hint, from the rows that read slot n_parts (_slot_past_end)."""
    if not rows:
        return None
    seqs = sorted({b for b, _ in rows})
    could = [b for b in range(lens.size) if n_parts[b, 0] < max_parts]
    shown = ", ".join(f"sequence {b} (seq_len {lens[b]}, {n_parts[b, 0]} partition"
                      f"{'s' if n_parts[b, 0] != 1 else ''}) reads slot {n_parts[b, 0]}"
                      for b in seqs[:3])
    if all(lens[b] % part_len == 0 for b in seqs) and \
            seqs != could and all(lens[b] % part_len for b in could if b not in seqs):
        why = (f"where seq_len is a multiple of part_len ({part_len}): seq_len / part_len + 1 "
               "(or (seq_len + part_len) / part_len) counts one partition too many there")
    else:
        why = "one partition past its last"
    return (f"{shown}: a partition slot that does not exist, {why}. A sequence has "
            f"(seq_len + part_len - 1) / part_len partitions; the slots after them hold "
            f"{held}, and neither fmaxf nor a test for NaN skips the finite leftovers of a "
            "reused buffer.")


def _variants(part_ml, part_out, lens, part_len, held):
    """(hint, the merge with that mistake) of the classic merge mistakes on these states."""
    states = (part_ml[..., 0], part_ml[..., 1], part_out)
    n_parts = -(-lens // part_len)[:, None]
    max_parts = part_ml.shape[2]
    variants = [(text, lambda bug=bug: merge_variant(*states, n_parts, bug=bug))
                for bug, text in KERNEL_MERGE_HINTS.items()]
    return variants + [
        ("the last, shorter partition is missing: a sequence has ceil(seq_len / part_len) "
         "partitions.", lambda: merge_partials(*states, (lens // part_len)[:, None])),
        *first_counts_and_slots(states, n_parts, max_parts),
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
        (FIRST_AS_MAX_HINT, lambda: _weighted_by(*states, n_parts, "first")),
        ("the max skips partition 0: take m over every partition, p = 0 .. n_parts - 1 "
         "(fmaxf from NEG_INF); without partition 0's m_p, a row whose largest m_p is "
         "partition 0's overflows expf(m_p - m), and a row of one partition has m = -inf.",
         lambda: _weighted_by(*states, n_parts, "after_first")),
        (BY_TOKENS_HINT, lambda: merge_by_tokens(*states, lens, part_len)),
        ("part_ml holds one (m, l) pair per slot: m_p is ml[2 * p] and l_p ml[2 * p + 1]; "
         "yours reads ml[p] and ml[p + 1], which mixes the halves of different pairs.",
         lambda: merge_variant(*pairs_by_p(part_ml), part_out, n_parts, bug="none")),
        ("divide by the sum of the weights, sum_p l_p * exp(m_p - m), not by the number of "
         "partitions: the weights do not sum to 1.",
         lambda: merge_variant(*states, n_parts, bug="no_divide") / n_parts[..., None]),
        _last_as_max(states, n_parts),
        *[(text, lambda carried=carried: merge_carried(*states, n_parts, WARP, carried))
          for carried, text in CARRIED_HINTS.items()],
    ]


_LEFTOVERS = ("whatever an earlier launch left there (finite numbers here, so a test for NaN or "
              "for l > 0 cannot tell them apart)")


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
    lens = prob.seq_lens.astype(np.int64)
    n_parts = -(-lens // part_len)[:, None]
    held = _LEFTOVERS if leftovers else "NaN here"

    def past_end(held):
        rows = _slot_past_end(comp, args, part_ml, part_out, n_parts, seed, n_parts)
        return _past_end_hint(rows, lens, part_len, n_parts, max_parts, held) if rows else None

    if diff is None:   # right with NaN there: a kernel that skips NaN slots (fmaxf does) passes
        hint = past_end(held)
        if hint is None:
            return
        # Where a row reads its last slot too, two past its end or more, the same states with
        # leftovers where no partition is: a classic mistake's own hint where the whole answer
        # is that mistake (its max over every slot...); else the rows that read one past it.
        last = np.where(n_parts + 1 < max_parts, max_parts - 1, -1)
        lo = None
        if _slot_past_end(comp, args, part_ml, part_out, n_parts, seed, last):
            lo_ml, lo_out, _ = _states(prob, part_len, seed, leftovers=True)
            lo = probe(launch_warp, comp, (num_heads, batch), with_states(args, lo_ml, lo_out),
                       (3,))
        hint = (lo is not None and diagnose(lo[0][0], expected,
                                            _variants(lo_ml, lo_out, lens, part_len,
                                                      _LEFTOVERS))) or hint
        raise Mismatch("right values while the slots of partitions that do not exist hold "
                       "NaN, wrong when they hold finite leftovers (as a reused buffer on a GPU "
                       "does)", hint)
    m = part_ml[..., 0][used]
    hint = diagnose(got, expected, _variants(part_ml, part_out, lens, part_len, held)) \
        or dims_hint(got, True, head_dim, "thread") \
        or dims_step_hint(got, True, head_dim, num_heads)
    if hint is None and m.max() > 80 and not np.isfinite(got).all():
        hint = ("m is large here (up to " + fmt(m.max()) + "): expf(m_p) overflows "
                "float32; exponentiate m_p minus the largest m_p.")
    if hint is None and m.max() < -88 and not np.isfinite(got).all():
        hint = (f"every m_p is far below -88 here (the largest is {fmt(m.max())}), where expf "
                "underflows to 0 in float32, and 0 / 0 made NaN: weight by expf(m_p - m) with "
                "m the largest m_p, its max started at -inf (NEG_INF): a max started at 0, or "
                "no m subtracted at all, weighs by expf(m_p) here.")
    b, h, _ = diff.first()
    raise Mismatch(diff.message() + f"\nRow (sequence {b}, head {h}) is written by block "
                   f"({h}, {b}); it merges {counted(int(n_parts[b, 0]), 'partition')}.",
                   hint or swapped_rows_hint(got, part_ml, part_out, n_parts)
                   or rows_elsewhere(got, expected)
                   or reads_other_rows(comp, args, part_ml, part_out, n_parts) or past_end(held)
                   or "out[b, h] = sum_p w_p o_p / sum_p w_p, w_p = l_p exp(m_p - m).")


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
        # (a lane's fixed 2 dims leave 64 and up unwritten; a step of gridDim.x skips dims)
        ("head_dim 128, four dims per lane, 40 heads", 77, 16,
         dict(seq_lens=[33, 16, 5], num_heads=40, num_kv_heads=2, head_dim=128, page_size=8)),
        ("head_dim 48, leftovers in the slots of partitions that do not exist", 75, 10,
         dict(seq_lens=[45, 7, 26], num_heads=3, num_kv_heads=1, head_dim=48, page_size=6,
              leftovers=True)),
        # sequence 1 (24 = 3 x 8) is not the longest: a count of seq_len / part_len + 1 reads
        # a slot inside max_parts, where sequence 2 (9) shows the count is right otherwise
        ("a sequence whose length is a multiple of part_len, shorter than the longest", 76,
         8, dict(seq_lens=[40, 24, 9], num_heads=2, num_kv_heads=1, head_dim=32, page_size=8)),
    ]
    cases = [Case(name, {"part_len": part_len, **sizes},
                  lambda seed=seed, part_len=part_len, sizes=sizes:
                  _merge_kernel_case(comp, seed, part_len, **sizes))
             for name, seed, part_len, sizes in specs]
    return run_cases("decode_merge", "decode_merge kernel: one warp per (head, sequence)", cases,
                     lint=comp.get)
