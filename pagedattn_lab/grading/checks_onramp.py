"""Checks for workbook 03, the CUDA on-ramp puzzles (specs in `pagedattn_lab.puzzles`).

Each case runs the learner's kernel once with its accesses counted (puzzle_runner.py) on
seeded random inputs of awkward sizes: n not a multiple of the block, matrices that do not
fill the last blocks, fewer keys than threads, head_dim above the block size, warps and
blocks with no element at all. Outputs start as NaN, so an element nobody wrote shows. A
case passes when the output equals the spec AND the counts keep to the puzzle's budget:
most global reads and writes per thread, and every output element written exactly once.
After the cases the check prints the counts of the last case, GPU-Puzzles style. What a
failing case says (the output against the spec, the counts against the budget):
puzzle_hints.py (and the hints read off puzzle 3's output, puzzle_grid_hints.py, and off
puzzle 4's, puzzle_shared_hints.py).
"""
from __future__ import annotations

import numpy as np

from ..puzzles import PUZZLES
from .compare import diagnose
from .puzzle_grid_hints import grid_hints
from .puzzle_hints import (all_in_first, check_budget, check_output, index_roles_rule, not_ten,
                           own_value_doubled, unstored_hint, unwritten_only)
from .puzzle_runner import PuzzleKernel, count_line
from .puzzle_shared_hints import fixed_size_array, shared_hints
from .report import Case, CheckResult, Mismatch, run_cases
from .seeds import case_rng
from .warp_trees import lane0_mistakes


def _f32(*arrays):
    return [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]


def _run_check(task, title, kern, cases):
    """run_cases over `cases` (name, params, fn returning (counts, budget)); when all pass,
    print the counts of the case with the most threads, GPU-Puzzles style."""
    runs = []

    def wrap(case_fn):
        return lambda: runs.append(case_fn())

    result = run_cases(task, title, [Case(n, p, wrap(f)) for n, p, f in cases],
                       lint=kern.get)
    if result.passed and runs:
        counts, budget = max(runs, key=lambda run: run[0].global_reads.size)
        # the same words on either device: the counts always come from the CPU executor, and
        # a lesson's stored output must match a GPU run's (nbval)
        print(f"Access counts of the largest case ({counts.global_reads.size} threads, "
              "counted by the CPU executor):")
        print(count_line(counts, budget))
    return result


# -- puzzle 1: map --------------------------------------------------------------------------

def _one_element_read(got, a) -> str | None:
    """The hint where every element is a[k] + 10 for one k: every thread read the same
    element (with one block, blockIdx.x is 0 for all of them: a[blockIdx.x] reads a[0])."""
    if a.size < 2:
        return None
    same = np.flatnonzero(np.isclose(a + np.float32(10), got[0], atol=1e-5))
    if not same.size or not np.allclose(got, got[0], atol=1e-5):
        return None
    k = int(same[0])
    return (f"every element is a[{k}] + 10: every thread read the same element a[{k}]"
            + (" (a[blockIdx.x] is a[0] for all of them: the grid has one block)" if k == 0
               else "") + ": thread i reads its own a[i], i = threadIdx.x.")


def _map_case(kern, seed, n):
    (a,) = _f32(case_rng(seed).standard_normal(n))
    out = np.full(n, np.nan, np.float32)
    run = kern.run((1,), (n,), (a, out), outputs=(1,),
                   locate=lambda b, t: (f"element {t[0]}", t[0] >= n))
    counts, (got,) = run.counts, run.outputs
    check_output(kern, got, PUZZLES["map"].spec(a.astype(np.float64)), ("element",), run,
                 "out", [
                      lambda d: ("your kernel read out (NaN before the launch) and never read "
                                 "a: out[i] is computed from a[i]."
                                 if counts.by_buffer["a"].reads == 0 else None),
                      lambda d: ("element i was given a[i + 1] + 10 or a[i - 1] + 10: thread i "
                                 "reads and writes element i." if any(
                                     np.allclose(got[1:-1], np.roll(a, s)[1:-1] + 10)
                                     for s in (1, -1)) and n > 2 else None),
                      lambda d: _one_element_read(got, a),
                      lambda d: ("every element is a[i] * 10: add 10, do not multiply."
                                 if np.allclose(got, a * np.float32(10)) else None),
                      lambda d: (f"every element is a[i] + {not_ten(got[0] - a[0])}: the spec "
                                 "adds 10." if np.allclose(got - a, got[0] - a[0], atol=1e-5)
                                 and not np.isclose(got[0] - a[0], 10, atol=1e-5) else None),
                      lambda d: ("every element is a[i] with its fraction cut off, plus 10: an "
                                 "(int) cast or an int variable truncates; keep the value a "
                                 "float." if np.array_equal(got, np.trunc(a) + 10) else None),
                      lambda d: ("only thread 0 wrote (out was written once, element 0): "
                                 "thread i writes out[i], every thread, not only thread 0."
                                 if n > 1 and counts.by_buffer["out"].writes == 1 else None)])
    budget = {"global_reads": 1, "global_writes": 1}
    check_budget(counts, budget, {"out": n}, {"a": (n, "read a[i] once into a local variable.")})
    return counts, budget


