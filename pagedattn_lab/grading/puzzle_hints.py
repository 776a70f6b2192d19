"""What a puzzle case of workbook 03 (checks_onramp.py) says when it fails: the output
compared with the spec, with the first of the case's own hints that applies or the write
counts' evidence, and the access counts held to the puzzle's budget, naming the thread and
the buffers whose totals show the extra accesses."""
from __future__ import annotations

import numpy as np

from ..words import counted, ranges
from .compare import describe_difference
from .puzzle_runner import per_thread_max
from .report import Mismatch, NotAttempted, several_fit

NOTHING_WRITTEN = ("the kernel wrote nothing (the output is still the NaN the check filled it "
                   "with): write the kernel body where the // TODO is")


def check_output(kern, got, expected, axes, run, out_name, hints) -> None:
    """Compare `got` (run's one output) with `expected`; on a difference raise a Mismatch
    whose hint is the first that applies: `hints` are callables (diff) -> str | None, then
    the write counts' evidence (more writes than elements written: some element was written
    twice; a NaN the kernel stored counts as written, run.written)."""
    if np.isnan(got).all() and "TODO" in kern.source:
        raise NotAttempted(NOTHING_WRITTEN)
    diff = describe_difference(got, expected, axes, atol=1e-5, rtol=1e-5)
    if diff is None:
        return
    hint = next((text for text in (rule(diff) for rule in hints) if text), None)
    writes = run.counts.by_buffer[out_name].writes
    written = int(np.count_nonzero(run.written[0]))
    if hint is None and writes > written:
        held = (f", but only {written} of its {expected.size} elements "
                f"{'holds' if written == 1 else 'hold'} a value" if written < expected.size
                else f" for its {counted(expected.size, 'element')}")
        hint = (f"{out_name} was written {writes} times{held}: several threads wrote the "
                "same element (the last store wins). Each element has one owner thread.")
    # (the message names an element, not a thread: the thread is the one that writes it)
    raise Mismatch(diff.message(), hint or "compare your kernel with the spec above for the "
                   "first wrong element the message names, and the thread that writes it.")


def all_in_first(got, totals, writes: int, word: str):
    """The rule (diff) -> hint where every total was stored in out[0]: more than one store,
    out[0] holding one of the totals (the last store's), every other element unwritten."""
    def rule(diff):
        with np.errstate(invalid="ignore"):
            held = np.flatnonzero(np.isclose(got[0], totals, atol=1e-4, rtol=1e-5))
        if got.size < 2 or writes < 2 or not held.size or not np.isnan(got[1:]).all():
            return None
        index, zero = ("blockIdx.x", "out[threadIdx.x] or out[warp]") if word == "block" \
            else ("i / 32", "out[lane]")
        return (f"out was written {writes} times, but only 1 of its {got.size} elements holds "
                f"a value: several threads wrote the same element, every {word}'s total to "
                f"out[0] (it holds {word} {held[0]}'s, the last store; the others are still "
                f"NaN). {word.capitalize()} w's total goes to out[w], out[{index}], not out[0], "
                f"nor {zero}, whose index is 0 in every thread that stores.")
    return rule


def check_budget(counts, budget: dict, outputs: dict, read_advice: dict,
                  advice: dict | None = None) -> None:
    """Over the budget: name the thread, and the buffers whose totals show the extra reads
    (or the puzzle's own `advice` for that kind of access)."""
    for name, limit in budget.items():
        most, who = per_thread_max(counts, name)
        if most <= limit:
            continue
        what = name.replace("_", " ")
        staged = _device_variables(counts, name)
        if staged:
            raise Mismatch(f"correct, but {who} made {most} {what}; the budget is {limit} per "
                           "thread", staged)
        if advice and name in advice:
            raise Mismatch(f"correct, but {who} made {most} {what}; the budget is {limit} per "
                           "thread", advice[name])
        extra = [(b, n, advice) for b, (n, advice) in read_advice.items()
                 if name == "global_reads" and counts.by_buffer[b].reads > n]
        hint = "; ".join(f"{b} was read {counts.by_buffer[b].reads} times, where {n} would "
                         f"do: {advice}" for b, n, advice in extra) or \
            (f"{what}: compute in a local variable and store the result once." if "write" in name
             else f"{what}: keep a value you need twice in a register (a local variable) "
                  "instead of going back to memory.")
        raise Mismatch(f"correct, but {who} made {most} {what}; the budget is {limit} per "
                       "thread", hint)
    for name, size in outputs.items():
        writes = counts.by_buffer[name].writes
        if writes > size:
            raise Mismatch(f"correct, but {name} was written {writes} times for its {size} "
                           "elements; the budget is one write per element",
                           "more than one thread stores the same element (the last store "
                           "wins, so the result is right by luck of order): let one thread own "
                           "each element.")


