"""Checks for lesson 10, task 3: the K/V tiles each query tile of the tensor-core prefill
kernel loads (tasks 1 and 2, the chunk's mask and the keys each packed row sees, are in
checks_prefill.py, whose batches and helpers this module shares).

A query tile is `rows` consecutive new tokens of one sequence; it loads the K/V tiles of
`kv_tile` keys up to the key its last row sees. A wrong list is compared with the classic
wrong versions to name the mistake, named only if the answer makes it on every fixed case too.
"""
from __future__ import annotations

import numpy as np

from .checks_prefill import inputs_kept, mixed_batch, named_mistake
from .compare import POW2_HINT, WRITTEN_TILE_SIZES, pow2_ceil_forms
from .report import Case, CheckResult, Mismatch, probe, run_cases
from .seeds import case_rng   # the grader salts the random cases


def _tile_keys(indptr, seq_lens, rows: int) -> list[tuple[int, int, int]]:
    """(b, first, keys seen by the query tile's last row) per query tile."""
    return [(b, first, n - q_len + min(first + rows, q_len))
            for b, (q_len, n) in enumerate(zip(np.diff(indptr).tolist(),
                                               np.asarray(seq_lens).tolist()))
            for first in range(0, q_len, rows)]


def expected_tiles(indptr, seq_lens, rows: int, kv_tile: int) -> list[tuple[int, int, int]]:
    return [(b, first, -(-keys // kv_tile)) for b, first, keys in
            _tile_keys(indptr, seq_lens, rows)]


_ROUND_UP = "round up: a K/V tile that holds any needed key is loaded."
_ONE_TOO_MANY = ("one K/V tile too many when the keys fill whole tiles (a multiple of kv_tile): "
                 "kv_tiles = ceil(keys / kv_tile) = -(-keys // kv_tile), not keys // kv_tile "
                 "+ 1 (nor a count of keys one too high).")


def _wrong_counts(got, indptr, seq_lens, rows, kv_tile):
    """[(keys, the answer's kv_tiles)] of the tiles it counts wrong, or None when its tiles
    are not the right (b, first) list."""
    keyed = _tile_keys(indptr, seq_lens, rows)
    if got is None or [t[:2] for t in got] != [t[:2] for t in keyed]:
        return None
    return [(k, t[2]) for (_, _, k), t in zip(keyed, got) if t[2] != -(-k // kv_tile)]


def _rounding_hint(fn, got, indptr, seq_lens, rows, kv_tile) -> str | None:
    """The rounding's hint when every count the answer gets wrong, here and on the fixed
    cases, is keys // kv_tile (keys not a multiple of kv_tile), or every one is keys //
    kv_tile + 1 (a multiple): an answer that rounds its own way only where it shows (e.g.
    max(keys // kv_tile, 1), right below one tile) is no classic variant as a whole. A floor
    is named only where some wrong tile's keys leave a remainder above 1 (at 1 it is also
    a lost + 1 on the keys)."""
    seen = [(_wrong_counts(got, indptr, seq_lens, rows, kv_tile), kv_tile)]
    seen += [(_wrong_counts(_tiles_of(fn, p, n, r, t), p, n, r, t), t)
             for p, n, r, t in _TILES_FIXED]
    if any(wrong is None for wrong, _ in seen):
        return None
    wrong = [(k, c, t) for counts, t in seen for k, c in counts]
    if wrong and all(k % t and c == k // t for k, c, t in wrong) and \
            any(k % t > 1 for k, _, t in wrong):
        return _ROUND_UP
    if wrong and all(k % t == 0 and c == k // t + 1 for k, c, t in wrong):
        return _ONE_TOO_MANY
    return None


def _tile_variants(indptr, seq_lens, rows, kv_tile):
    def build(keys_of, tiles_of=lambda k: -(-k // kv_tile), empty=False, packed=False,
              numbered=False, whole_only=False):
        out = []
        for b, (q_len, n) in enumerate(zip(np.diff(indptr), seq_lens)):
            q_len, n = int(q_len), int(n)
            start = int(indptr[b]) if packed else 0   # (packed: the row in the packed q)
            if empty and q_len == 0:
                out.append((b, start, tiles_of(keys_of(q_len, n, 0))))
            # (numbered: the tile's number for first; whole_only: q_len // rows tiles)
            for first in range(0, q_len // rows * rows if whole_only else q_len, rows):
                out.append((b, start + (first // rows if numbered else first),
                            tiles_of(keys_of(q_len, n, first))))
        return out

    def last(q, first):
        return min(first + rows, q) - 1

    return [
        ("keys after a tile's last query are never needed (causal): count K/V tiles up to "
         "the key at that query's position, not the whole sequence.",
         build(lambda q, n, f: n)),
        ("the tile's LAST row sees the most keys: count up to its position, not the first "
         "row's.", build(lambda q, n, f: n - q + f + 1)),
        ("the last query tile of a sequence may be partial: its last row is "
         "min(first + rows, q_len) - 1.", build(lambda q, n, f: n - q + f + rows)),
        ("off by one in a partial last tile: its last row is q_len - 1 "
         "(min(first + rows, q_len) - 1, not min(first + rows - 1, q_len)), so it sees "
         "seq_len keys, not seq_len + 1.",
         build(lambda q, n, f: n - q + min(f + rows - 1, q) + 1)),
        ("a row at position p sees p + 1 keys (0 .. p): divide that count by kv_tile, not "
         "the position.", build(lambda q, n, f: n - q + last(q, f))),
        (_ROUND_UP, build(lambda q, n, f: n - q + last(q, f) + 1, lambda k: k // kv_tile)),
        (_ONE_TOO_MANY,
         build(lambda q, n, f: n - q + last(q, f) + 1, lambda k: k // kv_tile + 1)),
        ("that is the keys the tile's last row sees, not K/V tiles: divide them into tiles "
         "of kv_tile keys, -(-keys // kv_tile).",
         build(lambda q, n, f: n - q + last(q, f) + 1, lambda k: k)),
        ("a K/V tile holds kv_tile keys: divide the keys by kv_tile, not by rows (the query "
         "tile's height).",
         build(lambda q, n, f: n - q + last(q, f) + 1, lambda k: -(-k // rows))),
        *[(POW2_HINT.format(name="kv_tile", n=kv_tile),
           build(lambda q, n, f: n - q + last(q, f) + 1, lambda k, ceil=ceil: int(ceil(k))))
          for ceil, _ in pow2_ceil_forms(kv_tile)],
        ("(keys - 1) // kv_tile is the index of the last K/V tile the tile loads (counting "
         "from 0); the number of K/V tiles is one more: (keys - 1) // kv_tile + 1 = "
         "-(-keys // kv_tile).",
         build(lambda q, n, f: n - q + last(q, f) + 1, lambda k: (k - 1) // kv_tile)),
        ("a sequence's last query tile may be partial (q_len not a multiple of rows) and is "
         "still a tile: first runs over range(0, q_len, rows), -(-q_len // rows) tiles, not "
         "q_len // rows (a decode token alone would get none).",
         build(lambda q, n, f: n - q + last(q, f) + 1, whole_only=True)),
        ("a sequence with q_len 0 has no new tokens: it gets no query tile.",
         build(lambda q, n, f: n - q + last(q, f) + 1, empty=True)),
        ("the mask is aligned bottom-right: a tile's last row sits at position "
         "seq_len - q_len + its index, after the cached prefix.",
         build(lambda q, n, f: last(q, f) + 1)),
        ("first counts from the sequence's own first row (0, rows, 2*rows, ...), not from "
         "the start of the packed q: leave qo_indptr[b] out of it.",
         build(lambda q, n, f: n - q + last(q, f) + 1, packed=True)),
        ("first is the index of the tile's first query among the sequence's new tokens "
         "(0, rows, 2*rows, ...), not the tile's number (0, 1, 2, ...).",
         build(lambda q, n, f: n - q + last(q, f) + 1, numbered=True)),
        *[(f"that is the answer for query tiles of {size} rows: use the rows argument "
           f"({rows} here), not a tile height written into the code.",
           expected_tiles(indptr, seq_lens, size, kv_tile)) for size in WRITTEN_TILE_SIZES],
        *[(f"that is the answer for K/V tiles of {size} keys: use the kv_tile argument "
           f"({kv_tile} here), not a tile size written into the code.",
           expected_tiles(indptr, seq_lens, rows, size)) for size in WRITTEN_TILE_SIZES],
    ]


def _as_triples(got):
    try:
        raw = [tuple(t) for t in got]
        if any(isinstance(x, (str, bytes, bool)) for t in raw for x in t):
            raise TypeError("not a number")
        ints = [tuple(int(x) for x in t) for t in raw]
        bad = next((t for t, i in zip(raw, ints) if any(float(x) != y for x, y in zip(t, i))),
                   None)
    except (TypeError, ValueError) as exc:
        raise Mismatch("expected a list of (sequence, first query, K/V tiles) tuples of ints",
                       "one tuple per query tile, in batch order.", "", repr(got)[:200]) from exc
    if bad is not None:
        raise Mismatch(f"the tuple {bad!r} holds a number that is not whole",
                       "K/V tiles are loaded whole: round keys / kv_tile up "
                       "(-(-keys // kv_tile)).", "whole numbers", repr(bad))
    return ints


_TILES_FIXED = [([0, 40, 45, 46], [40, 100, 9], 16, 32),
                ([0, 0, 17], [30, 17], 16, 16),
                ([0, 64], [64], 32, 64),
                ([0, 96, 116], [96, 64], 64, 32),    # partial last tiles, seq_len % kv == 0
                ([0, 30, 37, 38], [50, 37, 20], 12, 20)]   # not powers of two (no shifts)


def _tiles_of(fn, indptr, seq_lens, rows, kv_tile):
    return probe(lambda: _as_triples(fn(np.array(indptr, np.int32),
                                          np.array(seq_lens, np.int32), rows, kv_tile)))


def _tiles_case(fn, indptr, seq_lens, rows, kv_tile) -> None:
    expected = expected_tiles(indptr, seq_lens, rows, kv_tile)
    passed = (indptr.copy(), seq_lens.copy())
    got = fn(*passed, rows, kv_tile)
    if got is None:
        raise NotImplementedError("tile_work returned None")
    inputs_kept("tile_work", passed, (indptr, seq_lens))
    got = _as_triples(got)
    if got == expected:
        return
    hint = named_mistake(
        _tile_variants(indptr, seq_lens, rows, kv_tile), got, expected,
        lambda a, b: a == b,
        lambda k: all(_tiles_of(fn, p, n, r, t) == _tile_variants(p, n, r, t)[k][1]
                      for p, n, r, t in _TILES_FIXED), "") \
        or _rounding_hint(fn, got, indptr, seq_lens, rows, kv_tile) \
        or ("one (b, first, kv_tiles) per query tile, first = 0, rows, 2*rows, ... < q_len; "
            "kv_tiles = ceil(keys seen by the tile's last row / kv_tile), that row being "
            "min(first + rows, q_len) - 1.")
    if got != expected and sorted(got) == sorted(expected):   # (no variant reorders)
        hint = ("the right tiles in another order: list them sequence by sequence (b = 0, "
                "1, ...), each sequence's tiles by first (0, rows, 2*rows, ...).")
    where = next((k for k, (a, e) in enumerate(zip(got, expected)) if a != e),
                 min(len(got), len(expected)))
    message = (f"{len(got)} tiles where there are {len(expected)}" if len(got) != len(expected)
               else f"tile {where} differs")
    show = slice(max(0, where - 1), where + 2)
    raise Mismatch(message, hint, repr(expected[show]), repr(got[show]))


def tile_work(fn) -> CheckResult:
    """Check `fn(qo_indptr, seq_lens, rows, kv_tile)` -> [(b, first, kv_tiles), ...]."""
    cases = [Case("batch", {"qo_indptr": p, "seq_lens": n, "rows": r, "kv_tile": k},
                  lambda p=p, n=n, r=r, k=k: _tiles_case(fn, np.array(p, np.int32),
                                                         np.array(n, np.int32), r, k))
             for p, n, r, k in _TILES_FIXED]
    rng = case_rng(1003)
    for rows, kv_tile in ((16, 64), (64, 32)):
        indptr, lens = mixed_batch(rng, 6, 200)
        cases.append(Case("random batch", {"qo_indptr": indptr.tolist(),
                                           "seq_lens": lens.tolist(), "rows": rows,
                                           "kv_tile": kv_tile},
                          lambda p=indptr, n=lens, r=rows, k=kv_tile: _tiles_case(fn, p, n, r, k)))
    return run_cases("tile_work", "tile_work: the K/V tiles each query tile loads", cases)