def puzzle_map(source: str, device: str = "auto") -> CheckResult:
    """Check `map_add_10`: out[i] = a[i] + 10, grid (1,), block (n,)."""
    kern = PuzzleKernel(source, "map_add_10", device)
    cases = [(f"n = {n}", {"n": n}, lambda seed=seed, n=n: _map_case(kern, seed, n))
             for seed, n in ((1, 32), (2, 8), (3, 100), (4, 1))]
    return _run_check("puzzle_map", "map_add_10: out[i] = a[i] + 10", kern, cases)


# -- puzzle 2: guard ------------------------------------------------------------------------

def _guard_case(kern, seed, n):
    rng = case_rng(seed)
    a, b = _f32(rng.standard_normal(n), rng.standard_normal(n))
    out = np.full(n, np.nan, np.float32)
    threads = 32
    run = kern.run((-(-n // threads),), (threads,), (a, b, out, np.int32(n)), outputs=(2,),
                   locate=lambda blk, t: (f"element {blk[0] * threads + t[0]}",
                                          blk[0] * threads + t[0] >= n))
    counts, (got,) = run.counts, run.outputs

    def first_block_only(diff):
        # exactly elements 0..threads-1 written: every block wrote the first block's elements
        if diff.unwritten.all() or not diff.unwritten.any() or diff.unwritten[:threads].any() \
                or not diff.unwritten[threads:].all():
            return None
        return (f"only elements 0-{threads - 1} were written, by every block: a thread's "
                "element is blockIdx.x * blockDim.x + threadIdx.x, not threadIdx.x alone.")

    def last_one_short(diff):
        if not diff.unwritten[-1] or diff.unwritten[:-1].any():
            return None
        return (f"only the last element, {n - 1}, was never written: it is the last one that "
                f"exists, so the guard is i < n (yours stops one short, like i < n - 1).")

    expected = PUZZLES["guard"].spec(a.astype(np.float64), b)

    def wrong_terms(diff):   # (every element written: the index is right, the sum is not)
        if diff.unwritten.any():
            return None
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        forms = [("every element is a[i] + a[i]: the second term is b[i].", a64 + a64),
                 ("every element is b[i] + b[i]: the first term is a[i].", b64 + b64),
                 ("every element is a[i] - b[i]: the spec adds, a[i] + b[i].", a64 - b64),
                 ("every element is b[i] - a[i]: the spec adds, a[i] + b[i].", b64 - a64),
                 ("every element is a[i] * b[i]: the spec adds, a[i] + b[i].", a64 * b64),
                 ("every element is a[i] alone: add b[i] to it.", a64),
                 ("every element is b[i] alone: add a[i] to it.", b64)]
        return diagnose(got, expected, forms, atol=1e-5, rtol=1e-5)

    i, whole = np.arange(n), n // threads * threads
    check_output(kern, got, expected, ("element",),
                 run, "out", [wrong_terms, first_block_only, index_roles_rule(n, threads),
                                  last_one_short, unwritten_only(
                     i == 0, "only element 0 was never written: elements count from 0, so "
                             "thread 0 of block 0 writes element 0 (no + 1 in the index, no "
                             "i > 0 in the guard)."), unwritten_only(
                     i >= whole, f"elements {whole}-{n - 1}, in the last, partly filled block, "
                                 "were never written: the guard is i < n, not the end of the "
                                 "last whole block.")])
    budget = {"global_reads": 2, "global_writes": 1}
    check_budget(counts, budget, {"out": n},
                 {"a": (n, "read a[i] once."), "b": (n, "read b[i] once.")})
    return counts, budget


def puzzle_guard(source: str, device: str = "auto") -> CheckResult:
    """Check `zip_add`: out[i] = a[i] + b[i], i < n; grid (ceil(n / 32),), block (32,)."""
    kern = PuzzleKernel(source, "zip_add", device,
                        past_end="the grid rounds n up to whole blocks, so threads past n "
                                 "exist; they must not read or write: guard with i < n "
                                 "(element n itself is already one past the end)")
    cases = [(f"n = {n}", {"n": n, "blocks": -(-n // 32)},
              lambda seed=seed, n=n: _guard_case(kern, seed, n))
             for seed, n in ((5, 100), (6, 31), (7, 1), (8, 64), (9, 257))]
    return _run_check("puzzle_guard", "zip_add: out[i] = a[i] + b[i] with a guard", kern,
                      cases)


# -- puzzle 3: 2-D grid ---------------------------------------------------------------------

BLOCK_2D = (16, 8)


def _grid_case(kern, seed, rows, cols):
    rng = case_rng(seed)
    x, bias = _f32(rng.standard_normal((rows, cols)), rng.standard_normal(cols))
    out = np.full((rows, cols), np.nan, np.float32)
    bx, by = BLOCK_2D
    grid = (-(-cols // bx), -(-rows // by))

    def locate(blk, t):
        r, c = blk[1] * by + t[1], blk[0] * bx + t[0]
        return f"row {r}, column {c}", r >= rows or c >= cols

    run = kern.run(grid, BLOCK_2D, (x, bias, out, np.int32(rows), np.int32(cols)),
                   outputs=(2,), locate=locate)
    counts, (got,) = run.counts, run.outputs
    expected = PUZZLES["grid_2d"].spec(x.astype(np.float64), bias)

    check_output(kern, got, expected, ("row", "column"), run, "out",
                 grid_hints(got, x, bias, expected, grid, BLOCK_2D))
    budget = {"global_reads": 2, "global_writes": 1}
    check_budget(counts, budget, {"out": rows * cols},
                 {"x": (rows * cols, "read x once per element."),
                   "bias": (rows * cols, "read bias[c] once per thread.")})
    return counts, budget


def puzzle_2d(source: str, device: str = "auto") -> CheckResult:
    """Check `add_bias`: out[r, c] = x[r, c] + bias[c]; grid (ceil(cols/16), ceil(rows/8)),
    block (16, 8)."""
    kern = PuzzleKernel(source, "add_bias", device,
                        past_end="the grid rounds both sides up to whole blocks: guard the row "
                                 "AND the column before touching memory")
    cases = [(f"{r} x {c}", {"rows": r, "cols": c},
              lambda seed=seed, r=r, c=c: _grid_case(kern, seed, r, c))
             for seed, r, c in ((10, 5, 19), (11, 37, 21), (12, 8, 16), (13, 1, 40), (14, 20, 3))]
    return _run_check("puzzle_2d", "add_bias: a 2-D grid over a matrix", kern, cases)


# -- puzzle 4: shared memory and a barrier -------------------------------------------------

SHARED_THREADS = 32


def _shared_case(kern, seed, n, head_dim):
    rng = case_rng(seed)
    q, k = _f32(rng.standard_normal(head_dim), rng.standard_normal((n, head_dim)))
    scores = np.full(n, np.nan, np.float32)
    blocks = -(-n // SHARED_THREADS)
    try:
        run = kern.run((blocks,), (SHARED_THREADS,),
                       (q, k, scores, np.int32(n), np.int32(head_dim)), outputs=(2,),
                       shared_mem=head_dim * 4,
                       locate=lambda blk, t: (f"key {blk[0] * SHARED_THREADS + t[0]}",
                                              blk[0] * SHARED_THREADS + t[0] >= n))
    except Mismatch as exc:
        exc.hint = fixed_size_array(exc.__cause__, head_dim) or exc.hint
        raise
    counts, (got,) = run.counts, run.outputs
    expected = PUZZLES["shared"].spec(q.astype(np.float64), k)
    check_output(kern, got, expected, ("key",), run, "scores",
                 shared_hints(got, q, k, expected, counts, SHARED_THREADS))
    budget = {"global_reads": head_dim + -(-head_dim // SHARED_THREADS), "global_writes": 1}
    # q read once per block in all, yet a thread over its budget: few threads loaded q for
    # the whole block
    one_loader = None if counts.by_buffer["q"].reads > blocks * head_dim else {
        "global_reads": f"q was read {counts.by_buffer['q'].reads} times in all, once per "
                        "block, but by too few threads: the block's threads share the load. "
                        "Thread i loads q[i], q[i + blockDim.x], ... (a loop from threadIdx.x "
                        "in steps of blockDim.x), so no thread loads more than its share."}
    check_budget(counts, budget, {"scores": n},
                 {"q": (blocks * head_dim, "every key's thread reads all of q from global "
                                            "memory; load q into shared memory once per block "
                                            "(each thread a part), wait at a barrier, then "
                                            "read it from there."),
                   "k": (n * head_dim, "read each element of a key row once.")},
                  one_loader)
    return counts, budget


def puzzle_shared(source: str, device: str = "auto") -> CheckResult:
    """Check `dot_scores`: scores[t] = q . k[t]; grid (ceil(n / 32),), block (32,),
    shared_mem = head_dim * 4."""
    kern = PuzzleKernel(source, "dot_scores", device,
                        past_end="a thread past the last key must not read k or write "
                                 "scores, but it must still help load q and reach the barrier")
    cases = [(f"n = {n}, head_dim = {d}", {"n": n, "head_dim": d},
              lambda seed=seed, n=n, d=d: _shared_case(kern, seed, n, d))
             # head_dim 160: past the 64 or 128 floats of a fixed-size __shared__ array
             for seed, n, d in ((20, 45, 16), (21, 20, 48), (22, 100, 8), (23, 64, 32),
                                (24, 3, 160))]
    return _run_check("puzzle_shared", "dot_scores: q staged in shared memory", kern, cases)


# -- puzzles 5 and 6: reductions ------------------------------------------------------------

def _sum_case(kern, seed, n, threads, group, spec, locate_word):
    (a,) = _f32(case_rng(seed).standard_normal(n))
    out = np.full(-(-n // group), np.nan, np.float32)
    run = kern.run((-(-n // threads),), (threads,), (a, out, np.int32(n)), outputs=(1,),
                   locate=lambda blk, t: (f"element {blk[0] * threads + t[0]} ({locate_word} "
                                          f"{(blk[0] * threads + t[0]) // group}, lane "
                                          f"{t[0] % 32})", blk[0] * threads + t[0] >= n))
    counts, (got,) = run.counts, run.outputs
    padded = np.zeros(out.size * group)
    padded[:n] = a
    lanes = padded.reshape(out.size, group // 32, 32)

    def partial(diff):
        candidates = [
            ("only lanes 0-15 of each warp were added: the first offset must reach across "
             "the whole warp (16).", lanes[..., :16].sum(axis=(1, 2))),
            ("only the even lanes were added: the offsets go all the way down to 1.",
             lanes[..., ::2].sum(axis=(1, 2))),
        ]
        warps = group // 32
        candidates += [(text, lane0.sum(axis=1)) for text, lane0 in lane0_mistakes(lanes)]
        candidates += [(f"only warp {w}'s total reached out: the {warps} warps' totals must be "
                        "combined (through shared memory, after a barrier).",
                        lanes[:, w].sum(axis=-1)) for w in range(warps)]
        candidates.append((f"warp 0's total was added {warps} times: in the second step lane "
                           "L reads warp_totals[L], not warp_totals[warp] (warp is 0 in every "
                           "lane of the warp that adds them).", lanes[:, 0].sum(axis=-1) * warps))
        if warps > 1:
            candidates.append(("warp 0's total was left out of the block's: lane L of the "
                               "warp that adds them reads warp_totals[L] for every L below "
                               "the number of warps, lane 0 too.",
                               lanes[:, 1:].sum(axis=(1, 2))))
            candidates.append(("the block's total is 32 times warp 0's: the second step "
                               "reduced warp 0's own sum again (after the first tree every "
                               "lane holds it); lane L must first load warp_totals[L] (0 past "
                               "the number of warps).", 32 * lanes[:, 0].sum(axis=-1)))
        # every block summing block 0's elements (i = threadIdx.x): total w is block 0's
        # total w % (its totals per block)
        per_block = threads // group
        candidates.append(("the totals repeat block 0's: every block summed block 0's "
                           "elements. A thread's element is blockIdx.x * blockDim.x + "
                           "threadIdx.x, not threadIdx.x alone.",
                           lanes.sum(axis=(1, 2))[np.arange(out.size) % per_block]))
        candidates.append((f"every warp total was added {32 // warps} times: only lanes "
                           f"0-{warps - 1} of the warp that adds them hold one; the other "
                           "lanes must add 0.", lanes.sum(axis=(1, 2)) * (32 // warps)))
        return next((text for text, wrong in candidates
                     if not np.allclose(wrong, spec(padded)) and
                     np.allclose(got, wrong, atol=1e-4, rtol=1e-5)), None)

    def stale_shared(diff):
        # a stale read makes its block's total NaN and leaves the other blocks right; a
        # wrong total beside the NaN shows another mistake (totals stored on one element)
        if not diff.unwritten.any() or group == 32 or (diff.bad & ~diff.unwritten).any():
            return None
        return unstored_hint(diff, counts.by_buffer["out"].writes, locate_word) or (
            "NaN came out: a thread read a shared-memory slot that no thread wrote (the "
            f"executor fills shared memory with NaN). A block of {threads} threads has "
            f"{threads // 32} warps, so there are {threads // 32} warp totals.")

    def reads_out(diff):
        reads = counts.by_buffer["out"].reads
        return (f"your kernel read out {reads} times (an atomic reads too); out holds NaN "
                "before the launch and is only to be written: add up in registers and store "
                "each total once." if reads else None)

    check_output(kern, got, spec(a.astype(np.float64)), (locate_word,), run, "out",
                 [reads_out, all_in_first(got, lanes.sum(axis=(1, 2)),
                                          counts.by_buffer["out"].writes, locate_word),
                  partial, stale_shared, own_value_doubled(got, lanes),
                  unwritten_only((np.arange(out.size) % (threads // 32) != 0) & (group == 32),
                                 f"only each block's first warp stored its total (warps "
                                 f"0, {threads // 32}, ...): every warp's lane 0 writes "
                                 "(i % 32 == 0), not only thread 0 of the block.")])
    budget = {"global_reads": 1, "global_writes": 1, "shared_writes": 1 if group > 32 else 0}
    check_budget(counts, budget, {"out": out.size}, {"a": (n, "read a[i] once.")}, {
        "shared_writes": "this puzzle needs no shared memory: shuffles move values between "
                         "the lanes of a warp directly." if group == 32 else
                         "the puzzle lets a thread write shared memory once: add each "
                         "warp's values with shuffles and let one lane of each warp store "
                         "the warp's total (a reduction tree in shared memory, or a shared "
                         "total zeroed and then added to, writes more than once)."})
    return counts, budget


def puzzle_warp_sum(source: str, device: str = "auto") -> CheckResult:
    """Check `warp_sum`: out[w] = sum of warp w's 32 elements; grid (ceil(n / 128),),
    block (128,)."""
    kern = PuzzleKernel(source, "warp_sum", device,
                        past_end="a thread past n has no element: it adds 0, still takes part "
                                 "in every shuffle, and a warp with no element at all writes "
                                 "nothing")
    spec = PUZZLES["warp_sum"].spec
    cases = [(f"n = {n}", {"n": n, "warps": -(-n // 32)},
              lambda seed=seed, n=n: _sum_case(kern, seed, n, 128, 32, spec, "warp"))
             # n = 1283: warps past 31 and a last warp of 3 elements, where i / 31 or
             # i % 33 for a warp's lane 0, or warp * 33 < n, stop matching the spec
             for seed, n in ((30, 32), (31, 100), (32, 300), (33, 1), (34, 128), (35, 1283))]
    return _run_check("puzzle_warp_sum", "warp_sum: one total per warp, by shuffles", kern,
                      cases)


def puzzle_block_sum(source: str, device: str = "auto") -> CheckResult:
    """Check `block_sum`: out[b] = sum of block b's 256 elements; grid (ceil(n / 256),),
    block (256,)."""
    kern = PuzzleKernel(source, "block_sum", device,
                        past_end="a thread past n has no element: it adds 0 and still reaches "
                                 "every shuffle and barrier")
    spec = PUZZLES["block_sum"].spec
    cases = [(f"n = {n}", {"n": n, "blocks": -(-n // 256)},
              lambda seed=seed, n=n: _sum_case(kern, seed, n, 256, 256, spec, "block"))
             for seed, n in ((40, 256), (41, 1000), (42, 5), (43, 513))]
    return _run_check("puzzle_block_sum", "block_sum: one total per block of 8 warps", kern,
                      cases)
