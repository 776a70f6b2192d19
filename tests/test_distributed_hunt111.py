"""Hunt 111: `unpack_tables` refuses sizes its buffer was not packed with, by name (a smaller
max_batch read table entries as sequence lengths, and every rank planned from them)."""
import numpy as np
import pytest

from pagedattn_lab.distributed import pack_tables, unpack_tables

TABLES = np.arange(12, dtype=np.int32).reshape(3, 4)
LENS = np.array([5, 6, 7], np.int32)


@pytest.mark.parametrize("args, exc, match", [
    ((6,), None, None),
    ((2,), ValueError, r"max_batch, max_pages: buf holds 3 rows of 4 pages, more than "
                       r"max_batch=2"),
    ((-1,), ValueError, r"max_batch: expected an int >= 0, got -1"),
    ((True,), TypeError, r"max_batch: expected an int, got True"),
    ((6, 3), ValueError, r"buf holds 3 rows of 4 pages, more than max_batch=6, max_pages=3"),
    ((6, 7), ValueError, r"buf: 50 entries, not the 57"),   # a decode buffer as prefill
])
def test_unpack_tables_refuses_sizes_it_was_not_packed_with(args, exc, match):
    buf = pack_tables(TABLES, LENS, 6, 7)
    if exc is None:
        tables, lens = unpack_tables(buf, *args)
        assert tables.tolist() == TABLES.tolist() and lens.tolist() == LENS.tolist()
        return
    with pytest.raises(exc, match=match):
        unpack_tables(buf, *args)


def test_unpack_tables_refuses_a_short_or_shapeless_buffer():
    buf = pack_tables(TABLES, LENS, 6, 7)
    with pytest.raises(ValueError, match=r"buf: 8 entries, not a size pack_tables fills"):
        unpack_tables(buf[:8], 6)
    with pytest.raises(ValueError, match=r"buf: expected the 1-D buffer pack_tables fills"):
        unpack_tables(buf.reshape(2, -1), 6)


def test_a_prefill_buffer_round_trips():
    indptr = np.array([0, 1, 3, 6], np.int32)
    buf = pack_tables(TABLES, LENS, 6, 7, indptr)
    got = unpack_tables(buf, 6, 7)
    assert [g.tolist() for g in got] == [TABLES.tolist(), LENS.tolist(), indptr.tolist()]
