"""The workbook's checks: one call per task, e.g. `check.allocator(MyAllocator)`.

Each check runs seeded random cases sized to expose the classic mistakes and prints, per
case, PASS or FAIL with the case's parameters, expected vs got, where they differ, and a
hint. It returns a `CheckResult` (`.passed`, `.cases`, `.messages`) and, under the grader,
records it. Code still raising NotImplementedError (or a kernel that writes nothing) is
reported as "not attempted".

CUDA C tasks run on the GPU when CuPy has one, else on the CPU executor (`device="gpu"`
too, and the report says so); pass `device="cpu"` to force the executor, which names the
thread and block of a bad access.
An answer that is the package's own (grading/own_work.py) fails before its cases run.

The checks available here are the ones the lesson registry (`pagedattn_lab.lessons`) names.
"""
from __future__ import annotations

import importlib

from .grading.own_work import guarded
from .grading.report import CheckResult
from .lessons import check_modules

_MODULES = check_modules()


def __getattr__(name):
    if name in _MODULES:
        module = importlib.import_module(f".grading.{_MODULES[name]}", __package__)
        return guarded(name, getattr(module, name))
    raise AttributeError(f"pagedattn_lab.check has no check {name!r}; "
                         f"checks: {', '.join(sorted(_MODULES))}")


def __dir__():
    return sorted([*_MODULES, "CheckResult"])


__all__ = ["CheckResult", *sorted(_MODULES)]
