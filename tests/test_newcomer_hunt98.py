"""Hunt 98: a newcomer's walk of lessons and workbooks 12 and 13 in JupyterLab.

Workbook 12, Task 3: a failed case describes the step's inputs so that the learner can redo
it by hand. A running request's new pages are `ceil((num_computed + n) / page_size) -
num_pages`, and some of the check's running requests hold pages taken ahead, so the
description must show `num_pages` as well as the tokens and the computed ones.
"""
from tests.check_helpers import run_check


def test_schedule_step_failure_shows_the_pages_each_running_request_holds():
    seen = []

    def empty_batch(running, waiting, *rest):   # a wrong answer that records its inputs
        seen.append([(r.rid, r.num_tokens, r.num_computed, r.num_pages) for r in running])
        return []

    result, printed = run_check("schedule_step", empty_batch)
    first = next(c for c in result.cases if not c.passed)
    assert first is result.cases[0]
    for held in seen[0]:
        assert str(held) in first.message, (held, first.message)
    assert "pages held" in first.message
    assert "pages held" in " ".join(printed.split())


def test_schedule_step_that_changes_a_request_is_shown_its_input_as_given_and_the_change():
    """An answer that moves `num_computed` on (the engine's job after the forward pass) was
    shown the requests as it left them, so the case seemed to have no prefill to do."""
    given = []

    def advances(running, waiting, budget, *rest):
        given.append([(r.rid, r.num_tokens, r.num_computed, r.num_pages) for r in running])
        batch = []
        for r in running:
            n = min(r.num_tokens - r.num_computed, budget)
            r.num_computed += n
            batch.append((r.rid, n))
        return batch

    result, _ = run_check("schedule_step", advances)
    first = result.cases[0]
    assert not first.passed and "the requests were changed" in first.message
    for rid, tokens, computed, _ in given[0]:   # as given, not as the answer left them
        assert f"({rid}, {tokens}, {computed}," in first.message, first.message
    rid, _, computed, _ = given[0][0]
    assert f"request {rid}'s num_computed went from {computed} to" in first.message


# -- workbook 13, Task 3: wire_bytes -------------------------------------------------------

def _wire_bytes(seq_lens, num_heads, num_kv_heads, head_dim, page_size, world_size, itemsize,
                *, table_unit=4, share_at_one=True):
    batch, pages = len(seq_lens), -(-max(int(n) for n in seq_lens) // page_size)
    tables = table_unit * (2 + batch + batch * pages)
    share = batch * num_heads // world_size * head_dim * itemsize
    if world_size == 1 and not share_at_one:
        share = 0
    kv_read = int(sum(seq_lens)) * 2 * num_kv_heads // world_size * head_dim * itemsize
    return tables, share, kv_read


def _first_failure(impl):
    result, _ = run_check("wire_bytes", impl)
    return next(c for c in result.cases if not c.passed)


def test_wire_bytes_right_answer_passes():
    result, _ = run_check("wire_bytes", _wire_bytes)
    assert result.passed, result.summary


def test_wire_bytes_tables_counted_in_values_is_named():
    """The table buffer's value count returned as its byte count got the catch-all formula."""
    case = _first_failure(lambda *a: _wire_bytes(*a, table_unit=1))
    assert case.message == "wrong: tables"
    assert "byte count: 4 bytes per int32 value, not the number of values" in case.hint


def test_wire_bytes_zero_at_one_rank_is_named():
    """0 at world_size 1 ("nothing to send", as lesson 13 prints) was blamed on counting the
    share once per other rank, which the cases with 2-8 ranks had already ruled out."""
    case = _first_failure(lambda *a: _wire_bytes(*a, share_at_one=False))
    assert case.params["world_size"] == 1 and case.message == "wrong: output_share"
    assert "at world_size = 1 no other rank receives it" in case.hint


# -- lesson 12's prose against what its cells do ---------------------------------------------

def _lesson_12():
    import json
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "notebooks" / "12_serving_engine.ipynb"
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def test_lesson_12_names_the_steps_where_preempted_requests_come_back():
    """Section 4's chart shows prefill bars late in the run, after the text said "then mostly
    decodes"; the text now says which steps preempted and which prefilled again: the lesson's
    own engine run (its cells, executed here) must agree."""
    import matplotlib
    matplotlib.use("Agg")
    cells = _lesson_12()
    scope = {}
    for i in (1, 3, 5, 12):   # imports, model and prompts, the first steps, the run to the end
        exec(compile("".join(cells[i]["source"]), f"lesson 12 cell {i}", "exec"), scope)
    s = scope["engine"].stats.series
    settled = next(i for i, w in enumerate(s["waiting"]) if w == 0)   # every prompt admitted
    preempted = [i for i in range(settled + 1, len(s["waiting"]))
                 if s["waiting"][i] > s["waiting"][i - 1]]
    first_decode_only = next(i for i, p in enumerate(s["prefill_tokens"]) if p == 0)
    back = [i for i, p in enumerate(s["prefill_tokens"]) if p and i > first_decode_only]
    assert len(preempted) == scope["summary"]["preempted_recompute"] == 3
    text = " ".join("".join(cells[15]["source"]).split())
    steps = ", ".join(map(str, preempted[:-1])) + f" and {preempted[-1]}"
    assert f"the red line rose at steps {steps}" in text, preempted
    assert f"the prefill bars of steps {back[0]}-{back[-1]}" in text, back
    assert back == list(range(back[0], back[-1] + 1))


def test_lesson_12_refers_to_no_cell_by_its_index():
    """JupyterLab shows execution counts, not cell indices: "cell 22" could not be found."""
    import re
    for cell in _lesson_12():
        if cell["cell_type"] == "markdown":
            assert not re.search(r"\bcell \d+\b", "".join(cell["source"]))
