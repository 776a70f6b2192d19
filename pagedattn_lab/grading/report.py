"""Results of a check and how they are printed.

Every learner-facing check runs a list of cases. A case either passes or raises
`Mismatch(message, hint)`; the harness in `run_cases` turns that, a `NotImplementedError`
(task not attempted), a kernel fault from the CPU executor, or any other exception into a
`CaseResult`, prints it GPU-Puzzles style, and returns a `CheckResult` (the lines printed by
printer.py; an exception's message and hint worded by escaped_errors.py).

When the environment variable named by `RESULTS_ENV` is set, every check also appends one
JSON line with its result to that file (tests/test_exercises.py reads it). The instructor's
grader never does: it computes every verdict itself (judge.py).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from .printer import Printer
from .time_limits import CASE_TIME_LIMIT, CaseTimeout, time_limit

RESULTS_ENV = "PAGEDATTN_LAB_RESULTS"

PASSED = "passed"
FAILED = "failed"
NOT_ATTEMPTED = "not attempted"
JUDGE_HEAP = {"mb": 0}   # the bound judge.limit_memory set on this process (0: none, no judge)


class Mismatch(Exception):
    """A case's result differs from the spec: what went wrong, and a hint at why.
    `names_mistake`: the hint names a mistake the outputs show, not a generic recipe (it
    then outranks a read before an array's start that a launch was stopped at:
    slack_reads.py)."""

    def __init__(self, message: str, hint: str = "", expected: str = "", got: str = "", *,
                 names_mistake: bool = False):
        super().__init__(message)
        self.message, self.hint, self.expected, self.got = message, hint, expected, got
        self.names_mistake = names_mistake


class WrongNumber(Mismatch):
    """A number came back, not the answer (where a Mismatch may also be None, text or no
    number at all came back): a check adds a hint of its own to it (checks_sizing.py)."""


def several_fit(hints, what: str = "result") -> str:
    """One hint for a wrong answer that several known mistakes give alike (`what`: the kind
    of answer, "ranges", "batch"...): one hint as it is; two or more numbered in one
    sentence, since the evidence cannot tell them apart and naming one alone could blame a
    mistake the learner did not make. A hint given twice (two mistakes worded alike) is
    named once."""
    hints = list(dict.fromkeys(hints))
    if not hints:
        raise ValueError("several_fit: hints is empty; pass the hint of at least one mistake "
                         "that fits (a check with none has a hint of its own)")
    if len(hints) == 1:
        return hints[0]
    return (f"these mistakes give the same {what} here, check each: "
            + "; ".join(f"({i}) {h.rstrip('.')}" for i, h in enumerate(hints, 1)) + ".")


def probe(fn, *args):
    """`fn(*args)` asked again by a check to confirm a suspected mistake, or None if it
    raises: a probe that crashes proves nothing. The case's time limit and a broken grader
    channel still end the case."""
    from .slack_reads import probing  # noqa: PLC0415 - it imports this module
    from .wire import ProtocolError   # (wire imports nothing of the grader's)
    try:
        with probing():   # (a read its launch made before an array is not the case's)
            return fn(*args)
    except (CaseTimeout, ProtocolError):
        raise
    except Exception:   # noqa: BLE001 - see above
        return None


def as_array(got, what: str):
    """`got` as a NumPy array, or a Mismatch naming `what`: a ragged list or objects NumPy
    cannot hold would otherwise surface as an error of the check's own code."""
    import numpy as np   # (report.py is imported where NumPy is not needed)
    try:
        return np.asarray(got)
    except (ValueError, TypeError) as exc:
        raise Mismatch(f"{what}: not an array of numbers ({type(got).__name__}: {exc})",
                       "return a NumPy array (or nested lists of equal length) of numbers.",
                       got=repr(got)[:80]) from None


def as_int(got, what: str, expected: int, hint: str):
    """`got` as an int when it is one (Python or NumPy; None stays None), else a Mismatch with
    `hint`: 12.5 or "12" would pass int(got) == expected, and a float cannot index an array."""
    from ..validate_kinds import is_int   # noqa: PLC0415 (as above: report.py stays light)
    if got is None or is_int(got):
        return None if got is None else int(got)
    raise Mismatch(f"{what}: expected an int, got {type(got).__name__} {got!r}", hint,
                   expected=str(expected), got=repr(got))


