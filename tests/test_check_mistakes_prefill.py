"""Workbook 10's checks fail the classic wrong answers, with a hint that names the mistake.

Each wrong version is written here the way a learner gets it wrong; each case asserts that
the check fails (not "not attempted") and that the printed hint names the mistake. The
correct versions pass (so the checks are not simply strict).
"""
import numpy as np
import pytest

from tests.check_helpers import as_params, assert_caught, run_check


def _rows(indptr):
    indptr = np.asarray(indptr, np.int64)
    q_lens = np.diff(indptr)
    seq = np.repeat(np.arange(q_lens.size), q_lens)
    return seq, np.arange(seq.size) - indptr[seq], q_lens


def mask(op=np.less_equal, top_left=False, hide_prefix=False, width=None):
    def fn(q_len, seq_len):
        i = np.arange(q_len)[:, None]
        j = np.arange(seq_len if width is None else width(q_len, seq_len))[None, :]
        off = 0 if top_left else seq_len - q_len
        out = op(j, off + i)
        return out & (j >= seq_len - q_len) if hide_prefix else out
    return fn


def visible(top_left=False, plus=1, global_rows=False, from_end=False, skip_empty=False):
    def fn(indptr, seq_lens):
        seq, i, q_lens = _rows(indptr)
        if global_rows:
            i = np.arange(seq.size)
        if from_end:     # offsets taken from the next sequence's first row
            i = np.arange(seq.size) - np.asarray(indptr, np.int64)[seq + 1]
        if skip_empty:   # the k-th sequence with rows read as sequence k
            nonempty = np.flatnonzero(q_lens)
            seq = np.repeat(np.arange(nonempty.size), q_lens[nonempty])
            q_lens = q_lens[nonempty]
        lens = np.asarray(seq_lens, np.int64)
        return (0 if top_left else lens[seq] - q_lens[seq]) + i + plus
    return fn


def tiles(keys="last", ceil=True, empty=False, top_left=False, clip=True, extra=1,
          rounding=None):
    """`extra`: the keys a row at position p sees (p + 1; 0 counts the position, 2 one too
    many); `clip="off"`: the partial tile's last row taken as min(first + rows - 1, q_len)."""
    def fn(indptr, seq_lens, rows, kv_tile):
        out = []
        for b, (q_len, n) in enumerate(zip(np.diff(indptr), seq_lens)):
            q_len, n = int(q_len), int(n)
            starts = list(range(0, q_len, rows)) or ([0] if empty else [])
            for first in starts:
                end = {True: min(first + rows, q_len), False: first + rows,
                       "off": min(first + rows - 1, q_len) + 1}[clip]
                row = first if keys == "first" else end - 1
                k = n if keys == "all" else (0 if top_left else n - q_len) + row + extra
                tiles_ = rounding(k, kv_tile) if rounding else \
                    -(-k // kv_tile) if ceil else k // kv_tile
                out.append((b, first, tiles_))
        return out
    return fn


def clamped(indptr, seq_lens, rows, kv_tile):
    """Right too: the unclipped last row's keys, capped at the sequence's length."""
    return [(b, first, -(-min(n - q_len + first + rows, n) // kv_tile))
            for b, (q_len, n) in enumerate(zip(np.diff(indptr).tolist(), seq_lens.tolist()))
            for first in range(0, q_len, rows)]


def visible_into_seq_lens(indptr, seq_lens):
    """Right counts, but `prefix = seq_lens` is an alias: the -= writes into the caller's."""
    prefix = seq_lens
    prefix -= np.diff(indptr).astype(prefix.dtype)
    seq, i, _ = _rows(indptr)
    return prefix[seq].astype(np.int64) + i + 1


def tiles_into_seq_lens(indptr, seq_lens, rows, kv_tile):
    """Right tiles, with the cached prefix computed in the caller's seq_lens."""
    q_lens = np.diff(indptr)
    cached = seq_lens
    cached -= q_lens.astype(cached.dtype)
    return [(b, first, -(-(int(cached[b]) + min(first + rows, int(q))) // kv_tile))
            for b, q in enumerate(q_lens) for first in range(0, int(q), rows)]


MISTAKES = [
    ("chunk_mask", mask(top_left=True), "aligned top-left", ["use <=", "cached prefix (keys"]),
    ("chunk_mask", mask(op=np.less), "use <="),
    ("chunk_mask", mask(hide_prefix=True), "cached prefix"),
    ("chunk_mask", mask(width=lambda q, n: q), "the cached prefix too"),
    ("chunk_mask", lambda q, n: np.ones((q, n), bool), "must not see keys after"),
    ("chunk_mask", lambda q, n: mask()(q, n).astype(int), "boolean"),
    ("chunk_mask", mask(op=np.greater), "inverted"),                    # True = masked out
    ("chunk_mask", mask(op=np.greater_equal), "j <= seq_len - q_len + i",   # triu, not tril
     ["cached prefix (keys"]),
    ("chunk_mask", lambda q, n: [[bool(x) for x in r] for r in mask()(q, n)], "Python list"),
    ("visible_keys", visible(top_left=True), "aligned top-left"),
    ("visible_keys", visible(plus=0), "its own key"),
    ("visible_keys", visible(global_rows=True), "i = row - qo_indptr[b]",
     ["LAST q_len", "q_len 0"]),
    ("visible_keys", visible(from_end=True), "one past its last row"),
    ("visible_keys", visible(skip_empty=True), "q_len 0"),
    ("visible_keys", lambda p, n: np.asarray(n, np.int64)[_rows(p)[0]], "not the whole"),
    ("visible_keys", lambda p, n: visible()(p, n).astype(float), "integer array"),
    ("visible_keys", lambda p, n: visible()(p, n) + _rows(p)[2][_rows(p)[0]],
     "counts the new tokens too"),                                     # seq_lens = cached only
    ("tile_work", tiles(keys="all"), "never needed"),
    ("tile_work", tiles(keys="first"), "LAST row"),
    ("tile_work", tiles(clip=False), "may be partial"),
    ("tile_work", tiles(ceil=False), "round up"),
    ("tile_work", tiles(empty=True), "no query tile", ["round up", "LAST row"]),
    ("tile_work", tiles(top_left=True), "bottom-right"),
    ("tile_work", tiles(clip="off"), "off by one in a partial last tile"),
    ("tile_work", tiles(extra=0), "p + 1 keys", ["round up"]),
    ("tile_work", tiles(extra=2), "one K/V tile too many", ["whole sequence"]),
    ("tile_work", tiles(rounding=lambda k, t: k // t + 1), "one K/V tile too many",
     ["whole sequence"]),
    ("tile_work", tiles(rounding=lambda k, t: k / t), "loaded whole"),
    ("visible_keys", visible_into_seq_lens, "changed its input seq_lens"),
    ("tile_work", tiles_into_seq_lens, "changed its input seq_lens"),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_caught(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


@pytest.mark.parametrize("task, impl", [
    ("chunk_mask", mask()), ("visible_keys", visible()), ("tile_work", tiles()),
    ("chunk_mask", lambda q, n: np.tri(q, n, k=n - q, dtype=bool)),
    ("visible_keys", lambda p, n: visible()(p, n).astype(np.int32)),
    ("tile_work", tiles(rounding=lambda k, t: np.ceil(k / t))),          # whole floats
    ("tile_work", clamped)])
def test_correct_versions_pass(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError
    result, _ = run_check("chunk_mask", stub)
    assert result.status == "not attempted"
