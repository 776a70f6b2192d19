"""The files a grading run finds in the folders it is given: notebooks to grade, and a row
for every other file (grade.py), so that no submission is silently left out."""
from __future__ import annotations

import os
from pathlib import Path

from .table import NOTEBOOK_ROW, Row


def _is_notebook(path: Path) -> bool:
    # ("Work.IPYNB" from some systems included.) A link is no submission: to a classmate's
    # file or to the solutions, it was graded as the learner's work, and the file it names
    # (graded once: find_notebooks) lost its own rows.
    return path.suffix.lower() == ".ipynb" and not path.is_symlink() and path.is_file()


def _submitted(folder: Path) -> tuple[list[Path], list[Path]]:
    """(notebooks, other entries) under `folder`: nothing hidden (Jupyter's checkpoints,
    .DS_Store, .git, an editor's .~lock files) and nothing of a Mac zip's __MACOSX folder (its
    `._name.ipynb` copies are no submissions)."""
    notebooks, others = [], []
    for f in _entries(folder):
        parts = f.relative_to(folder).parts
        if "__MACOSX" in parts or any(p.startswith(".") for p in parts):
            continue
        (notebooks if _is_notebook(f) else others).append(f)
    return notebooks, others


def _entries(folder: Path) -> list[Path]:
    """Everything under `folder` but the folders it lists, sorted: files, symbolic links (to
    a file, a folder or nothing: none is followed) and the folders it cannot open. (rglob
    passes over a folder it cannot open, its permissions, without a word: the notebooks in
    it had no row.)"""
    found = []

    def unlisted(exc: OSError) -> None:
        if Path(exc.filename) == folder:
            # the folder given itself: the run's error (grade.main: exit 2), naming it
            raise RuntimeError(f"{folder}: the grader could not open this folder "
                               f"({exc.strerror})") from exc
        found.append(Path(exc.filename))

    for top, dirs, files in os.walk(folder, onerror=unlisted):
        found += [Path(top, d) for d in dirs if Path(top, d).is_symlink()]
        found += [Path(top, f) for f in files]
    return sorted(found)


def find_notebooks(paths, others: list | None = None) -> list[tuple[Path, str]]:
    """(path, display name) for each notebook under `paths`, skipping checkpoints; the
    other files of the folders in `paths`, and their symbolic links (to a file, a folder or
    nothing), are appended to `others` (when given) the same way: a learner's workbook saved
    as .py or .txt is then not silently left out."""
    found, skipped = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside, rest = _submitted(path)
            if not inside:   # else an empty table that reads as "graded, nothing failed"
                raise FileNotFoundError(f"{raw}: no *.ipynb notebook in this folder")
            found += [(nb, str(nb.relative_to(path))) for nb in inside]
            skipped += [(f, str(f.relative_to(path))) for f in rest]
        elif path.is_file():
            found.append((path, str(path)))
        else:
            raise FileNotFoundError(f"{raw}: no such file or folder")
    # a file named twice (`grade a.ipynb a.ipynb`, or a folder and a file in it) once: the
    # gradebook counts a submission's rows by its name. A link named is its own submission,
    # not its target's (which keeps its row where a folder given holds it).
    first = {}
    for f, name in found:
        first.setdefault(f.parent.resolve() / f.name if f.is_symlink() else f.resolve(),
                         (f, name))
    found = list(first.values())
    names = [name for _, name in found + skipped]
    if len(set(names)) < len(names):  # e.g. two folders holding the same file names
        found, skipped = ([(f, str(f)) for f, _ in group] for group in (found, skipped))
    if others is not None:
        others += skipped
    return found


def not_graded(path: Path, name: str) -> Row:
    """The row of a file of the folders that is not graded (`name` as the table shows it)."""
    what = ("a link to another file or folder (graded as yours, it would be that file's "
            "work); submit the notebook itself") if path.is_symlink() else \
        ("a folder the grader could not open (its permissions): its notebooks were not "
         "graded; make it readable and grade again") if path.is_dir() else \
        "not a notebook (a .ipynb file); ask for the workbook saved from Jupyter"
    return Row(name, NOTEBOOK_ROW, "error", f"not graded: {what}")


def not_read(name: str, tasks: list[str], why: str, grader_failed: bool = False
             ) -> list[Row]:
    """The rows of a notebook the grader did not read (over the size a notebook may be,
    isolation.Limits.file_mb, or unreadable): each of its workbook's `tasks` "not run", as
    for a notebook that could not run, and its (notebook) row saying `why`."""
    return [Row(name, task, "not run", why) for task in tasks] + \
        [Row(name, NOTEBOOK_ROW, "error", why, grader_failed)]


def too_large(limit_mb: int) -> str:
    return (f"not graded: the file is over {limit_mb} MiB, more than a notebook may be; clear "
            f"its cells' outputs in Jupyter, save it and submit it again")
