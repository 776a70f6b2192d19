"""Check for the gather kernel (workbook 02): grid (max_len, batch), block (32,).

Outputs start as a NaN poison (kernel_runner.py); a wrong result is compared with the
known-wrong gathers (variants.py) and read for the patterns in kernel_hints.py. Right values
are then counted on the CPU executor (on either device, as the puzzles are): a thread that
stores more than its share of the row (a whole-row loop from 0 in every thread, or one
thread copying for all) is named with its block's token. A kernel that fails is launched
once more on a full square table (table_probe.py), where a block table read transposed
shows as itself rather than as garbage from its -1 padding.
"""
from __future__ import annotations

import numpy as np

from ..words import ranges
from . import slack_reads
from .cases import paged_problem
from .checks_kernels import _Compiled
from .compare import describe_difference, diagnose
from .faults import kernel_message
from .kernel_hints import nothing_written, one_size_hint, padding_hint, row_stride_hint
from .kernel_runner import KERNEL_TIMEOUT, Kernel, poisoned, unwritten
from .offset_hints import NEXT_PAGE_HINT, PAGE_ONLY_HINT, UNSCALED_PAGES_HINT
from .puzzle_runner import per_thread_max
from .report import Case, CheckResult, Mismatch, probe, run_cases
from .table_probe import full_table, transposed_hint
from .variants import gather_variant

GATHER_THREADS = 32


# -- task: the gather kernel (02) ---------------------------------------------------------

def _gather_case(comp: _Compiled, seed: int, seq_lens, page_size, num_kv_heads, head_dim,
                 max_len) -> None:
    prob = paged_problem(seed, mode="decode", seq_lens=seq_lens, num_heads=num_kv_heads,
                         num_kv_heads=num_kv_heads, head_dim=head_dim, page_size=page_size)
    kern = comp.get()
    try:
        (k_out, v_out), args, shape = _launch_gather(kern, prob, max_len)
    except Exception as exc:   # a fault: a transposed table read soon reaches its -1 padding
        hint = getattr(exc, "buffer", None) and (   # (an index out of bounds)
            _gather_transposed(kern) or _fixed_page(kern, prob, max_len))
        if not hint:
            raise
        raise Mismatch(kernel_message(exc), hint) from exc
    if unwritten(k_out).all() and unwritten(v_out).all():
        nothing_written(comp.source)
    axes = ("sequence", "token", "kv_head", "dim")
    for name, got, cache in (("k_out", k_out, prob.k_cache), ("v_out", v_out, prob.v_cache)):
        expected = gather_variant(cache, prob.block_tables, prob.seq_lens, max_len)
        never = unwritten(got)
        diff = describe_difference(got, expected, axes, atol=0, rtol=0, unwritten=never)
        if diff is None:
            continue
        valid = (np.arange(max_len)[None, :] < prob.seq_lens[:, None])[:, :, None, None]
        args_v = (cache, prob.block_tables, prob.seq_lens, max_len)
        other = prob.v_cache if name == "k_out" else prob.k_cache
        mistake = _gather_transposed(kern) or diagnose(got, expected, [
            (f"{name} holds the {'values' if name == 'k_out' else 'keys'}: copy "
             f"{'k_cache into k_out' if name == 'k_out' else 'v_cache into v_out'}.",
             lambda: gather_variant(other, prob.block_tables, prob.seq_lens, max_len)),
            ("the head stride is missing num_kv_heads (the guide's bug): element (slot, "
             "kv_head, d) is at (slot * num_kv_heads + kv_head) * head_dim + d.",
             lambda: gather_variant(*args_v, head_stride_bug=True)),
            ("every sequence reads row 0 of block_tables: sequence b's row starts at "
             "block_tables + b * max_pages.", lambda: gather_variant(*args_v, shared_table=True)),
            ("the page offset is off by one: token t sits at offset t % page_size.",
             lambda: gather_variant(*args_v, offset_shift=1)),
            (NEXT_PAGE_HINT, lambda: gather_variant(*args_v, page_shift=1)),
            ("the cache is not contiguous: translate token t through block_tables, do not "
             "read slot t.", lambda: gather_variant(*args_v, identity_pages=True)),
            (PAGE_ONLY_HINT, lambda: gather_variant(*args_v, slot_bug="page_only")),
            (UNSCALED_PAGES_HINT, lambda: gather_variant(*args_v, slot_bug="unscaled")),
        ], atol=0, rtol=0, nan_is_evidence=not slack_reads.pending()) \
            or row_stride_hint(diff, head_dim, GATHER_THREADS) \
            or padding_hint(got, expected, valid, never, copies=True) \
            or _fixed_page(kern, prob, max_len)
        hint = mistake or ("slot = block_tables[b * max_pages + t / page_size] * page_size + "
                           "t % page_size; copy its num_kv_heads * head_dim values to row "
                           "(b * max_len + t).")
        raise Mismatch(f"{name}: " + diff.message(), hint, names_mistake=mistake is not None)
    _gather_writes(kern, (max_len, len(seq_lens)), args, shape, (k_out, v_out))


