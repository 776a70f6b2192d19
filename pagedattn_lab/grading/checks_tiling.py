"""Checks for lesson 05 in Python: which pages a query tile needs, and the tiled launch.

The tiled kernel gives each block `tile_q` consecutive query tokens of one (sequence,
head). Causality decides its work: query t attends to keys 0..t, so the block needs every
page from the first one up to the page of its last real query, and nothing after it.
"""
from __future__ import annotations

import numpy as np

from ..validate_kinds import is_int
from .compare import FIXED_PAGE_HINT, POW2_HINT, WRITTEN_TILE_SIZES, pow2_ceils
from .report import Case, CheckResult, Mismatch, probe, run_cases, several_fit
from .seeds import case_ints


NO_WORK_HINT = ("a block whose first query is at or past seq_len has no work: return [] (it "
                "only writes zeros).")


def _rounds_up(fn) -> bool:
    """Whether `fn` rounds a partly needed page up where one key short and rounding down
    differ (37 keys of pages of 8: 5 pages): where the last key opens a page, they agree."""
    got = probe(fn, 37, 32, 16, 8)
    try:
        return [int(p) for p in got] == [0, 1, 2, 3, 4]
    except (TypeError, ValueError):
        return False


def _rounds_down(fn) -> bool:
    """Whether `fn` rounds a partly needed page down where page_size is a power of two (25
    keys of pages of 8: 3 pages, not 4): one that rounds up there, and down only where
    page_size is not, rounds up with a shift or a mask."""
    got = probe(fn, 40, 20, 5, 8)
    try:
        return len(list(got)) == 3
    except TypeError:
        return False


def _first_tile_count(fn) -> int | None:
    """How many pages `fn` gives the first tile of 37 keys on pages of 8 (16 queries): 5 is
    the whole sequence, 3 is one page past the tile's last (keys // page_size + 1). Where a
    case's answer fits both mistakes (the middle tile, keys 0..31: 5 pages either way), this
    tells them apart."""
    got = probe(fn, 37, 0, 16, 8)
    try:
        return len(list(got))
    except TypeError:
        return None


