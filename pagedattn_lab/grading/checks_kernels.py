"""Checks for the prefill CUDA C tasks: the naive (04) and tiled (05) kernels; the gather
kernel (02) is checked in checks_gather_kernel.py.

Each check lints the source (NVRTC has no INFINITY and no <math.h>), compiles it once, and runs
seeded paged problems (cases.py) on the GPU or the CPU executor. Outputs start as a NaN poison: a
kernel that writes nothing is "not attempted", an element nobody wrote keeps the poison's bits. A
wrong result is compared with the known-wrong variants of the reference (variants.py,
tile_page_variants.py, prefill_rows.py) to name the mistake, then read for the patterns in
kernel_hints.py; a fault, a deadlock or a timeout names the thread and block (faults.py). The
tiled kernel's last case counts its cache loads on the CPU executor: right values from more pages
than its queries read (or whole last pages) are the causal skipping the lesson is about, missed.
A kernel that fails is launched once more on a full square table (table_probe.py), where a
block table read transposed shows as itself rather than as garbage from its -1 padding.
"""
from __future__ import annotations

import textwrap

import numpy as np

from . import slack_reads
from .cases import nan_tails, paged_problem
from .compare import describe_difference, diagnose
from .faults import kernel_message
from .kernel_hints import (array_size_hint, barriers, max0_tile_hint, nan_hint,
                           nothing_written, one_size_hint, padding_hint, rounding_hint,
                           sequence_hint, shift_hint, tile_load_hint, tiled_hint,
                           unwritten_pattern_hint)
from .kernel_runner import KERNEL_TIMEOUT, Kernel, kernel_device, poisoned, unwritten, where
from .page_count_hints import page_count_fault_hint
from .prefill_rows import out_rows_hint, row_mistakes
from .puzzle_runner import count_then_check
from .printer import WIDTH
from .report import Case, CheckResult, Mismatch, probe, run_cases
from .stub_params import as_named
from .table_probe import full_table, transposed_hint
from .tile_page_variants import tile_page_mistakes
from .variants import attention_mistakes

NAIVE_THREADS = 16
TILE_Q = 16


def backend(device: str = "auto") -> None:
    """Say where the CUDA C checks of this workbook run."""
    from ..backend import gpu_status  # noqa: PLC0415
    text = f"CUDA C checks run on {where(device)}."
    if kernel_device(device) == "cpu":
        text += f" ({gpu_status()})"
    else:
        text += (" A GPU forgives some mistakes by luck (races, a return before a barrier, "
                 "small out-of-bounds reads): pass device='cpu' to a check to run it on the "
                 "strict CPU executor.")
    print(textwrap.fill(text, WIDTH, break_long_words=False, break_on_hyphens=False))


class _Compiled:
    """Compile on first use (inside the first case, so errors are reported per check)."""

    def __init__(self, source, name, device):
        self.source, self.name, self.device, self._kernel = source, name, device, None

    def get(self) -> Kernel:
        if self._kernel is None:
            self._kernel = Kernel(self.source, self.name, self.device)
        return self._kernel


# -- tasks: the naive and the tiled prefill kernels (03, 04) -------------------------------