def text_of(value) -> str:
    """str(value), or what it is when its __str__ raises (a learner's exception class reading
    a field it never set): a report, or the sandbox's answer to the grader, must not fail on
    the learner's bug (under the grader the judge would wait for an answer never sent)."""
    try:
        return str(value)
    except Exception as exc:   # noqa: BLE001 - whatever the learner's __str__ raises
        return f"<{type(value).__name__} whose str() raised {type(exc).__name__}>"


class NotAttempted(Exception):
    """The learner's code is still the stub (it raised NotImplementedError or wrote nothing)."""


@dataclass
class CaseResult:
    name: str
    params: dict
    status: str
    message: str = ""
    hint: str = ""
    expected: str = ""
    got: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED


def shortened(text: str, most: int = 200) -> str:
    """`text` cut to `most` characters, the cut marked " [...]": an expected or got value must
    not push the hint out of a grade table's message (table.clean cuts that the same way)."""
    return text if len(text) <= most else text[:most - 6] + " [...]"


@dataclass
class CheckResult:
    """What one check call found: `passed`, the per-case results and the messages printed."""
    task: str
    status: str
    cases: list[CaseResult] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # (note(): how the verdict was reached)

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def summary(self) -> str:
        """One line for a grade table: the first failure (expected and got, as the notebook
        prints them) and its hint, or 'all N cases passed'; the notes first, in parentheses
        (a long failure is cut at its end)."""
        return "".join(f"({text}) " for text in self.notes) + self._outcome()

    def _outcome(self) -> str:
        if self.status == PASSED:
            return f"all {len(self.cases)} cases passed"
        if self.status == NOT_ATTEMPTED:
            return "not attempted"
        for case in self.cases:
            if not case.passed:
                text = f"{case.name}: {case.message}"
                if case.expected or case.got:   # else the table says where, not what
                    text += f" (expected: {shortened(case.expected)}; got: {shortened(case.got)})"
                return f"{text} Hint: {case.hint}" if case.hint else text
        return self.messages[-1] if self.messages else self.status

    def to_json(self) -> dict:
        return {"task": self.task, "status": self.status, "passed": self.passed,
                "summary": self.summary, "cases": [asdict(c) for c in self.cases]}

    def __repr__(self) -> str:
        n_pass = sum(c.passed for c in self.cases)
        return f"<CheckResult {self.task}: {self.status}, {n_pass}/{len(self.cases)} cases passed>"

    def _ipython_display_(self) -> None:
        """Show nothing in a notebook: the check has already printed its report, and a
        repr echoed under it would only repeat the last line."""


@dataclass
class Case:
    """A named, parameterized test: `run()` returns None on success or raises Mismatch."""
    name: str
    params: dict
    run: Callable[[], None]


def format_params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def run_cases(task: str, title: str, cases: Iterable[Case], *, stop_after_failures: int = 3,
              quiet: bool = False, lint: Callable[[], None] | None = None) -> CheckResult:
    """Run `cases` in order, print the outcome of each, record and return the CheckResult."""
    out = Printer(quiet)
    out.say(f"Checking {title} [{task}]")
    previous, _running.out = getattr(_running, "out", None), out
    try:
        status, results = _run(out, cases, stop_after_failures, lint)
    finally:
        _running.out = previous
    result = CheckResult(task, status, results, out.lines, out.notes)
    record(result)
    return result


_running = threading.local()   # the Printer of the check running in this thread, if any


def note(text: str) -> None:
    """Say `text` in the report of the check running in this thread, once, and first in its
    summary line (outside a check: nowhere): how its verdict was reached, where that is not
    what the learner asked for (a kernel asked to run on the GPU, run on the CPU executor)."""
    out = getattr(_running, "out", None)
    if out is not None and text not in out.notes:
        out.notes.append(text)
        out.say(f"note: {text}", "  ", "      ")