def _device_variables(counts, name: str) -> str | None:
    """The hint when the kernel's own __device__ (or static) variables made accesses of the
    kind `name` (global reads or writes): they are global memory, counted as such."""
    if not name.startswith("global_"):
        return None
    write = "write" in name
    used = [(b.name.split(" ", 1)[1], b.writes if write else b.reads)
            for b in counts.by_buffer.values() if b.name.startswith("__device__ ")]
    used = [(var, n) for var, n in used if n]
    if not used:
        return None
    done = "written" if write else "read"
    return ("; ".join(f"{var} was {done} {n} times in all" for var, n in used)
            + ": a __device__ (or static) array is global memory on a GPU, so its accesses "
            f"count as {name.replace('_', ' ')}, like the arguments'. Keep values in "
            "registers and pass them between threads as the puzzle asks instead.")


def not_ten(shift) -> str:
    """The shift with the fewest significant digits (4 to 7) that do not read as 10: the
    check failed it, so "a[i] + 10: the spec adds 10" (10.0002 at 4 digits) says nothing."""
    return next((t for t in (f"{shift:.{n}g}" for n in range(4, 8)) if float(t) != 10),
                f"{shift:.7g}")


def unstored_hint(diff, writes: int, word: str) -> str | None:
    """The hint for totals still NaN because their owner stored nothing (fewer writes to out
    than its elements), not because a stale shared-memory slot was added in."""
    unstored = np.flatnonzero(diff.unwritten)
    if writes >= diff.unwritten.size:
        return None
    return (f"{word} {ranges(unstored)} never stored a total (out was written "
            f"{counted(writes, 'time')} for {counted(diff.unwritten.size, word)}): every "
            f"{word} writes its total, a partly filled one too (its elements past n count as "
            "0).")


def own_value_doubled(got, lanes):
    """A hint rule for a warp sum whose writing lane never received the total: with
    __shfl_up/down_sync a lane whose partner is outside the warp gets its own value back, so
    after the 5 steps it holds 32 times its own element. `lanes` is [warps, 1, 32]."""
    def rule(diff):
        if lanes.shape[1] != 1:
            return None
        lane = next((j for j in range(32) if np.allclose(got, 32 * lanes[:, 0, j], rtol=1e-5,
                                                          atol=1e-4)), None)
        if lane is None:
            return None
        return (f"out[w] is 32 times lane {lane}'s own element: at every step lane {lane}'s "
                "partner lay outside the warp, so the shuffle handed it back its own value and "
                "it doubled 5 times. Write from the lane that ends with the sum: lane 0 with "
                "__shfl_down_sync, lane 31 with __shfl_up_sync, any lane with __shfl_xor_sync.")
    return rule


def unwritten_only(mask, text: str):
    """A hint rule giving `text` where exactly the elements of `mask` were never written and
    every element written is right."""
    return lambda diff: text if mask.any() and np.array_equal(diff.unwritten, mask) and \
        np.array_equal(diff.bad, mask) else None


def index_roles_rule(n: int, threads: int):
    """A hint rule for an element index built from blockIdx.x and threadIdx.x in the wrong
    roles: the elements written (each right) are exactly those one such index reaches, and
    every index that reaches just these is named (with one block, several reach element 0
    alone)."""
    i, blocks = np.arange(n), -(-n // threads)
    forms = [(f"only the elements with i % {threads} < {blocks} (the number of blocks) were "
              "written: blockIdx.x and threadIdx.x swapped roles (threadIdx.x * blockDim.x + "
              "blockIdx.x); the element is blockIdx.x * blockDim.x + threadIdx.x.",
              i % threads < blocks),
             (f"only {counted(blocks, 'element')} ({ranges(np.arange(blocks))}) "
              f"{'was' if blocks == 1 else 'were'} written, one per block: the element is "
              "blockIdx.x * blockDim.x + threadIdx.x, not blockIdx.x alone.", i < blocks)]
    rules = [unwritten_only(~written, text) for text, written in forms]

    def rule(diff):
        fits = [hint for hint in (each(diff) for each in rules) if hint]
        return several_fit(fits, "elements") if fits else None
    return rule
