"""Checks for the counting tasks: pages per sequence, wasted memory, bytes and page size.

Lesson 00 (why paging): how many pages a sequence needs and how much of a contiguous or a
paged reservation holds no token. Lesson 08 (performance): how many bytes a decode step
must read, the time floor that sets, and which page size to choose given its waste.

Each case compares a number with the spec and, when it is wrong, with the numbers the
usual mistakes give (floor instead of ceil, the K or the V half forgotten, num_heads
instead of num_kv_heads, 4 bytes assumed for fp16...), to say which mistake it was.
"""
from __future__ import annotations

import numpy as np

from .compare import fmt
from .report import Case, Mismatch, run_cases


def _ceil_div(a, b):
    return -(-np.asarray(a, dtype=np.int64) // b)


def _scalar_case(fn, args: tuple, expected: float, variants: list[tuple[str, float]],
                 what: str, *, rel: float = 1e-6, default_hint: str = "") -> None:
    got = fn(*args)
    if got is None:
        raise Mismatch(f"{what} returned None", "return the number (a `return` is missing?).")
    try:
        value = float(got)
    except (TypeError, ValueError) as exc:
        raise Mismatch(f"{what} returned {got!r}", "return a single number.") from exc
    if np.isclose(value, expected, rtol=rel, atol=1e-12):
        return
    hint = default_hint
    for text, candidate in variants:
        if not np.isclose(candidate, expected, rtol=rel, atol=1e-12) and \
                np.isclose(value, candidate, rtol=rel, atol=1e-12):
            hint = text
            break
    raise Mismatch(what, hint, expected=fmt(expected), got=fmt(value))


def _lens(seed: int, n: int, low: int, high: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, size=n).astype(np.int64)


# -- lesson 00 --------------------------------------------------------------------------

def _pages_needed_case(fn, seq_len: int, page_size: int) -> None:
    expected = -(-seq_len // page_size)
    _scalar_case(fn, (seq_len, page_size), expected, [
        ("round up: a partly filled last page is still a whole page (ceil, e.g. "
         "-(-seq_len // page_size)).", seq_len // page_size),
        ("seq_len // page_size + 1 is one page too many when seq_len is an exact multiple "
         "of page_size (and for seq_len 0): use ceil.", seq_len // page_size + 1),
        ("that is one page per token: a page holds page_size tokens.", seq_len),
    ], f"pages_needed({seq_len}, {page_size})")


def pages_needed(fn) -> "CheckResult":  # noqa: F821
    """Check `fn(seq_len, page_size) == ceil(seq_len / page_size)`."""
    pairs = [(10, 4), (8, 4), (1, 16), (0, 16), (17, 1), (4095, 16), (4096, 16)]
    cases = [Case("pages for one sequence", {"seq_len": n, "page_size": p},
                  lambda n=n, p=p: _pages_needed_case(fn, n, p)) for n, p in pairs]
    return run_cases("pages_needed", "pages_needed(seq_len, page_size)", cases)


def _reserved_case(fn, lens: np.ndarray, max_len: int) -> None:
    used, reserved = lens.sum(), len(lens) * max_len
    expected = 1 - used / reserved
    _scalar_case(fn, (lens.copy(), max_len), expected, [
        ("you reserved max(seq_lens) per sequence; the server reserves max_len for every "
         "request because it cannot know the final length in advance.",
         1 - used / (len(lens) * lens.max())),
        ("return a fraction of the reserved slots (between 0 and 1), not a count.",
         reserved - used),
        ("divide the wasted slots by the reserved slots, not by the used ones.",
         (reserved - used) / used),
        ("that is the used fraction; the question asks for the wasted one (1 - used/reserved).",
         used / reserved),
    ], f"reserved_waste(seq_lens, max_len={max_len})")


def reserved_waste(fn) -> "CheckResult":  # noqa: F821
    """Check `fn(seq_lens, max_len) == 1 - seq_lens.sum() / (len(seq_lens) * max_len)`."""
    cases = [
        Case("four requests", {"seq_lens": [100, 300, 20, 2048], "max_len": 2048},
             lambda: _reserved_case(fn, np.array([100, 300, 20, 2048]), 2048)),
        Case("64 random requests", {"seed": 0, "max_len": 4096},
             lambda: _reserved_case(fn, _lens(0, 64, 1, 4096), 4096)),
        Case("all full", {"seq_lens": [512, 512], "max_len": 512},
             lambda: _reserved_case(fn, np.array([512, 512]), 512)),
    ]
    return run_cases("reserved_waste", "reserved_waste(seq_lens, max_len)", cases)


def paged_waste_fraction(lens, page_size: int) -> float:
    lens = np.asarray(lens, dtype=np.int64)
    allocated = int(_ceil_div(lens, page_size).sum()) * page_size
    return 1 - int(lens.sum()) / allocated


def _paged_case(fn, lens: np.ndarray, page_size: int) -> None:
    used = lens.sum()
    pages = _ceil_div(lens, page_size)
    allocated = pages.sum() * page_size
    expected = 1 - used / allocated
    floor_alloc = (lens // page_size).sum() * page_size
    _scalar_case(fn, (lens.copy(), page_size), expected, [
        ("round the page count up: a sequence of L tokens holds ceil(L / page_size) pages.",
         1 - used / floor_alloc if floor_alloc else np.nan),
        ("L // page_size + 1 pages is one too many when L is a multiple of page_size.",
         1 - used / ((lens // page_size + 1).sum() * page_size)),
        ("return a fraction of the allocated slots, not a count of slots.", allocated - used),
        ("divide by the allocated slots, not by the used ones.", (allocated - used) / used),
        ("that is the used fraction; return the wasted one.", used / allocated),
    ], f"paged_waste(seq_lens, page_size={page_size})")


def paged_waste(fn) -> "CheckResult":  # noqa: F821
    """Check `fn(seq_lens, page_size) == 1 - L.sum() / (ceil(L / page_size).sum() * page_size)`."""
    cases = [
        Case("four requests", {"seq_lens": [100, 300, 20, 2048], "page_size": 16},
             lambda: _paged_case(fn, np.array([100, 300, 20, 2048]), 16)),
        Case("exact multiples", {"seq_lens": [32, 64, 16], "page_size": 16},
             lambda: _paged_case(fn, np.array([32, 64, 16]), 16)),
        Case("64 random requests", {"seed": 0, "page_size": 64},
             lambda: _paged_case(fn, _lens(0, 64, 1, 4096), 64)),
        Case("short requests, big pages", {"seq_lens": [3, 5, 7], "page_size": 256},
             lambda: _paged_case(fn, np.array([3, 5, 7]), 256)),
    ]
    return run_cases("paged_waste", "paged_waste(seq_lens, page_size)", cases)


# -- lesson 08 --------------------------------------------------------------------------

def _kv_bytes_case(fn, lens, num_heads, num_kv_heads, head_dim, dtype) -> None:
    itemsize = np.dtype(dtype).itemsize
    tokens = int(np.sum(lens))
    expected = tokens * 2 * num_kv_heads * head_dim * itemsize
    _scalar_case(fn, (np.array(lens), num_heads, num_kv_heads, head_dim, dtype), expected, [
        ("count both K and V: the factor 2.", expected / 2),
        ("the cache stores num_kv_heads heads, not num_heads: with GQA several query heads "
         "share one KV head.", tokens * 2 * num_heads * head_dim * itemsize),
        ("use the dtype's size (np.dtype(dtype).itemsize): fp16 is 2 bytes, not 4.",
         tokens * 2 * num_kv_heads * head_dim * 4),
        ("that is bits; count bytes.", expected * 8),
    ], f"kv_bytes(num_heads={num_heads}, num_kv_heads={num_kv_heads}, head_dim={head_dim}, "
       f"{np.dtype(dtype).name})")


def kv_bytes(fn) -> "CheckResult":  # noqa: F821
    """Check `fn(seq_lens, num_heads, num_kv_heads, head_dim, dtype)`: K+V bytes of a step."""
    cases = [
        Case("multi-head fp32", {"heads": 8, "kv_heads": 8, "head_dim": 64, "dtype": "float32"},
             lambda: _kv_bytes_case(fn, [100, 37, 512], 8, 8, 64, np.float32)),
        Case("GQA fp16", {"heads": 32, "kv_heads": 8, "head_dim": 128, "dtype": "float16"},
             lambda: _kv_bytes_case(fn, _lens(1, 16, 512, 4096), 32, 8, 128, np.float16)),
        Case("MQA fp16", {"heads": 16, "kv_heads": 1, "head_dim": 64, "dtype": "float16"},
             lambda: _kv_bytes_case(fn, [4096], 16, 1, 64, np.float16)),
    ]
    return run_cases("kv_bytes", "kv_bytes: what one decode step must read", cases)


def _floor_case(fn, nbytes: float, bandwidth_gbs: float) -> None:
    expected = nbytes / (bandwidth_gbs * 1e9) * 1e3
    _scalar_case(fn, (nbytes, bandwidth_gbs), expected, [
        ("return milliseconds: seconds x 1000.", expected / 1e3),
        ("GB/s here means 1e9 bytes per second, not 2**30.",
         nbytes / (bandwidth_gbs * 2**30) * 1e3),
        ("time = bytes / bandwidth, not bandwidth / bytes.", bandwidth_gbs * 1e9 / nbytes * 1e3),
    ], f"decode_floor_ms({nbytes:.4g} bytes, {bandwidth_gbs} GB/s)", rel=1e-4)


def decode_floor_ms(fn) -> "CheckResult":  # noqa: F821
    """Check `fn(nbytes, bandwidth_gbs) == nbytes / (bandwidth_gbs * 1e9) * 1e3` (milliseconds)."""
    cases = [
        Case("the D64 workload on an H100", {"bytes": 2.45e9, "GB/s": 2990},
             lambda: _floor_case(fn, 2.45e9, 2990)),
        Case("a laptop", {"bytes": 3.0e8, "GB/s": 60}, lambda: _floor_case(fn, 3.0e8, 60)),
    ]
    return run_cases("decode_floor_ms", "decode_floor_ms: the memory-bandwidth floor", cases)


def _choose_case(fn, lens, candidates, max_waste: float) -> None:
    ok = [p for p in candidates if paged_waste_fraction(lens, p) <= max_waste]
    expected = max(ok) if ok else min(candidates)
    got = fn(np.array(lens), list(candidates), max_waste)
    wastes = ", ".join(f"{p}: {paged_waste_fraction(lens, p):.3f}" for p in candidates)
    if got == expected:
        return
    hint = ("take the largest page size whose waste fraction is <= max_waste (bigger pages "
            "mean fewer block-table entries and longer contiguous reads); if none qualifies, "
            "the smallest.")
    if ok and got == min(ok):
        hint = ("every candidate under the limit is acceptable; pick the largest of them: it "
                "reads memory in longer runs.")
    elif got in candidates and paged_waste_fraction(lens, got) > max_waste:
        hint = "that page size wastes more than max_waste: compute its waste fraction first."
    raise Mismatch(f"choose_page_size with max_waste={max_waste} (waste per page size: {wastes})",
                   hint, expected=str(expected), got=repr(got))


def choose_page_size(fn) -> "CheckResult":  # noqa: F821
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
             lambda: _choose_case(fn, [1, 2, 3], [16, 32], 0.01)),
        Case("unsorted candidates", {"requests": 64, "max_waste": 0.1},
             lambda: _choose_case(fn, long, [128, 16, 256, 64], 0.1)),
    ]
    return run_cases("choose_page_size", "choose_page_size: the page-size trade-off", cases)
