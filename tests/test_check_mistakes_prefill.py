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


def tiles(keys="last", ceil=True, empty=False, top_left=False, clip=True):
    def fn(indptr, seq_lens, rows, kv_tile):
        out = []
        for b, (q_len, n) in enumerate(zip(np.diff(indptr), seq_lens)):
            q_len, n = int(q_len), int(n)
            starts = list(range(0, q_len, rows)) or ([0] if empty else [])
            for first in starts:
                row = first if keys == "first" else (min(first + rows, q_len) if clip
                                                     else first + rows) - 1
                k = n if keys == "all" else (0 if top_left else n - q_len) + row + 1
                out.append((b, first, -(-k // kv_tile) if ceil else k // kv_tile))
        return out
    return fn


MISTAKES = [
    ("chunk_mask", mask(top_left=True), "aligned top-left", ["use <=", "cached prefix (keys"]),
    ("chunk_mask", mask(op=np.less), "use <="),
    ("chunk_mask", mask(hide_prefix=True), "cached prefix"),
    ("chunk_mask", mask(width=lambda q, n: q), "the cached prefix too"),
    ("chunk_mask", lambda q, n: np.ones((q, n), bool), "must not see keys after"),
    ("chunk_mask", lambda q, n: mask()(q, n).astype(int), "boolean"),
    ("visible_keys", visible(top_left=True), "aligned top-left"),
    ("visible_keys", visible(plus=0), "its own key"),
    ("visible_keys", visible(global_rows=True), "i = row - qo_indptr[b]",
     ["LAST q_len", "q_len 0"]),
    ("visible_keys", visible(from_end=True), "one past its last row"),
    ("visible_keys", visible(skip_empty=True), "q_len 0"),
    ("visible_keys", lambda p, n: np.asarray(n, np.int64)[_rows(p)[0]], "not the whole"),
    ("tile_work", tiles(keys="all"), "never needed"),
    ("tile_work", tiles(keys="first"), "LAST row"),
    ("tile_work", tiles(clip=False), "may be partial"),
    ("tile_work", tiles(ceil=False), "round up"),
    ("tile_work", tiles(empty=True), "no query tile", ["round up", "LAST row"]),
    ("tile_work", tiles(top_left=True), "bottom-right"),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_caught(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


@pytest.mark.parametrize("task, impl", [("chunk_mask", mask()), ("visible_keys", visible()),
                                        ("tile_work", tiles())])
def test_correct_versions_pass(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError
    result, _ = run_check("chunk_mask", stub)
    assert result.status == "not attempted"
