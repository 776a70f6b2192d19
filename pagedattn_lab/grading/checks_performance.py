"""Checks for lesson 08 (performance): the bytes a decode step reads, the time that sets at
the copy rate, and the page size to choose given its waste.

Each case compares a number with the spec and, when it is wrong, with the numbers the
usual mistakes give (the K or the V half forgotten, num_heads instead of num_kv_heads, a
dtype size assumed, GiB for GB, a factor 2 for the copy's read and write...), to say which
mistake it was. The helpers are lesson 00's (checks_sizing.py).
"""
from __future__ import annotations

import numpy as np

from ..words import counted
from .checks_sizing import _int_case, _lens, _scalar_case, paged_waste_fraction
from .compare import on_copies
from .report import Case, CheckResult, Mismatch, probe, run_cases, several_fit
from .seeds import case_ints


OVERFLOW_HINT = ("the product overflowed int32 (seq_lens is an int32 array, and this byte "
                 "count passes 2**31): convert to Python int or np.int64 before multiplying.")


BOTH_HINT = "count both K and V: the factor 2."
ALL_HEADS_HINT = ("the cache stores num_kv_heads heads, not num_heads: with GQA several query "
                  "heads share one KV head.")
GROUP_HINT = ("num_heads // num_kv_heads is the group (query heads per KV head), not the "
              "number of KV heads: the cache stores num_kv_heads heads.")


ITEMSIZE_HINT = ("dtype comes as a type, such as np.float16: read on the type, .itemsize is "
                 "an attribute descriptor, not a number. Ask numpy for the size: "
                 "np.dtype(dtype).itemsize.")


def _itemsize_named(fn):
    """`fn`, with the TypeError that dtype.itemsize on a type (np.float16) raises when used
    as a number turned into a Mismatch that names it."""
    def call(*args):
        try:
            return fn(*args)
        except TypeError as exc:
            if "getset_descriptor" not in str(exc):
                raise
            raise Mismatch(f"raised TypeError: {exc}", ITEMSIZE_HINT) from None
    return call


