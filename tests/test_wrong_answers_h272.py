"""Wrong answers of workbooks 07, 12 and 13, each the solution with one edit, that the checks
failed with a hint restating the spec or naming a mistake the evidence does not show (the
machinery is test_wrong_answers_h268's).

1. wire_bytes: each row's pages taken from the mean sequence length, or one token more than
   sum(seq_lens) read, got the formula restated (or "the buffer carries the seq_lens too").
2. schedule_step: the watermark taken from the free pages with every running request's
   charge got "running requests first, ..." restated.
3. decode_step: lens - 1 given to the attention after the append was told only to append
   first; its output and cache are those of attending before the append, so both are named.
"""
import pytest

from tests.check_helpers import _flat, as_params, assert_caught, run_check, solution_of

_MEAN_PAGES = "not to the pages of the mean sequence length"
_ONE_MORE_IN_ALL = "the kernel reads sum(seq_lens) tokens, not one more in all"
_RESTATED = "tables: 4 * (2 + batch + batch * pages)"

MISTAKES = [
    ("wire_bytes", solution_of("13", "wire_bytes", [(
        "pages = -(-int(max(seq_lens)) // page_size)",
        "pages = -(-int(np.mean(seq_lens)) // page_size)")]), _MEAN_PAGES, [_RESTATED]),
    ("wire_bytes", solution_of("13", "wire_bytes", [(
        "pages = -(-int(max(seq_lens)) // page_size)",
        "pages = int(np.ceil(np.mean(seq_lens) / page_size))")]), _MEAN_PAGES, [_RESTATED]),
    ("wire_bytes", solution_of("13", "wire_bytes", [(
        "int(np.sum(seq_lens)) * 2", "(int(np.sum(seq_lens)) + 1) * 2")]),
     _ONE_MORE_IN_ALL, [_RESTATED]),
    ("schedule_step", solution_of("12", "schedule_step", [(
        "free -= max(0, pages(req.num_computed + n) - req.num_pages)\n",
        "free -= max(0, pages(req.num_computed + n) - req.num_pages) + watermark\n")]),
     "the watermark was taken from the free pages for every running request",
     ["running requests first, each min(wanted"]),
    ("decode_step", solution_of("07", "MyManager", [(
        "tables, lens, self.scale)", "tables, lens - 1, self.scale)")]),
     "not lens - 1", []),
]


@pytest.mark.parametrize("task, impl, phrase, not_phrases", as_params(MISTAKES))
def test_mistake_is_named_in_every_failed_case(task, impl, phrase, not_phrases):
    result, printed = assert_caught(task, impl, phrase, not_phrases=not_phrases)
    for case in result.cases:
        assert case.passed or _flat(phrase) in _flat(f"{case.message} {case.hint}"), printed


def test_one_more_token_of_a_single_sequence_names_both_ways_of_counting_it():
    """With one sequence, one token more in all is one more per sequence: both are named."""
    impl = solution_of("13", "wire_bytes", [("int(np.sum(seq_lens)) * 2",
                                           "(int(np.sum(seq_lens)) + 1) * 2")])
    result, printed = run_check("wire_bytes", impl)
    single = next(c for c in result.cases if c.params["seq_lens"] == [17])
    assert _flat(_ONE_MORE_IN_ALL) in _flat(single.hint), printed
    assert _flat("not one more per sequence") in _flat(single.hint), printed


def test_attending_before_the_append_is_still_named():
    impl = solution_of("07", "MyManager", [
        ("        for i, seq_id in enumerate(seq_ids):\n"
         "            self.cache.append(seq_id, k[i:i + 1], v[i:i + 1])\n", ""),
        ("        return pl.paged_attention_decode(", "        out = pl.paged_attention_decode("),
        ("tables, lens, self.scale)\n",
         "tables, lens, self.scale)\n"
         "        for i, seq_id in enumerate(seq_ids):\n"
         "            self.cache.append(seq_id, k[i:i + 1], v[i:i + 1])\n"
         "        return out\n")])
    assert_caught("decode_step", impl, "append k / v to the cache first")
