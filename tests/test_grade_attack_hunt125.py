"""The grader attacked from the learner's side (hunt 125).

Fixed: (a) the sandbox reports a cell's error with the cell's index, which the judge kept
whatever int it was and the grader printed as index + 1: JSON carries an int of 4300 digits,
whose successor str() refuses (Python's limit on int-to-text conversion), so one notebook
that sent `cell=10**4300 - 1` made the grader's table raise ValueError, and pool.map lost the
rows of every notebook of the run (the traceback and no table at all). The judge keeps a
cell index only within any notebook's size, and a report the grader cannot read fails that
notebook's rows alone. (b) The progress line on the grader's stderr printed the notebook's
display name (the submission's file name) as it was: an escape sequence or a carriage
return in it rewrote the instructor's terminal ("bob.ipynb: 14/14 tasks passed"). (c) Ints
of one hash (n * (2**61 - 1)) in a set or a dict the judge decodes: n**2 / 2 comparisons in
one C call that no time limit stops (12 000 of them: 4.5 s; a frame's worth: an hour); in an
event, read with no time limit at all, the judge hung and the grader dropped its report
after a minute: every verdict of the notebook, its failures too, became "not run". Such ints
are refused past MAX_HUGE_INTS a frame (a check's own set(pages) of them was the same).
(d) The Markdown table escaped "|" but not the backslash: a learner's "\\|" became "\\\\|",
an escaped backslash and a pipe that ends the cell: the row got a column more. (e)
gather_numpy's timed case called the learner's function up to 12 times with the same
inputs and took the best time: a per-token loop that kept its result (or its slots) for
those inputs passed in no time; and so did a result whose __array__ ran the loop when the
check read it, after the timed call (it is read inside it now).
"""
import json
import sys
import time

import nbformat
import numpy as np
import pytest

from pagedattn_lab import grade
from pagedattn_lab.grading import remote_errors, runner, wire
from pagedattn_lab.grading.table import Row, rows, to_markdown
from tests.test_grade_protocol import in_notebook, remotely

HUGE_CELL = 10 ** 4300 - 1   # the longest int JSON carries here; its successor has no str()
RIGHT = ("def pages_needed(seq_len, page_size):\n"
         "    return -(-seq_len // page_size)\n"
         "check.pages_needed(pages_needed)\n")
# the learner's cell: the forwarder's own channel to the judge, and a forged cell error
FORGE = ("from pagedattn_lab import check\n"
         "peer = next(c.cell_contents for c in check.pages_needed.__closure__\n"
         "            if type(c.cell_contents).__name__ == 'Peer')\n"
         f"peer.event('cell_error', cell=10 ** 4300 - 1, ename='X', evalue='y')\n")


def test_a_cell_index_past_any_notebook_leaves_the_report_printable():
    def learner(peer):
        runner.forwarder(peer, "pages_needed")(lambda seq_len, page_size: 0)
        peer.event("cell_error", cell=HUGE_CELL, ename="ValueError", evalue="forged")
        peer.event("finished")

    report = remotely("pages_needed", learner=learner)
    report.pop("learner_errors")
    report = json.loads(json.dumps(report))   # as the grader reads it from the judge
    table = rows("nb.ipynb", ["pages_needed"], {"exit": 0}, report, 60)
    assert {r.task: r.result for r in table}["pages_needed"] == "fail", table
    assert "forged" in to_markdown(table)


@pytest.mark.parametrize("cell", [-2, 1 << 20, True, "3"])
def test_a_cell_index_that_is_no_cell_is_not_kept(cell):
    def learner(peer):
        peer.event("cell_error", cell=cell, ename="ValueError", evalue="forged")

    report = remotely("pages_needed", learner=learner)
    assert [e["cell"] for e in report["cell_errors"]] == [-1], report


def _notebook(path, *cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)


@pytest.fixture
def no_seed_cache(monkeypatch):
    """Every sandbox compiles what it needs (these notebooks need no kernel)."""
    monkeypatch.setattr(grade, "_build_seed_cache", lambda run: run.seed_ready.set())


