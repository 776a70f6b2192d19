"""Checks for lesson 06: the partition kernel of a split-K decode in CUDA C (the merges,
in NumPy and in CUDA C, are checked in checks_decode_merge.py).

Split-K decode cuts each sequence into partitions of `part_len` tokens; one warp per
(partition, query head, sequence) writes that partition's state (m, l, o): its max scaled
score, its sum of exp(score - m), and its own softmax average of the values. A merge puts
the partitions on one scale (`pagedattn_lab.split_k`). The cases use GQA and MQA, lengths
that are not page or partition multiples, a one-token sequence, head_dim below and above
the warp's 32 lanes (and 48, not a multiple of 32), a page_size of 6, NaN in every cache
slot no sequence uses (so reading past seq_len shows), and NaN-poisoned outputs (so an
element nobody wrote shows, and a slot of a partition that does not exist, which the spec
leaves alone, shows when it was written). A wrong result is compared with known-wrong variants
(decode_variants.py) to name the mistake.
"""
from __future__ import annotations

import numpy as np

from ..split_k import reference_partials
from .checks_decode_merge import decode_merge, merge_partitions  # noqa: F401 - the lesson registry finds them here
from .checks_kernels import _Compiled
from .compare import ATOL, RTOL, describe_difference, diagnose, fmt
from .decode_budget import partition_budget
from .faults import kernel_message
from .decode_launch import (NOTHING_WRITTEN, WARP, decode_problem, dims_hint, launch_warp,
                            misplaced_hint, never_stored_hint)
from .decode_variants import LOG2E, partials_variant, spare_page_padding
from .warp_trees import PARTITION_TREES
from .kernel_runner import poisoned, unwritten
from .kernel_hints import one_size_hint
from .report import Case, CheckResult, Mismatch, NotAttempted, probe, run_cases, several_fit
from .seeds import case_rng
from .table_probe import PAGE_SIZE, full_table, transposed_hint
from .variants import (BY_KV_HEADS_HINT, BY_MOD_HINT, HEAD_STRIDE_HINT, MOD_GROUP_HINT,
                       NEXT_PAGE_HINT, SAME_HEAD_HINT, SCALED_VALUES_HINT, UNSCALED_PAGES_HINT,
                       kv_map_hint, twice_hint)

# -- task 2: one partition per warp, in CUDA C ----------------------------------------------

PARTS_STRIDE_HINT = ("sequence b must use its own row of block_tables, at block_tables + b * "
                     "max_pages (max_pages, the table's width): yours reads rows max_parts "
                     "apart (the partition count), so a sequence after the first reads the "
                     "pages, or the -1 padding, of another part of the table.")