def _prefill_case(comp: _Compiled, seed: int, *, threads: int, tiled: bool,
                  nan_fill: bool = False, count_loads: bool = False, **sizes) -> None:
    prob = paged_problem(seed, mode="prefill", **sizes)
    if nan_fill:
        nan_tails(prob)
    got, never = _launch_prefill(comp, prob, threads, tiled)
    if never.all():
        nothing_written(comp.source)
    expected = prob.expected
    diff = describe_difference(got, expected, ("sequence", "token", "head", "dim"),
                               unwritten=never)
    if diff is None:
        if count_loads:
            _tile_loads(comp, prob, got)
        return
    valid = prob.valid_rows()
    kern = comp.get()
    # NaN from a tile read before the barrier looks like the NaN of a softmax bug: with a
    # barrier missing in the source, that evidence speaks first. What the output shows
    # (unwritten, padding, one sequence) speaks before the shift's hint, which needs the
    # case rerun with its sizes raised to powers of two. NaN from a read before an array's
    # start is the fill's (slack_reads.py): a variant NaN wherever it is wrong proves nothing.
    # So a tiled kernel's NaN just where a max started at 0 gives it is tested on its own (all
    # scores far below 0); out rows without the head leave the right rows unwritten.
    mistake = (nan_hint(got, valid, never, shared_tile=True, source=comp.source)
               if tiled and barriers(comp.source) < 2 else None) \
        or out_rows_hint(never, valid) \
        or (_no_max_hint(comp, threads, tiled, sizes) if _overflowed(got, never) and (
            "score_shift" in sizes or "negative_scores" in sizes) else None) \
        or (_stale_max_hint(comp, threads, tiled) if _overflowed(got, never) and
            "score_rise" in sizes else None) \
        or (max0_tile_hint(prob, got) if tiled and "negative_scores" in sizes
            and _overflowed(got, never) else None) \
        or (_tail_hint(comp, seed, sizes, threads, tiled) if nan_fill else None) \
        or diagnose(got, expected,
                    attention_mistakes(prob, mode="prefill", block_queries=threads,
                                       shared_tile=tiled)
                    + (tile_page_mistakes(prob, threads) if tiled else [])
                    + row_mistakes(prob, tiled=tiled),
                    nan_is_evidence=not tiled and not slack_reads.pending()) \
        or _prefill_transposed(comp, threads, tiled) \
        or unwritten_pattern_hint(diff, threads=threads) \
        or padding_hint(got, expected, valid, never) \
        or sequence_hint(got, expected, valid, never) \
        or array_size_hint(comp.source, prob.shape["head_dim"]) \
        or _pow2_shift_hint(comp, prob, threads, tiled) \
        or _one_size_hint(comp, prob, threads, tiled) \
        or rounding_hint(got, expected, valid, prob)
    hint = mistake \
        or nan_hint(got, valid, never, shared_tile=tiled, source=comp.source) \
        or (tiled_hint(comp.source, racecheck=kern.racecheck) if tiled else None) \
        or ("follow the prompt's recipe: q row ((b * max_len + t) * num_heads + h) * head_dim, "
            "keys 0..t through block_tables row b, kv_head = h / (num_heads / num_kv_heads), "
            "online softmax, out / sum.")
    raise Mismatch(diff.message(), hint, names_mistake=mistake is not None)


# The problem that shows a softmax without its max: every score moved up by _SHIFT (past
# expf's float32 range), and the same problem unmoved, which has the same answer.
_SHIFT = 100.0
_SHIFTED = dict(seq_lens=[20, 7], num_heads=2, num_kv_heads=2, head_dim=8, page_size=4)


# Scores climbing along the keys by more than expf's range: the max must be kept up at every
# key (one taken from the first key, as one never updated, passes the moved problem above).
_RISE = 200.0
_CLIMB = _RISE * (max(_SHIFTED["seq_lens"]) - 1) / max(_SHIFTED["seq_lens"])


def _overflowed(got, never) -> bool:
    """The output holds an inf or a NaN the kernel computed (not the poison never written)."""
    return bool((~np.isfinite(got) & ~never).any())


def _no_max_hint(comp: _Compiled, threads: int, tiled: bool, sizes: dict) -> str | None:
    """The kernel is right on the shifted problem unmoved and non-finite on it moved: its
    exponents are the scores themselves, not the scores minus their max."""
    def run(shift):
        prob = paged_problem(60, mode="prefill", score_shift=shift, **_SHIFTED)
        got = probe(_launch_prefill, comp, prob, threads, tiled, True)
        return prob, got

    prob, unmoved = run(0.0)
    if unmoved is None or describe_difference(unmoved[0], prob.expected, (
            "sequence", "token", "head", "dim"), unwritten=unmoved[1]) is not None:
        return None
    _, moved = run(_SHIFT)
    if moved is None or not _overflowed(*moved):
        return None
    here = ("this case's scores lie near +100, where expf(score) overflows float32 (past "
            "about 88) and inf / inf is NaN" if "score_shift" in sizes else
            "this case's scores lie below -88, where expf(score) underflows to 0 and 0 / 0 is "
            "NaN; with every score moved up by 100 instead it overflows")
    return (f"no max is subtracted: your kernel is right when the scores are small and not "
            f"when they are all moved by the same amount (which the softmax ignores): {here}. "
            "Weigh each key with expf(score - new_max), new_max the running max (started at "
            "-inf), and rescale the sum and acc by expf(old_max - new_max) when it grows.")


