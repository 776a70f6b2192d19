"""Prefill kernel mistakes (workbooks 04 and 05) in a thread's own rows and its state: q or
out at a row that leaves the head or the sequence out, a score carried from key to key, and
acc or the running sum reset at every key. The prompt's `row` (given code in both workbooks)
is right; these are a learner's own index written in its place, a score declared outside the
loop over the keys, or the softmax state zeroed inside it.

`row_mistakes` gives (hint, thunk) pairs for `compare.diagnose` (the wrong q row, the carried
score and the reset state change the values); `out_rows_hint` reads the rows out was written
at, since a wrong out row leaves the right rows unwritten.
"""
from __future__ import annotations

import numpy as np

from .report import several_fit
from .variants import attention_variant

ROW = "((b * max_len + t) * num_heads + h) * head_dim"
# the rows a thread's own index reaches instead of `row`, by form: (flat row of (b, t, h) in
# units of head_dim, the hint's words for that index)
_ROW_FORMS = {
    "head0": (lambda b, t, h, max_len, heads: (b * max_len + t) * heads,
              "(b * max_len + t) * num_heads * head_dim, head 0's row: + h is missing"),
    "no_heads": (lambda b, t, h, max_len, heads: b * max_len + t,
                 "(b * max_len + t) * head_dim, which leaves out num_heads and h"),
    "no_batch": (lambda b, t, h, max_len, heads: t * heads + h,
                 "(t * num_heads + h) * head_dim, sequence 0's row: b * max_len is missing"),
}
CARRIED_SCORE_HINT = ("the score is not reset for each key: declare `float score = 0.0f;` "
                      "inside the loop over the keys (yours carries the previous key's score "
                      "into the next key's dot product).")
_RESET_HINTS = {
    "acc_reset": "the accumulator is set to 0 at every key (inside the loop over the keys): "
                 "only the last key's weighted value is left in it. Zero acc once, before the "
                 "loop, and rescale it at each key.",
    "sum_reset": "the running sum is set to 0 at every key (inside the loop over the keys): "
                 "only the last key's weight is left in it. Zero it once, before the loop, and "
                 "rescale it at each key.",
}


def _threads(batch: int, max_len: int, heads: int):
    """(b, t, h) of every thread, each [batch, max_len, heads]."""
    return np.meshgrid(np.arange(batch), np.arange(max_len), np.arange(heads), indexing="ij")


def _q_read_at(q, form: str):
    """q [batch, max_len, heads, dim] as each thread (b, t, h) reads it at row `form`."""
    batch, max_len, heads, dim = q.shape
    rows = _ROW_FORMS[form][0](*_threads(batch, max_len, heads), max_len, heads)
    return q.reshape(-1, dim)[rows]


def _carried(qr, keys, scale: float, *, rescaled: bool, page: int | None):
    """Scores [queries, keys] / scale of a score never reset: score_j = (score_{j-1} + q.k_j)
    * scale where the scale comes after the sum (`rescaled`), else score_j = score_{j-1} +
    q.k_j * scale (q scaled first); reset at every page of `page` keys, if given."""
    dots = qr @ keys.T
    carried = np.zeros_like(dots)
    for j in range(dots.shape[1]):
        before = carried[:, j - 1] if j and (page is None or j % page) else 0.0
        carried[:, j] = before * (scale if rescaled else 1.0) + dots[:, j]
    return carried


def row_mistakes(case, *, tiled: bool):
    """(hint, thunk) pairs: q read at a row without the head or the sequence, a score
    carried from key to key (tiled: also reset per page, a score declared in the page loop),
    and acc or the running sum set to 0 at every key."""
    args = (case.k_cache, case.v_cache, case.block_tables, case.seq_lens, case.scale)
    page_size = case.k_cache.shape[1]

    def q_at(form):
        return lambda: attention_variant(_q_read_at(case.q, form), *args)

    def carried(**how):
        return lambda: attention_variant(case.q, *args, dot=lambda qr, keys: _carried(
            qr, keys, case.scale, **how))

    hints = [(f"q's row is read at {text}: thread (b, t, h) reads its query at the given "
              f"`row` = {ROW}.", q_at(form)) for form, (_, text) in _ROW_FORMS.items()]
    hints += [(CARRIED_SCORE_HINT, carried(rescaled=True, page=None)),
              (CARRIED_SCORE_HINT, carried(rescaled=False, page=None))]
    if tiled:
        hints.append((CARRIED_SCORE_HINT, carried(rescaled=False, page=page_size)))
    return hints + [(text, lambda bug=bug: attention_variant(case.q, *args, online_bug=bug))
                    for bug, text in _RESET_HINTS.items()]


def out_rows_hint(never, valid) -> str | None:
    """The rows of out a real token's thread wrote are those of an index without the head or
    the sequence, and its own rows (`row`) were never written: name every index that fits."""
    batch, max_len, heads, dim = never.shape
    written = ~never.reshape(-1, dim).all(axis=1)
    b, t, h = _threads(batch, max_len, heads)
    real = np.broadcast_to(valid[..., 0], b.shape)
    right = ((b * max_len + t) * heads + h)[real]
    fits = []
    for rows, text in _ROW_FORMS.values():
        theirs = rows(b, t, h, max_len, heads)
        lost = np.setdiff1d(right, theirs)   # the right rows no thread's index reaches
        if lost.size and written[theirs[real]].all() and not written[lost].any():
            fits.append(f"out's rows {ROW} of the real tokens were never written: yours "
                        f"stores at {text}. Store at the given `row` (q's row too).")
    return several_fit(fits, "rows") if fits else None
