"""Workbooks 01, 02 and 08 walked as a learner, wrong answers first: mistakes whose check used
to print no hint, only the general formula, or a hint naming another mistake, now get a hint
that names them.

Workbook 01: append_tokens that takes floor((seq_len + n_new) / page_size) + 1 pages (named as
room left unused on the last page); a row's page count printed as "1 pages". Workbook 02: a slot whose in-page offset is multiplied by page_size; an element offset with
kv_head and dim swapped. Workbook 08: kv_bytes that counts numbers, not bytes (no dtype
size: fp32 printed no hint, fp16 named the K/V factor 2); kv_bytes that adds a token to
each sequence.
"""
import numpy as np

from tests.check_helpers import assert_caught, run_check


def append_floor_plus_one(table, seq_len, n_new, page_size, allocator):
    need = (seq_len + n_new) // page_size + 1 - len(table)
    if need > 0:
        table.extend(allocator.allocate(need))


def tables_with_a_page_for_empty(seq_lens, page_size, allocator):
    counts = [max(1, -(-n // page_size)) for n in seq_lens]
    tables = np.full((len(seq_lens), max(counts, default=1)), -1, dtype=np.int32)
    for row, count in zip(tables, counts):
        row[:count] = allocator.allocate(count)
    return tables, np.asarray(seq_lens, dtype=np.int32)


def slot_offset_times_page(row, token, page_size):
    return int(row[token // page_size]) * page_size + (token % page_size) * page_size


def offset_head_dim_swapped(slot, kv_head, dim, num_kv_heads, head_dim):
    return (slot * num_kv_heads + dim) * head_dim + kv_head


def bytes_without_dtype(seq_lens, num_heads, num_kv_heads, head_dim, dtype):
    return 2 * int(np.sum(seq_lens)) * num_kv_heads * head_dim


def bytes_one_token_more(seq_lens, num_heads, num_kv_heads, head_dim, dtype):
    tokens = sum(int(n) + 1 for n in seq_lens)
    return 2 * tokens * num_kv_heads * head_dim * np.dtype(dtype).itemsize


def bytes_without_v(seq_lens, num_heads, num_kv_heads, head_dim, dtype):
    return int(np.sum(seq_lens)) * num_kv_heads * head_dim * np.dtype(dtype).itemsize


def test_slot_offset_times_page_size_is_named():
    assert_caught("slot_of", slot_offset_times_page, "not times page_size")


def test_kv_offset_head_and_dim_swapped_is_named():
    assert_caught("kv_offset", offset_head_dim_swapped, "kv_head and dim are swapped")


def test_kv_bytes_without_dtype_size_is_named_in_every_case():
    result, printed = assert_caught("kv_bytes", bytes_without_dtype, "count of numbers",
                                    not_phrases=["count both K and V"])
    failed = [c for c in result.cases if not c.passed]
    assert failed[0].hint and "float32 is 4 bytes" in failed[0].hint, printed


def test_kv_bytes_forgotten_v_still_named_in_fp16():
    # the dtype probe must not take the K/V half for a missing dtype size
    assert_caught("kv_bytes", bytes_without_v, "count both K and V",
                  not_phrases=["count of numbers"])


def test_kv_bytes_one_token_more_is_named():
    assert_caught("kv_bytes", bytes_one_token_more, "not one more")


def test_append_floor_plus_one_is_named_not_the_room_left():
    assert_caught("append_tokens", append_floor_plus_one, "ceil is not floor + 1",
                  not_phrases=["still has room"])


def test_row_page_count_is_singular_for_one_page():
    result, printed = run_check("block_tables", tables_with_a_page_for_empty)
    assert "holds 1 page" in printed and "holds 1 pages" not in printed, printed
