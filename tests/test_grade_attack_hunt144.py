"""The grader attacked through the size of what its judge computes (hunt 144).

The judge (the grader's process that reads a submission's answers) had no memory limit of
its own. The wire bounds each frame (8 MiB of JSON, 128 MiB of arrays), but a check turns
an answer into more: visible_keys' answer `[""] * n + ["x" * m]` (a few MiB on the wire)
became, in as_array, an array of n + 1 strings of m characters each, n * m * 4 bytes
written in one NumPy call that no time limit stops (a million items and 8000 characters:
32 GB, the grader's machine out of memory). The judge now bounds its heap (judge.
limit_memory, grade.py passes Limits.judge_mb): that answer is a MemoryError, a failed case
of that submission, and the judge goes on to report.
"""
import resource
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab import check, grade
from pagedattn_lab.grading import gradebook, isolation, remote, runner
from pagedattn_lab.grading.channel import Channel
from pagedattn_lab.grading.escaped_errors import describe_exception
from pagedattn_lab.grading.submissions import not_graded
from pagedattn_lab.grading.table import rows, to_csv, to_markdown
from tests.test_grade_protocol import remotely

PAGE_TABLE = ["allocator", "refcounts", "append_tokens", "block_tables"]
# 1.6 GB as an array of strings, 1.2 MB as the JSON that carries it
ROWS, WIDTH = 200_000, 2000


def _inflating(indptr, seq_lens):
    return [""] * ROWS + ["x" * WIDTH]


def _visible_keys(qo_indptr, seq_lens):
    """An honest answer: row i of sequence b sees its prefix and the new tokens up to i."""
    out = []
    for b in range(len(seq_lens)):
        q_len = int(qo_indptr[b + 1] - qo_indptr[b])
        out += [int(seq_lens[b]) - q_len + i + 1 for i in range(q_len)]
    return np.array(out, np.int64)


def _graded_by_a_judge_process(tmp_path, learner, memory_mb: int):
    """The report of a judge started as grade.py starts it, after `learner(peer)` ran on the
    sandbox's end of its channel (in this process: a test has no sandbox)."""
    judge_end, box_end = socket.socketpair()
    judge_kernel_end, kernel_end = socket.socketpair()   # no kernel host: no kernel task
    judge = grade._start_judge(judge_end.fileno(), judge_kernel_end.fileno(), tmp_path,
                               salt=1, tasks=["visible_keys"], memory_mb=memory_mb)
    judge_end.close()
    judge_kernel_end.close()
    peer = remote.Peer(Channel(box_end), strict=False)
    try:
        learner(peer)
        limits = Path(f"/proc/{judge.pid}/limits").read_text()
    finally:
        peer.channel.close()
        kernel_end.close()
    report, error = grade._judge_report(judge, tmp_path)
    assert report is not None, error
    return report, limits


def _check(function):
    return lambda peer: runner.forwarder(peer, "visible_keys")(function)


def test_a_judge_started_by_the_grader_has_a_bounded_heap_and_passes_an_honest_answer(
        tmp_path):
    report, limits = _graded_by_a_judge_process(tmp_path, _check(_visible_keys),
                                                isolation.Limits().judge_mb)
    line = next(ln for ln in limits.splitlines() if ln.startswith("Max data size"))
    assert line.split()[3] == str(isolation.Limits().judge_mb << 20), line
    assert report["tasks"]["visible_keys"]["status"] == "passed", report


def test_an_answer_that_inflates_in_the_judge_fails_its_task_and_the_judge_reports(tmp_path):
    report, _ = _graded_by_a_judge_process(tmp_path, _check(_inflating), memory_mb=1024)
    entry = report["tasks"]["visible_keys"]
    assert entry["status"] == "failed", entry
    assert "ran out of memory" in entry["summary"] and "MemoryError" in entry["summary"], entry
    assert "checks_prefill.py" not in entry["summary"], entry
    # (hunt 160: the judge's own work, named so, not laid on the learner's code)
    assert "in the check's own code, not in yours: the grader's judge may use 1024 MiB" in \
        entry["summary"] and "your code built" not in entry["summary"], entry["summary"]
    assert report["broken"] is None


def test_the_readme_gives_the_judges_limit_and_the_notebooks():
    readme = " ".join((Path(grade.__file__).parents[1] / "README.md").read_text().split())
    limits = isolation.Limits()
    assert f"heap of at most {limits.judge_mb // 1024} GiB, `Limits.judge_mb`" in readme
    assert f"a notebook over {limits.file_mb} MiB, the sandbox's bound on a file" in readme


def test_a_memory_error_has_a_hint_of_its_own():
    message, hint = describe_exception(MemoryError("Unable to allocate 1.49 GiB"))
    assert message.startswith("ran out of memory (MemoryError: Unable to allocate 1.49 GiB")
    assert "larger than the result the spec asks for" in hint