def _launch_gather(kern: Kernel, prob, max_len: int):
    """((k_out, v_out), the launch's arguments, the outputs' shape) of the prompt's launch."""
    batch, (_, page_size, num_kv_heads, head_dim) = len(prob.seq_lens), prob.k_cache.shape
    shape = (batch, max_len, num_kv_heads, head_dim)
    args = (prob.k_cache, prob.v_cache, prob.block_tables, prob.seq_lens, poisoned(shape),
            poisoned(shape), np.int32(max_len), np.int32(prob.block_tables.shape[1]),
            np.int32(page_size), np.int32(num_kv_heads), np.int32(head_dim))
    outputs = kern.launch((max_len, batch), (GATHER_THREADS,), args, outputs=(4, 5))
    return outputs, args, shape


def _fixed_page(kern: Kernel, prob, max_len: int) -> str | None:
    """fixed_page_hint where the kernel gathers this case's sequences wrong with their pages
    and right with pages of 16 tokens."""
    _, page_size, num_kv_heads, head_dim = prob.k_cache.shape

    def right_with(page_size=page_size):
        other = paged_problem(0, mode="decode", seq_lens=prob.seq_lens, num_heads=num_kv_heads,
                              num_kv_heads=num_kv_heads, head_dim=head_dim, page_size=page_size)
        got = probe(lambda: _launch_gather(kern, other, max_len)[0][0])
        return got is not None and describe_difference(got, gather_variant(
            other.k_cache, other.block_tables, other.seq_lens, max_len), (
            "sequence", "token", "kv_head", "dim"), atol=0, rtol=0,
            unwritten=unwritten(got)) is None
    # (one KV head per "query head": the gather has no GQA, so only the page hint can come)
    return one_size_hint(right_with, {"page_size": page_size, "num_heads": num_kv_heads,
                                      "num_kv_heads": num_kv_heads},
                         longest=int(prob.seq_lens.max()))


def _gather_transposed(kern: Kernel) -> str | None:
    """TRANSPOSED_HINT when the kernel gathers a full table's transposed rows (k_out)."""
    prob = full_table("decode", num_heads=2, num_kv_heads=2, head_dim=8)
    max_len = int(prob.seq_lens.max())

    def run(p):
        (k_out, _), _, _ = _launch_gather(kern, p, max_len)
        return k_out, unwritten(k_out)

    return transposed_hint(run, prob, lambda p: gather_variant(
        p.k_cache, p.block_tables, p.seq_lens, max_len), ("sequence", "token", "kv_head", "dim"))