def _kv_bytes_case(fn, lens, num_heads, num_kv_heads, head_dim, dtype) -> None:
    itemsize = np.dtype(dtype).itemsize
    name = np.dtype(dtype).name
    size_text = f"{name} is {counted(itemsize, 'byte')}"
    lens = np.asarray(lens, dtype=np.int32)
    tokens = int(lens.sum(dtype=np.int64))
    per_token = 2 * num_kv_heads * head_dim * itemsize
    expected = tokens * per_token
    with np.errstate(over="ignore"):
        wrapped = int((lens * np.int32(per_token)).sum(dtype=np.int32))
        wrapped_total = int((lens * np.int32(per_token)).sum())
    args = (lens, num_heads, num_kv_heads, head_dim)
    fn = _itemsize_named(on_copies(fn, "kv_bytes", "seq_lens"))   # (the probe's: copies too)

    def size_ignored(size: int):
        """What `size` bytes a number, whatever the dtype, gives. Half the fp32 bytes is also
        what forgetting K or V gives: then the answer for fp16 tells the two apart."""
        if size == itemsize:
            return None
        candidate = tokens * 2 * num_kv_heads * head_dim * size
        if candidate == expected // 2:
            same = probe(lambda: int(fn(*args, np.float16)) == candidate)
            return candidate if same else None
        return candidate

    def dtype_ignored():
        """The count of numbers, not bytes, when another dtype gives the same answer (in
        fp16 it is also half the bytes, as forgetting K or V gives: the probe tells)."""
        numbers = tokens * 2 * num_kv_heads * head_dim
        if numbers == expected:
            return None
        other = np.float32 if itemsize == 2 else np.float16
        return numbers if probe(lambda: int(fn(*args, other)) == numbers) else None

    def dim_written(dim: int):
        """What head_dim `dim` written into the code gives, when the answer for another
        head_dim is that too (half of head_dim 128's is also what forgetting K or V gives)."""
        if dim == head_dim:
            return None
        candidate = tokens * 2 * num_kv_heads * dim * itemsize
        other = (lens, num_heads, num_kv_heads, head_dim + 16, dtype)
        return candidate if probe(lambda: int(fn(*other)) == candidate) else None

    all_heads = tokens * 2 * num_heads * head_dim * itemsize
    group = tokens * 2 * (num_heads // num_kv_heads) * head_dim * itemsize

    def or_group(text: str, candidate: int):
        """Both hints where the group gives the same number as the mistake of `text`."""
        return several_fit([text, GROUP_HINT], "number"), \
            group if group == candidate else None

    _int_case(fn, (*args, dtype), expected, [
        *[(f"use the head_dim argument ({head_dim} here), not {dim} written into the code.",
           lambda dim=dim: dim_written(dim)) for dim in (64, 128)],
        (f"multiply by the dtype's size: your answer is the same for every dtype, a count of "
         f"numbers, not of bytes ({size_text}: np.dtype(dtype).itemsize).", dtype_ignored),
        (f"use the dtype's size (np.dtype(dtype).itemsize): {size_text}, not 2 whatever the "
         "dtype.", lambda: size_ignored(2)),
        or_group(BOTH_HINT, expected // 2),
        (BOTH_HINT, expected // 2),
        or_group(ALL_HEADS_HINT, all_heads),
        (ALL_HEADS_HINT, all_heads),
        (GROUP_HINT, group),
        (f"use the dtype's size (np.dtype(dtype).itemsize): {size_text}, not 4.",
         lambda: size_ignored(4)),
        ("that is bits; count bytes.", expected * 8),
        ("sum the lengths: each sequence reads its own tokens, not as many as the longest.",
         int(lens.max()) * len(lens) * per_token if len(lens) else None),
        ("count the tokens, sum(seq_lens), not len(seq_lens) (the number of sequences): "
         "every cached token's key and value are read.", len(lens) * per_token),
        ("read seq_lens tokens a sequence, not one more: seq_lens already counts every "
         "cached token, the newest included.",
         (tokens + len(lens)) * per_token if len(lens) else None),
        (OVERFLOW_HINT, wrapped),
        (OVERFLOW_HINT, wrapped_total),
    ], f"kv_bytes(num_heads={num_heads}, num_kv_heads={num_kv_heads}, head_dim={head_dim}, "
       f"{name})")


def kv_bytes(fn) -> CheckResult:
    """Check `fn(seq_lens, num_heads, num_kv_heads, head_dim, dtype)`: K+V bytes of a step."""
    cases = [
        Case("multi-head fp32", {"heads": 8, "kv_heads": 8, "head_dim": 64, "dtype": "float32"},
             lambda: _kv_bytes_case(fn, [100, 37, 512], 8, 8, 64, np.float32)),
        Case("GQA fp16", {"heads": 32, "kv_heads": 8, "head_dim": 128, "dtype": "float16"},
             lambda: _kv_bytes_case(fn, _lens(1, 16, 512, 4096), 32, 8, 128, np.float16)),
        Case("MQA fp16", {"heads": 16, "kv_heads": 1, "head_dim": 64, "dtype": "float16"},
             lambda: _kv_bytes_case(fn, [4096], 16, 1, 64, np.float16)),
        Case("an int8 cache (1 byte a number)",
             {"seed": 6, "heads": 12, "kv_heads": 4, "head_dim": 80, "dtype": "int8"},
             lambda: _kv_bytes_case(fn, _lens(6, 5, 1, 3000), 12, 4, 80, np.int8)),
        Case("an empty batch", {"seq_lens": [], "heads": 8, "kv_heads": 2, "head_dim": 64},
             lambda: _kv_bytes_case(fn, [], 8, 2, 64, np.float16)),
        Case("long contexts, more than 2**31 bytes",
             {"seq_lens": [1_000_000, 600_000], "heads": 64, "kv_heads": 8, "head_dim": 128,
              "dtype": "float16"},
             lambda: _kv_bytes_case(fn, [1_000_000, 600_000], 64, 8, 128, np.float16)),
    ]
    return run_cases("kv_bytes", "kv_bytes: what one decode step must read", cases)


TRUNCATED_HINT = ("return the time unrounded: int() or // drops the fraction (of a millisecond, "
                  "or of a second before the x 1000), as round() does.")


def _yardstick_case(fn, nbytes: float, bandwidth_gbs: float) -> None:
    expected = nbytes / (bandwidth_gbs * 1e9) * 1e3
    _scalar_case(fn, (nbytes, bandwidth_gbs), expected, [
        ("return milliseconds: seconds x 1000.", expected / 1e3),
        # (bandwidth_gbs * 1e6, the rate as MB/s, gives microseconds' number for every input)
        (several_fit(["that is microseconds: seconds x 1000 is milliseconds.",
                      "a GB/s is 1e9 bytes per second (giga = 10**9): bandwidth_gbs * 1e9, "
                      "not * 1e6 (that is MB/s)."], "time"), expected * 1e3),
        ("a millisecond is a thousandth of a second: seconds x 1000, not seconds / 1000.",
         expected / 1e6),
        ("GB/s here means 1e9 bytes per second, not 2**30.",
         nbytes / (bandwidth_gbs * 2**30) * 1e3),
        ("a GB/s is 1e9 bytes per second (giga = 10**9): bandwidth_gbs * 1e9, not * 1e-9 "
         "(nor bytes / GB/s * 1e9).", nbytes / (bandwidth_gbs * 1e-9) * 1e3),
        ("time = bytes / bandwidth, not bandwidth / bytes.",
         bandwidth_gbs * 1e9 / nbytes * 1e3 if nbytes else None),
        ("a GB/s is 1e9 bytes per second: bytes / GB/s is not yet seconds.",
         nbytes / bandwidth_gbs),
        ("the size is in bytes and the rate in bytes per second: no factor 8.",
         expected * 8),
        ("no factor 2: the copy rate already counts the bytes read plus the bytes written, "
         "and nbytes is what the kernel reads, so the yardstick is nbytes / rate.",
         expected * 2),
        ("no factor 1/2: nbytes is what the kernel reads, and the copy rate counts bytes "
         "read plus bytes written, so the yardstick is nbytes / rate.", expected / 2),
        # (where a time below 1 ms comes out 0, int(), // and round() all fit: the first
        # names them all)
        (TRUNCATED_HINT, float(int(expected))),
        (TRUNCATED_HINT, nbytes // (bandwidth_gbs * 1e9) * 1e3),   # whole seconds, then ms
        *[("return the time unrounded: no int(), round() or // (a fraction of a millisecond "
           "is the answer here).", round(expected, digits)) for digits in range(7)],
    ], f"decode_floor_ms({nbytes:.4g} bytes, {bandwidth_gbs} GB/s)", rel=1e-4)


def decode_floor_ms(fn) -> CheckResult:
    """Check `fn(nbytes, bandwidth_gbs) == nbytes / (bandwidth_gbs * 1e9) * 1e3` (milliseconds)."""
    drawn = case_ints(3, nbytes=(1, 10**11), gbs=(10, 5000))
    cases = [
        Case("the D64 workload at the H100 run's copy rate", {"bytes": 2.454e9, "GB/s": 2859},
             lambda: _yardstick_case(fn, 2.454e9, 2859)),
        Case("a laptop", {"bytes": 3.0e8, "GB/s": 60}, lambda: _yardstick_case(fn, 3.0e8, 60)),
        Case("nothing to read", {"bytes": 0, "GB/s": 900}, lambda: _yardstick_case(fn, 0, 900)),
        # (2e-5 ms: a time rounded to any fixed number of decimals loses it)
        Case("one short sequence", {"bytes": 65536, "GB/s": 3350},
             lambda: _yardstick_case(fn, 65536, 3350)),
        Case("drawn sizes", {"bytes": float(drawn["nbytes"]), "GB/s": drawn["gbs"]},
             lambda: _yardstick_case(fn, float(drawn["nbytes"]), drawn["gbs"])),
    ]
    return run_cases("decode_floor_ms", "decode_floor_ms: the copy-rate yardstick", cases)


NEAR_LIMIT = 0.005   # a waste this close above max_waste: compared after rounding?


def _choose_case(fn, lens, candidates, max_waste: float) -> None:
    waste = {p: paged_waste_fraction(lens, p) for p in candidates}
    ok = [p for p in candidates if waste[p] <= max_waste]
    expected = max(ok) if ok else min(candidates)
    got = on_copies(fn, "choose_page_size", "seq_lens", "candidates")(
        np.array(lens, dtype=np.int64), list(candidates), max_waste)
    wastes = ", ".join(f"{p}: {waste[p]:.4g}" for p in candidates)
    if got is not None and (isinstance(got, bool) or
                            not isinstance(got, (int, float, np.integer, np.floating))):
        raise Mismatch(f"expected one page size, got {type(got).__name__} {got!r:.80}",
                       "return one of the candidates (an int), not a list or an array.",
                       expected=str(expected), got=repr(got)[:80])
    is_float = isinstance(got, (float, np.floating))
    if got is not None:   # a plain number: an int subclass may lie with its ==
        got = float(got) if is_float else int(got)
    if got == expected and not is_float:
        return
    if got == expected:
        hint = "that is the right page size, but return it as an int (one of the candidates)."
    elif got is None:
        hint = ("return a page size; when no candidate is under the limit, the smallest, "
                "min(candidates).") if not ok else "return the page size you chose."
    elif _rounds_the_batch(fn, lens, candidates, max_waste, got):
        hint = ("each sequence's last page is rounded up on its own: allocated = "
                "sum(ceil(L / page_size)) * page_size, not ceil(sum(seq_lens) / page_size) "
                "* page_size (the batch's tokens packed into pages as if one sequence).")
    elif got == max(candidates) and waste[got] > max_waste and \
            _largest_at(fn, lens, candidates, _least_waste_limit(waste)):
        hint = (f"page size {got} wastes more than max_waste ({waste[got]:.4g}), yet your "
                "code picks the largest candidate even where max_waste is the least waste of "
                "any candidate, as if no page size wasted anything: compare each candidate's "
                "waste with max_waste, and count allocated = sum(ceil(L / page_size)) * "
                "page_size (rounded down, or not rounded at all, it is at most sum(seq_lens), "
                "and the waste comes out 0 or below).")
    elif not ok and got == min(candidates, key=waste.get) and waste[got] < waste[expected]:
        hint = (f"no candidate wastes at most max_waste here: return the smallest, "
                f"min(candidates) = {expected}, not the one that wastes least ({got}: the "
                f"waste does not always grow with the page size).")
    elif not ok and got in waste:
        hint = ("no candidate wastes at most max_waste here: return the smallest one, "
                "min(candidates) (candidates come in no particular order).")
    elif got in waste and 0 < waste[got] - max_waste <= NEAR_LIMIT:
        hint = (f"page size {got} wastes {waste[got]:.6g}, just above max_waste: compare the "
                "exact waste fraction with max_waste, without rounding it or adding a "
                "tolerance.")
    elif got in waste and waste[got] > max_waste:
        hint = "that page size wastes more than max_waste: compute its waste fraction first."
    elif got in ok:
        hint = _passed_over_hint(fn, lens, candidates, max_waste, got, expected, waste)
    elif not isinstance(got, (float, np.floating)) and got in range(len(candidates)):
        hint = "return the page size itself, not its position in candidates."
    else:
        hint = ("return one of the candidates: the largest whose waste is at most max_waste, "
                "else the smallest.")
    raise Mismatch(f"choose_page_size with max_waste={max_waste} (waste per page size: "
                   f"{wastes})", hint, expected=str(expected), got=repr(got))


def _choice(fn, lens, candidates, limit):
    """`fn`'s page size asked again (a probe) of these candidates at max_waste=`limit`."""
    return probe(fn, np.array(lens, dtype=np.int64), list(candidates), limit)


def _batch_rounded_waste(lens, page_size: int) -> float:
    """The waste of a batch whose total is rounded up to whole pages once (as if one
    sequence)."""
    return paged_waste_fraction([int(np.sum(lens))], page_size)


def _batch_rounded_choice(lens, candidates, limit):
    """The choice at max_waste=`limit` of a waste that rounds the batch's total up once."""
    ok = [p for p in candidates if _batch_rounded_waste(lens, p) <= limit]
    return max(ok) if ok else min(candidates)


def _rounds_the_batch(fn, lens, candidates, max_waste, got) -> bool:
    """`got` is the choice of a waste that rounds the batch's total up once, and so is
    `fn`'s at max_waste 0 and at each candidate's such waste, where at 0 that choice is not
    the largest candidate (a waste of 0 or below, from pages rounded down, picks that one)."""
    limits = [0.0] + sorted({_batch_rounded_waste(lens, p) for p in candidates})
    return got == _batch_rounded_choice(lens, candidates, max_waste) and \
        _batch_rounded_choice(lens, candidates, 0.0) != max(candidates) and \
        all(_choice(fn, lens, candidates, limit) ==
            _batch_rounded_choice(lens, candidates, limit) for limit in limits)


def _largest_at(fn, lens, candidates, limit) -> bool:
    """`fn` picks the largest candidate at max_waste=`limit` (False where limit is None)."""
    return limit is not None and _choice(fn, lens, candidates, limit) == max(candidates)


def _least_waste_limit(waste: dict) -> float | None:
    """The least waste of any candidate (`waste`: each candidate's), where the largest
    candidate wastes more: at that max_waste something qualifies (so the fallback is not
    asked) but not the largest."""
    least = min(waste.values())
    return least if waste[max(waste)] > least else None


def _passed_over_hint(fn, lens, candidates, max_waste, got, expected, waste) -> str:
    """`got` qualifies, the larger `expected` was passed over. A wrong waste formula gives
    the same answer as a wrong choice, so the choice's mistake is named only when asking
    again shows it; otherwise the learner's waste for `expected` is what the evidence shows."""
    between = [p for p in candidates if got < p < expected and waste[p] > max_waste]
    if waste[expected] == max_waste and \
            _choice(fn, lens, candidates, float(np.nextafter(max_waste, 1.0))) == expected:
        return ("a waste exactly equal to max_waste is allowed: the limit is 'at most' (<=), "
                "not 'below' (<).")
    if between and _choice(fn, lens, [p for p in candidates if p not in between],
                           max_waste) == expected:
        return ("the waste does not always grow with the page size (here a bigger page "
                "qualifies after a smaller one failed): test every candidate, do not stop at "
                "the first that fails.")
    unlimited = _choice(fn, lens, candidates, float("inf"))   # every candidate qualifies
    if unlimited is None:   # (a probe that crashed proves nothing)
        return ("return the largest candidate whose waste is at most max_waste "
                f"(here {expected}).")
    if unlimited != max(candidates):
        return ("every candidate under the limit is acceptable; pick the largest of them: "
                "fewer pages per sequence and longer contiguous reads.")
    return (f"page size {expected} wastes {waste[expected]:.4g}, at most max_waste, but you "
            f"passed it over (with no limit your code returns the biggest): check the waste "
            f"your code computes, 1 - sum(seq_lens) / allocated over the whole batch, with "
            f"allocated = sum(ceil(L / page_size)) * page_size (workbook 00's waste).")


def choose_page_size(fn) -> CheckResult:
    """Check `fn(seq_lens, candidates, max_waste)`: the largest page size wasting <= max_waste."""
    chat = [int(n) for n in _lens(4, 200, 20, 600)]
    long = [int(n) for n in _lens(5, 64, 512, 4096)]
    cands = [8, 16, 32, 64, 128, 256]
    cases = [
        Case("short chat requests", {"requests": 200, "max_waste": 0.05},
             lambda: _choose_case(fn, chat, cands, 0.05)),
        Case("long documents", {"requests": 64, "max_waste": 0.02},
             lambda: _choose_case(fn, long, cands, 0.02)),
        Case("nothing qualifies", {"seq_lens": [1, 2, 3], "max_waste": 0.01},
             lambda: _choose_case(fn, [1, 2, 3], [32, 16, 64], 0.01)),
        # (the smallest page wastes least above, and in most batches: not here, 4 vs 7; the
        # least wasteful is neither the first, the last nor the largest candidate)
        Case("nothing qualifies, the smallest page wastes more", {"seq_lens": [6, 13],
                                                                   "max_waste": 0.05},
             lambda: _choose_case(fn, [6, 13], [9, 4, 7, 12], 0.05)),
        Case("unsorted candidates", {"requests": 64, "max_waste": 0.1},
             lambda: _choose_case(fn, long, [128, 16, 256, 64], 0.1)),
        Case("a waste exactly at the limit", {"seq_lens": [12, 24], "max_waste": 0.25},
             lambda: _choose_case(fn, [12, 24], [4, 8, 16, 32], 0.25)),
        Case("a waste just above the limit", {"seq_lens": [71, 72, 160], "max_waste": 0.05},
             lambda: _choose_case(fn, [71, 72, 160], [8, 16, 32], 0.05)),
        Case("page sizes that are not powers of two", {"seq_lens": [32, 64],
                                                       "max_waste": 0.1},
             lambda: _choose_case(fn, [32, 64], [16, 24, 32, 48], 0.1)),
    ]
    return run_cases("choose_page_size", "choose_page_size: the page-size trade-off", cases)
