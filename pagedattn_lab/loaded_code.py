"""The code objects the package's modules were imported from, recorded as each one loads.

The grader's own-work check (grading/own_watch.py) tells the package's code from a learner's
by them: code compiled under a package file's name and run in that module's own namespace
(`exec(code, reference.__dict__)`) is not among them. They are recorded by the import, not
compiled again from the file when a check asks: a file edited since (a `git pull` while the
notebook's kernel runs) compiles to other code objects, and the package's own calls would
look like the learner's, failing every check. Every import's code is kept: after
`importlib.reload` of an edited file, the objects made before it (an engine built in an
earlier cell) still run the code of the first import.

Recorded for the finder's source files only: a sourceless (.pyc-only) or zipped install is
not recorded, and the check compiles the file again as before (where there is no source to
compile, the package's code looks like the learner's). The record lives in the process that
runs the learner's code, which could rewrite it (or own_watch itself) from a cell: like the
rest of the own-work check, it guards against accidents, not against a student who means to
cheat (README: "a submission that rewrites the sandbox's side of the grader").
"""
from __future__ import annotations

import importlib.machinery
import sys
import types

PACKAGE = __name__.split(".")[0]
# a module's file -> the code of each time it was imported (more than one: reloaded)
_LOADED: dict[str, list[types.CodeType]] = {}


class _RecordingLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname):
        code = super().get_code(fullname)
        if code is not None:
            _LOADED.setdefault(self.path, []).append(code)
        return code


class _Finder:
    """Finds the package's submodules as the path finder does, with a recording loader."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if path is None or not name.startswith(PACKAGE + "."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader:
            spec.loader = _RecordingLoader(spec.loader.name, spec.loader.path)
        return spec


def install() -> None:
    """Record every submodule imported from now on (the package's __init__ calls it first)."""
    if _Finder not in sys.meta_path:
        sys.meta_path.insert(0, _Finder)


def imported_code(filename: str) -> tuple[types.CodeType, ...] | None:
    """The code module `filename` was imported from (each import's, reloads too), None if it
    was not recorded (the package's __init__ and this module, loaded before the recording
    began)."""
    codes = _LOADED.get(filename)
    return tuple(codes) if codes else None