_PARTITION_MISTAKES = [
    (BY_MOD_HINT, {"kv_map": "mod"}),
    (SAME_HEAD_HINT, {"kv_map": "same"}),
    (BY_KV_HEADS_HINT, {"kv_map": "by_kv_heads"}),
    (MOD_GROUP_HINT, {"kv_map": "mod_group"}),
    ("the scores are not scaled: multiply q . k by scale.", {"scale": 1.0}),
    ("multiply by the kernel's argument `scale`, not 1/sqrt(head_dim) worked out in the kernel: "
     "the caller chooses the scale (this case's is not 1/sqrt(head_dim)).", {"scale": "sqrt"}),
    (None, {"scale": "twice"}),   # (twice_hint: scale^2 may also be 1/head_dim)
    ("the scores are divided by head_dim: multiply them by the kernel's argument `scale`, not "
     "by 1/head_dim.", {"scale": "head_dim"}),
    (SCALED_VALUES_HINT, {"scaled_values": True}),
    ("each partition skips its first token: partition p starts at token p * part_len.",
     {"bounds": "skip_first"}),
    ("the last partition stops one token early: it ends at seq_len, exclusive (the loop "
     "reads token seq_len - 1 too); end = min(seq_len, start + part_len).",
     {"bounds": "drop_last"}),
    ("partition p starts at token p * part_len, not p * page_size: a partition is part_len "
     "tokens, whatever the pages (it may span several).", {"bounds": "page_start"}),
    ("every partition here runs on to the sequence's end: partition p ends at min(seq_len, "
     "(p + 1) * part_len), exclusive, not at seq_len (each token belongs to one partition).",
     {"bounds": "to_seq_len"}),
    ("partition p starts at token p * part_len (start = part * part_len), not at token p: "
     "each partition here read the part_len tokens from its own index on, overlapping the "
     "next.", {"bounds": "part_start"}),
    ("the accumulator is set to 0 at every token (inside the token loop): only the last "
     "token's weighted value is left in it. Zero acc once, before the loop over the "
     "partition's tokens, and rescale it at each token.", {"online_bug": "acc_reset"}),
    ("the running sum l is set to 0 at every token (inside the token loop): only the last "
     "token's weight is left in it. Zero l once, before the loop over the partition's tokens, "
     "and rescale it at each token.", {"online_bug": "sum_reset"}),
    ("online softmax: when the max grows, rescale the accumulator by exp(old_max - new_max).",
     {"online_bug": "acc"}),
    ("online softmax: when the max grows, rescale the running sum by exp(old_max - new_max).",
     {"online_bug": "sum"}),
    ("every score here is far below -88, where expf underflows to 0: start the running max at "
     "-inf (NEG_INF), not 0, so it becomes the first score.", {"online_bug": "max0"}),
    ("lanes 0-15 and lanes 16-31 each summed only their own half of the dot product (the "
     "dims d with d % 32 < 16, and the rest), so each half weighed the keys differently: the "
     "__shfl_xor_sync reduction's first offset must be 16 (16, 8, 4, 2, 1) to reach across "
     "all 32 lanes; starting at 8 leaves the two halves apart.", {"reduced": (8, 4, 2, 1)}),
    ("the even and the odd lanes each summed only their own part of the dot product: the "
     "__shfl_xor_sync reduction stops at offset 2; it must run down to offset 1 (16, 8, 4, 2, "
     "1: offset > 0) to reach across all 32 lanes.", {"reduced": (16, 8, 4, 2)}),
    ("each lane summed only its own dims of the dot product (no __shfl_xor_sync reduction), "
     "so every lane weighed the keys by a different partial score: reduce over the warp "
     "(offsets 16, 8, 4, 2, 1) so that every lane has the whole dot.", {"reduced": ()}),
    ("part_out holds the partition's softmax average: divide the accumulator by l.",
     {"normalized": False}),
    (UNSCALED_PAGES_HINT, {"paging": "unscaled"}),
    (HEAD_STRIDE_HINT, {"paging": "head_stride"}),
    ("sequence b reads its own block-table row, block_tables + b * max_pages: every "
     "sequence here read sequence 0's pages.", {"paging": "first_table"}),
    ("query head h reads its own q row, q + (b * num_heads + h) * head_dim, not the row of "
     "its kv head (kv_head is only for the cache).", {"q_head": "kv"}),
    (NEXT_PAGE_HINT, {"paging": "next_page"}),
    (PARTS_STRIDE_HINT, {"paging": "parts_stride"}),
    ("the scores are q . v: the keys your kernel read hold the values. K comes from k_cache "
     "(score = q . k; the weighted sum is of v).", {"swap": "keys_from_values"}),
    ("the values come from v_cache: yours weighs the keys (read V at the same offset as K, "
     "from v_cache).", {"swap": "values_from_keys"}),
]


# Reading past a partition's end: a variant of its own when the cases tell them apart; one
# hint naming what both show (a slot past seq_len was read) when they do not.
_BOUND_MISTAKES = {
    "inclusive": "a partition reads one token past its end: token min(seq_len, start + "
                 "part_len) belongs to the next partition; the loop bound is exclusive.",
    "unclipped": "the last partition reads past seq_len: a partition ends at min(seq_len, "
                 "start + part_len). The slots past seq_len hold NaN in this check.",
}
_PAST_SEQ_LEN = ("the partition read a token at or past seq_len (those cache slots hold NaN in "
                 "this check): partition p covers tokens p * part_len up to min(seq_len, "
                 "(p + 1) * part_len) - 1. Check the end you compute and the loop's comparison.")
_NAN_ONLY = ("these partitions are all NaN your code computed. The cache slots past seq_len "
             "hold NaN in this check, so a read past a partition's end (it ends at min(seq_len, "
             "start + part_len), exclusive) makes one; with the bounds right, look for inf * 0 "
             "or inf - inf in the online softmax (the running max starts at -inf: rescale by "
             "expf(m - m_new), never expf(m_new - m), and weigh each token by expf(dot - "
             "m_new), never by expf(dot - m): against the old max the first token's weight is "
             "expf(dot + inf) = inf).")


