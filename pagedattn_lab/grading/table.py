"""The grade table: one row per (notebook, task), plus a notes row per notebook with trouble.

The verdicts come from the judge (judge.py); what happened to the sandbox (exit code,
signal, time limit) from the grader itself; the cell errors from the sandbox, which may
say anything, so they only ever appear as notes, cleaned of control characters, cut to
length, and escaped for Markdown and for spreadsheets (a cell starting with "=" is a
formula to Excel).
"""
from __future__ import annotations

import csv
import io
import re
import signal
from dataclasses import dataclass

from .report import shortened

RESULT_WORDS = {"passed": "pass", "failed": "fail", "not attempted": "not attempted"}
NOTEBOOK_ROW = "(notebook)"
MAX_MESSAGE = 1000
# C0 and C1 controls (U+009B is a terminal's one-character CSI: it moves the cursor and
# erases lines like ESC [ does), and the Unicode controls that reorder or hide text
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e"
                      r"\u2060-\u2069\ufeff]")


@dataclass
class Row:
    notebook: str
    task: str
    result: str
    message: str
    # True only on a (notebook) row, when the grader itself failed that notebook (its judge
    # or its sandbox): for the gradebook and the exit status, which must not parse messages
    grader_failed: bool = False


def clean(text) -> str:
    # A lone surrogate (a learner's exception message "\ud800", a file name of bytes that are
    # no UTF-8) is no character UTF-8 can write: printing the table raised, after every
    # notebook was graded, and no table was written. It is shown escaped.
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    text = " ".join(_CONTROL.sub(" ", text).split())
    return shortened(text, MAX_MESSAGE)


def problem_of(outcome: dict, judge: dict | None, timeout: float) -> str | None:
    """Why the notebook did not run to the end normally, or None."""
    if outcome.get("timeout"):
        return f"stopped: the notebook ran past the {timeout:g} s limit"
    if outcome.get("error"):
        return f"the grader could not run the notebook: {outcome['error']}"
    if "signal" in outcome:
        try:
            name = signal.Signals(outcome["signal"]).name
        except ValueError:
            name = str(outcome["signal"])
        return f"the notebook's process died ({name})"
    if outcome.get("exit"):
        return f"the notebook's process died (exit code {outcome['exit']})"
    if judge is None:
        return None
    if judge.get("broken"):
        return judge["broken"]
    if not judge.get("finished"):
        return "the notebook did not run to the end"
    return None


def rows(name: str, tasks: list[str], outcome: dict, judge: dict | None, timeout: float,
         judge_error: str = "") -> list[Row]:
    """The table's rows for one notebook: `tasks` expected, `outcome` of the sandbox
    (isolation.Sandbox.wait), the judge's report (judge.py) or None if it failed."""
    problem = problem_of(outcome, judge, timeout)
    grader_failed = judge is None or bool(outcome.get("error"))
    results = (judge or {}).get("tasks", {})
    tasks = list(tasks) + [t for t in results if t not in tasks]
    out = []
    for task in tasks:
        entry = results.get(task)
        if entry is not None:
            message = entry.get("summary", "")
            if entry.get("calls", 1) > 1:
                message += f" (checked {entry['calls']} times; the last check counts)"
            out.append(Row(name, task, RESULT_WORDS.get(entry.get("status"), "fail"),
                           clean(message)))
        elif judge is None:
            out.append(Row(name, task, "not run", clean(f"the grader's judge failed: "
                                                        f"{judge_error}")))
        elif task == judge.get("running"):
            out.append(Row(name, task, "not run", clean(
                f"{problem or 'the notebook stopped'} (during this task's check)")))
        else:
            why = problem or ("this task's check was never called (cell deleted or an "
                              "error before it)")
            out.append(Row(name, task, "not run", clean(why)))
    notes = [problem] if problem else []
    if judge is None:
        notes.append(f"the grader's judge failed: {judge_error}")
    for err in (judge or {}).get("cell_errors", []):
        if err.get("ename") in ("NotImplementedError", "KeyboardInterrupt"):
            continue   # an unfinished task (reported per task)
        if err.get("cell", -1) < 0:   # the runner could not read the file: no cell ran
            notes.append(f"{err.get('evalue')} ({err.get('ename')}; expected a notebook's "
                         f"JSON)")
        else:
            notes.append(f"cell {err.get('cell') + 1} raised {err.get('ename')}: "
                         f"{err.get('evalue')}")
    if not out and not notes:   # else the notebook would be missing from the table
        notes.append("no task was checked: no cell called a check.* function and the file "
                     "name is not a workbook's")
    if notes:
        out.append(Row(name, NOTEBOOK_ROW, "error", clean("; ".join(notes)), grader_failed))
    return out


def spreadsheet_safe(text: str) -> str:
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def to_csv(table: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["notebook", "task", "result", "message"])
    for r in table:
        writer.writerow([spreadsheet_safe(clean(v)) for v in (r.notebook, r.task, r.result,
                                                               r.message)])
    return buf.getvalue()


def to_markdown(table: list[Row]) -> str:
    def cell(text: str) -> str:
        # backslashes first: "\\|" of the learner's became "\\\\|", an escaped backslash and
        # a pipe that ends the cell (a message or a file name added columns to its row)
        text = clean(text).replace("\\", "\\\\").replace("|", "\\|")
        return text.replace("<", "&lt;").replace(">", "&gt;")

    lines = ["| notebook | task | result | message |", "|---|---|---|---|"]
    lines += [f"| {cell(r.notebook)} | {cell(r.task)} | {cell(r.result)} | {cell(r.message)} |"
              for r in table]
    return "\n".join(lines) + "\n"