def _run(out: Printer, cases: Iterable[Case], stop_after_failures: int,
         lint: Callable[[], None] | None) -> tuple[str, list[CaseResult]]:
    """run_cases' cases, printed by `out`: (the status, the case results)."""
    from .escaped_errors import (describe_exception,  # noqa: PLC0415 - it imports this module
                                 raised_by_stub)
    from .slack_reads import run_case  # noqa: PLC0415 - it imports this module
    results: list[CaseResult] = []
    status = PASSED
    if lint is not None:
        try:
            lint()
        except Mismatch as mm:
            results.append(CaseResult("source check", {}, FAILED, mm.message, mm.hint))
            out.failure("source check", mm.message, mm.hint)
            status = FAILED
    failures = 0
    for i, case in enumerate(cases if status == PASSED else [], start=1):
        label = f"case {i} {case.name} ({format_params(case.params)})" if case.params \
            else f"case {i} {case.name}"
        try:
            with time_limit(CASE_TIME_LIMIT), warnings.catch_warnings():
                # NaN and overflow are diagnosed by the cases themselves, not as warnings
                warnings.simplefilter("ignore", RuntimeWarning)
                run_case(case.run)
        except Mismatch as mm:
            results.append(CaseResult(case.name, case.params, FAILED, mm.message, mm.hint,
                                      mm.expected, mm.got))
            out.failure(label, mm.message, mm.hint, mm.expected, mm.got)
            status, failures = FAILED, failures + 1
        except CaseTimeout as exc:
            message = f"{exc}: your code never returned."
            hint = ("an endless loop: check that every loop makes progress (a queue that "
                    "is never emptied, a condition that never changes, pages never freed).")
            results.append(CaseResult(case.name, case.params, FAILED, message, hint))
            out.failure(label, message, hint)
            status, failures = FAILED, failures + 1
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # the learner's code crashed: report, do not propagate
            if isinstance(exc, NotAttempted) or \
                    (isinstance(exc, NotImplementedError) and raised_by_stub(exc)):
                status, stub = _stub_reached(out, results, case, label, exc)
                break
            message, hint = describe_exception(exc)
            results.append(CaseResult(case.name, case.params, FAILED, message, hint))
            out.failure(label, message, hint)
            status, failures = FAILED, failures + 1
            if type(exc).__name__ == "KernelTimeout":  # the next cases would hang as long
                out.say("(stopping: a kernel that never finishes would stall every case)", "  ")
                break
        else:
            results.append(CaseResult(case.name, case.params, PASSED))
            out.say(f"PASS  {label}", "  ", "      ")
        if failures >= stop_after_failures:
            out.say(f"(stopping after {failures} failed cases)", "  ")
            break
    n_pass = sum(r.passed for r in results)
    if status == PASSED:
        out.say(f"All {n_pass} cases passed.")
    elif status == NOT_ATTEMPTED:
        out.say(f"Not attempted: write your code in place of {stub}.")
    else:
        out.say(f"{n_pass} of {len(results)} cases passed. Fix the first failure first.")
    return status, results


def _stub_reached(out: Printer, results: list, case: Case, label: str,
                  exc: BaseException) -> tuple[str, str]:
    """A case reached the workbook's stub: (the status, the stub's name). After cases that
    ran, the task is begun but not finished; at the first, not attempted."""
    if results:
        message = f"part of the task is not written yet: {_not_attempted_text(exc)}"
        hint = "a method or branch still raises NotImplementedError; finish it."
        results.append(CaseResult(case.name, case.params, FAILED, message, hint))
        out.failure(label, message, hint)
        return FAILED, ""
    results.append(CaseResult(case.name, case.params, NOT_ATTEMPTED, _not_attempted_text(exc)))
    out.say(f"----  not attempted yet: {_not_attempted_text(exc)}", "  ", "      ")
    return NOT_ATTEMPTED, ("the `// TODO`" if isinstance(exc, NotAttempted) else
                           "the `raise NotImplementedError`")


def _not_attempted_text(exc: BaseException) -> str:
    """Our own NotAttempted explains itself; a NotImplementedError is the workbook's stub
    (or the learner's), whose message is not news to the learner."""
    if isinstance(exc, NotAttempted) and str(exc).strip():
        return str(exc).strip()
    return "your code still raises NotImplementedError"


def record(result: CheckResult) -> None:
    """Append the result as one JSON line to $PAGEDATTN_LAB_RESULTS, if set."""
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(result.to_json()) + "\n")
    except OSError as exc:  # never let bookkeeping break a learner's notebook
        print(f"(could not record the result for the grader: {exc})", file=sys.stderr)