def test_a_forged_cell_index_fails_no_other_notebooks_rows(tmp_path, no_seed_cache):
    subs = tmp_path / "subs"
    subs.mkdir()
    _notebook(subs / "a_forger.ipynb", RIGHT.replace("check.", "from pagedattn_lab import "
                                                     "check\ncheck."), FORGE)
    _notebook(subs / "b_honest.ipynb", "from pagedattn_lab import check\n" + RIGHT)
    table = {(r.notebook, r.task): r for r in grade.grade([subs], timeout=120,
                                                          isolation_level="none")}
    assert table[("b_honest.ipynb", "pages_needed")].result == "pass", table
    assert table[("a_forger.ipynb", "pages_needed")].result == "pass", table


def test_the_progress_line_shows_no_control_character_of_a_name(tmp_path, no_seed_cache):
    subs = tmp_path / "subs"
    subs.mkdir()
    name = "x\x1b[2K\rbob.ipynb: 14\x0714 tasks passed\n.ipynb"
    _notebook(subs / name, "x = 1\n")
    said = []
    grade.grade([subs], timeout=120, isolation_level="none", progress=said.append)
    assert len(said) == 1 and "bob.ipynb" in said[0], said
    assert not any(c in said[0] for c in "\x1b\r\n\x07"), said


def test_a_report_the_grader_cannot_read_fails_that_notebook_alone(tmp_path, no_seed_cache,
                                                                   monkeypatch):
    """However a judge's report trips the table (what the sandbox sent is in it)."""
    real = grade.rows

    def unreadable_for_a(name, tasks, outcome, report, *rest):
        if name.startswith("a_") and report is not None:
            raise ValueError("no str() for that")
        return real(name, tasks, outcome, report, *rest)

    monkeypatch.setattr(grade, "rows", unreadable_for_a)
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("a_one.ipynb", "b_two.ipynb"):
        _notebook(subs / name, "from pagedattn_lab import check\n" + RIGHT)
    table = {(r.notebook, r.task): r for r in grade.grade([subs], timeout=120,
                                                          isolation_level="none")}
    assert table[("b_two.ipynb", "pages_needed")].result == "pass", table
    row = table[("a_one.ipynb", "(notebook)")]   # (no workbook's name: no expected task)
    assert row.result == "error" and "ValueError: no str() for that" in row.message, row


# -- (c) ints of one hash ---------------------------------------------------------------------
P = sys.hash_info.modulus   # ints n * P all hash to 0: a set of them takes n**2 / 2 compares
COLLIDING = [P * k for k in range(1, 12_001)]   # 4.5 s in set(); a frame's worth: an hour


def test_a_value_of_many_colliding_ints_is_refused_before_it_is_hashed():
    started = time.monotonic()
    for tree in ({"$set": COLLIDING}, {"$dict": [[k, 0] for k in COLLIDING]}, COLLIDING):
        with pytest.raises(wire.ProtocolError, match="ints of magnitude 2"):
            wire.decode(tree, [], remote_errors.no_deref)
    assert time.monotonic() - started < 1


def test_big_ints_an_answer_may_hold_still_cross():
    value = [2 ** 70 + k for k in range(wire.MAX_HUGE_INTS)] + list(range(100_000))
    assert wire.decode(value, [], remote_errors.no_deref) == value


def test_an_event_of_colliding_ints_leaves_the_judge_answering():
    """The judge decodes the sandbox's events with no time limit: set() of 40 000 such ints
    (1 MiB) kept it a minute in one C call; a frame's worth, an hour. Its verdict stands."""
    def learner(peer):
        runner.forwarder(peer, "pages_needed")(lambda seq_len, page_size: 0)
        peer.channel.send({"t": "ev", "ev": "cell_error",
                           "data": {"$set": [P * k for k in range(1, 40_001)]}})
        peer.event("finished")

    started = time.monotonic()
    report = remotely("pages_needed", learner=learner)
    assert time.monotonic() - started < 20
    assert report["tasks"]["pages_needed"]["status"] == "failed", report
    assert report["finished"] and report["broken"] is None, report


