"""The grader's gradebook and exit status (hunt 138).

The grader wrote one row per (notebook, task) and said "N/M tasks passed" on stderr only: an
instructor with 30 learners had no machine-readable line per submission. And it exited 0
when its own judge failed on a notebook (every task "not run: the grader's judge failed"),
so a script had to search the messages to notice. Now `--summary PATH` writes a gradebook
(grading/gradebook.py), and exit status 3 says the grader failed on a file. Most tests build
the table from judge reports (table.rows) and stub grade.grade: grading whole notebooks
costs minutes; one small end-to-end run grades two tiny notebooks.
"""
import csv
import io
import re
from pathlib import Path

import nbformat
import pytest

from pagedattn_lab import grade
from pagedattn_lab.grading import gradebook
from pagedattn_lab.grading.submissions import not_graded
from pagedattn_lab.grading.table import Row, rows, to_csv

SIZING = ["pages_needed", "reserved_waste", "paged_waste"]   # workbook 00's tasks
FINISHED = {"finished": True, "cell_errors": []}


def _report(**tasks) -> dict:
    return {**FINISHED, "tasks": {t: {"status": s, "summary": s} for t, s in tasks.items()}}


def _book(table):
    return [vars(e) for e in gradebook.entries(table)]


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_a_judge_that_failed_marks_the_file_grader_failed_not_its_messages():
    table = rows("alice/00_why_paging.ipynb", SIZING, {"exit": 0}, None, 60,
                 "it did not finish within 60 s")
    assert [r.result for r in table] == ["not run"] * 3 + ["error"]
    assert table[-1].grader_failed and not any(r.grader_failed for r in table[:-1])
    (entry,) = _book(table)
    assert entry == dict(file="alice/00_why_paging.ipynb", workbook="00_why_paging", passed=0,
                         tasks=3, failed=0, not_attempted=0, not_run=3, notebook_error=True,
                         grader_failed=True)


def test_a_sandbox_the_grader_could_not_run_is_grader_failed():
    (*_, note) = rows("b.ipynb", SIZING, {"error": "could not build the sandbox: ENOSPC"},
                      _report(), 60)
    assert note.grader_failed and "the grader could not run the notebook" in note.message


@pytest.mark.parametrize("outcome, judge", [
    ({"timeout": True}, _report(pages_needed="passed")),
    ({"signal": 9}, _report()),
    ({"exit": 1}, _report()),
    ({"exit": 0}, {**_report(), "broken": "the submission broke the grader's protocol: x"}),
    ({"exit": 0}, {**_report(), "cell_errors": [{"cell": 2, "ename": "ValueError",
                                                  "evalue": "x"}]}),
], ids=["time limit", "killed", "exit code", "protocol broken", "cell raised"])
def test_the_learners_trouble_is_a_notebook_error_not_the_graders(outcome, judge):
    (entry,) = _book(rows("c.ipynb", SIZING, outcome, judge, 60))
    assert entry["notebook_error"] and not entry["grader_failed"]


def test_the_counts_add_up_by_result_in_the_tables_order():
    first = rows("z/01_page_table.ipynb", ["allocator", "refcounts", "append_tokens",
                                           "block_tables"], {"exit": 0},
                 _report(allocator="passed", refcounts="failed",
                         append_tokens="not attempted"), 60)
    second = rows("a/00_why_paging.ipynb", SIZING, {"exit": 0},
                  _report(pages_needed="passed", reserved_waste="passed",
                          paged_waste="passed"), 60)
    book = _book(first + second + [not_graded(Path("notes.txt"), "notes.txt")])
    assert [e["file"] for e in book] == ["z/01_page_table.ipynb", "a/00_why_paging.ipynb",
                                         "notes.txt"]
    assert [(e["passed"], e["failed"], e["not_attempted"], e["not_run"], e["tasks"])
            for e in book] == [(1, 1, 1, 1, 4), (3, 0, 0, 0, 3), (0, 0, 0, 0, 0)]
    assert [e["notebook_error"] for e in book] == [False, False, True]
    assert [e["workbook"] for e in book] == ["01_page_table", "00_why_paging", ""]
    assert not any(e["grader_failed"] for e in book)


def test_the_csv_has_the_documented_columns_in_a_stable_order():
    table = rows("00_why_paging.ipynb", SIZING, {"exit": 0}, None, 60, "boom")
    lines = gradebook.to_summary_csv(gradebook.entries(table)).splitlines()
    # the contract with the instructors' scripts: changing this breaks them
    assert lines == ["file,workbook,passed,tasks,failed,not_attempted,not_run,notebook_error,"
                     "grader_failed", "00_why_paging.ipynb,00_why_paging,0,3,0,0,3,1,1"]
    # every column is documented, in its order: the terms that open the help's lines
    terms = [t for line in gradebook.SUMMARY_HELP.splitlines() if re.match(r"  \w", line)
             for t in line.split("  ")[1].split(", ")]
    assert tuple(terms) == gradebook.COLUMNS
    assert "3 when the table" in grade.TABLE_HELP


