"""Checks for lesson 13 in Python: which heads a rank owns, the output put back together from
what an all_gather leaves, and the bytes one decode step sends and reads.

Rank r of R owns KV heads [r*Hkv/R, (r+1)*Hkv/R) and the query heads that read them, query
head h reading KV head h // (H/Hkv): query heads [r*H/R, (r+1)*H/R). The all_gather into one
buffer leaves the ranks' outputs rank after rank, each [batch, H/R, head_dim] whole. The cases
are GQA, MQA-like and MHA shapes with 1 to 8 ranks, bad splits (two with fewer KV heads than
ranks: no KV head is copied), batches of awkward sizes and a longest sequence that fills its
last page; ranges and byte counts must be ints. A wrong answer is compared with the classic
wrong versions to name the mistake.
"""
from __future__ import annotations

import numpy as np

from ..distributed.shard import head_range
from ..validate_kinds import is_int
from ..words import counted
from .compare import POW2_HINT, call_on_copies, kv_head_rule, pow2_div
from .gather_variants import wrong_orders, wrong_shape_hint
from .report import Case, CheckResult, Mismatch, as_array, run_cases, several_fit
from .seeds import case_rng   # the grader salts the random cases
from .wire_bytes_variants import bytes_variants


# -- task 1: the heads of a rank -------------------------------------------------------------

INT_HINT = ("// and math.ceil give ints; / and np.ceil give floats, even when the division "
            "is exact.")


def _as_ranges(got, expected):
    pairs = "((kv_start, kv_stop), (q_start, q_stop)), two pairs of ints"
    if isinstance(got, (tuple, list)) and any(isinstance(x, (range, slice)) for x in got):
        # (unpacked, a range of two heads would pass as (start, start + 1): "stop is one past")
        raise Mismatch(f"expected {pairs}", "a range or slice object is not a (start, stop) "
                       "pair: return (r.start, r.stop) for each.", str(expected),
                       repr(got)[:200])
    try:
        (a, b), (c, d) = got
    except (TypeError, ValueError) as exc:
        raise Mismatch(f"expected {pairs}", "return two (start, stop) pairs: the KV head range "
                       "first, then the query head range.", str(expected),
                       repr(got)[:200]) from exc
    if not all(is_int(x) for x in (a, b, c, d)):
        raise Mismatch(f"head ranges of {', '.join(type(x).__name__ for x in (a, b, c, d))}",
                       "head ranges slice arrays: they must be ints. " + INT_HINT,
                       "four ints", repr(got)[:200])
    return (int(a), int(b)), (int(c), int(d))