def _stale_max_hint(comp: _Compiled, threads: int, tiled: bool) -> str | None:
    """The kernel is right on the climbing problem with its scores not climbing (non-finite
    on it climbing, as the caller saw): the max it subtracts lags behind the scores."""
    prob = paged_problem(61, mode="prefill", score_rise=0.0, **_SHIFTED)
    flat = probe(_launch_prefill, comp, prob, threads, tiled, True)
    if flat is None or describe_difference(flat[0], prob.expected, (
            "sequence", "token", "head", "dim"), unwritten=flat[1]) is not None:
        return None
    return (f"right on this problem with the climb taken out, not when the scores climb by "
            f"up to {_CLIMB:g} along the keys: your exponents overflowed (inf / inf is NaN), "
            "so the max they subtract was not the largest score so far (the first key's score "
            "kept, or no max). At "
            "every key take new_max = fmaxf(running_max, score), weigh with "
            "expf(score - new_max) and rescale the sum and acc by expf(old_max - new_max).")


def _prefill_launch(prob, threads: int, tiled: bool):
    """(grid, args, shared_mem) of the prompt's launch on `prob`."""
    s = prob.shape
    grid = (-(-s["max_len"] // threads), s["num_heads"], s["batch"])
    shared = 2 * s["page_size"] * s["head_dim"] * 4 if tiled else 0
    args = (prob.q, prob.k_cache, prob.v_cache, prob.block_tables, prob.seq_lens,
            poisoned(prob.q.shape), np.int32(s["max_len"]), np.int32(s["num_heads"]),
            np.int32(s["num_kv_heads"]), np.int32(s["head_dim"]), np.int32(s["page_size"]),
            np.int32(s["max_pages"]), np.float32(prob.scale))
    return grid, args, shared


def _tile_loads(comp: _Compiled, prob, got) -> None:
    """Right values (`got`); now the prompt's staging, which the values cannot show: block
    (x, h, b) loads keys 0..keys_needed - 1 of its kv head once each, keys_needed =
    min(seq_len, x * TILE_Q + TILE_Q) (0 past seq_len), and nothing else of the cache. The
    counted run must compute `got` too, or its counts say nothing of the kernel checked."""
    grid, args, shared = _prefill_launch(prob, TILE_Q, tiled=True)
    kern = comp.get()
    _, counts = count_then_check(
        lambda host: kern.count(grid, (TILE_Q,), host, shared, timeout=KERNEL_TIMEOUT), args,
        [5], lambda: [got], "the GPU's" if kern.device == "gpu" else "the checked launch's")
    head_dim, page_size, heads = (prob.shape[k] for k in ("head_dim", "page_size", "num_heads"))
    firsts = np.arange(grid[0])[None, :] * TILE_Q
    lens = prob.seq_lens.astype(np.int64)[:, None]
    needed = np.where(firsts < lens, np.minimum(lens, firsts + TILE_Q), 0)   # [batch, tiles]

    def values(keys):   # cache values all blocks read, for `keys` per (sequence, tile)
        return int(keys.sum()) * heads * head_dim

    for name in ("k_cache", "v_cache"):
        reads = counts.by_buffer[name].reads
        if reads <= values(needed):
            continue
        hint = tile_load_hint(reads, values, needed, lens, TILE_Q, page_size)
        own = as_named(counts.by_buffer[name].name, name)
        raise Mismatch(f"right values, but {own} was read {reads} times where the blocks "
                       f"need {values(needed)} values (keys_needed x head_dim {head_dim}, summed "
                       "over the blocks)", hint, expected=str(values(needed)), got=str(reads))


def _prefill_transposed(comp: _Compiled, threads: int, tiled: bool) -> str | None:
    """TRANSPOSED_HINT when the kernel attends over a full table's transposed rows."""
    return transposed_hint(lambda p: _launch_prefill(comp, p, threads, tiled, probing=True),
                           full_table("prefill", num_heads=2, num_kv_heads=2, head_dim=8),
                           lambda p: p.expected, ("sequence", "token", "head", "dim"))


def _launch_prefill(comp: _Compiled, prob, threads: int, tiled: bool, probing: bool = False):
    """(the output, where it was never written) of one launch on `prob` (`probing`: a
    launch on a problem of table_probe's, whose fault is no evidence of its own)."""
    s = prob.shape
    grid, args, shared = _prefill_launch(prob, threads, tiled)
    try:
        (got,) = comp.get().launch(grid, (threads,), args, shared_mem=shared, outputs=(5,))
    except Exception as exc:  # a thread's array too short for this head_dim: the executor
        # stops at the index past it, or (through a pointer) at the stack's end
        short = (getattr(exc, "region", None) in ("stack", "local or shared array")
                 and array_size_hint(comp.source, s["head_dim"]))
        if short:
            raise _array_too_short(exc, s["head_dim"], short) from exc
        # a fault where a size is not a power of two, from a kernel that shifts or masks; or
        # a table read transposed, which soon reaches the table's -1 padding
        faulted = getattr(exc, "buffer", None) and not probing
        hint = faulted and ((tiled and page_count_fault_hint(exc, prob, threads))
                            or _pow2_shift_hint(comp, prob, threads, tiled)
                            or _prefill_transposed(comp, threads, tiled)
                            or _one_size_hint(comp, prob, threads, tiled))
        if not hint:
            raise
        raise Mismatch(kernel_message(exc), hint) from exc
    return got, unwritten(got)


def _array_too_short(exc: Exception, head_dim: int, hint: str) -> Mismatch:
    """The fault of a thread's array shorter than head_dim, in a Mismatch's form: the
    executor's account (index, array, line, thread, block) as the message; expected and got
    the entries needed and the index that ran past them, where the fault names one."""
    index, declared = getattr(exc, "index", None), getattr(exc, "array_type", None)
    if index is None:   # (a fault through a pointer, past the stack, may name none)
        return Mismatch(kernel_message(exc), hint)
    array = getattr(exc, "array", None) or "an array"
    return Mismatch(kernel_message(exc), hint,
                    expected=f"indices 0..{head_dim - 1} (head_dim {head_dim}) of a thread's "
                             "arrays over the head dimension",
                    got=f"index {index} of `{array}`" + (f" ({declared})" if declared else ""))


def _divisors(prob) -> dict:
    """The sizes a prefill kernel divides by (or takes % of), for shift_hint."""
    s = prob.shape
    return {"page_size": s["page_size"], "head_dim": s["head_dim"],
            "num_heads / num_kv_heads": s["num_heads"] // s["num_kv_heads"]}


def _pow2_shift_hint(comp: _Compiled, prob, threads: int, tiled: bool) -> str | None:
    """shift_hint's hint, when the kernel shifts or masks and this case's problem comes out
    right (no fault, right values) once every size it divides by is raised to a power of
    two: the sizes, not a << or >> in the source (a halving loop's, a harmless one's), are
    then the evidence."""
    hint = shift_hint(comp.source, _divisors(prob))
    if hint is None:
        return None
    s = prob.shape

    def up(n):
        return 1 << (n - 1).bit_length()

    group = up(s["num_heads"] // s["num_kv_heads"])
    return hint if _right_with(comp, prob, threads, tiled, num_heads=s["num_kv_heads"] * group,
                               head_dim=up(s["head_dim"]), page_size=up(s["page_size"])) \
        else None


def _right_with(comp: _Compiled, prob, threads: int, tiled: bool, **sizes) -> bool:
    """The kernel is right on `prob`'s sequences with `sizes` changed (any seed)."""
    kept = {k: prob.shape[k] for k in ("num_heads", "num_kv_heads", "head_dim", "page_size",
                                       "max_len")}
    other = paged_problem(0, mode="prefill", seq_lens=prob.seq_lens, scale=prob.scale,
                          **{**kept, **sizes})
    got = probe(_launch_prefill, comp, other, threads, tiled, True)
    return got is not None and describe_difference(
        got[0], other.expected, ("sequence", "token", "head", "dim"), unwritten=got[1]) is None


def _one_size_hint(comp: _Compiled, prob, threads: int, tiled: bool) -> str | None:
    """Wrong on this case's sequences and sizes, right with pages of 16 tokens (where this
    case's are not), or with a KV head per query head (where this case shares them)."""
    return one_size_hint(lambda **changed: _right_with(comp, prob, threads, tiled, **changed),
                         prob.shape, longest=int(prob.seq_lens.max()))


def _tail_hint(comp: _Compiled, seed: int, sizes: dict, threads: int, tiled: bool):
    """The case whose unused cache slots hold NaN failed: if the same problem with finite
    numbers there passes, the kernel reads slots past seq_len (or past its query)."""
    prob = paged_problem(seed, mode="prefill", **sizes)
    launched = probe(_launch_prefill, comp, prob, threads, tiled)   # (a crash proves nothing)
    if launched is None or describe_difference(launched[0], prob.expected,
                                               ("sequence", "token", "head", "dim"),
                                               unwritten=launched[1]) is not None:
        return None
    return ("right when the cache slots past seq_len hold numbers, wrong when they hold NaN "
            "(as garbage in uninitialized memory may): your kernel reads keys or values it "
            "must not use (the tail of the last page, or keys past the query) and weighs them "
            "by 0, and 0 * NaN is NaN. Do not compute with those keys at all: stop the loop "
            "at key t (and at n_keys in a tile) instead of masking their weight.")


def _prefill_cases(comp: _Compiled, threads: int, tiled: bool) -> list[Case]:
    specs = [
        ("one sequence", 50, dict(seq_lens=[11], num_heads=2, num_kv_heads=2, head_dim=8,
                                  page_size=4)),
        ("three sequences, GQA, padded rows", 51,
         dict(seq_lens=[37, 21, 9], num_heads=4, num_kv_heads=2, head_dim=16, page_size=4,
              max_len=40)),
        ("MQA, page_size 8", 52, dict(seq_lens=[30, 19], num_heads=4, num_kv_heads=1,
                                      head_dim=8, page_size=8, max_len=32)),
        ("head_dim 32, page_size 16", 53,
         dict(seq_lens=[40, 33, 17], num_heads=2, num_kv_heads=2, head_dim=32, page_size=16)),
        ("scores near +100 (expf(score) overflows float32)", 60,
         dict(_SHIFTED, score_shift=_SHIFT)),
        ("very negative scores", 54, dict(seq_lens=[20, 7], num_heads=2, num_kv_heads=2,
                                          head_dim=8, page_size=4, negative_scores=True)),
        ("page_size 32: more keys in a page than threads in a block", 55,
         dict(seq_lens=[45, 26], num_heads=2, num_kv_heads=1, head_dim=8, page_size=32,
              max_len=47)),
        ("head_dim 128", 56, dict(seq_lens=[19, 6], num_heads=2, num_kv_heads=2, head_dim=128,
                                  page_size=8)),
        ("unused cache slots hold NaN (the tail of the last page too)", 57,
         dict(seq_lens=[13, 26, 6], num_heads=4, num_kv_heads=2, head_dim=8, page_size=8,
              max_len=27, nan_fill=True)),
        # every size a power of two above, and the scale 1/sqrt(head_dim): shifts for // and
        # %, or a scale worked out in the kernel, would pass them
        ("page_size 6, head_dim 24, 3 query heads per KV head, scale 0.3", 59,
         dict(seq_lens=[20, 13], num_heads=6, num_kv_heads=2, head_dim=24, page_size=6,
              max_len=21, scale=0.3)),
        (f"scores climbing by {_CLIMB:g} along the keys", 61,
         dict(_SHIFTED, score_rise=_RISE)),
        # no padding entry after the last sequence's pages: a page count one too high reads
        # past block_tables ((n + p) / p for the ceiling, where n is a multiple of p)
        ("the last sequence fills its block-table row", 62,
         dict(seq_lens=[9, 24], num_heads=2, num_kv_heads=1, head_dim=8, page_size=8,
              extra_width=0)),
    ]
    if tiled:   # last: a wrong value is the first thing to fix, a load too many the next
        # pages of 12 tokens: a tile's last query (15, 31) ends mid-page, where a last page
        # bounded by seq_len, not keys_needed, loads keys no query of the block reads
        specs.append(("each block loads only the keys its queries read (counted)", 58,
                      dict(seq_lens=[37, 21, 9], num_heads=2, num_kv_heads=1, head_dim=8,
                           page_size=12, max_len=40, count_loads=True)))
    cases = []
    for name, seed, sizes in specs:
        params = {k: v for k, v in sizes.items()
                  if k not in ("nan_fill", "count_loads", "extra_width")}
        cases.append(Case(name, params, lambda seed=seed, sizes=sizes: _prefill_case(
            comp, seed, threads=threads, tiled=tiled, **sizes)))
    return cases


def naive_kernel(source: str, device: str = "auto") -> CheckResult:
    """Check `prefill_naive`: grid (ceil(max_len / 16), num_heads, batch), block (16,)."""
    comp = _Compiled(source, "prefill_naive", device)
    return run_cases("naive_kernel", "prefill_naive kernel: one thread per query token",
                     _prefill_cases(comp, NAIVE_THREADS, tiled=False),
                     lint=comp.get)


def tiled_kernel(source: str, device: str = "auto") -> CheckResult:
    """Check `prefill_tiled`: grid (ceil(max_len / 16), num_heads, batch), block (16,),
    shared_mem = 2 * page_size * head_dim * 4 bytes."""
    comp = _Compiled(source, "prefill_tiled", device)
    return run_cases("tiled_kernel", "prefill_tiled kernel: K/V pages staged in shared memory",
                     _prefill_cases(comp, TILE_Q, tiled=True),
                     lint=comp.get)
