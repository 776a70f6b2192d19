"""Wrong answers of workbooks 00, 01, 02 and 10's Python tasks, each the solution with one
edit, that the checks failed with no hint, or with a hint naming another mistake.

1. pages_needed: seq_len / page_size (true division, 2.5 pages) got no hint.
2. reserved_waste and paged_waste: a guard returning 1.0 for a batch with nothing reserved
   (or allocated) was told "not by one max_len" alone, or given no hint.
3. paged_waste: allocated = pages.sum() (the page count, not its slots), and every request
   given the longest one's pages, got no hint.
4. append_tokens: all ceil((seq_len + n_new) / page_size) pages taken again (- len(table)
   forgotten) was told "one page per token" or "one page too many".
5. slot_of: row[t % page_size] for the page was told only "not t // page_size + 1".
6. kv_offset: slot * num_kv_heads * head_dim + kv_head + dim (kv_head not times head_dim) got
   the formula alone.
7. gather_numpy: the page id not multiplied by page_size, and // and % swapped, got the formula
   alone.
8. tile_work: the keys returned for the K/V tiles, and the keys divided by rows, got the
   recipe alone.
"""
import pytest

from tests.check_helpers import as_params, assert_caught, assert_several_fit, run_check, \
    solution_of

_GUARD_RETURNS_ONE = [("        return 0.0\n", "        return 1.0\n")]
_SLOTS = "np.asarray(block_table_row)[t // page_size] * page_size + t % page_size"

MISTAKES = [
    ("pages_needed", solution_of("00", "pages_needed", [("-(-seq_len // page_size)",
                                                       "seq_len / page_size")]),
     "/ is true division: seq_len / page_size is a fraction of a page"),
    ("reserved_waste", solution_of("00", "reserved_waste", _GUARD_RETURNS_ONE),
     "with nothing reserved there is nothing to waste: return 0.0 for that case, not 1"),
    ("paged_waste", solution_of("00", "paged_waste", _GUARD_RETURNS_ONE),
     "with nothing allocated there is nothing to waste: return 0.0 for that case, not 1"),
    ("paged_waste", solution_of("00", "paged_waste", [("allocated = pages.sum() * page_size",
                                                     "allocated = pages.sum()")]),
     "divides the tokens by the number of pages, not by the slots the pages hold"),
    ("paged_waste", solution_of("00", "paged_waste", [(
        "allocated = pages.sum() * page_size",
        "allocated = len(seq_lens) * pages.max() * page_size")]),
     "that gives every request the longest one's pages"),
    ("append_tokens", solution_of("01", "append_tokens", [(" - len(table)", "")]),
     "the table already holds len(table) of them: take only the missing ones",
     ["you took one page per token", "take a new page only when the last one is full"]),
    ("slot_of", solution_of("02", "slot_of", [("block_table_row[token // page_size]",
                                             "block_table_row[token % page_size]")]),
     "the page is entry t // page_size of the row, not entry t % page_size"),
    ("kv_offset", solution_of("02", "kv_offset", [(
        "(slot * num_kv_heads + kv_head) * head_dim + dim",
        "slot * num_kv_heads * head_dim + kv_head + dim")]),
     "consecutive kv heads of a slot are head_dim values apart, not 1"),
    ("gather_numpy", solution_of("02", "gather_numpy", [(
        _SLOTS, "np.asarray(block_table_row)[t // page_size] + t % page_size")]),
     "yours adds the offset to the page id itself"),
    ("gather_numpy", solution_of("02", "gather_numpy", [(
        _SLOTS, "np.asarray(block_table_row)[t % page_size] * page_size + t // page_size")]),
     "t // page_size is the virtual page and t % page_size the offset inside it"),
    ("tile_work", solution_of("10", "tile_work", [(
        "work.append((b, first, -(-keys // kv_tile)))", "work.append((b, first, keys))")]),
     "that is the keys the tile's last row sees, not K/V tiles"),
    ("tile_work", solution_of("10", "tile_work", [("-(-keys // kv_tile)",
                                                 "-(-keys // rows)")]),
     "divide the keys by kv_tile, not by rows"),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_named(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


def test_a_guard_of_one_beside_one_max_len_names_both():
    """With no requests, 1 - used / max_len is 1.0 too: both mistakes fit the empty batch."""
    assert_several_fit("reserved_waste", solution_of("00", "reserved_waste", _GUARD_RETURNS_ONE),
                       {"seq_lens": [], "max_len": 2048}, "result",
                       ["not by one max_len", "return 0.0 for that case, not 1"])


def test_the_empty_batch_of_paged_waste_names_the_guard_alone():
    impl = solution_of("00", "paged_waste", _GUARD_RETURNS_ONE)
    result, printed = run_check("paged_waste", impl)
    case = next(c for c in result.cases if c.params == {"seq_lens": [], "page_size": 16})
    assert case.hint == ("with nothing allocated there is nothing to waste: return 0.0 for "
                         "that case, not 1."), printed


def test_append_tokens_for_the_new_tokens_alone_is_not_told_it_took_all_again():
    impl = solution_of("01", "append_tokens", [(
        "-(-(seq_len + n_new) // page_size) - len(table)", "-(-n_new // page_size)")])
    assert_caught("append_tokens", impl, "the sequence's last page still has room",
                  not_phrases=["the table already holds len(table)"])


@pytest.mark.parametrize("task, workbook, name", [
    ("pages_needed", "00", "pages_needed"),
    ("reserved_waste", "00", "reserved_waste"),
    ("paged_waste", "00", "paged_waste"),
    ("append_tokens", "01", "append_tokens"),
    ("slot_of", "02", "slot_of"),
    ("kv_offset", "02", "kv_offset"),
    ("gather_numpy", "02", "gather_numpy"),
    ("tile_work", "10", "tile_work"),
])
def test_the_solution_passes(task, workbook, name):
    result, printed = run_check(task, solution_of(workbook, name))
    assert result.passed, printed


@pytest.mark.parametrize("task, name, edits", [
    ("reserved_waste", "reserved_waste", [("        return 0.0\n", "        return 0\n")]),
    ("paged_waste", "paged_waste", [("if allocated == 0:", "if seq_lens.sum() == 0:")]),
])
def test_right_guards_still_pass(task, name, edits):
    result, printed = run_check(task, solution_of("00", name, edits))
    assert result.passed, printed
