"""What a case reports of an exception that escaped the learner's code (report.run_cases):
its message and hint, where in the learner's code it was raised, and whose a MemoryError is."""
from __future__ import annotations

from .faults import describe_kernel_exception
from .remote_errors import learner_frame
from .report import JUDGE_HEAP, text_of


def where_raised(exc: BaseException) -> str:
    """' (in your code, line N: text)' for the innermost frame neither this package's nor a
    library's (remote_errors.learner_frame), if any (the sandbox's, when the exception was
    raised there; none for the kernel host's, where no code of the learner's runs)."""
    remote = getattr(exc, "remote_frame", None)   # raised in the grader's sandbox (remote.py)
    if isinstance(remote, str):
        return remote
    return learner_frame(exc)


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
