"""Generate the exercise notebooks from the solution notebooks.

    python -m pagedattn_lab.exercises            # solutions/*.ipynb -> exercises/*.ipynb
    python -m pagedattn_lab.exercises --check    # exit 1 if exercises/ is out of date

In a solution notebook, every answer sits between two marker lines (nbgrader style):

    Python code cells           ### BEGIN SOLUTION  ...  ### END SOLUTION
    CUDA C inside a string      // ### BEGIN SOLUTION  ...  // ### END SOLUTION
    Markdown cells              ### BEGIN SOLUTION  ...  ### END SOLUTION

The generator replaces each region with a stub at the marker's indentation: Python gets
`raise NotImplementedError(...)`, CUDA C gets a `// TODO` comment (so the kernel compiles
and leaves its output unwritten, which the checks report as "not attempted"), Markdown
gets "YOUR ANSWER HERE". Cells tagged `solution-only` are dropped. Outputs, execution
counts and metadata other than tags are cleared, so the result is deterministic.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

# (\r: a cell saved with Windows line ends keeps it before each \n; unmatched, the
# region went to the exercise whole)
BEGIN = re.compile(r"^(?P<indent>[ \t]*)(?P<comment>//[ \t]*|#[ \t]*)?### BEGIN SOLUTION[ \t\r]*$")
END = re.compile(r"^[ \t]*(//[ \t]*|#[ \t]*)?### END SOLUTION[ \t\r]*$")
# a marker with anything else on its line matches neither: refused, not copied as code
NEAR_MARKER = re.compile(r"### (BEGIN|END) SOLUTION")
SOLUTION_ONLY_TAG = "solution-only"
PY_STUB = ("{indent}# YOUR CODE HERE\n"
           "{indent}raise NotImplementedError(\"write this part, then run the check below\")")
CUDA_STUB = ("{indent}// TODO: your code here (see the task above). Until you write it, the "
             "output stays unwritten.")
MD_STUB = "YOUR ANSWER HERE"


class RegionError(ValueError):
    """A solution notebook the generator cannot read: a BEGIN without an END (or the
    reverse) in a cell, no regions at all, or a file that is not a notebook."""


def strip_regions(source: str, cell_type: str = "code") -> tuple[str, int]:
    """(source with every solution region replaced by its stub, number of regions)."""
    out: list[str] = []
    inside = None
    count = 0
    for number, line in enumerate(source.split("\n"), start=1):
        begin = BEGIN.match(line)
        if begin:
            if inside is not None:
                raise RegionError(f"line {number}: BEGIN SOLUTION inside another region")
            inside = begin
            continue
        if END.match(line):
            if inside is None:
                raise RegionError(f"line {number}: END SOLUTION without BEGIN SOLUTION")
            indent = inside.group("indent")
            if cell_type == "markdown":
                out.append(MD_STUB)
            elif (inside.group("comment") or "").startswith("//"):
                out.append(CUDA_STUB.format(indent=indent))
            else:
                out.append(PY_STUB.format(indent=indent))
            inside, count = None, count + 1
            continue
        if NEAR_MARKER.search(line):
            raise RegionError(f"line {number}: {line.strip()!r} is not a marker line (a marker "
                              f"stands alone on its line, after '#' or '//'), so its region "
                              f"would reach the exercise with the answer in it")
        if inside is None:
            out.append(line)
    if inside is not None:
        raise RegionError("BEGIN SOLUTION without END SOLUTION")
    return "\n".join(out), count


def make_exercise(solution: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, int]:
    """The exercise version of a solution notebook, and how many regions it replaced."""
    nb = nbformat.v4.new_notebook()
    meta = solution.get("metadata", {})
    nb.metadata = {k: meta[k] for k in ("kernelspec", "language_info") if k in meta}
    if "language_info" in nb.metadata:
        nb.metadata["language_info"] = {"name": nb.metadata["language_info"].get("name",
                                                                                  "python")}
    total = 0
    for index, cell in enumerate(solution.cells):
        tags = list(cell.get("metadata", {}).get("tags", []))
        if SOLUTION_ONLY_TAG in tags:
            continue
        try:
            source, n = strip_regions(cell.source, cell.cell_type)
        except RegionError as exc:
            raise RegionError(f"cell {index}: {exc}") from None
        total += n
        if cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(source)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(source)
        else:
            new = nbformat.v4.new_raw_cell(source)
        if "id" in cell:
            new["id"] = cell["id"]
        if tags:
            new.metadata["tags"] = tags
        nb.cells.append(new)
    return nb, total


def default_dirs() -> tuple[Path, Path]:
    """solutions/ and exercises/ of the repository this package sits in (else the cwd)."""
    repo = Path(__file__).resolve().parent.parent
    if not (repo / "solutions").is_dir():
        repo = Path.cwd()
    return repo / "solutions", repo / "exercises"


def render(nb: nbformat.NotebookNode) -> str:
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def generate(solutions: Path, exercises: Path, *, check: bool = False) -> list[str]:
    """Write (or, with check=True, compare) every exercise; returns the names that differ."""
    differing = []
    paths = sorted(solutions.glob("*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no solution notebooks in {solutions}")
    texts = {}   # every exercise made before any is written: one bad solution writes nothing
    for path in paths:
        try:
            exercise, n = make_exercise(nbformat.read(path, as_version=4))
        except (ValueError, nbformat.ValidationError) as exc:   # NotJSONError is one
            raise RegionError(f"{path.name}: {exc}") from None
        if n == 0:
            raise RegionError(f"{path.name}: no ### BEGIN SOLUTION regions")
        texts[path.name] = render(exercise)
    if not check:
        exercises.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        target = exercises / name
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current != text:
            differing.append(name)
            if not check:
                target.write_text(text, encoding="utf-8")
    for stale in sorted(exercises.glob("*.ipynb")):
        if not (solutions / stale.name).exists():
            differing.append(stale.name)
            if not check:
                stale.unlink()
    return differing


def main(argv=None) -> int:
    sol_dir, ex_dir = default_dirs()
    parser = argparse.ArgumentParser(prog="python -m pagedattn_lab.exercises",
                                     description="Generate exercises/ from solutions/.")
    parser.add_argument("--solutions", type=Path, default=sol_dir)
    parser.add_argument("--out", type=Path, default=ex_dir)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if any exercise is out of date")
    args = parser.parse_args(argv)
    try:
        differing = generate(args.solutions, args.out, check=args.check)
    except (OSError, ValueError) as exc:   # RegionError is a ValueError
        parser.error(str(exc))
    if args.check:
        if differing:
            print("out of date (run `make exercises`): " + ", ".join(differing))
            return 1
        print(f"exercises/ is up to date with {args.solutions}")
        return 0
    print(f"wrote {args.out}: " + (", ".join(differing) + " changed" if differing
                                   else "nothing changed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
