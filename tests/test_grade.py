"""The instructor's grader on a folder of mixed submissions.

The submissions are built here from the solution and exercise notebooks (none is committed,
so nbval never collects them): a good one, a wrong one, an untouched one, one that kills its
kernel, one that loops forever, and one that deletes a file outside its folder.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from pagedattn_lab import grade
from pagedattn_lab.grading import sandbox

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 30


def _load(folder: str, name: str):
    return nbformat.read(REPO / folder / name, as_version=4)


def _after_check(nb, task: str, source: str):
    i = next(i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and f"check.{task}(" in c.source)
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell(source))
    return nb


def make_submissions(root: Path, sentinel: Path) -> None:
    def save(nb, rel):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)

    save(_load("solutions", "01_page_table.ipynb"), "alice/01_page_table.ipynb")
    wrong = _load("solutions", "01_page_table.ipynb")
    for cell in wrong.cells:  # the guide's mistake: freed pages never return to the pool
        cell.source = cell.source.replace("                self._free.append(page)",
                                          "                pass")
    save(wrong, "bob/01_page_table.ipynb")
    save(_load("exercises", "00_why_paging.ipynb"), "carol/00_why_paging.ipynb")
    save(_after_check(_load("solutions", "00_why_paging.ipynb"), "pages_needed",
                      "import os\nos._exit(3)"), "dave/00_why_paging.ipynb")
    save(_after_check(_load("solutions", "00_why_paging.ipynb"), "reserved_waste",
                      "while True:\n    pass"), "erin/00_why_paging.ipynb")
    save(_after_check(_load("solutions", "00_why_paging.ipynb"), "pages_needed",
                      f"import os\nos.remove({str(sentinel)!r})"), "frank/00_why_paging.ipynb")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("grading")
    subs, sentinel = base / "submissions", base / "outside" / "keep.txt"
    sentinel.parent.mkdir()
    sentinel.write_text("do not delete")
    make_submissions(subs, sentinel)
    before = {p: p.read_bytes() for p in subs.rglob("*.ipynb")}
    out_csv, out_md = base / "grades.csv", base / "grades.md"
    proc = subprocess.run([sys.executable, "-m", "pagedattn_lab.grade", str(subs), "--timeout",
                           str(TIMEOUT), "--jobs", "2", "--out", str(out_csv), "--out",
                           str(out_md)], capture_output=True, text=True, timeout=300)
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    table = {(r["notebook"], r["task"]): r for r in rows}
    return {"proc": proc, "rows": rows, "table": table, "md": out_md.read_text(),
            "sentinel": sentinel, "before": before}


def test_cli_succeeds_and_writes_both_tables(graded):
    assert graded["proc"].returncode == 0, graded["proc"].stderr
    assert graded["md"].startswith("| notebook | task | result | message |")
    assert graded["proc"].stdout == graded["md"]
    assert len(graded["rows"]) == len(graded["md"].splitlines()) - 2


def test_good_and_wrong_submissions(graded):
    t, md = graded["table"], graded["md"]
    for task in ("allocator", "refcounts", "append_tokens", "block_tables"):
        assert t[("alice/01_page_table.ipynb", task)]["result"] == "pass", md
    bad = t[("bob/01_page_table.ipynb", "allocator")]
    assert bad["result"] == "fail" and "never frees" in bad["message"], md
    assert t[("bob/01_page_table.ipynb", "block_tables")]["result"] == "pass", md
    assert ("alice/01_page_table.ipynb", "(notebook)") not in t, md


def test_untouched_exercise_is_not_attempted(graded):
    for task in ("pages_needed", "reserved_waste", "paged_waste"):
        assert graded["table"][("carol/00_why_paging.ipynb", task)]["result"] == "not attempted"
    assert ("carol/00_why_paging.ipynb", "(notebook)") not in graded["table"]


def test_crash_keeps_what_ran(graded):
    t = graded["table"]
    assert t[("dave/00_why_paging.ipynb", "pages_needed")]["result"] == "pass"
    assert t[("dave/00_why_paging.ipynb", "paged_waste")]["result"] == "not run"
    assert "died" in t[("dave/00_why_paging.ipynb", "(notebook)")]["message"]


def test_endless_loop_is_stopped(graded):
    t = graded["table"]
    assert t[("erin/00_why_paging.ipynb", "reserved_waste")]["result"] == "pass"
    stopped = t[("erin/00_why_paging.ipynb", "paged_waste")]
    assert stopped["result"] == "not run" and f"{TIMEOUT} s limit" in stopped["message"]


def test_deleting_outside_is_refused(graded):
    t = graded["table"]
    assert graded["sentinel"].read_text() == "do not delete"
    assert all(t[("frank/00_why_paging.ipynb", task)]["result"] == "pass"
               for task in ("pages_needed", "reserved_waste", "paged_waste"))
    note = t[("frank/00_why_paging.ipynb", "(notebook)")]["message"]
    assert "PermissionError" in note and "refused by the grader" in note


def test_submissions_are_not_modified(graded):
    assert {p: p.read_bytes() for p in graded["before"]} == graded["before"]


def test_rows_for_missing_checks_and_bad_paths(tmp_path):
    rows = grade._rows("x/04_naive_kernel.ipynb", Path("04_naive_kernel.ipynb"),
                       {"finished": True, "cell_errors": []},
                       {"online_softmax": {"status": "passed", "summary": "all 6 cases passed"}},
                       False, 60, 1.0, "", 0)
    assert [(r.task, r.result) for r in rows] == [
        ("online_softmax", "pass"), ("attend_one", "not run"), ("naive_kernel", "not run")]
    assert "never called" in rows[1].message
    with pytest.raises(SystemExit):
        grade.main([str(tmp_path / "missing")])


SANDBOX_PROBE = r"""
import os, shutil, subprocess, sys
from pagedattn_lab.grading.sandbox import install
work, outside = sys.argv[1], sys.argv[2]
install(work)
open(os.path.join(work, "ok.txt"), "w").write("fine")          # inside: allowed
os.remove(os.path.join(work, "ok.txt"))
refused = []
for name, action in [
        ("write", lambda: open(os.path.join(outside, "x.txt"), "w")),
        ("append", lambda: open(os.path.join(outside, "keep.txt"), "a")),
        ("remove", lambda: os.remove(os.path.join(outside, "keep.txt"))),
        ("rmtree", lambda: shutil.rmtree(outside)),
        ("rename", lambda: os.rename(os.path.join(outside, "keep.txt"), os.path.join(work, "k"))),
        ("shell", lambda: os.system("true")),
        ("subprocess", lambda: subprocess.run(["rm", "-rf", outside])),
        ("kill", lambda: os.kill(os.getppid(), 0))]:
    try:
        action()
    except PermissionError as exc:
        assert "refused by the grader" in str(exc)
        refused.append(name)
print(",".join(refused))
open(os.path.join(outside, "keep.txt")).read()                 # reading is allowed
"""


def test_sandbox_refuses_writes_outside(tmp_path):
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    proc = subprocess.run([sys.executable, "-c", SANDBOX_PROBE, str(work), str(outside)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().split(",") == ["write", "append", "remove", "rmtree", "rename",
                                              "shell", "subprocess", "kill"]
    assert (outside / "keep.txt").read_text() == "keep"
    assert sorted(os.listdir(outside)) == ["keep.txt"]
    assert "gcc" in sandbox.ALLOWED_PROGRAMS


def test_submissions_with_the_same_file_name_stay_apart(tmp_path):
    from pagedattn_lab.grade import find_notebooks

    for student in ("alice", "bob"):
        (tmp_path / student).mkdir()
        (tmp_path / student / "01_page_table.ipynb").write_text("{}")
    names = [name for _, name in find_notebooks([tmp_path / "alice", tmp_path / "bob"])]
    assert len(set(names)) == 2 and all(n.endswith("01_page_table.ipynb") for n in names)
    names = [name for _, name in find_notebooks([tmp_path])]
    assert names == ["alice/01_page_table.ipynb", "bob/01_page_table.ipynb"]
