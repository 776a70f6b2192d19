"""Checks for lesson 10 in Python: the chunked-prefill mask, the keys each packed query row
sees, and which K/V tiles each query tile of the tensor-core kernel loads.

Packed prefill: sequence b's new tokens are rows `qo_indptr[b]:qo_indptr[b+1]` of q, and they
are its LAST q_len tokens (`seq_lens[b]` counts them too). New query i sits at position
`seq_len - q_len + i` and sees keys 0 .. that position (bottom-right alignment). The random
cases mix all-new prompts (q_len == seq_len), chunks over a cached prefix, decode tokens
(q_len 1) and sequences with no new tokens (q_len 0), with lengths that are not tile
multiples. A wrong answer is compared with the classic wrong versions to name the mistake;
a mistake is named only if the answer makes it on every fixed case too, since one small case
can match a mistake by coincidence (two tiles of 16 and 17 keys cannot tell a floor from a
lost + 1).
"""
from __future__ import annotations

import numpy as np

from ..prefill_masks import causal_mask
from .compare import POW2_HINT, changed_input, pow2_div
from .report import Case, CheckResult, Mismatch, as_array, probe, run_cases
from .seeds import case_rng   # the grader salts the random cases


def _batch(rng, batch: int, max_len: int):
    """(qo_indptr int32, seq_lens int32): a mix of all-new, chunk, decode and q_len 0."""
    seq_lens = rng.integers(1, max_len + 1, size=batch)
    kinds = rng.permutation(np.resize(["new", "chunk", "decode", "none"], batch))
    q_lens = np.array([n if k == "new" else 1 if k == "decode" else 0 if k == "none" else
                       rng.integers(1, n + 1) for k, n in zip(kinds, seq_lens)], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    return indptr, seq_lens.astype(np.int32)


def _rows_of(indptr):
    """(sequence of each packed row, its index i within the sequence)."""
    q_lens = np.diff(indptr.astype(np.int64))
    seq = np.repeat(np.arange(q_lens.size), q_lens)
    return seq, np.arange(seq.size) - indptr[seq]


def _inputs_kept(task: str, passed, given) -> None:
    """The answer left qo_indptr and seq_lens as they were: the caller (the wrapper's plan,
    the next task) reads them again."""
    names = ("qo_indptr", "seq_lens")
    hints = {name: f"`x = {name}` makes no copy, so `x -= ...` or `x[...] = ...` writes into "
                   f"the caller's array; compute a new one (`{name} - ...`, or .astype / "
                   ".copy() first)" for name in names}
    changed = changed_input(task, dict(zip(names, given)), dict(zip(names, passed)), hints)
    if changed:
        raise changed


def _named(variants, got, expected, same, confirmed, default: str) -> str:
    """The hint of the first classic mistake that `got` matches and that `confirmed(k)` (the
    learner's answer is mistake k on every fixed case too) confirms; else `default`."""
    for k, (hint, v) in enumerate(variants):
        if not same(v, expected) and same(got, v) and confirmed(k):
            return hint
    return default


# -- task 1: the mask of a chunk -------------------------------------------------------------

def _mask_variants(q_len, seq_len):
    i = np.arange(q_len)[:, None]
    j = np.arange(seq_len)[None, :]
    off = seq_len - q_len
    return [
        ("the mask is aligned top-left (key j <= i): the new tokens are the LAST q_len of the "
         "sequence, so query i sits at position seq_len - q_len + i.", j <= i),
        ("a query sees its own key: use <= (key j <= seq_len - q_len + i), not <.",
         j < off + i),
        ("the cached prefix (keys 0 .. seq_len - q_len - 1) is visible to every new query: it "
         "comes before all of them.", (j >= off) & (j <= off + i)),
        ("causal: query i must not see keys after its own position.", np.ones_like(j <= i)),
        ("the mask is inverted: True means query i MAY attend to key j (visible), not that "
         "key j is masked out.", j > off + i),
        ("each query sees one key too many, the one after its own: query i sits at position "
         "seq_len - q_len + i (counting from 0, not 1), and sees keys up to it.",
         j <= off + i + 1),
        ("the mask is the upper triangle (np.triu): it shows query i its own key and the ones "
         "AFTER it; causal is the lower one, key j <= seq_len - q_len + i.", j >= off + i),
        ("the offset has the wrong sign: query i sits at position seq_len - q_len + i (after "
         "the cached prefix), not q_len - seq_len + i.", j <= i - off),
    ]


_MASK_FIXED = [(5, 12), (1, 9), (7, 7), (0, 6), (1, 1), (0, 0), (16, 40)]


def _mask_case(fn, q_len: int, seq_len: int) -> None:
    expected = causal_mask(q_len, seq_len)
    got = fn(q_len, seq_len)
    if got is None:
        raise NotImplementedError("chunk_mask returned None")
    listed, got = not isinstance(got, np.ndarray), as_array(got, "chunk_mask's result")
    if got.shape != expected.shape:
        hint = (f"one row per new query and one column per key of the sequence (cached ones "
                f"included): [q_len, seq_len] = {expected.shape}.")
        if got.shape == (q_len, q_len) and q_len != seq_len:
            hint = ("the columns are ALL the sequence's keys, the cached prefix too: seq_len "
                    "columns, not q_len.")
        elif listed and got.size == 0:
            hint = (f"a Python list with no rows has no columns either: return a NumPy array, "
                    f"here of shape {expected.shape} (np.zeros((q_len, seq_len), bool) keeps "
                    f"both).")
        raise Mismatch(f"chunk_mask({q_len}, {seq_len}): wrong shape", hint,
                       str(expected.shape), str(got.shape))
    if got.dtype != np.bool_:
        raise Mismatch(f"chunk_mask({q_len}, {seq_len}): dtype {got.dtype}",
                       "return a boolean array (True = visible).", "bool", str(got.dtype))
    if np.array_equal(got, expected):
        return
    i, j = (int(x[0]) for x in np.nonzero(got != expected))
    hint = _named(_mask_variants(q_len, seq_len), got, expected, np.array_equal,
                  lambda k: all(np.array_equal(probe(fn, q, n), _mask_variants(q, n)[k][1])
                                for q, n in _MASK_FIXED),
                  "query i sees key j exactly when j <= seq_len - q_len + i.")
    raise Mismatch(f"chunk_mask({q_len}, {seq_len}): first wrong cell: query {i}, key {j} "
                   f"(query {i} is at position {seq_len - q_len + i})", hint,
                   str(bool(expected[i, j])), str(bool(got[i, j])))


def chunk_mask(fn) -> CheckResult:
    """Check `fn(q_len, seq_len)` -> bool [q_len, seq_len] (True: query i sees key j)."""
    rng = case_rng(1001)
    drawn = [(int(q), int(n)) for n in rng.integers(2, 90, size=4)
             for q in [rng.integers(1, n + 1)]]
    cases = [Case("one sequence", {"q_len": q, "seq_len": n},
                  lambda q=q, n=n: _mask_case(fn, q, n)) for q, n in _MASK_FIXED + drawn]
    return run_cases("chunk_mask", "chunk_mask: the causal mask of new tokens over a cache",
                     cases)


# -- task 2: keys seen by every packed row ---------------------------------------------------

def expected_visible(indptr, seq_lens) -> np.ndarray:
    seq, i = _rows_of(np.asarray(indptr, dtype=np.int64))
    lens = np.asarray(seq_lens, dtype=np.int64)
    q_lens = np.diff(np.asarray(indptr, dtype=np.int64))
    return lens[seq] - q_lens[seq] + i + 1


def _visible_variants(indptr, seq_lens):
    indptr, lens = np.asarray(indptr, np.int64), np.asarray(seq_lens, np.int64)
    seq, i = _rows_of(indptr)
    q_lens = np.diff(indptr)
    rows = np.arange(seq.size)
    nonempty = np.flatnonzero(q_lens)             # the k-th sequence WITH rows taken as seq k
    shifted = np.repeat(np.arange(nonempty.size), q_lens[nonempty])
    return [
        ("the mask is aligned top-left: the new tokens are the LAST q_len of their sequence, "
         "so row i of sequence b sees seq_lens[b] - q_len + i + 1 keys.", i + 1),
        ("a query sees its own key too: add 1 (keys 0 .. its position).",
         lens[seq] - q_lens[seq] + i),
        ("seq_lens[b] counts the new tokens too: the cached prefix is seq_lens[b] - q_len "
         "keys, not seq_lens[b].", lens[seq] + i + 1),
        ("i counts from the sequence's first row: i = row - qo_indptr[b], not the row's place "
         "in the packed q.", lens[seq] - q_lens[seq] + rows + 1),
        ("i counts from the sequence's first row, qo_indptr[b] (qo_indptr[b + 1] is one past "
         "its last row).", lens[seq] - q_lens[seq] + rows - indptr[seq + 1] + 1),
        ("a sequence with q_len 0 owns no rows but still has its seq_lens entry: row r belongs "
         "to the b with qo_indptr[b] <= r < qo_indptr[b + 1].",
         lens[shifted] - q_lens[nonempty][shifted] + i + 1 if nonempty.size else i),
        ("causal: a row sees its prefix and the new tokens up to itself, not the whole "
         "sequence.", lens[seq]),
        ("i counts up from the sequence's first row, i = row - qo_indptr[b]: counted down from "
         "its last, the first query sees the most keys.", lens[seq] - i),
    ]


_VISIBLE_FIXED = [([0, 4, 9, 10], [4, 20, 7]),          # new prompt, chunk, decode
                  ([0, 0, 3, 3, 4], [5, 8, 2, 1]),      # q_len 0 sequences first and between
                  ([0, 1], [1])]


def _visible_of(fn, indptr, seq_lens):
    return probe(fn, np.array(indptr, np.int32), np.array(seq_lens, np.int32))


def _visible_case(fn, indptr, seq_lens) -> None:
    expected = expected_visible(indptr, seq_lens)
    passed = (indptr.copy(), seq_lens.copy())
    got = fn(*passed)
    if got is None:
        raise NotImplementedError("visible_keys returned None")
    _inputs_kept("visible_keys", passed, (indptr, seq_lens))
    got = as_array(got, "visible_keys' result")
    if got.shape != expected.shape:
        raise Mismatch("wrong shape", "one count per packed row: [qo_indptr[-1]].",
                       str(expected.shape), str(got.shape))
    if got.size and not np.issubdtype(got.dtype, np.integer):
        raise Mismatch(f"dtype {got.dtype}", "key counts are whole numbers: return an integer "
                       "array (np.zeros and np.empty make float64 unless given dtype=np.int64).",
                       "an integer dtype", str(got.dtype))
    if np.array_equal(got, expected):
        return
    r = int(np.flatnonzero(got != expected)[0])
    seq, i = _rows_of(np.asarray(indptr, np.int64))
    b = int(seq[r])
    hint = _named(_visible_variants(indptr, seq_lens), got, expected, np.array_equal,
                  lambda k: all(np.array_equal(_visible_of(fn, p, n), _visible_variants(p, n)[k][1])
                                for p, n in _VISIBLE_FIXED),
                  "row r of sequence b (i = r - qo_indptr[b]) sees seq_lens[b] - q_len + i + 1 "
                  "keys.")
    q_len = int(indptr[b + 1] - indptr[b])
    raise Mismatch(f"first wrong row {r}: sequence {b} (q_len {q_len}, seq_len "
                   f"{int(seq_lens[b])}), its query i = {int(i[r])}", hint,
                   str(int(expected[r])), str(got[r]))


def visible_keys(fn) -> CheckResult:
    """Check `fn(qo_indptr, seq_lens)` -> int [total_q]: how many keys each row sees."""
    cases = [Case("batch", {"qo_indptr": p, "seq_lens": n},
                  lambda p=p, n=n: _visible_case(fn, np.array(p, np.int32),
                                                 np.array(n, np.int32)))
             for p, n in _VISIBLE_FIXED]
    rng = case_rng(1002)
    for batch in (5, 8):
        indptr, lens = _batch(rng, batch, 70)
        cases.append(Case("random batch", {"qo_indptr": indptr.tolist(),
                                           "seq_lens": lens.tolist()},
                          lambda p=indptr, n=lens: _visible_case(fn, p, n)))
    return run_cases("visible_keys", "visible_keys: how many keys each packed query row sees",
                     cases)


# -- task 3: the K/V tiles of each query tile ------------------------------------------------

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
    def build(keys_of, tiles_of=lambda k: -(-k // kv_tile), empty=False, packed=False):
        out = []
        for b, (q_len, n) in enumerate(zip(np.diff(indptr), seq_lens)):
            q_len, n = int(q_len), int(n)
            start = int(indptr[b]) if packed else 0   # (packed: the row in the packed q)
            if empty and q_len == 0:
                out.append((b, start, tiles_of(keys_of(q_len, n, 0))))
            for first in range(0, q_len, rows):
                out.append((b, start + first, tiles_of(keys_of(q_len, n, first))))
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
        (POW2_HINT.format(name="kv_tile", n=kv_tile),
         build(lambda q, n, f: n - q + last(q, f) + 1, lambda k: pow2_div(k + kv_tile - 1,
                                                                           kv_tile))),
        ("a sequence with q_len 0 has no new tokens: it gets no query tile.",
         build(lambda q, n, f: n - q + last(q, f) + 1, empty=True)),
        ("the mask is aligned bottom-right: a tile's last row sits at position "
         "seq_len - q_len + its index, after the cached prefix.",
         build(lambda q, n, f: last(q, f) + 1)),
        ("first counts from the sequence's own first row (0, rows, 2*rows, ...), not from "
         "the start of the packed q: leave qo_indptr[b] out of it.",
         build(lambda q, n, f: n - q + last(q, f) + 1, packed=True)),
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
    _inputs_kept("tile_work", passed, (indptr, seq_lens))
    got = _as_triples(got)
    if got == expected:
        return
    hint = _named(_tile_variants(indptr, seq_lens, rows, kv_tile), got, expected,
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
        indptr, lens = _batch(rng, 6, 200)
        cases.append(Case("random batch", {"qo_indptr": indptr.tolist(),
                                           "seq_lens": lens.tolist(), "rows": rows,
                                           "kv_tile": kv_tile},
                          lambda p=indptr, n=lens, r=rows, k=kv_tile: _tiles_case(fn, p, n, r, k)))
    return run_cases("tile_work", "tile_work: the K/V tiles each query tile loads", cases)