def _gather_writes(kern: Kernel, grid, args, shape, outputs) -> None:
    """Right values; now the prompt's sharing, which the values cannot show (a thread that
    copies the whole row stores what its neighbours store): the 32 threads of a block share
    the token's row, so a thread stores ceil(row_len / 32) values into each output (or,
    looping head by head, ceil(head_dim / 32) per head: as shared, and allowed). The
    stores are counted on the CPU executor on either device, as the puzzles' are
    (puzzle_runner.py); where it cannot build its instrumented library (the CPU executor
    without the race check), there are no counts and the values alone decide. The counted
    launch must store what the checked one stored (`outputs`, bit for bit: a copy has one
    right answer on any device), or a kernel that knows when it is counted (a runtime
    variable, the clock) would show the counts one kernel and the values another."""
    if kern.device == "cpu" and not kern.racecheck:
        return
    host = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    host[4:6] = poisoned(shape), poisoned(shape)   # (a CPU launch wrote args in place)
    counts = kern.count(grid, (GATHER_THREADS,), host, racecheck=kern.racecheck,
                        timeout=KERNEL_TIMEOUT)
    for name, counted, checked in zip(("k_out", "v_out"), host[4:6], outputs):
        differ = np.flatnonzero(counted.view(np.uint32) != checked.view(np.uint32))
        if differ.size:
            raise Mismatch(f"{name}: the launch whose stores were counted wrote other values "
                           f"than the launch whose values were checked ({differ.size} elements "
                           f"differ, the first at flat index {int(differ[0])})",
                           "the kernel must do the same work every time it runs: do not make "
                           "what it stores depend on anything but its arguments.",
                           expected="the checked launch's values", got="other values")
    row_len = shape[2] * shape[3]
    share = max(-(-row_len // GATHER_THREADS), shape[2] * -(-shape[3] // GATHER_THREADS))
    most, who = per_thread_max(counts, "global_writes")
    if most <= 2 * share:
        return
    row = int(np.argmax(counts.global_writes)) // counts.global_writes.shape[1]
    t, b = row % grid[0], row // grid[0]
    stores = counts.global_writes[row]          # per thread of the block that made `most`
    step = ("thread i copies elements i, i + blockDim.x, i + 2 * blockDim.x, ... of the row "
            "(start the loop at threadIdx.x and step by blockDim.x)")
    if (stores >= 2 * row_len).all():
        hint = (f"every one of the {GATHER_THREADS} threads copies the whole row (a loop from 0 "
                f"in steps of 1), so every element is stored {GATHER_THREADS} times; the values "
                f"are right only because the copies agree. The threads share the row: {step}.")
    elif stores.sum() <= 2 * row_len:
        busy = np.flatnonzero(stores)
        who_stores = (f"thread {busy[0]} stores" if busy.size == 1
                      else f"threads {ranges(busy)} store")
        hint = (f"the block stores each element once, but only {who_stores} anything of its "
                f"{GATHER_THREADS}: the threads share the row: {step}.")
    else:
        hint = (f"some elements of the row are stored more than once (the block made "
                f"{int(stores.sum())} stores for its 2 x {row_len} values): each element of the "
                f"row has one thread, which stores it once: {step}.")
    raise Mismatch(f"right values, but {who} (token {t} of sequence {b}) made {most} stores, "
                   f"where its share of the {row_len}-value row is {share} in k_out and {share} "
                   f"in v_out (counted on the CPU executor); its block made "
                   f"{int(stores.sum())} stores for the 2 x {row_len} values of k_out and v_out",
                   hint, expected=f"at most {2 * share} stores per thread", got=str(most))


def gather_kernel(source: str, device: str = "auto") -> CheckResult:
    """Check the batched `gather_kv` kernel: grid (max_len, batch), block (32,)."""
    comp = _Compiled(source, "gather_kv", device)
    cases = [
        Case("one sequence", {"seq_lens": [11], "page_size": 4, "num_kv_heads": 2,
                              "head_dim": 8, "max_len": 11},
             lambda: _gather_case(comp, 40, [11], 4, 2, 8, 11)),
        Case("three sequences, rows longer than the block",
             {"seq_lens": [23, 14, 5], "page_size": 4, "num_kv_heads": 3, "head_dim": 16,
              "max_len": 24}, lambda: _gather_case(comp, 41, [23, 14, 5], 4, 3, 16, 24)),
        Case("full pages", {"seq_lens": [17, 16], "page_size": 8, "num_kv_heads": 2,
                            "head_dim": 32, "max_len": 20},
             lambda: _gather_case(comp, 42, [17, 16], 8, 2, 32, 20)),
    ]
    return run_cases("gather_kernel", "gather_kv kernel: a batch's K and V, made contiguous",
                     cases, lint=comp.get)