def _split_variants(rank, world, heads, kv):
    n_kv, n_q = kv // world, heads // world
    right = ((rank * n_kv, (rank + 1) * n_kv), (rank * n_q, (rank + 1) * n_q))
    (ks, ke), (qs, qe) = right
    return [
        ("stop is one past the rank's last head (Python ranges): start + count, not "
         "start + count - 1.", ((ks, ke - 1), (qs, qe - 1))),
        ("a KV head serves group = num_heads / num_kv_heads query heads: a rank owns "
         "num_heads / world_size query heads, not as many as its KV heads.", ((ks, ke), (ks, ke))),
        ("a rank owns num_kv_heads / world_size KV heads and group query heads for each of "
         "them: num_heads / world_size query heads, not one group.",
         ((ks, ke), (rank * heads // kv, (rank + 1) * heads // kv))),
        ("a rank holds only the KV heads its own query heads read (num_kv_heads / world_size "
         "of them), not every KV head: the cache is split, not copied.", ((0, kv), (qs, qe))),
        (kv_head_rule("//") + " = h // group, not h % num_kv_heads: the rank's query heads "
         "read KV heads q_start // group ... q_stop // group - 1, which must be its own.",
         ((qs % kv, qs % kv + n_kv), (qs, qe))),
        ("return the KV head range first, then the query head range: "
         "((kv_start, kv_stop), (q_start, q_stop)).", ((qs, qe), (ks, ke))),
        (f"a rank owns num_kv_heads / world_size = {n_kv} KV heads, not one: the KV range is "
         "[rank * that, (rank + 1) * that).", ((rank, rank + 1), (qs, qe))),
        ("ranks count from 0: rank 0 owns the first heads.",
         (((rank + 1) * n_kv, (rank + 2) * n_kv), ((rank + 1) * n_q, (rank + 2) * n_q))),
        ("rank 0 owns the first heads and rank world_size - 1 the last: the ranges go up "
         "with rank, not with world_size - 1 - rank.",
         (((world - 1 - rank) * n_kv, (world - rank) * n_kv),
          ((world - 1 - rank) * n_q, (world - rank) * n_q))),
        ("each pair is (start, stop), stop = start + count: yours has the count as its "
         "second number.", ((ks, n_kv), (qs, n_q))),
        ("the KV range's stop is one past the rank's last KV head, as in Python ranges "
         "(kv_start + num_kv_heads / world_size, or q_stop // group): yours is that last KV "
         "head itself.",
         ((ks, ke - 1), (qs, qe))),
        ("group = num_heads // num_kv_heads, the query heads that read one KV head: not "
         "num_heads // world_size (the query heads of a rank).",
         ((ks, ke), (ks * (heads // world), ke * (heads // world)))),
        *[(POW2_HINT.format(name="world_size", n=world),
           ((rank * pow2_div(kv, world), (rank + 1) * pow2_div(kv, world)),
            (rank * pow2_div(heads, world), (rank + 1) * pow2_div(heads, world))))]
        * bool(world & (world - 1)),
        # (a shift by log2 of a world_size that is not a power of two divides by a power of
        # two, as a rank count written into the code does: where both fit, both are named)
        *[(f"that is the split for world_size {size}: use the world_size argument ({world} "
           "here), not a rank count written into the code.",
           ((rank * (kv // size), (rank + 1) * (kv // size)),
            (rank * (heads // size), (rank + 1) * (heads // size))))
          for size in (2, 4, 8) if size != world],
    ]


def _split_case(fn, rank, world, heads, kv) -> None:
    expected = tuple(tuple(p) for p in (head_range(rank, world, heads, kv)[:2],
                                        head_range(rank, world, heads, kv)[2:]))
    got = fn(rank, world, heads, kv)
    if got is None:
        raise NotImplementedError("head_split returned None")
    got = _as_ranges(got, expected)
    if got == expected:
        return
    # variants with the same ranges here cannot be told apart: all of them are named
    same = [h for h, v in _split_variants(rank, world, heads, kv) if v != expected and got == v]
    hint = (several_fit(same, "ranges") if same else
            "KV heads [r*Hkv/R, (r+1)*Hkv/R), query heads [r*H/R, (r+1)*H/R).")
    raise Mismatch(f"rank {rank} of {world}, {heads} query heads over {kv} KV heads (group "
                   f"{heads // kv})", hint, str(expected), str(got))


def _refuse_case(fn, world, heads, kv) -> None:
    try:
        got = fn(0, world, heads, kv)
    except ValueError:
        return
    except NotImplementedError:
        raise
    except Exception as exc:   # noqa: BLE001 - any other error is the wrong kind
        raise Mismatch(f"{world} ranks over {counted(kv, 'KV head')} raised "
                       f"{type(exc).__name__}",
                       "raise ValueError (a bad argument value), naming world_size.",
                       "ValueError", type(exc).__name__) from exc
    if got is None:   # (the valid splits returned ranges: this is no stub)
        raise Mismatch(f"{world} ranks over {kv} KV heads: head_split returned None",
                       "refuse a split where num_kv_heads % world_size != 0 by raising a "
                       "ValueError naming world_size: a None return lets the caller go on "
                       "with no head ranges.", "ValueError", "None")
    hint = ("refuse a split where num_kv_heads % world_size != 0 with a ValueError: some rank "
            "would get a part of a KV head, or none.")
    if kv < world:
        hint = (f"fewer KV heads than ranks ({kv} < {world}): each rank owns whole KV heads "
                "of its own, and this split does not copy a KV head to several ranks (as "
                "vLLM does): raise a ValueError.")
    raise Mismatch(f"{world} ranks cannot share {counted(kv, 'KV head')} evenly, yet "
                   "head_split returned ranges", hint, "ValueError", repr(got))


def head_split(fn) -> CheckResult:
    """Check `fn(rank, world_size, num_heads, num_kv_heads)` ->
    ((kv_start, kv_stop), (q_start, q_stop))."""
    shapes = [(1, 2, 8, 4), (0, 2, 8, 4), (3, 4, 32, 8), (1, 2, 4, 4), (2, 3, 12, 6),
              (5, 8, 64, 8), (0, 1, 8, 2)]
    rng = case_rng(1301)
    for _ in range(3):
        world = int(rng.choice([2, 4, 8]))
        kv = world * int(rng.integers(1, 4))
        heads = kv * int(rng.choice([1, 2, 4, 8]))
        shapes.append((int(rng.integers(1, world)), world, heads, kv))
    cases = [Case("split", {"rank": r, "world_size": w, "num_heads": h, "num_kv_heads": k},
                  lambda r=r, w=w, h=h, k=k: _split_case(fn, r, w, h, k))
             for r, w, h, k in shapes]
    world = int(rng.choice([4, 8]))          # fewer KV heads than ranks, dividing world_size
    kv = world // int(rng.choice([2, world]))
    bad = [(3, 8, 4), (4, 12, 6), (2, 8, 1), (world, world * int(rng.choice([1, 2, 4])), kv)]
    cases += [Case("bad split", {"world_size": w, "num_heads": h, "num_kv_heads": k},
                   lambda w=w, h=h, k=k: _refuse_case(fn, w, h, k))
              for w, h, k in bad]
    return run_cases("head_split", "head_split: the heads rank r owns", cases)


# -- task 2: the gathered output -------------------------------------------------------------

def _gather_case(fn, world, full) -> None:
    batch, heads, dim = full.shape
    n = heads // world
    gathered = np.concatenate([full[:, r * n:(r + 1) * n].ravel() for r in range(world)])
    got = call_on_copies("gather_heads", fn, {"gathered": gathered}, world, batch, heads, dim)
    if got is None:
        raise NotImplementedError("gather_heads returned None")
    got = as_array(got, "gather_heads' result")
    if got.shape != full.shape:
        hint = "one output row per sequence, every head: [batch, num_heads, head_dim]."
        blocks = gathered.reshape(world, batch, n, dim)
        reduced = next((how for how, reduce in (("summed", np.sum), ("averaged", np.mean))
                        if got.shape == (batch, n, dim) and world > 1 and
                        np.allclose(got, reduce(blocks, axis=0))), None)
        laid_out = wrong_shape_hint(got, gathered, world, batch, heads, dim)
        if laid_out:
            hint = laid_out
        elif reduced:
            hint = (f"the ranks' blocks were {reduced}, as an all-reduce would: they hold "
                    "different heads, not parts of the same ones, so each block goes to its "
                    "own heads, r*H/R ... (r+1)*H/R - 1, side by side.")
        elif got.shape == (batch, n, dim) and world > 1:
            hint = ("that is one rank's share [batch, H/R, head_dim]: the buffer holds every "
                    "rank's block; put all of them back.")
        raise Mismatch("wrong shape", hint, str(full.shape), str(got.shape))
    if np.array_equal(got, full):
        return
    b, h = (int(x[0]) for x in np.nonzero((got != full).any(axis=2)))
    hint = next((t for t, v in wrong_orders(gathered, world, batch, heads, dim)
                 if not np.array_equal(v, full) and np.array_equal(got, v)), None)
    if hint is None and np.allclose(got, full, rtol=1e-2, atol=1e-3):
        hint = ("every value is in its place but not bit for bit the one its rank computed "
                f"(yours is {got.dtype}): only move the values, no cast to a narrower type "
                "and no rounding.")
    elif hint is None and got.dtype.kind in "biu":
        hint = f"the outputs are floats: keep the buffer's dtype, not {got.dtype}."
    hint = hint or "rank r's block [batch, H/R, D] goes to heads r*H/R ... (r+1)*H/R - 1."
    raise Mismatch(f"first wrong row: sequence {b}, head {h} (computed by rank {h // n}, its "
                   f"local head {h % n})", hint, str(np.round(full[b, h, :3], 4)),
                   str(np.round(got[b, h, :3], 4)))


def gather_heads(fn) -> CheckResult:
    """Check `fn(gathered, world_size, batch, num_heads, head_dim)` -> [batch, H, D]."""
    rng = case_rng(1302)
    shapes = [(2, 3, 8, 4), (4, 5, 8, 2), (2, 1, 4, 3), (1, 2, 4, 2), (8, 3, 16, 5)]
    cases = [Case("gathered outputs", {"world_size": w, "batch": b, "num_heads": h,
                                       "head_dim": d},
                  lambda w=w, full=rng.standard_normal((b, h, d)).astype(np.float32):
                  _gather_case(fn, w, full))
             for w, b, h, d in shapes]
    return run_cases("gather_heads", "gather_heads: the output from the all_gather buffer", cases)


# -- task 3: the bytes of a step -------------------------------------------------------------


def _bytes_case(fn, lens, heads, kv, dim, ps, world, size) -> None:
    from ..distributed.shard import step_bytes  # noqa: PLC0415
    b = step_bytes(lens, heads, kv, dim, ps, world, size)
    expected = (b.tables, b.output_share, b.kv_read)
    got = call_on_copies("wire_bytes", fn, {"seq_lens": np.array(lens, np.int32)}, heads, kv,
                         dim, ps, world, size)
    if got is None:
        raise NotImplementedError("wire_bytes returned None")
    not_three = Mismatch("expected (tables, output_share, kv_read), three ints", "return a "
                         "tuple of three byte counts.", str(expected), repr(got)[:200])
    try:
        values = tuple(got)
        got = tuple(int(x) for x in values)
    except (TypeError, ValueError, OverflowError) as exc:   # (int(inf): OverflowError)
        raise not_three from exc
    if len(got) != 3:   # (zip below would compare the first ones and blame those)
        raise not_three
    if not all(is_int(x) for x in values):
        raise Mismatch(f"byte counts of {', '.join(type(x).__name__ for x in values)}",
                       "return plain integers, as the spec asks. " + INT_HINT,
                       "three ints", repr(values)[:200])
    if got == expected:
        return
    # a variant names its mistake when `got` has the variant's wrong value in every field the
    # variant gets wrong (the other fields may carry a second, separate mistake); variants
    # with the same numbers here cannot be told apart: all of them are named
    found = [(h, v) for h, v in bytes_variants(lens, heads, kv, dim, ps, world, size)
             if v != expected and all(g == w for g, w, e in zip(got, v, expected) if w != e)]
    # one mistake that explains more of the wrong fields beats one that leaves some to a
    # second mistake (fp32 always doubles output_share and kv_read, not output_share alone)
    explained = [sum(w != e for w, e in zip(v, expected)) for _, v in found]
    found = [f for f, n in zip(found, explained) if n == max(explained)]
    # (both ways of dividing twice can give the same numbers: several_fit names a hint once)
    same = [h for h, v in found if v == found[0][1]]
    hint = several_fit(same, "numbers") if same else (
        "tables: 4 * (2 + batch + batch * pages); output share: batch * H/R * head_dim"
        " * itemsize; K/V read: tokens * 2 * Hkv/R * head_dim * itemsize.")
    names = ("tables", "output_share", "kv_read")
    wrong = ", ".join(n for n, e, g in zip(names, expected, got) if e != g)
    raise Mismatch(f"wrong: {wrong}", hint, str(expected), str(got))


def wire_bytes(fn) -> CheckResult:
    """Check `fn(seq_lens, num_heads, num_kv_heads, head_dim, page_size, world_size,
    itemsize)` -> (tables, output_share, kv_read) bytes of one decode step, one layer."""
    fixed = [((48, 13, 33), 12, 6, 64, 16, 3, 4),     # the longest fills its last page
             ((37, 1, 16, 70), 8, 4, 64, 16, 2, 4), ((17,), 32, 8, 128, 16, 4, 2),
             ((100, 3, 64, 65, 9), 16, 2, 64, 8, 2, 2), ((5, 6), 4, 4, 32, 4, 1, 4),
             # a page_size that is not a power of two; 52 & 11 is 0, 52 % 12 is not
             ((52, 7, 24), 12, 4, 64, 12, 2, 2)]
    rng = case_rng(1303)
    lens = tuple(int(n) for n in rng.integers(1, 300, size=6))
    fixed.append((lens, 32, 8, 128, 16, 8, 2))
    ps = int(rng.choice([8, 16, 32]))
    lens = [int(n) for n in rng.integers(1, 200, size=int(rng.integers(2, 6)))]
    lens[int(rng.integers(len(lens)))] = ps * (max(lens) // ps + 1)   # a whole-page longest
    fixed.append((tuple(lens), 24, 6, 80, ps, int(rng.choice([1, 2, 3, 6])), 2))
    cases = [Case("step", {"seq_lens": list(s), "num_heads": h, "num_kv_heads": k,
                           "head_dim": d, "page_size": p, "world_size": w, "itemsize": i},
                  lambda s=s, h=h, k=k, d=d, p=p, w=w, i=i: _bytes_case(fn, s, h, k, d, p, w, i))
             for s, h, k, d, p, w, i in fixed]
    return run_cases("wire_bytes", "wire_bytes: what one decode step sends and reads", cases)
