"""Checks for lesson 05 in Python: which pages a query tile needs, and the tiled launch.

The tiled kernel gives each block `tile_q` consecutive query tokens of one (sequence,
head). Causality decides its work: query t attends to keys 0..t, so the block needs every
page from the first one up to the page of its last real query, and nothing after it.
"""
from __future__ import annotations

from .report import Case, Mismatch, run_cases


def _tile_pages_case(fn, seq_len: int, q_start: int, tile_q: int, page_size: int) -> None:
    last_key = min(seq_len, q_start + tile_q)          # keys 0..last_key-1
    expected = list(range(-(-last_key // page_size))) if q_start < seq_len else []
    got = fn(seq_len, q_start, tile_q, page_size)
    got_list = None if got is None else [int(p) for p in got]
    if got_list == expected:
        return
    variants = [
        ("the block's queries stop at q_start + tile_q - 1: keys after that are never needed "
         "(causal). Load pages up to the one holding key min(seq_len, q_start + tile_q) - 1.",
         list(range(-(-seq_len // page_size))) if q_start < seq_len else None),
        ("causal attention needs every key from 0 up to the query: start at page 0, not at "
         "the page of q_start.",
         list(range(q_start // page_size, -(-last_key // page_size)))
         if q_start < seq_len else None),
        ("round up: a page that holds any needed key is needed (ceil).",
         list(range(last_key // page_size))),
        ("a block whose first query is at or past seq_len has no work: return [] (it only "
         "writes zeros).", list(range(-(-min(seq_len, q_start + tile_q) // page_size)))),
    ]
    hint = next((h for h, v in variants if v is not None and v != expected and got_list == v),
                "pages 0 .. ceil(min(seq_len, q_start + tile_q) / page_size) - 1.")
    raise Mismatch(f"tile_pages(seq_len={seq_len}, q_start={q_start}, tile_q={tile_q}, "
                   f"page_size={page_size})", hint, expected=repr(expected), got=repr(got))


def tile_pages(fn) -> "CheckResult":  # noqa: F821
    """Check `fn(seq_len, q_start, tile_q, page_size)` -> the virtual pages a query tile reads."""
    params = [(37, 0, 16, 8), (37, 16, 16, 8), (37, 32, 16, 8), (37, 48, 16, 8),
              (64, 16, 16, 16), (5, 0, 16, 4), (100, 64, 32, 16)]
    cases = [Case("one query tile", {"seq_len": n, "q_start": s, "tile_q": t, "page_size": p},
                  lambda n=n, s=s, t=t, p=p: _tile_pages_case(fn, n, s, t, p))
             for n, s, t, p in params]
    return run_cases("tile_pages", "tile_pages: the pages one query tile must stage", cases)


def expected_launch(batch, num_heads, max_len, tile_q, page_size, head_dim):
    grid = (-(-max_len // tile_q), num_heads, batch)
    return grid, (tile_q,), 2 * page_size * head_dim * 4


def _launch_case(fn, batch, num_heads, max_len, tile_q, page_size, head_dim) -> None:
    grid, block, smem = expected_launch(batch, num_heads, max_len, tile_q, page_size, head_dim)
    got = fn(batch, num_heads, max_len, tile_q, page_size, head_dim)
    if not (isinstance(got, tuple) and len(got) == 3):
        raise Mismatch("expected a tuple (grid, block, shared_mem_bytes)",
                       "return all three: the kernel call takes them.", "", repr(got))
    g, b, s = got
    try:
        g, b, s = tuple(int(x) for x in g), tuple(int(x) for x in b), int(s)
    except TypeError as exc:
        raise Mismatch("grid and block must be tuples of ints", "e.g. grid=(x, y, z), "
                       "block=(tile_q,)", "", repr(got)) from exc
    if g != grid:
        hint = "grid = (ceil(max_len / tile_q), num_heads, batch)."
        if g == (max_len // tile_q, num_heads, batch):
            hint = ("round the number of query tiles up: the last tile is partly filled but "
                    "its queries still need a block.")
        elif g == (batch, num_heads, -(-max_len // tile_q)):
            hint = ("this course puts the query tiles in x and the sequence in z (as the "
                    "kernels read blockIdx.x for the tile and blockIdx.z for the sequence; "
                    "gridDim.x may reach 2^31-1, y and z only 65535).")
        raise Mismatch("grid", hint, repr(grid), repr(g))
    if b != block:
        raise Mismatch("block", "one thread per query of the tile: block = (tile_q,).",
                       repr(block), repr(b))
    if s != smem:
        hint = "shared memory holds one page of K and one of V for this kv head, in float32."
        if s == smem // 4:
            hint = "shared_mem is in bytes: a float is 4 bytes."
        elif s == smem // 2:
            hint = "stage V as well as K: two page-sized tiles."
        elif s == smem * num_heads:
            hint = "a block serves one head: stage only its kv head (page_size x head_dim)."
        raise Mismatch("shared_mem bytes", hint, str(smem), str(s))


def tiled_launch(fn) -> "CheckResult":  # noqa: F821
    """Check `fn(batch, num_heads, max_len, tile_q, page_size, head_dim)`:
    (grid, block, shared_mem)."""
    params = [(2, 4, 37, 16, 8, 16), (1, 8, 64, 16, 16, 64), (3, 2, 5, 32, 4, 32)]
    cases = [Case("launch", {"batch": b, "num_heads": h, "max_len": n, "tile_q": t,
                             "page_size": p, "head_dim": d},
                  lambda b=b, h=h, n=n, t=t, p=p, d=d: _launch_case(fn, b, h, n, t, p, d))
             for b, h, n, t, p, d in params]
    return run_cases("tiled_launch", "tiled_launch: grid, block and shared memory", cases)
