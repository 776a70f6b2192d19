"""Checks for lesson 10 in Python: the chunked-prefill mask and the keys each packed query row
sees (task 3, the K/V tiles each query tile of the tensor-core kernel loads, is in
checks_tile_work.py, which uses this module's mixed_batch, inputs_kept and named_mistake).

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
from .compare import changed_input
from .report import Case, CheckResult, Mismatch, as_array, probe, run_cases
from .seeds import case_rng   # the grader salts the random cases


def mixed_batch(rng, batch: int, max_len: int):
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


def inputs_kept(task: str, passed, given) -> None:
    """The answer left qo_indptr and seq_lens as they were: the caller (the wrapper's plan,
    the next task) reads them again."""
    names = ("qo_indptr", "seq_lens")
    hints = {name: f"`x = {name}` makes no copy, so `x -= ...` or `x[...] = ...` writes into "
                   f"the caller's array; compute a new one (`{name} - ...`, or .astype / "
                   ".copy() first)" for name in names}
    changed = changed_input(task, dict(zip(names, given)), dict(zip(names, passed)), hints)
    if changed:
        raise changed


def named_mistake(variants, got, expected, same, confirmed, default: str) -> str:
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
        *[(f"the offset is the cached prefix's length, seq_len - q_len, not {name}: query i "
           "sits at position seq_len - q_len + i.", j <= offset + i)
          for name, offset in (("q_len", q_len), ("q_len - 1", q_len - 1))],
        ("query i sees the new tokens before it too (keys seq_len - q_len .. its own), not "
         "only the cached prefix and its own key: key j <= seq_len - q_len + i.",
         (j < off) | (j == off + i)),
        ("the rows are upside down: row i is the i-th new token counted from the FIRST one "
         "(at position seq_len - q_len), so row 0 sees the fewest keys and the last row all "
         "of them: key j <= seq_len - q_len + i, not seq_len - 1 - i.", j <= seq_len - 1 - i),
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
    hint = named_mistake(
        _mask_variants(q_len, seq_len), got, expected, np.array_equal,
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
        ("row i sees the new tokens before it too, not only the cached prefix and its own "
         "key: seq_lens[b] - q_len + i + 1 keys, not seq_lens[b] - q_len + 1.",
         lens[seq] - q_lens[seq] + 1),
        *[(_SEARCHSORTED_LEFT, _keys_seen(indptr, lens, b))
          for b in _searchsorted_left_sequences(indptr)],
    ]


_SEARCHSORTED_LEFT = (
    "row r belongs to the b with qo_indptr[b] <= r < qo_indptr[b + 1]: "
    "np.searchsorted(qo_indptr, r, side='right') - 1. With side='left' a sequence's first row "
    "(r == qo_indptr[b]) goes to the sequence before it.")


def _searchsorted_left_sequences(indptr):
    """The sequence each row gets from searchsorted(side='left') - 1: as computed (row 0 at
    -1, which NumPy reads as the last sequence), and with -1 clipped to 0."""
    b = np.searchsorted(indptr, np.arange(indptr[-1]), side="left") - 1
    return b, np.maximum(b, 0)


def _keys_seen(indptr, lens, b):
    """What rows r = 0, 1, ... count when row r is taken as sequence b[r]'s."""
    q_lens = np.diff(indptr)
    return lens[b] - q_lens[b] + np.arange(b.size) - indptr[b] + 1


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
    inputs_kept("visible_keys", passed, (indptr, seq_lens))
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
    hint = named_mistake(
        _visible_variants(indptr, seq_lens), got, expected, np.array_equal,
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
        indptr, lens = mixed_batch(rng, batch, 70)
        cases.append(Case("random batch", {"qo_indptr": indptr.tolist(),
                                           "seq_lens": lens.tolist()},
                          lambda p=indptr, n=lens: _visible_case(fn, p, n)))
    return run_cases("visible_keys", "visible_keys: how many keys each packed query row sees",
                     cases)