def test_messages_too_large_for_the_judge_outside_a_check_make_it_say_so(tmp_path):
    """An event the judge cannot hold (its decoding over the limit): the judge reports the
    submission as broken instead of dying (its tasks would be 'not run', the grader failed)."""
    def learner(peer):
        # a frame's worth of empty lists: ~20x its 8 MiB of JSON once parsed
        peer.channel.send({"t": "ev", "ev": "cell_error",
                           "data": {"$dict": [["cell", 0], ["pad", [[]] * 2_700_000]]}})
    report, _ = _graded_by_a_judge_process(tmp_path, learner, memory_mb=200)
    assert report["broken"] and "more memory than the grader's judge" in report["broken"], \
        report


def test_no_limit_leaves_the_judges_heap_as_it_was():
    before = resource.getrlimit(resource.RLIMIT_DATA)
    code = ("import resource; from pagedattn_lab.grading.judge import limit_memory; "
            "limit_memory(0); print(resource.getrlimit(resource.RLIMIT_DATA))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == str(before)


# -- links in the submissions folder ---------------------------------------------------------
# A learner's archive, unpacked into the submissions folder, may hold a symbolic link. One to
# a classmate's notebook was graded as the learner's, and the classmate's own file, the same
# file once resolved, was dropped from the table; one to the instructor's solutions
# (`../../solutions/01_page_table.ipynb`, the README's layout) passed every task.
def _folder_with_links(tmp_path):
    sub = tmp_path / "submissions"
    for folder in ("alice", "bob", "carol"):
        (sub / folder).mkdir(parents=True)
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "01_page_table.ipynb").write_text("{}")
    (sub / "bob" / "01_page_table.ipynb").write_text("{}")
    (sub / "alice" / "01_page_table.ipynb").symlink_to("../bob/01_page_table.ipynb")
    (sub / "carol" / "01_page_table.ipynb").symlink_to(
        "../../solutions/01_page_table.ipynb")
    return sub


def test_a_link_in_a_submissions_folder_is_not_graded_and_says_why(tmp_path):
    others = []
    found = grade.find_notebooks([_folder_with_links(tmp_path)], others)
    assert [name for _, name in found] == ["bob/01_page_table.ipynb"]
    assert [name for _, name in others] == ["alice/01_page_table.ipynb",
                                            "carol/01_page_table.ipynb"]
    row = not_graded(*others[0])
    assert row.result == "error" and "a link to another file" in row.message, row


def test_a_file_that_is_not_a_notebook_keeps_its_message(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    assert "not a notebook (a .ipynb file)" in not_graded(tmp_path / "notes.txt",
                                                          "notes.txt").message


# -- a notebook of gigabytes -------------------------------------------------------------------
# grade_notebook copied the file whole into its temporary folder and read it whole for the
# salt: a sparse file of 100 GB (a few bytes in a learner's tar archive) filled the disk, or
# the MemoryError ended the whole run without a table. A file over Limits.file_mb (the
# sandbox's own bound on a file) is now a row of its own, read no further.
def test_a_notebook_over_the_file_limit_is_not_read_and_gets_a_row(tmp_path, monkeypatch):
    monkeypatch.setattr(grade, "_build_seed_cache", lambda run: run.seed_ready.set())
    started = []
    monkeypatch.setattr(isolation, "start", lambda *a, **k: started.append(a) or 1 / 0)
    monkeypatch.setattr(grade, "_start_judge", lambda *a, **k: started.append(a) or 1 / 0)
    subs = tmp_path / "subs"
    subs.mkdir()
    with open(subs / "01_page_table.ipynb", "wb") as fh:   # sparse: no room taken
        fh.truncate(3 << 20)
    table = grade.grade([subs], isolation_level="none", limits=isolation.Limits(file_mb=2))
    assert not started
    assert [(r.task, r.result, r.grader_failed) for r in table] == \
        [(task, "not run", False) for task in PAGE_TABLE] + [("(notebook)", "error", False)]
    assert all("over 2 MiB" in r.message for r in table), table[-1].message


def test_a_notebook_at_the_file_limit_is_read_whole(tmp_path):
    path = tmp_path / "a.ipynb"
    path.write_bytes(b"x" * (1 << 20))
    assert grade._submission_bytes(path, 1 << 20) == b"x" * (1 << 20)
    assert grade._submission_bytes(path, (1 << 20) - 1) is None


def test_a_notebook_the_grader_cannot_read_fails_alone(tmp_path, monkeypatch):
    """A learner's archive keeps its files' modes: one of mode 000, unpacked by an instructor
    who is not root, raised PermissionError out of grade() and no table was written."""
    monkeypatch.setattr(grade, "_build_seed_cache", lambda run: run.seed_ready.set())

    def unreadable(path, limit):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(grade, "_submission_bytes", unreadable)
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "01_page_table.ipynb").write_text("{}")
    table = grade.grade([subs], isolation_level="none")
    assert [(r.task, r.result, r.grader_failed) for r in table] == \
        [(task, "not run", False) for task in PAGE_TABLE] + [("(notebook)", "error", True)]
    assert "could not read the file" in table[-1].message and "Permission denied" in \
        table[-1].message, table[-1].message


