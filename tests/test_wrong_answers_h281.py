"""Wrong answers of workbooks 07, 08, 12 and 13, each the solution with one edit, that the
checks failed with a hint restating the spec, naming mistakes the answer did not make, or
with no hint at all (the machinery is test_wrong_answers_h268's).

1. serve: the queue served from its back (waiting[-1], waiting.pop()) was told the promised
   pages were counted wrong, or given the spec restated.
2. serve: promised counted from the prompt's pages (pages held at admission, not now) was
   told four other mistakes that refuse that admission, but not its own.
3. schedule_step: the running requests served last to first got the spec restated; the
   waiting prompts taken last to first too, where only one of them was admitted.
4. decode_floor_ms: the rate times 1e-9 (or bytes / GB/s * 1e9) got no hint.
5. wire_bytes: a header of 1 value (1 + batch + ...) got the formula restated, or two other
   mistakes named.
6. decode_step: every sequence given k[0] (or k[-1], or rows in sorted seq_ids' order) got
   "append, then attend" restated; the cache shows which row each sequence got.
7. cached_prefix: the cap num_tokens - page_size got the formula restated where the hit was
   not full; the block hashes returned for pages got "a list of pages and an int".
"""
import pytest

from tests.check_helpers import as_params, assert_caught, run_check, solution_of

_APPEND = "self.cache.append(seq_id, k[i:i + 1], v[i:i + 1])"
_RESTATED_STEP = "compare with the expected batch above"

MISTAKES = [
    ("serve", solution_of("07", "serve", [("i = waiting[0]", "i = waiting[-1]"),
                                        ("waiting.popleft()", "waiting.pop()")]),
     "the queue was served from its back", ["yours counts their whole totals",
                                            "each step: admit (first come"]),
    ("serve", solution_of("07", "serve", [(
        "pages_for(sum(requests[j])) - pages_for(cache.seq_len(s))",
        "pages_for(sum(requests[j])) - pages_for(requests[j][0])")]),
     "yours takes the prompt's pages"),
    ("schedule_step", solution_of("12", "schedule_step", [("for req in running:",
                                                         "for req in reversed(running):")]),
     "the running requests were served last to first", [_RESTATED_STEP]),
    ("schedule_step", solution_of("12", "schedule_step", [("for req in waiting:",
                                                         "for req in reversed(waiting):")]),
     "the waiting prompts were taken last to first", [_RESTATED_STEP]),
    ("decode_floor_ms", solution_of("08", "decode_floor_ms", [("bandwidth_gbs * 1e9",
                                                             "bandwidth_gbs * 1e-9")]),
     "bandwidth_gbs * 1e9, not * 1e-9"),
    ("decode_floor_ms", solution_of("08", "decode_floor_ms", [(
        "nbytes / (bandwidth_gbs * 1e9) * 1e3", "nbytes / bandwidth_gbs * 1e9 * 1e3")]),
     "bandwidth_gbs * 1e9, not * 1e-9"),
    ("wire_bytes", solution_of("13", "wire_bytes", [("(2 + batch", "(1 + batch")]),
     "the header is 2 values (batch, pages per row), not 1",
     ["tables: 4 * (2 + batch + batch * pages)"]),
    ("decode_step", solution_of("07", "MyManager", [(_APPEND, _APPEND.replace("i:i + 1", "0:1"))]),
     "got row 0 of k as its new token", ["append, then attend with"]),
    ("decode_step", solution_of("07", "MyManager", [(_APPEND, _APPEND.replace("i:i + 1", "-1:"))]),
     "got row 2 of k as its new token", ["append, then attend with"]),
    ("decode_step", solution_of("07", "MyManager", [(
        "for i, seq_id in enumerate(seq_ids):", "for i, seq_id in enumerate(sorted(seq_ids)):")]),
     "got row 1 of k as its new token", ["append, then attend with"]),
    ("cached_prefix", solution_of("12", "cached_prefix", [("num_tokens - 1)",
                                                         "num_tokens - page_size)")]),
     "not num_tokens - page_size", ["the pages are right; num_computed = min"]),
    ("cached_prefix", solution_of("12", "cached_prefix", [("pages.append(cached[h])",
                                                         "pages.append(h)")]),
     "those are the blocks' hashes", ["a list of pages and an int"]),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_named(task, impl, phrase, not_phrases):
    assert_caught(task, impl, phrase, not_phrases=not_phrases)


def test_a_waiting_prompt_taken_from_the_back_is_named_where_it_alone_was_admitted():
    """The first targeted case admits one prompt, the last: an order of one shows nothing,
    the prompts it overtook do."""
    impl = solution_of("12", "schedule_step", [("for req in waiting:",
                                              "for req in reversed(waiting):")])
    result, printed = run_check("schedule_step", impl)
    first = result.cases[0]
    assert not first.passed and "taken last to first" in first.hint, printed


@pytest.mark.parametrize("task, workbook, name", [
    ("serve", "07", "serve"), ("schedule_step", "12", "schedule_step"),
    ("decode_floor_ms", "08", "decode_floor_ms"), ("wire_bytes", "13", "wire_bytes"),
    ("decode_step", "07", "MyManager"), ("cached_prefix", "12", "cached_prefix"),
])
def test_the_solution_passes(task, workbook, name):
    result, printed = run_check(task, solution_of(workbook, name))
    assert result.passed, printed