# -- (d) the Markdown table -------------------------------------------------------------------
def _cells(line: str) -> list[str]:
    """A GFM table row's cells: split at each pipe no backslash escapes."""
    cells, cell, escaped = [], "", False
    for char in line.strip()[1:-1]:
        if char == "|" and not escaped:
            cells.append(cell)
            cell = ""
        else:
            cell += char
        escaped = char == "\\" and not escaped
    return [*cells, cell]


@pytest.mark.parametrize("text", ["x\\| pass", "x\\|y\\", "\\\\| pass |"])
def test_a_backslash_before_a_pipe_adds_no_column(text):
    table = [Row(text, "pages_needed", "fail", "wrong"), Row("nb", "(notebook)", "error", text)]
    lines = to_markdown(table).splitlines()[2:]
    assert [len(_cells(line)) for line in lines] == [4, 4], lines
    assert [_cells(line)[2].strip() for line in lines] == ["fail", "error"], lines


# -- (e) the timed gather's repeats -----------------------------------------------------------
def _per_token_gather(k_cache, block_table_row, seq_len):
    """The loop over the tokens that the timed case is there to fail."""
    cache, row, page_size = np.asarray(k_cache), np.asarray(block_table_row).tolist(), \
        k_cache.shape[1]
    if not seq_len:
        return cache[:0, 0]
    return np.stack([cache[row[t // page_size], t % page_size] for t in range(seq_len)])


def _memoized_gather():
    """The same loop, its result kept for inputs of the same row and length: every repeat
    of the timed call after the first took no time, and its best passed the limit."""
    kept = {}

    def gather_numpy(k_cache, block_table_row, seq_len):
        key = (np.asarray(block_table_row).tobytes(), seq_len, k_cache.shape)
        if key not in kept:
            kept[key] = _per_token_gather(k_cache, block_table_row, seq_len)
        return kept[key].copy()
    return gather_numpy


def _memoized_slots():
    """Slots from a loop over the tokens, kept for the row: each later call indexed the new
    cache with them at once, right values in no time."""
    kept = {}

    def gather_numpy(k_cache, block_table_row, seq_len):
        page_size, row = k_cache.shape[1], np.asarray(block_table_row)
        key = (row.tobytes(), seq_len, page_size)
        if key not in kept:
            kept[key] = np.array([row[t // page_size] * page_size + t % page_size
                                  for t in range(seq_len)], dtype=np.int64)
        return np.asarray(k_cache).reshape(-1, *k_cache.shape[2:])[kept[key]]
    return gather_numpy


class _Lazy:
    """A result that does the per-token loop when NumPy reads it, after the timed call."""

    def __init__(self, k_cache, block_table_row, seq_len):
        self.inputs = (np.asarray(k_cache).copy(), np.asarray(block_table_row).copy(), seq_len)

    def __array__(self, dtype=None, copy=None):
        out = _per_token_gather(*self.inputs)
        return out if dtype is None else out.astype(dtype)


def _lazy_gather():
    return _Lazy


@pytest.mark.parametrize("make", [_memoized_gather, _memoized_slots, _lazy_gather])
def test_a_per_token_loop_that_keeps_its_work_fails_the_timed_case_in_the_notebook(make):
    result = in_notebook("gather_numpy", make())
    assert result.status == "failed", result.summary
    assert "timed" in result.summary, result.summary


@pytest.mark.parametrize("make", [_memoized_gather, _memoized_slots, _lazy_gather])
def test_a_per_token_loop_that_keeps_its_work_fails_under_the_judge(make):
    entry = remotely("gather_numpy", make(), salt=125)["tasks"]["gather_numpy"]
    assert entry["status"] == "failed" and "timed" in entry["summary"], entry


def test_a_vectorized_gather_still_passes_the_timed_case():
    def gather_numpy(k_cache, block_table_row, seq_len):
        page_size = k_cache.shape[1]
        t = np.arange(seq_len)
        slots = np.asarray(block_table_row)[t // page_size] * page_size + t % page_size
        return np.asarray(k_cache).reshape(-1, *k_cache.shape[2:])[slots]

    assert in_notebook("gather_numpy", gather_numpy).status == "passed"
    assert remotely("gather_numpy", gather_numpy, salt=125)["tasks"]["gather_numpy"][
        "status"] == "passed"