# -- where an error of the check's own code is put ---------------------------------------------
# During a check, own_watch switches every function of the check modules for a trampoline that
# wears the function's name, file and first line; learner_frame took that frame for the
# learner's (it is no file's code), and a check failing on the learner's answer (a class that
# returns None) said "(in checks_softmax.py, line 64: scores = np.asarray(...))", the line
# after the def, in the package, in the notebook and under the grader alike.
def _none_class(*args, **kwargs):
    return None


def test_an_error_in_the_checks_code_names_no_line_of_the_package():
    summary = check.online_softmax(_none_class).summary
    assert "'NoneType' object has no attribute 'update'" in summary
    assert "checks_softmax.py" not in summary, summary
    judged = remotely("online_softmax", _none_class)["tasks"]["online_softmax"]["summary"]
    assert "'NoneType' object has no attribute" in judged and "checks_softmax.py" not in \
        judged, judged


class _RaisingSoftmax:
    def __init__(self, dim):
        self.dim = dim

    def update(self, score, values):
        raise KeyError("the learner's own")

    def result(self):
        return np.zeros(self.dim)


def test_an_error_the_learners_code_raised_still_names_its_line():
    summary = check.online_softmax(_RaisingSoftmax).summary
    assert "test_grade_attack_hunt144.py, line" in summary and \
        'raise KeyError("the learner' in summary, summary


def raised_in_notebook_and_judged(answer) -> tuple[str, str]:
    """What online_softmax's failure says `answer` raised: in the notebook, under the judge."""
    def raised(summary):
        return summary.split("raised ", 1)[1].split(" (in ", 1)[0]
    return (raised(check.online_softmax(answer).summary),
            raised(remotely("online_softmax", answer)["tasks"]["online_softmax"]["summary"]))


def test_a_key_error_reads_the_same_under_the_grader_as_in_the_notebook():
    """A KeyError's str() is its key's repr: rebuilt in the judge from that text, it was
    quoted twice (raised KeyError: "'seq 3'" where the notebook says 'seq 3')."""
    notebook, judged = raised_in_notebook_and_judged(_RaisingSoftmax)
    assert notebook == judged == 'KeyError: "the learner\'s own"', (notebook, judged)


# -- text that UTF-8 cannot write ----------------------------------------------------------------
# A cell that raises ValueError("\ud800") (a lone surrogate, written as an escape in the cell),
# or a file whose name holds bytes that are no UTF-8 (Python names it with surrogates), put a
# character in the table that UTF-8 cannot encode: grade.main printed the table after every
# notebook was graded, raised UnicodeEncodeError, and wrote no --out or --summary file.
def _surrogate_rows():
    judge = {"tasks": {}, "running": None, "finished": True, "broken": None,
             "cell_errors": [{"cell": 0, "ename": "ValueError", "evalue": "bad \ud800 key"}]}
    return rows("01_page_table_\udcff.ipynb", PAGE_TABLE, {"exit": 0}, judge, 60)


def test_a_lone_surrogate_is_written_escaped_in_every_table():
    table = _surrogate_rows()
    for text in (to_markdown(table), to_csv(table),
                 gradebook.to_summary_csv(gradebook.entries(table))):
        text.encode("utf-8")
    assert "bad \\ud800 key" in table[-1].message and "\\udcff" in to_csv(table)


def test_the_grader_writes_its_tables_whatever_a_message_holds(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(grade, "grade", lambda *a, **k: _surrogate_rows())
    (tmp_path / "a.ipynb").write_text("{}")
    out, summary = tmp_path / "grades.md", tmp_path / "book.csv"
    assert grade.main([str(tmp_path), "--out", str(out), "--summary", str(summary)]) == 0
    assert "\\ud800" in out.read_text(encoding="utf-8") and summary.exists()


# -- JSON that is no notebook's ------------------------------------------------------------------
@pytest.mark.parametrize("text, why", [
    ("[]", "no list of cells"), ('{"cells": 5}', "no list of cells"),
    ('{"cells": [3]}', "no list of cells"), ("[" * 100_000, "nested too deeply"),
    ('{"cells": [{"cell_type": "code", "source": [1, 2]}]}', "source of cell 1 is not text"),
    ('{"cells": [{"cell_type": "code", "source": {"a": 1}}]}', "source of cell 1 is not text"),
])
def test_json_that_is_no_notebooks_is_a_value_error_the_runner_reports(tmp_path, text, why):
    """(The runner reports a ValueError as the (notebook) row's "could not read the notebook:
    ..."; an AttributeError or TypeError ended its process: "exit code 1", nothing more.)"""
    path = tmp_path / "a.ipynb"
    path.write_text(text)
    with pytest.raises(ValueError, match=why):
        runner.code_cells(str(path))


def test_a_notebooks_cells_are_still_read():
    path = Path(grade.__file__).parents[1] / "exercises" / "00_why_paging.ipynb"
    cells = runner.code_cells(str(path))
    assert cells and all(isinstance(i, int) and isinstance(s, str) for i, s in cells)