def _bound_hint(o, o_ref, prob, part_len, used) -> str | None:
    hits, nan_only = [], False
    for bug in _BOUND_MISTAKES:
        variant = partials_variant(prob, part_len, bounds=bug)[2]
        if diagnose(o, o_ref, [("", variant)], mask=used[..., None]) is None:
            continue
        # A variant that is NaN in every partition shows only "NaN", which other mistakes
        # make too: not evidence for this one.
        if np.isnan(variant[used]).all():
            nan_only = True
        else:
            hits.append(bug)
    if len(hits) > 1:
        return _PAST_SEQ_LEN
    return _BOUND_MISTAKES[hits[0]] if hits else _NAN_ONLY if nan_only else None


def _partition_hint(text: str | None, bugs: dict, prob) -> str:
    """A partition mistake's hint on `prob`: a head mapping's names the mappings that read
    the same KV heads here too."""
    if "kv_map" in bugs:
        return kv_map_hint(bugs["kv_map"], prob.q.shape[1], prob.k_cache.shape[2])
    return text or twice_hint(prob.scale, prob.q.shape[2])


def _scaled(prob, bugs: dict) -> dict:
    scale = {"twice": prob.scale ** 2, "head_dim": 1.0 / prob.q.shape[-1],
             "sqrt": float(1 / np.sqrt(prob.q.shape[-1]))}.get(bugs.get("scale"))
    return bugs if scale is None else {**bugs, "scale": scale}


