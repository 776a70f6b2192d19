"""Workbooks 12 and 13 walked as a learner, wrong answers the earlier walks did not try: each
check now fails them with a hint that names the mistake made (before, a hint naming another
mistake, the general recipe, or a PASS).

Workbook 12: a prefix looked up from the prompt's end (was told it tested page 0's truth
value), max_chunk forgotten where a prompt is then refused, the budget counted in requests,
the watermark applied to running requests (passed), a prompt longer than max_chunk left
waiting. Workbook 13: the ranks' blocks stacked along the sequences, left unmerged, or read
with head_dim before the heads.
"""
import numpy as np
import pytest

from tests.check_helpers import assert_caught, run_check


# -- workbook 12, task 2 --------------------------------------------------------------------

def prefix_from_the_end(hashes, cached, num_tokens, page_size):
    pages = []
    for h in reversed(hashes):
        if h not in cached:
            break
        pages.append(cached[h])
    pages.reverse()
    return pages, min(len(pages) * page_size, num_tokens - 1)


def test_an_empty_prefix_is_not_blamed_on_page_0_unless_page_0_alone_empties_it():
    result, printed = assert_caught("cached_prefix", prefix_from_the_end,
                                    "no pages, though block 0 is cached: the run starts at "
                                    "hashes[0]", not_phrases=["truth value"])
    assert "cached run at the END of the prompt" in " ".join(printed.split()), printed


def test_a_lookup_that_stops_at_page_0_is_still_named():
    def stops_at_page_0(hashes, cached, num_tokens, page_size):
        pages = []
        for h in hashes:
            if not cached.get(h):
                break
            pages.append(cached[h])
        return pages, min(len(pages) * page_size, num_tokens - 1)
    assert_caught("cached_prefix", stops_at_page_0, "no pages, though block 0 is cached, at "
                  "page 0: a lookup that tests the page number's truth value")


# -- workbook 12, task 3 --------------------------------------------------------------------

def step(*, chunk_of=min, budget_spent=lambda n: n, running_watermark=False,
         long_prompt_waits=False):
    """The spec's schedule_step with one learner's change: chunk size `chunk_of(wanted,
    budget left, max_chunk)`, what a request's n tokens take from the budget, the watermark
    tested for running requests too, a prompt longer than max_chunk refused."""
    def schedule_step(running, waiting, budget, free_pages, watermark, page_size, max_chunk):
        batch, left, free = [], budget, free_pages
        for req in running:
            if left <= 0:
                break
            n = chunk_of(req.num_tokens - req.num_computed, left, max_chunk)
            new = max(0, -(-(req.num_computed + n) // page_size) - req.num_pages)
            if running_watermark and new + watermark > free:
                break
            free -= new
            batch.append((req.rid, n))
            left -= budget_spent(n)
        for req in waiting:
            if left <= 0 or (long_prompt_waits and req.num_tokens > max_chunk):
                break
            n = chunk_of(req.num_tokens, left, max_chunk)
            cost = -(-n // page_size)
            if cost + watermark > free:
                break
            free -= cost
            batch.append((req.rid, n))
            left -= budget_spent(n)
        return batch
    return schedule_step


STEP_MISTAKES = [
    ("max_chunk forgotten", step(chunk_of=lambda wanted, left, _: min(wanted, left)),
     "a prompt was sized without max_chunk"),
    ("budget in requests", step(budget_spent=lambda n: 1), "the budget was counted in requests"),
    ("watermark on running", step(running_watermark=True),
     "a running request was held to the watermark"),
    ("long prompt waits", step(long_prompt_waits=True),
     "a prompt longer than max_chunk was left waiting"),
]


@pytest.mark.parametrize("impl, phrase", [m[1:] for m in STEP_MISTAKES],
                         ids=[m[0] for m in STEP_MISTAKES])
def test_schedule_step_mistake_is_named(impl, phrase):
    assert_caught("schedule_step", impl, phrase,
                  not_phrases=["compare with the expected batch above"])


def test_the_spec_written_another_way_passes():
    result, printed = run_check("schedule_step", step())
    assert result.status == "passed", printed


# -- workbook 13, task 2 --------------------------------------------------------------------

def _blocks(g, world, batch, heads, dim):
    return g.reshape(world, batch, heads // world, dim)


GATHERS = [
    ("stacked along the sequences",
     lambda g, w, b, h, d: np.concatenate(list(_blocks(g, w, b, h, d)), axis=0),
     "the ranks' blocks were stacked along the sequences"),
    ("buffer only reshaped", _blocks, "that is the buffer as [R, batch, H/R, head_dim]"),
    ("rank axis not merged", lambda g, w, b, h, d: _blocks(g, w, b, h, d).transpose(1, 0, 2, 3),
     "the rank axis and the local-head axis are still apart"),
    ("head_dim before the heads",
     lambda g, w, b, h, d: g.reshape(w, b, d, h // w).transpose(1, 0, 3, 2).reshape(b, h, d),
     "a rank's block was read as [batch, head_dim, H/R]"),
]


@pytest.mark.parametrize("impl, phrase", [m[1:] for m in GATHERS], ids=[m[0] for m in GATHERS])
def test_gather_heads_mistake_is_named(impl, phrase):
    assert_caught("gather_heads", impl, phrase,
                  not_phrases=["one output row per sequence, every head",
                               "goes to heads r*H/R ... (r+1)*H/R - 1."])
