"""Wrong answers of workbooks 07, 08, 12 and 13, each the solution with one edit, that the
checks failed with a hint naming another mistake (or with no hint at all).

1. pages_for_next_token: 2 for a shared last page (a copy and a new page) was told the page
   has one owner and room.
2. decode_step: the page test run inside the append loop (after some appends) was told
   "needed >= num_free" where the first case ran, and "count with pages_for_next_token, not
   seq_len % page_size" where the step did count the fork's copy, only after an append.
3. serve: the running sequences promised pages(total - held), the pages of their tokens
   still to come, were told "rounds down", "<" or "finished a step late".
4. decode_floor_ms: seconds / 1000 got no hint.
5. choose_page_size: the batch's total rounded up once was told its waste is 0 or below.
6. schedule_step: the running requests' tokens taken from the budget twice were told "an off
   by one" in the waiting prompt's chunk.
7. wire_bytes: the table buffer counted once per rank was told int64 entries alone; rows of
   the shortest sequence's pages were told "a row per sequence" or given no hint.
"""
import pytest

import pagedattn_lab as pl
from pagedattn_lab.grading.checks_system_errors import raised_by_the_pool
from tests.check_helpers import as_params, assert_caught, run_check, solution_of

_CHECK_BEFORE_EACH_APPEND = [(
    "        if needed > alloc.num_free:\n"
    "            raise pl.OutOfPagesError(needed, alloc.num_free, alloc.num_pages)\n"
    "        for i, seq_id in enumerate(seq_ids):\n",
    "        for i, seq_id in enumerate(seq_ids):\n"
    "            if needed > alloc.num_free:\n"
    "                raise pl.OutOfPagesError(needed, alloc.num_free, alloc.num_pages)\n")]
_EACH_SEQUENCE_TESTED_ALONE = [(
    "        if needed > alloc.num_free:\n"
    "            raise pl.OutOfPagesError(needed, alloc.num_free, alloc.num_pages)\n"
    "        for i, seq_id in enumerate(seq_ids):\n",
    "        for i, seq_id in enumerate(seq_ids):\n"
    "            if pages_for_next_token(self.cache, seq_id) > alloc.num_free:\n"
    "                raise pl.OutOfPagesError(needed, alloc.num_free, alloc.num_pages)\n")]

MISTAKES = [
    ("pages_for_next_token",
     solution_of("07", "pages_for_next_token", [("return 1 if cache.allocator",
                                               "return 2 if cache.allocator")]),
     "not a copy and a new page besides", ["its ref_count is 1"]),
    ("decode_step", solution_of("07", "MyManager", _CHECK_BEFORE_EACH_APPEND),
     "the step appended before it compared", ["not needed >= num_free"]),
    ("decode_step", solution_of("07", "MyManager", _EACH_SEQUENCE_TESTED_ALONE),
     "your step saw that the fork needs a page, but only after sequence",
     ["not seq_len % page_size alone"]),
    ("serve", solution_of("07", "serve", [(
        "pages_for(sum(requests[j])) - pages_for(cache.seq_len(s))",
        "pages_for(sum(requests[j]) - cache.seq_len(s))")]),
     "yours counts pages(total - held)", ["finished a step late"]),
    ("decode_floor_ms", solution_of("08", "decode_floor_ms", [(" * 1e3", " / 1e3")]),
     "seconds x 1000, not seconds / 1000"),
    ("choose_page_size", solution_of("08", "choose_page_size", [(
        "(-(-seq_lens // page_size)).sum() * page_size",
        "-(-seq_lens.sum() // page_size) * page_size")]),
     "not ceil(sum(seq_lens) / page_size) * page_size", ["the waste comes out 0 or below"]),
    ("schedule_step", solution_of("12", "schedule_step", [(
        "        batch.append((req.rid, n))\n        budget -= n\n    for req in waiting:",
        "        batch.append((req.rid, n))\n        budget -= n\n"
        "    budget -= sum(n for _, n in batch)\n    for req in waiting:")]),
     "the running requests' tokens were taken from the budget twice", ["an off by one"]),
    ("schedule_step", solution_of("12", "schedule_step", [(
        "    batch, free = [], free_pages\n",
        "    batch, free = [], free_pages\n    budget -= len(running)\n")]),
     "the running requests' tokens were taken from the budget twice", ["an off by one"]),
    ("wire_bytes", solution_of("13", "wire_bytes", [(
        "tables = 4 * (2 + batch + batch * pages)",
        "tables = world_size * 4 * (2 + batch + batch * pages)")]),
     "not once per rank (world_size * buffer)"),
    ("wire_bytes", solution_of("13", "wire_bytes", [(
        "pages = -(-int(max(seq_lens)) // page_size)",
        "pages = -(-int(min(seq_lens)) // page_size)")]),
     "not cut to the shortest sequence's pages"),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_named(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


def test_wire_bytes_in_int64_is_still_named_beside_the_buffer_per_rank():
    """At world_size 2 the buffer counted per rank is the int64 table's number: both named."""
    impl = solution_of("13", "wire_bytes", [("tables = 4 * (2 + batch", "tables = 8 * (2 + batch")])
    assert_caught("wire_bytes", impl, "a table entry is an int32: 4 bytes, not 8 (int64)")


def test_choose_page_size_rounded_down_is_not_told_the_batch_was_rounded_up():
    impl = solution_of("08", "choose_page_size", [(
        "(-(-seq_lens // page_size)).sum()", "(seq_lens // page_size).sum()")])
    assert_caught("choose_page_size", impl, "the waste comes out 0 or below",
                  not_phrases=["not ceil(sum(seq_lens) / page_size)"])


@pytest.mark.parametrize("task, workbook, name", [
    ("pages_for_next_token", "07", "pages_for_next_token"),
    ("serve", "07", "serve"),
    ("decode_floor_ms", "08", "decode_floor_ms"),
    ("choose_page_size", "08", "choose_page_size"),
    ("schedule_step", "12", "schedule_step"),
    ("wire_bytes", "13", "wire_bytes"),
])
def test_the_solution_passes(task, workbook, name):
    result, printed = run_check(task, solution_of(workbook, name))
    assert result.passed, printed


@pytest.mark.parametrize("where, pool", [
    (" (in your code, line 9: raise pl.OutOfPagesError(needed, alloc.num_free,)", False),
    (" (in your code, line 12: self.cache.append(seq_id, k[i:i + 1], v[i:i + 1]))", True),
    (" (in your code, line 9: if needed > free: raise pl.OutOfPagesError(needed, free, 5))",
     False),
    (" (in your code, line 11: raise)", True),   # the pool's error, caught and passed on
    ("", None),
])
def test_an_error_from_the_sandbox_is_read_by_the_line_it_came_through(where, pool):
    """Under the grader the error comes back with the channel's traceback: the learner's line
    it was raised through tells their own raise from the pool's."""
    exc = pl.OutOfPagesError(1, 0, 5)
    exc.remote_frame = where
    assert raised_by_the_pool(exc) is pool
