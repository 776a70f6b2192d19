"""Workbooks 10 and 11 walked as a learner, wrong answers first: mistakes whose check used to
print only the general recipe now get a hint that names them.

Workbook 10: a chunk mask whose rows run from the newest token, rows mapped to sequences with
searchsorted(side='left'), the K/V tile count taken as the last tile's index, a partial last
query tile dropped. Workbook 11: scales from the range max - min (an asymmetric format's),
a code converted to signed char before it is clamped, an amax loop that does not stride, every
head reading head 0's row of k. The kernels are the solution's with one edit, run on the CPU
executor.
"""
import numpy as np
import pytest

from tests.check_helpers import assert_caught, mutate, solution_source


def _rows(indptr):
    """(sequence of each packed row, its index in the sequence, each sequence's q_len)."""
    indptr = np.asarray(indptr, np.int64)
    q_lens = np.diff(indptr)
    seq = np.repeat(np.arange(q_lens.size), q_lens)
    return seq, np.arange(seq.size) - indptr[seq], q_lens


def mask_rows_from_newest(q_len, seq_len):
    return np.tril(np.ones((q_len, seq_len), bool), seq_len - q_len)[::-1]


def visible_searchsorted_left(clip):
    def visible_keys(qo_indptr, seq_lens):
        r = np.arange(qo_indptr[-1])
        b = np.searchsorted(qo_indptr, r, side="left") - 1
        b = np.maximum(b, 0) if clip else b
        q_lens = np.diff(qo_indptr)
        return seq_lens[b] - q_lens[b] + r - qo_indptr[b] + 1
    return visible_keys


def tiles(count, whole_query_tiles_only=False):
    def tile_work(qo_indptr, seq_lens, rows, kv_tile):
        work = []
        for b, (q_len, seq_len) in enumerate(zip(np.diff(qo_indptr), seq_lens)):
            q_len, seq_len = int(q_len), int(seq_len)
            end = q_len // rows * rows if whole_query_tiles_only else q_len
            for first in range(0, end, rows):
                keys = seq_len - q_len + min(first + rows, q_len)
                work.append((b, first, count(keys, kv_tile)))
        return work
    return tile_work


def scales_from_range(levels):
    def kv_scales(x, qmax):
        span = x.max(-1) - x.min(-1)
        return np.where(span > 0, span / levels(qmax), 1.0).astype(np.float32)
    return kv_scales


NUMPY_MISTAKES = [
    ("chunk_mask", mask_rows_from_newest, "rows are upside down"),
    ("visible_keys", visible_searchsorted_left(clip=False), "side='left'"),
    ("visible_keys", visible_searchsorted_left(clip=True), "side='left'"),
    ("tile_work", tiles(lambda keys, kv: (keys - 1) // kv), "index of the last k/v tile"),
    ("tile_work", tiles(lambda keys, kv: -(-keys // kv), whole_query_tiles_only=True),
     "not q_len // rows"),
    ("kv_scales", scales_from_range(lambda q: 2 * q), "asymmetric format"),
    ("kv_scales", scales_from_range(lambda q: 2 * q + 1), "asymmetric format"),
]


@pytest.mark.parametrize("task, impl, phrase", NUMPY_MISTAKES,
                         ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(NUMPY_MISTAKES)])
def test_numpy_mistake_is_named(task, impl, phrase):
    assert_caught(task, impl, phrase)


CLAMP = "(signed char)fminf(fmaxf(rintf(row[d] / scale), -127.0f), 127.0f)"
AMAX_LOOP = "for (int d = lane; d < head_dim; d += 32) amax = fmaxf(amax, fabsf(row[d]));"
ROW = "k + ((long long)token * num_kv_heads + head) * head_dim"

WRITE_MISTAKES = [
    ("clamped after the conversion",
     [(CLAMP, "(signed char)max(-127, min(127, (int)(signed char)rintf(row[d] / scale)))")],
     "clamp before the conversion"),
    ("amax of d = lane only",
     [(AMAX_LOOP, "if (lane < head_dim) amax = fmaxf(amax, fabsf(row[lane]));")],
     "stride the amax loop"),
    ("head 0's row for every head", [(ROW, "k + (long long)token * num_kv_heads * head_dim")],
     "read head 0's row"),
]


@pytest.mark.parametrize("name, edits, phrase", WRITE_MISTAKES, ids=[m[0] for m in WRITE_MISTAKES])
def test_quantize_write_mistake_is_named(name, edits, phrase):
    source = mutate(solution_source("11_kv_compression.ipynb", "SOURCE_WRITE"), edits)
    assert_caught("quantize_write", source, phrase, device="cpu")
