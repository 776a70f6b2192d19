"""A read just before an array's start that the CPU executor stopped: the values still speak.

A checked launch places each array argument against a guard page at its end; the bytes
before its first element, in the same page, hold a fill (NaN for floats, -1 for integers)
and no guard. A plain launch's `x[-1]` reads that fill unstopped; a race-checked or counted
launch (the grader's, on the CPU) stops it with its thread and block (a `KernelFault` with
`slack` set). The fault names the bad access, but the check's reading of the outputs
names the mistake behind it (a guard left out, sequence 0's length for all, page and offset
swapped, ...), and a fault leaves no outputs to read. So, within a case (`run_case`):

- `Kernel.launch` (kernel_runner.py) reruns a launch stopped there as a plain launch on fresh
  copies of its inputs, which reads the fill as before, and records the fault (`seen`);
- the case's check reads the rerun's outputs as usual; their NaN may be the fill's, which
  `pending` tells it, so that a known-wrong variant that is NaN wherever it is wrong proves
  nothing;
- at the case's end, a `Mismatch` whose hint names the mistake (`names_mistake`) keeps it,
  with the fault's account added to its message; any other outcome (a generic hint, another
  exception, or right outputs: the read is still a bug) gives way to the fault itself. The
  gather and prefill kernels' checks mark their hints; elsewhere the fault is the verdict,
  as it is for a counted launch (Kernel.count), which is not rerun: it has no plain twin.

A launch of a probe (report.probe: the check's own question on another problem) is rerun the
same way, but its fault is no evidence of the case's and is not recorded.
"""
from __future__ import annotations

import contextlib
import threading

from .faults import kernel_message
from .report import Mismatch, NotAttempted
from .time_limits import CaseTimeout

_state = threading.local()   # per thread: in_case, probing (depth), fault (the first seen)


def read_before_start(exc: BaseException) -> bool:
    """Whether `exc` is a read the executor stopped in an array's slack, with its thread (a
    write there changes memory: it stays a fault; so does a fault on a guard page)."""
    return (type(exc).__name__ == "KernelFault" and getattr(exc, "slack", False) is True
            and getattr(exc, "access", None) == "read"
            and getattr(exc, "thread", None) is not None)


def rerun_wanted(exc: BaseException) -> bool:
    """Whether Kernel.launch reruns the launch that raised `exc` as a plain one: a read
    before an array's start, in a running case (outside one the fault is the answer)."""
    return getattr(_state, "in_case", False) and read_before_start(exc)


def seen(fault: BaseException) -> None:
    """Record a launch's stopped read for the running case: the first one, not a probe's."""
    if not getattr(_state, "probing", 0) and getattr(_state, "fault", None) is None:
        _state.fault = fault


def pending() -> bool:
    """Whether a launch of the running case read before an array's start (its outputs'
    NaN may be the fill's)."""
    return getattr(_state, "fault", None) is not None


@contextlib.contextmanager
def probing():
    """Within the block, a stopped read is rerun but not recorded (report.probe)."""
    _state.probing = getattr(_state, "probing", 0) + 1
    try:
        yield
    finally:
        _state.probing -= 1


def run_case(run) -> None:
    """`run()`, a case's body, with a recorded read before an array's start settled as the
    module docstring says."""
    _state.in_case, _state.fault = True, None
    try:
        run()
    except (CaseTimeout, NotImplementedError, NotAttempted):
        raise
    except Mismatch as mm:
        fault = _take()
        if fault is None:
            raise
        if not mm.names_mistake:
            raise fault from mm
        raise Mismatch(f"{mm.message}\n{_account(fault)}", mm.hint, mm.expected, mm.got,
                       names_mistake=True) from fault
    except Exception as exc:
        fault = _take()
        if fault is None:
            raise
        raise fault from exc   # (the read before the start came first)
    else:
        fault = _take()
        if fault is not None:   # right outputs from a kernel that read before an array
            raise fault
    finally:   # (a case ended by its time limit leaves no fault for the next question)
        _state.in_case, _state.fault = False, None


def _take():
    fault, _state.fault = getattr(_state, "fault", None), None
    return fault


def _account(fault: BaseException) -> str:
    """The fault's evidence, for a message whose hint comes from the outputs."""
    return (f"The checked launch stopped at an {kernel_message(fault)} The values above "
            "come from a plain rerun, in which that read got what lies before an array on "
            "the CPU executor (NaN, or -1 in an integer array).")