def test_the_file_column_is_the_tables_notebook_column_even_for_hostile_names():
    name = "=HYPERLINK(\"x\")\x1b[2J\u202e.ipynb"
    table = [Row(name, "pages_needed", "pass", "ok")]
    (line,) = _csv(gradebook.to_summary_csv(gradebook.entries(table)))
    assert line["file"] == _csv(to_csv(table))[0]["notebook"]
    assert line["file"].startswith("'=") and "\x1b" not in line["file"]


def _stub_grade(monkeypatch, table):
    monkeypatch.setattr(grade, "grade", lambda paths, **kwargs: table)


def test_main_writes_the_gradebook_and_exits_3_when_the_grader_failed(tmp_path, monkeypatch,
                                                                      capsys):
    (tmp_path / "a.ipynb").write_text("{}")
    table = (rows("a.ipynb", SIZING, {"exit": 0}, _report(pages_needed="passed"), 60)
             + rows("b.ipynb", SIZING, {"exit": 0}, None, 60, "exit code 1"))
    _stub_grade(monkeypatch, table)
    book, out = tmp_path / "book.csv", tmp_path / "grades.csv"
    status = grade.main([str(tmp_path), "--summary", str(book), "--out", str(out)])
    assert status == grade.EXIT_GRADER_FAILED == 3
    assert [(e["file"], e["passed"], e["grader_failed"]) for e in _csv(book.read_text())] == \
        [("a.ipynb", "1", "0"), ("b.ipynb", "0", "1")]
    assert out.read_text() == to_csv(table)   # the table is written all the same
    assert "the grader itself failed on 1 file(s), grade again: b.ipynb" in \
        capsys.readouterr().err


def test_main_exits_0_whatever_the_learners_results(tmp_path, monkeypatch):
    (tmp_path / "a.ipynb").write_text("{}")
    _stub_grade(monkeypatch, rows("a.ipynb", SIZING, {"timeout": True}, _report(), 60))
    assert grade.main([str(tmp_path)]) == 0


@pytest.mark.parametrize("summary, extra, why", [
    ("book.md", [], "name a .csv file"),
    ("missing/book.csv", [], "does not exist"),
    ("grades.csv", ["--out", "grades.csv"], "would overwrite the table"),
])
def test_a_bad_summary_is_refused_before_grading(tmp_path, monkeypatch, capsys, summary,
                                                 extra, why):
    (tmp_path / "a.ipynb").write_text("{}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(grade, "grade", lambda *a, **k: pytest.fail("graded anyway"))
    with pytest.raises(SystemExit) as exc:
        grade.main([str(tmp_path), "--summary", summary, *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--summary {summary}: " in err and why in err


def test_the_gradebook_is_hidden_from_the_submissions(tmp_path, monkeypatch):
    (tmp_path / "a.ipynb").write_text("{}")
    (tmp_path / "private").mkdir()
    seen = {}

    def spy(paths, **kwargs):
        seen.update(kwargs)
        return rows("a.ipynb", [], {"exit": 0}, _report(pages_needed="passed"), 60)

    monkeypatch.setattr(grade, "grade", spy)
    book = tmp_path / "private" / "book.csv"
    assert grade.main([str(tmp_path / "a.ipynb"), "--summary", str(book)]) == 0
    assert book in seen["outputs"]   # its folder is one of the sandbox's secret paths


def test_two_tiny_notebooks_end_to_end(tmp_path, capsys):
    done = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from pagedattn_lab import check\n"
        "check.pages_needed(lambda seq_len, page_size: -(-seq_len // page_size))")])
    broken = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0")])
    folder = tmp_path / "subs"
    folder.mkdir()
    nbformat.write(done, folder / "00_why_paging.ipynb")
    nbformat.write(broken, folder / "scratch.ipynb")
    book = tmp_path / "book.csv"
    status = grade.main([str(folder), "--isolation", "none", "--timeout", "120", "--summary",
                         str(book), "--seed", "1"])
    assert status == 0, capsys.readouterr().err
    lines = _csv(book.read_text())
    assert [{k: e[k] for k in ("file", "workbook", "passed", "tasks", "not_run",
                               "notebook_error", "grader_failed")} for e in lines] == [
        dict(file="00_why_paging.ipynb", workbook="00_why_paging", passed="1", tasks="3",
             not_run="2", notebook_error="0", grader_failed="0"),
        dict(file="scratch.ipynb", workbook="", passed="0", tasks="0", not_run="0",
             notebook_error="1", grader_failed="0")]
    assert "00_why_paging.ipynb: 1/3 tasks passed (" in capsys.readouterr().err