def _tile_pages_case(fn, seq_len: int, q_start: int, tile_q: int, page_size: int) -> None:
    last_key = min(seq_len, q_start + tile_q)          # keys 0..last_key-1
    expected = list(range(-(-last_key // page_size))) if q_start < seq_len else []
    got = fn(seq_len, q_start, tile_q, page_size)
    try:
        items = None if got is None else list(got)    # (a generator can be read once)
        got_list = None if items is None else [int(p) for p in items]
    except (TypeError, ValueError):
        raise Mismatch(f"expected a list of page indices, got {type(got).__name__} {got!r:.80}",
                       "return the block-table indices of the pages to load, as ints.",
                       str(expected), repr(got)[:80]) from None
    odd = next((p for p in items if not is_int(p)), None) if items is not None else None
    if odd is not None:   # int() above accepts 1.0, True and "1": none of them indexes a table
        raise Mismatch(f"tile_pages(seq_len={seq_len}, q_start={q_start}, tile_q={tile_q}, "
                       f"page_size={page_size}): an entry is {type(odd).__name__} {odd!r}, not "
                       "an int", "page indices index the block table: return ints (range(n) "
                       "gives them; " + ("a comparison gives a bool)." if isinstance(
                           odd, (bool, np.bool_)) else "np.ceil and / give floats)."
                           if isinstance(odd, (float, np.floating)) else "not text)."),
                       expected=repr(expected), got=repr(items)[:80])
    if got_list == expected:
        return
    past_end = q_start + tile_q > seq_len
    variants = [
        ("the block's queries stop at q_start + tile_q - 1: keys after that are never needed "
         "(causal). Load pages up to the one holding key min(seq_len, q_start + tile_q) - 1.",
         list(range(-(-seq_len // page_size)))
         if q_start < seq_len and _first_tile_count(fn) != 3 else None),
        ("the tile runs past the sequence's end: queries at or past seq_len are padding and "
         "keys past seq_len do not exist, so the last key is min(seq_len, q_start + tile_q) "
         "- 1.", list(range(-(-(q_start + tile_q) // page_size)))
         if q_start < seq_len and past_end else None),
        ("one page too many: the last key, min(seq_len, q_start + tile_q) - 1, is on page "
         "(that key) // page_size; stop there.",
         list(range(last_key // page_size + 1))
         if q_start < seq_len and _first_tile_count(fn) != 5 else None),
        ("causal attention needs every key from 0 up to the query: start at page 0, not at "
         "the page of q_start.",
         list(range(q_start // page_size, -(-last_key // page_size)))
         if q_start < seq_len else None),
        ("one key short: the tile's last query, q_start + tile_q - 1, reads keys 0 .. itself, "
         "that is q_start + tile_q keys (at most seq_len), not q_start + tile_q - 1; here that "
         "last key is the first of its page.",
         list(range(-(-min(seq_len, q_start + tile_q - 1) // page_size)))
         if q_start < seq_len and _rounds_up(fn) else None),
        ("round up: a page that holds any needed key is needed (ceil).",
         list(range(last_key // page_size)) if q_start < seq_len and _rounds_down(fn)
         else None),
        ("virtual pages count from 0 (entry 0 of the block-table row): yours are each one "
         "too high, 1 .. n instead of 0 .. n - 1.", [p + 1 for p in expected] or None),
        ("those are the pages of the first tile's keys, min(seq_len, tile_q): this tile's "
         "queries start at q_start, so its last key is min(seq_len, q_start + tile_q) - 1.",
         list(range(-(-min(seq_len, tile_q) // page_size))) if 0 < q_start < seq_len
         else None),
        (FIXED_PAGE_HINT.format(n=page_size), list(range(-(-last_key // 16)))
         if q_start < seq_len and page_size != 16 else None),
        (NO_WORK_HINT, list(range(-(-min(seq_len, q_start + tile_q) // page_size)))),
        *[(POW2_HINT.format(name="page_size", n=page_size),
           list(range(int(pages))) if q_start < seq_len else None)
          for pages, _ in pow2_ceils(last_key, page_size)],
    ]
    # with no real query the formula below would name pages: the answer is [] (no work)
    fallback = ("pages 0 .. ceil(min(seq_len, q_start + tile_q) / page_size) - 1."
                if q_start < seq_len else NO_WORK_HINT)
    hint = next((h for h, v in variants if v is not None and v != expected and got_list == v),
                fallback)
    raise Mismatch(f"tile_pages(seq_len={seq_len}, q_start={q_start}, tile_q={tile_q}, "
                   f"page_size={page_size})", hint, expected=repr(expected), got=repr(got))


def tile_pages(fn) -> CheckResult:
    """Check `fn(seq_len, q_start, tile_q, page_size)` -> the virtual pages a query tile reads."""
    params = [("the first tile", 37, 0, 16, 8), ("a middle tile", 37, 16, 16, 8),
              ("the last tile, partly past the end", 37, 32, 16, 8),
              ("a tile wholly past the end", 37, 48, 16, 8),
              ("a tile that starts at seq_len", 32, 32, 16, 8),
              ("a tile that ends exactly at seq_len", 32, 16, 16, 8),
              ("tiles ending on a page boundary", 64, 16, 16, 16),
              ("a sequence shorter than the tile", 5, 0, 16, 4),
              ("an empty sequence", 0, 0, 16, 4), ("a larger tile", 100, 64, 32, 16),
              ("pages longer than the tile", 100, 0, 16, 32),
              ("pages longer than the tile, a middle tile", 100, 32, 16, 32),
              ("the tile's last key opens a page", 40, 20, 5, 8),
              ("page_size 6, not a power of two", 37, 16, 16, 6)]
    drawn = case_ints(1, seq_len=(1, 200), tile=(0, 4), tile_q=(1, 64), page_size=(1, 32))
    params.append(("drawn sizes", drawn["seq_len"], drawn["tile"] * drawn["tile_q"],
                   drawn["tile_q"], drawn["page_size"]))
    cases = [Case(name, {"seq_len": n, "q_start": s, "tile_q": t, "page_size": p},
                  lambda n=n, s=s, t=t, p=p: _tile_pages_case(fn, n, s, t, p))
             for name, n, s, t, p in params]
    return run_cases("tile_pages", "tile_pages: the pages one query tile must stage", cases)


def dim3(value) -> tuple[int, int, int]:
    """A grid or block as CUDA's dim3: (16,), (16, 1) and (16, 1, 1) are all (16, 1, 1)."""
    if not isinstance(value, tuple) or not 1 <= len(value) <= 3 or \
            not all(is_int(v) and v >= 0 for v in value):
        raise ValueError(f"not a dim3: {value!r}")
    return tuple(int(v) for v in value) + (1,) * (3 - len(value))


def _not_a_tuple_hint(grid, block) -> str | None:
    """The hint when the grid or the block is not a tuple: cupy.RawKernel's launch takes
    tuples only (a list or an int raises TypeError there), whatever dim3 would make of it."""
    name, value = next(((n, v) for n, v in (("block", block), ("grid", grid))
                        if not isinstance(v, tuple)), (None, None))
    if name is None:
        return None
    if is_int(value):
        return (f"the {name} is the int {value!r}, not a tuple: cupy.RawKernel takes the grid "
                f"and the block as tuples and raises TypeError for an int. A one-element "
                f"tuple needs its comma: ({value},), since ({value}) is just {value}.")
    if isinstance(value, list):
        return (f"the {name} is a list: cupy.RawKernel takes the grid and the block as tuples "
                "and raises TypeError for a list: write (x, y, z) or tuple(...).")
    return None


def _not_a_dim3_hint(grid, block) -> str:
    """The hint for a grid or block that dim3 refuses: by its length, else by its entries."""
    sized = [(name, value) for name, value in (("grid", grid), ("block", block))
             if isinstance(value, tuple) and not 1 <= len(value) <= 3]
    if sized:
        name, value = sized[0]
        return (f"the {name} has {len(value)} entries: a launch has 1 to 3 dimensions (x, "
                "y, z), here grid = (query tiles, heads, sequences) and block = (tile_q,).")
    if any(is_int(v) and v < 0 for value in (grid, block) for v in value):
        return "a launch's sizes are counts of blocks and threads: none is negative."
    return "a launch takes whole numbers: math.ceil and // give ints, np.ceil gives floats."


def expected_launch(batch, num_heads, max_len, tile_q, page_size, head_dim):
    grid = (-(-max_len // tile_q), num_heads, batch)
    return grid, (tile_q,), 2 * page_size * head_dim * 4


def _launch_rounds_down(fn) -> bool:
    """Whether `fn` rounds the query tiles down where tile_q is a power of two (37 queries
    in tiles of 16: 2 tiles, not 3): one that rounds up there, and down only where tile_q is
    not, rounds up with a shift or a mask."""
    got = probe(fn, 2, 4, 37, 16, 8, 16)
    try:
        return dim3(got[0])[0] == 2
    except (TypeError, ValueError, IndexError, KeyError):
        return False


def _tile_count_hints(tiles: int, max_len: int, tile_q: int) -> list[str]:
    """The hints of the mistakes that count `tiles` query tiles: a shift or a mask for a
    tile_q that is not a power of two, or a tile_q written into the code. Both can give the
    same count (max_len 52 in tiles of 12: 52 // 12 + (52 & 11 != 0) and ceil(52 / 16) are
    both 4), and then both are named."""
    hints = [POW2_HINT.format(name="tile_q", n=tile_q)] \
        if tiles in {int(t) for t, _ in pow2_ceils(max_len, tile_q)} else []
    sizes = [str(n) for n in WRITTEN_TILE_SIZES if n != tile_q and tiles == -(-max_len // n)]
    if sizes:
        hints.append(f"that is the grid for query tiles of {' or '.join(sizes)} queries: use "
                     f"the tile_q argument ({tile_q} here), not a tile size written into the "
                     "code.")
    return hints


def _launch_case(fn, batch, num_heads, max_len, tile_q, page_size, head_dim) -> None:
    grid, block, smem = expected_launch(batch, num_heads, max_len, tile_q, page_size, head_dim)
    got = fn(batch, num_heads, max_len, tile_q, page_size, head_dim)
    if not (isinstance(got, (tuple, list)) and len(got) == 3):
        raise Mismatch("expected a tuple (grid, block, shared_mem_bytes)",
                       "return all three: the kernel call takes them.", "", repr(got))
    not_tuple = _not_a_tuple_hint(got[0], got[1])
    if not_tuple:
        raise Mismatch(f"grid and block must be tuples, got {got[0]!r} and {got[1]!r}",
                       not_tuple, "tuples", repr(got))
    try:
        g, b = dim3(got[0]), dim3(got[1])
    except ValueError as exc:
        raise Mismatch(f"grid and block must be tuples of 1 to 3 ints, got {got[0]!r} and "
                       f"{got[1]!r}", _not_a_dim3_hint(got[0], got[1]), "",
                       repr(got)) from exc
    if not is_int(got[2]):
        raise Mismatch(f"shared_mem must be an int number of bytes, got {got[2]!r}",
                       "a launch takes whole numbers of bytes (np.dtype(...).itemsize is an "
                       "int; a product with a float is not).", str(smem), repr(got[2]))
    s = int(got[2])
    grid, block = dim3(grid), dim3(block)
    if g != grid:
        hint = "grid = (ceil(max_len / tile_q), num_heads, batch)."
        if g == (max_len // tile_q, num_heads, batch) and _launch_rounds_down(fn):
            hint = ("round the number of query tiles up: the last tile is partly filled but "
                    "its queries still need a block.")
        elif g == dim3((num_heads, -(-max_len // tile_q), batch)):
            hint = ("x is the query tile: the kernels read the tile from blockIdx.x, the head "
                    "from blockIdx.y and the sequence from blockIdx.z.")
        elif g == dim3((-(-max_len // tile_q), batch, num_heads)):
            hint = ("y is the head and z the sequence (the kernels read the head from "
                    "blockIdx.y and the sequence from blockIdx.z).")
        elif g == (max_len // tile_q + 1, num_heads, batch):
            hint = ("one tile too many: max_len is a multiple of tile_q here, and "
                    "max_len // tile_q + 1 (or (max_len + tile_q) // tile_q) adds a tile of "
                    "padding; ceil is (max_len + tile_q - 1) // tile_q.")
        elif g[1:] == (num_heads, batch) and (fits := _tile_count_hints(g[0], max_len, tile_q)):
            hint = several_fit(fits, "grid")
        elif g == dim3((batch, num_heads, -(-max_len // tile_q))):
            hint = ("this course puts the query tiles in x and the sequence in z (as the "
                    "kernels read blockIdx.x for the tile and blockIdx.z for the sequence; "
                    "gridDim.x may reach 2^31-1, y and z only 65535).")
        raise Mismatch("grid", hint, repr(grid), repr(g))
    if b != block:
        raise Mismatch("block", "one thread per query of the tile: block = (tile_q,) (the "
                       "same as (tile_q, 1, 1)).", repr(block), repr(b))
    if s != smem:
        hint = "shared memory holds one page of K and one of V for this kv head, in float32."
        if s == smem // 4:
            hint = "shared_mem is in bytes: a float is 4 bytes."
        elif s == smem // 2:   # (K alone, or K and V counted in halves: the same bytes)
            hint = several_fit(["stage V as well as K: two page-sized tiles.",
                                "the tiles are float32, as the cache: 4 bytes a value, not 2 "
                                "(a half)."])
        elif s == smem * num_heads:
            hint = "a block serves one head: stage only its kv head (page_size x head_dim)."
        elif s == 2 * tile_q * head_dim * 4 and tile_q != page_size:
            hint = ("the tiles hold one page of keys and one of values: page_size rows each, "
                    "not tile_q (the queries stay in registers).")
        raise Mismatch("shared_mem bytes", hint, str(smem), str(s))


def tiled_launch(fn) -> CheckResult:
    """Check `fn(batch, num_heads, max_len, tile_q, page_size, head_dim)`:
    (grid, block, shared_mem)."""
    params = [(2, 4, 37, 16, 8, 16), (1, 8, 64, 16, 16, 64), (3, 2, 5, 32, 4, 32),
              (1, 1, 1, 16, 16, 64), (4, 3, 128, 64, 16, 128), (2, 3, 52, 12, 6, 24)]
    params.append(tuple(case_ints(2, batch=(1, 8), num_heads=(1, 16), max_len=(1, 300),
                                  tile_q=(1, 64), page_size=(1, 32), head_dim=(1, 256)).values()))
    cases = [Case("launch", {"batch": b, "num_heads": h, "max_len": n, "tile_q": t,
                             "page_size": p, "head_dim": d},
                  lambda b=b, h=h, n=n, t=t, p=p, d=d: _launch_case(fn, b, h, n, t, p, d))
             for b, h, n, t, p, d in params]
    return run_cases("tiled_launch", "tiled_launch: grid, block and shared memory", cases)
