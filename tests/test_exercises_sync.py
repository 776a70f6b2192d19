"""exercises/ is generated from solutions/ (`make exercises`); fail when the two drift."""
import re
from pathlib import Path

import nbformat
import pytest

from pagedattn_lab import exercises
from pagedattn_lab.lessons import LESSONS, expected_tasks, lesson_of

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((REPO / "solutions").glob("*.ipynb"))
CHECK_CALL = re.compile(r"^check\.(\w+)\(", re.M)


def _cells(nb):
    return [(c.cell_type, c.source, list(c.get("metadata", {}).get("tags", []))) for c in nb.cells]


def test_there_is_a_workbook_per_lesson():
    """The registry and the folders agree: each lesson's notebook and solutions exist under
    the registry's name, and no notebook is missing from the registry."""
    assert [p.name for p in SOLUTIONS] == [lesson.name for lesson in LESSONS]
    for lesson in LESSONS:
        assert (REPO / lesson.notebook).exists(), lesson.notebook
    for notebook in (REPO / "notebooks").glob("*.ipynb"):
        assert lesson_of(notebook) is not None, f"{notebook.name} is not in pagedattn_lab/lessons.py"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_committed_exercise_matches_the_generator(solution):
    committed = REPO / "exercises" / solution.name
    assert committed.exists(), f"{committed} is missing: run `make exercises`"
    generated, n_regions = exercises.make_exercise(nbformat.read(solution, as_version=4))
    assert n_regions >= 3
    assert _cells(nbformat.read(committed, as_version=4)) == _cells(generated), (
        f"exercises/{solution.name} is out of date with solutions/: run `make exercises`")


def test_no_stale_exercises():
    assert sorted(p.name for p in (REPO / "exercises").glob("*.ipynb")) == \
        [p.name for p in SOLUTIONS]


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_exercise_hides_every_solution(solution):
    nb = nbformat.read(REPO / "exercises" / solution.name, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_each_task_is_a_region_then_one_check(solution):
    """Tasks in the registry, in order; each check cell follows a cell with a solution region."""
    nb = nbformat.read(solution, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    calls = [m.group(1) for src in code for m in CHECK_CALL.finditer(src)
             if m.group(1) != "backend"]
    assert calls == expected_tasks(solution)
    for i, src in enumerate(code):
        if CHECK_CALL.search(src) and "check.backend" not in src:
            assert "### BEGIN SOLUTION" in code[i - 1], f"cell before {src!r} has no region"
    assert 3 <= len(calls) <= 6


def test_strip_regions_python_cuda_markdown():
    py = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n"
    out, n = exercises.strip_regions(py)
    assert n == 1 and "return x + 1" not in out
    assert "    raise NotImplementedError(" in out and out.startswith("def f(x):\n")
    cu = ('S = r"""\n{\n    int a = 1;\n    // ### BEGIN SOLUTION\n    out[0] = a;\n'
          '    // ### END SOLUTION\n}\n"""')
    out, n = exercises.strip_regions(cu)
    assert n == 1 and "out[0]" not in out and "    // TODO" in out
    assert "NotImplementedError" not in out
    md, n = exercises.strip_regions("Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION",
                                    "markdown")
    assert n == 1 and "Because" not in md and exercises.MD_STUB in md
    with pytest.raises(exercises.RegionError):
        exercises.strip_regions("### BEGIN SOLUTION\nx = 1\n")
    with pytest.raises(exercises.RegionError):
        exercises.strip_regions("x = 1\n### END SOLUTION\n")


def test_generator_writes_then_check_mode_agrees(tmp_path):
    out = tmp_path / "ex"
    assert exercises.main(["--solutions", str(REPO / "solutions"), "--out", str(out),
                           "--check"]) == 1
    assert exercises.main(["--solutions", str(REPO / "solutions"), "--out", str(out)]) == 0
    assert exercises.main(["--solutions", str(REPO / "solutions"), "--out", str(out),
                           "--check"]) == 0
    for solution in SOLUTIONS:  # byte-identical to the committed files
        assert (out / solution.name).read_text() == (REPO / "exercises" / solution.name).read_text()


def test_check_mode_reports_a_stale_exercise_the_generator_would_delete(tmp_path):
    out = tmp_path / "ex"
    args = ["--solutions", str(REPO / "solutions"), "--out", str(out)]
    assert exercises.main(args) == 0
    stale = out / "99_no_such_lesson.ipynb"
    stale.write_text((out / SOLUTIONS[0].name).read_text())
    assert exercises.main(args + ["--check"]) == 1
    assert stale.exists()   # --check writes nothing
    assert exercises.main(args) == 0 and not stale.exists()
    assert exercises.main(args + ["--check"]) == 0


def test_every_registered_check_exists():
    """`pagedattn_lab.check` offers exactly the registry's checks, each a callable."""
    from pagedattn_lab import check
    from pagedattn_lab.lessons import check_modules
    for name in check_modules():
        assert callable(getattr(check, name)), name
    with pytest.raises(AttributeError, match="no check 'allocater'"):
        check.allocater  # noqa: B018


def test_lesson_of_reads_any_two_or_three_digit_number():
    from pagedattn_lab.lessons import Lesson, lesson_of
    assert lesson_of("alice_01_page_table (1).ipynb").number == "01"
    assert lesson_of("bob/07_complete_system.ipynb").number == "07"
    assert lesson_of("notes.ipynb") is None
    assert Lesson("12", "serving_engine", "t", 2).name == "12_serving_engine.ipynb"
