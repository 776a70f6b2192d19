"""What a case reports of an exception that escaped the learner's code (report.run_cases):
its message and hint, where in the learner's code it was raised, whose a MemoryError is, and
whether a NotImplementedError is the workbook's stub."""
from __future__ import annotations

import re

from .faults import describe_kernel_exception
from .remote_errors import learner_frame, learner_stub, names_not_implemented
from .report import JUDGE_HEAP, text_of


def where_raised(exc: BaseException) -> str:
    """' (in your code, line N: text)' for the innermost frame neither this package's nor a
    library's (remote_errors.learner_frame), if any (the sandbox's, when the exception was
    raised there; none for the kernel host's, where no code of the learner's runs)."""
    remote = getattr(exc, "remote_frame", None)   # raised in the grader's sandbox (remote.py)
    if isinstance(remote, str):
        return remote
    return learner_frame(exc)


# where_raised's text: " (in your code, line N: the line)"
_RAISING_LINE = re.compile(r" \(in .*?, line \d+: (.*)\)$", re.DOTALL)


def raising_line(where: str) -> str:
    """The learner's line quoted in where_raised's text `where` ("" where it quotes none)."""
    line = _RAISING_LINE.match(where)
    return line.group(1) if line is not None else ""


def raised_by_stub(exc: NotImplementedError) -> bool:
    """Whether `exc` is the workbook's stub (or the learner's own "not yet"): raised by a
    statement of the learner's code that names NotImplementedError (remote_errors.learner_stub,
    under the grader as the sandbox read it). One raised by a library the
    learner called (memoryview of float16, a torch op with no kernel for its dtype) or by
    this package (the CPU executor's cooperative groups) is an error like any other: "not
    attempted" would blame an answer that was written."""
    where = getattr(exc, "remote_frame", None)   # the sandbox's line, under the grader
    if not isinstance(where, str):
        if exc.__traceback__ is None:
            return True   # (never raised: nothing tells)
        if _raised_by_the_checks(exc):
            return True   # their own "not attempted": an answer that returned None
        return learner_stub(exc)
    stub = getattr(exc, "remote_stub", None)   # the sandbox's reading of the whole statement
    if isinstance(stub, bool):
        return stub
    # (a sandbox that sent no reading: the first line of the statement is all there is)
    if not where:
        return False
    return names_not_implemented(raising_line(where))


def _raised_by_the_checks(exc: BaseException) -> bool:
    return str(raising_module(exc)).startswith(__package__ + ".")


def raising_module(exc: BaseException) -> str | None:
    """The name of the module whose code raised `exc` (its innermost frame's), or None
    where it was never raised (or its frame has no name)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return None if tb is None else tb.tb_frame.f_globals.get("__name__")


def describe_exception(exc: BaseException) -> tuple[str, str]:
    """(message, hint) for an exception that escaped the learner's code."""
    described = describe_kernel_exception(exc)
    if described is not None:
        return described
    if isinstance(exc, MemoryError):
        return describe_memory_error(exc)
    return (f"raised {type(exc).__name__}: {text_of(exc)}{where_raised(exc)}",
            "read the error above; the spec in the task's prompt says what each input holds.")


def describe_memory_error(exc: MemoryError) -> tuple[str, str]:
    """(message, hint) for a MemoryError: the learner's code's when raised inside it (a
    frame of theirs, or the sandbox's, under the grader), else the check's own work's, which
    under the grader may be the judge's heap bound (judge.limit_memory): that hint blamed
    the learner's code, which had returned, and maybe an answer of the size asked for."""
    memory = f"ran out of memory (MemoryError: {text_of(exc)})"
    where = where_raised(exc)
    if where or isinstance(getattr(exc, "remote_frame", None), str):
        return (memory + where,
                "the case needed far more memory than the task's sizes call for: your code "
                "built, or returned, something much larger than the result the spec asks for.")
    bound = JUDGE_HEAP["mb"]
    return (memory + " in the check's own code, not in yours" +
            (f": the grader's judge may use {bound} MiB" if bound else ""),
            "an answer much larger than the result the spec asks for (or one that grows when "
            "made an array: strings of very different lengths) makes the check's work this "
            "large; if yours is the size the spec asks for, the fault is not your code's: "
            "tell your instructor.")