def _written_by(prob, index, part_len) -> str:
    b, h, p, d = index
    start = p * part_len
    end = min(int(prob.seq_lens[b]), start + part_len)
    page_size = prob.k_cache.shape[1]
    pages = [int(x) for x in prob.block_tables[b][start // page_size:(end - 1) // page_size + 1]]
    return (f"That value is written by lane {d % WARP} of block ({p}, {h}, {b}) = (partition, "
            f"head, sequence), which covers tokens {start}..{end - 1} on pages {pages}.")


def _lane0_hint(o, o_ref, used) -> str | None:
    """Only lane 0's dims (0, 32, ...) right in every partition: the dot product's sum
    reached lane 0 alone (a __shfl_down_sync reduction), the other lanes weighed the keys
    with partial dots."""
    ok = np.isclose(o, o_ref, rtol=RTOL, atol=ATOL)[used]      # [partitions, head_dim]
    lane0 = np.arange(o.shape[-1]) % WARP == 0
    if o.shape[-1] <= 1 or not ok[:, lane0].all() or ok[:, ~lane0].all():
        return None
    return ("only lane 0's dims (0, 32, ...) are right: only lane 0 had the whole dot product. "
            "A __shfl_down_sync reduction leaves the sum in lane 0 alone; every lane needs it "
            "for its weights: reduce with __shfl_xor_sync, or broadcast lane 0's sum with "
            "__shfl_sync(0xffffffffu, dot, 0).")


def _partition_launch(prob, part_len):
    """(grid, args) of the prompt's launch on `prob`."""
    batch, num_heads, head_dim = prob.q.shape
    max_parts = -(-int(prob.seq_lens.max()) // part_len)
    rows = (batch, num_heads, max_parts)
    args = (prob.q, prob.k_cache, prob.v_cache, prob.block_tables, prob.seq_lens,
            poisoned(rows + (head_dim,)), poisoned(rows + (2,)), np.int32(num_heads),
            np.int32(prob.k_cache.shape[2]), np.int32(head_dim),
            np.int32(prob.k_cache.shape[1]), np.int32(prob.block_tables.shape[1]),
            np.int32(part_len), np.int32(max_parts), np.float32(prob.scale))
    return (max_parts, num_heads, batch), args


def _partition_transposed(comp) -> str | None:
    """TRANSPOSED_HINT when the kernel reads a full table's transposed rows (part_len =
    the page size: every partition of the three sequences exists)."""
    def run(p):
        (o,), _ = launch_warp(comp, *_partition_launch(p, PAGE_SIZE), outputs=(5,))
        return o, unwritten(o)

    return transposed_hint(run, full_table("decode", num_heads=2, num_kv_heads=2,
                                           head_dim=32),
                           lambda p: reference_partials(p.q, p.k_cache, p.v_cache,
                                                        p.block_tables, p.seq_lens, PAGE_SIZE,
                                                        p.scale)[2],
                           ("sequence", "head", "partition", "dim"))


def _partition_one_size(comp, part_len: int, sizes: dict) -> str | None:
    """fixed_page_hint or mha_only_hint where the kernel's partitions of this case's
    sequences come out wrong with their sizes, and right with pages of 16 tokens, or with a
    KV head per query head."""
    def right_with(**changed):
        prob = _wider_than_parts(decode_problem(0, **{**sizes, **changed}), part_len)
        o = probe(lambda: launch_warp(comp, *_partition_launch(prob, part_len),
                                      outputs=(5,))[0][0])
        o_ref = reference_partials(prob.q, prob.k_cache, prob.v_cache, prob.block_tables,
                                   prob.seq_lens, part_len, prob.scale)[2]
        return o is not None and describe_difference(
            o, o_ref, ("sequence", "head", "partition", "dim"),
            mask=np.isfinite(o_ref).all(axis=-1, keepdims=True)) is None
    return one_size_hint(right_with, sizes, longest=max(sizes["seq_lens"]))


def _parts_stride_fault(comp, seed: int, part_len: int, sizes: dict) -> str | None:
    """PARTS_STRIDE_HINT where the kernel, relaunched on the case with its table's padding
    pointing at a page of finite values, gives what rows read max_parts apart give there: the
    fault alone does not show it (a read past a partition's end reaches the same padding)."""
    prob = spare_page_padding(decode_problem(seed, **sizes), case_rng(seed + 3000))
    o = prob and probe(lambda: launch_warp(comp, *_partition_launch(prob, part_len),
                                           outputs=(5,))[0][0])
    if o is None:
        return None
    m_ref, _, o_ref = reference_partials(prob.q, prob.k_cache, prob.v_cache, prob.block_tables,
                                         prob.seq_lens, part_len, prob.scale)
    return diagnose(o, o_ref, [(PARTS_STRIDE_HINT, lambda: partials_variant(
        prob, part_len, paging="parts_stride")[2])], mask=np.isfinite(m_ref)[..., None])


def _wider_than_parts(prob, part_len: int):
    """`prob` with a -1 column added to its block table where the table is exactly max_parts
    wide: there a row stride of max_parts for max_pages would pass for right."""
    if prob.block_tables.shape[1] == -(-int(prob.seq_lens.max()) // part_len):
        prob.block_tables = np.pad(prob.block_tables, ((0, 0), (0, 1)), constant_values=-1)
    return prob


def _partition_case(comp, seed, part_len, **sizes) -> None:
    prob = decode_problem(seed, **sizes)
    head_dim = prob.q.shape[2]
    try:
        (o, ml), counts = launch_warp(comp, *_partition_launch(prob, part_len),
                                      outputs=(5, 6), count=True)
    except Exception as exc:   # a fault: a transposed table read soon reaches its -1 padding
        hint = getattr(exc, "buffer", None) and (   # (an index out of bounds)
            _parts_stride_fault(comp, seed, part_len, sizes) or _partition_transposed(comp)
            or _partition_one_size(comp, part_len, sizes))
        if not hint:
            raise
        raise Mismatch(kernel_message(exc), hint) from exc
    if np.isnan(o).all() and np.isnan(ml).all() and "TODO" in comp.source:
        raise NotAttempted(NOTHING_WRITTEN)
    m_ref, l_ref, o_ref = reference_partials(prob.q, prob.k_cache, prob.v_cache,
                                             prob.block_tables, prob.seq_lens, part_len,
                                             prob.scale)
    used = np.isfinite(m_ref)
    never = unwritten(o)
    diff = describe_difference(o, o_ref, ("sequence", "head", "partition", "dim"),
                               mask=used[..., None], unwritten=never)
    if diff is not None:
        # NaN that the kernel computed in every partition: the online softmax's own 0 / 0
        # or inf / inf fits it as well as any variant that reads a NaN slot
        all_nan = bool((np.isnan(o) & ~never)[used].all())
        named = diagnose(o, o_ref, [
            (_partition_hint(text, bugs, prob),
             lambda bugs=bugs: partials_variant(prob, part_len, **_scaled(prob, bugs))[2])
            for text, bugs in _PARTITION_MISTAKES + PARTITION_TREES], mask=used[..., None])
        bound = _bound_hint(o, o_ref, prob, part_len, used) or (_NAN_ONLY if all_nan else None)
        if bound == _NAN_ONLY and named:   # NaN everywhere, and a mistake that fits it
            bound = several_fit([_NAN_ONLY, named])
        hint = bound or never_stored_hint(o, o_ref, used) or _lane0_hint(o, o_ref, used) \
            or named or _partition_transposed(comp) or _partition_one_size(comp, part_len, sizes) \
            or dims_hint(o, used, head_dim, "lane") or misplaced_hint(o, o_ref, used)
        raise Mismatch("part_out: " + diff.message() + "\n" + _written_by(prob, diff.first(),
                                                                          part_len),
                       hint or "part_out[b, h, p] must be softmax(scores of partition p) @ its "
                               "values, for the tokens of partition p only.")
    for k, name, ref in ((0, "m", m_ref), (1, "l", l_ref)):
        diff = describe_difference(ml[..., k], ref, ("sequence", "head", "partition"),
                                   mask=used)
        if diff is None:
            continue
        got_m = ml[..., 0][used]
        with np.errstate(over="ignore"):   # (sum of exp(score): what l is with no max taken)
            no_max = np.allclose(ml[..., 1][used], (l_ref * np.exp(m_ref))[used], rtol=2e-4,
                                 atol=2e-4)
        if k == 0 and np.allclose(got_m, l_ref[used], rtol=2e-4, atol=2e-4) and \
                np.allclose(ml[..., 1][used], m_ref[used], rtol=2e-4, atol=2e-4):
            hint = ("m and l are swapped: part_ml[b, h, p, 0] is m, the partition's max score, "
                    "and part_ml[b, h, p, 1] is l, its sum of exp(score - m).")
        elif k == 0 and np.allclose(got_m, m_ref[used] * LOG2E, rtol=2e-4, atol=2e-4):
            hint = ("m is log2(e) times the expected: store the max of the natural-log scores "
                    "(q . k * scale), as the merge expects.")
        elif k == 0 and np.allclose(got_m, (m_ref + np.log(l_ref))[used], rtol=2e-4,
                                    atol=2e-4):
            hint = ("m is m + log(l), the partition's log-sum-exp: store the max itself in "
                    "part_ml[..., 0] and l in part_ml[..., 1] (the merge weighs partition p by "
                    "l_p * exp(m_p - m)).")
        elif k == 0 and np.all(got_m[diff.bad[used]] == 0) and np.all(m_ref[diff.bad] < 0):
            hint = ("m is 0 where every score of the partition is negative: the running max "
                    "must start at -inf (NEG_INF), not 0, so that it becomes the first score.")
        elif no_max and (k == 1 or np.all(got_m == 0)):
            hint = ("l is the sum of expf(score) over the partition, not of expf(score - m): no "
                    "max is subtracted (right only while the scores are small: past about 88 "
                    "expf overflows float32). Weigh each token with expf(score - m_new), m_new "
                    "the running max (from -inf), rescale l and acc by expf(m - m_new) when it "
                    "grows, and store that m.")
        else:
            hint = ("part_ml[b, h, p] holds (m, l): m = max of the partition's scaled scores, "
                    "l = sum of exp(score - m).")
        raise Mismatch(f"part_ml[..., {k}] ({name}): " + diff.message(), hint)
    _no_such_partition(o, ml, prob, part_len, used)
    partition_budget(counts, prob, part_len)


def _no_such_partition(o, ml, prob, part_len, used) -> None:
    """Right states; now the slots of the partitions that do not exist (`used` False): the
    spec writes nothing there, so they must still hold the poison the check filled them
    with (a NaN that no arithmetic makes: a 0 / 0 of the kernel's own is another NaN)."""
    o_hit, ml_hit = ~unwritten(o).all(axis=-1), ~unwritten(ml).all(axis=-1)
    ghosts = ~used & (o_hit | ml_hit)
    if not ghosts.any():
        return
    b, h, p = (int(i) for i in np.argwhere(ghosts)[0])
    seq_len = int(prob.seq_lens[b])
    parts = -(-seq_len // part_len)

    def shown(row):
        return ", ".join("unwritten" if unwritten(x) else fmt(x) for x in row)

    got, slots = [], []
    if ml_hit[b, h, p]:
        got.append(f"part_ml[{b}, {h}, {p}] = ({shown(ml[b, h, p])})")
        slots.append(f"part_ml[{b}, {h}, {p}]")
    if o_hit[b, h, p]:
        got.append(f"part_out[{b}, {h}, {p}] = [{shown(o[b, h, p, :4])}"
                   f"{', ...' if o.shape[-1] > 4 else ''}]")
        slots.append(f"part_out[{b}, {h}, {p}]")
    m, l = ml[b, h, p]
    empty = (" (a partition with no token gets m = -inf and l = 0, and its o = 0 / 0: not a "
             "state)" if ml_hit[b, h, p] and m == -np.inf and l == 0 else "")
    raise Mismatch(
        f"partition {p} of sequence {b} does not exist (seq_len {seq_len}, part_len {part_len}: "
        f"{parts} partition{'s' if parts != 1 else ''}), but block ({p}, {h}, {b}) = "
        f"(partition, head, sequence) wrote {' and '.join(slots)}; {int(ghosts.sum())} of the "
        f"{int((~used).sum())} slots of partitions that do not exist were written",
        f"partition {p} would start at token {p * part_len}, at or past seq_len {seq_len}: "
        f"nothing is written for it{empty}. Return before any store when part * part_len >= "
        "seq_len; the whole warp leaves, so no shuffle waits for it.",
        expected="the slot unchanged (nothing written)", got="; ".join(got))


def decode_partition(source: str, device: str = "auto") -> CheckResult:
    """Check `decode_partition`: grid (max_parts, num_heads, batch), block (32,)."""
    comp = _Compiled(source, "decode_partition", device)
    specs = [
        ("one sequence, one partition", 60, 16,
         dict(seq_lens=[13], num_heads=2, num_kv_heads=2, head_dim=32, page_size=4)),
        ("GQA, three sequences, several partitions", 61, 16,
         dict(seq_lens=[37, 21, 9], num_heads=4, num_kv_heads=2, head_dim=32, page_size=8)),
        ("MQA, a one-token sequence, partitions not page-aligned", 62, 12,
         dict(seq_lens=[1, 30, 45], num_heads=2, num_kv_heads=1, head_dim=64, page_size=16)),
        ("head_dim 16: half the lanes hold no dimension", 63, 8,
         dict(seq_lens=[20, 7], num_heads=2, num_kv_heads=2, head_dim=16, page_size=4)),
        ("head_dim 128, GQA 8/2, long partitions", 64, 32,
         dict(seq_lens=[70, 33], num_heads=8, num_kv_heads=2, head_dim=128, page_size=16)),
        ("very negative scores", 65, 8,
         dict(seq_lens=[20, 9], num_heads=2, num_kv_heads=2, head_dim=32, page_size=4,
              negative_scores=True)),
        # (the other cases' scale is 1/sqrt(head_dim): a scale worked out in the kernel passed)
        ("head_dim 48 (lanes 0-15 hold two dims), GQA 3/1, page_size 6, scale 0.3", 66, 10,
         dict(seq_lens=[23, 40, 6], num_heads=3, num_kv_heads=1, head_dim=48, page_size=6,
              scale=0.3)),
        # sequence 1 (16 = 2 x 8) is not the longest: the partition starting at its seq_len
        # is launched, and a return for start > seq_len (not >=) lets it write
        ("a sequence whose length is a multiple of part_len, shorter than the longest", 67, 8,
         dict(seq_lens=[19, 16], num_heads=4, num_kv_heads=2, head_dim=32, page_size=4)),
    ]
    cases = [Case(name, {"part_len": part_len, **sizes},
                  lambda seed=seed, part_len=part_len, sizes=sizes:
                  _partition_case(comp, seed, part_len, **sizes))
             for name, seed, part_len, sizes in specs]
    return run_cases("decode_partition",
                     "decode_partition kernel: one warp per (partition, head, sequence)", cases,
                     lint=comp.get)


