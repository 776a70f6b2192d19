"""The gradebook: one line per submitted file, counted from the grade table's rows (table.py).

`python -m pagedattn_lab.grade --summary PATH` writes it as CSV. Its columns are a contract
with the instructor's scripts: SUMMARY_HELP says what each holds, and a new column is only
ever added at the end. Everything is counted from the rows' results and the (notebook) row's
grader_failed flag, never from their messages.
"""
from __future__ import annotations

import csv
import io
from dataclasses import astuple, dataclass, fields

from ..lessons import lesson_of
from .table import NOTEBOOK_ROW, Row, clean, spreadsheet_safe

SUMMARY_HELP = """\
The gradebook (--summary PATH, CSV with a header), one line per file in the table's order,
columns in this order (a new one is only ever appended):
  file            the notebook column of the table, written the same way (the join key)
  workbook        the workbook its file name names (01_page_table), empty if none
  passed          tasks whose result is pass (only these earn a task)
  tasks           the file's task rows: its workbook's tasks and any other it checked
                  (0 for a file that was not graded)
  failed, not_attempted, not_run    tasks with that result (they add up with passed)
  notebook_error  1 if the file has a (notebook) row (a cell raised, the time limit, not
                  a notebook, the grader failed), else 0
  grader_failed   1 if the grader itself failed on it (its judge, or its sandbox could not
                  be run): grade it again (if it fails again, the submission may be ending
                  its own sandbox: read it); its tasks then read not run
"""


@dataclass(frozen=True)
class Entry:
    """One file's line of the gradebook; the fields are the columns, in order."""
    file: str
    workbook: str
    passed: int
    tasks: int
    failed: int
    not_attempted: int
    not_run: int
    notebook_error: bool
    grader_failed: bool


COLUMNS = tuple(f.name for f in fields(Entry))


def _entry(name: str, rows: list[Row]) -> Entry:
    results = [r.result for r in rows if r.task != NOTEBOOK_ROW]
    notes = [r for r in rows if r.task == NOTEBOOK_ROW]
    lesson = lesson_of(name)
    return Entry(name, lesson.name.removesuffix(".ipynb") if lesson else "",
                 results.count("pass"), len(results), results.count("fail"),
                 results.count("not attempted"), results.count("not run"), bool(notes),
                 any(r.grader_failed for r in notes))


def entries(table: list[Row]) -> list[Entry]:
    """The gradebook of `table` (grade.grade's rows): a line per file, in the table's order."""
    by_file: dict[str, list[Row]] = {}
    for row in table:
        by_file.setdefault(row.notebook, []).append(row)
    return [_entry(name, rows) for name, rows in by_file.items()]


def to_summary_csv(book: list[Entry]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for entry in book:
        writer.writerow([spreadsheet_safe(clean(value)) if isinstance(value, str) else int(value)
                         for value in astuple(entry)])
    return buf.getvalue()
