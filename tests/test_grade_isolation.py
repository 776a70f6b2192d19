"""The grader's other isolation levels: a user namespace (the grader is not root) and none.

At level user the submission still cannot see the solutions or outlive the grader; the
test runs the grader as `nobody` where it can (root with setpriv and a Python that nobody
may run), else asks for the level explicitly. Level none grades correctly, says loudly
that it does not isolate, and keeps only the audit hook of sandbox.py, tested on its own.
"""
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pagedattn_lab.grading import sandbox
from tests.test_grade import (DAEMON, MARKER, READ_SOLUTIONS, REPO, _before_every_check,
                              _first, _leftovers, _load)

TIMEOUT = 60


def _save(nb, path: Path) -> None:
    import nbformat  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def _with_repo_on_path() -> dict:
    """The environment with the repository first on PYTHONPATH, keeping what was there: where
    the Jupyter stack itself comes through PYTHONPATH (the GPU machine's carried wheels), the
    grader needs it too."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))


def _grade(args, cwd, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "pagedattn_lab.grade", *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=_with_repo_on_path())


def _as_unprivileged() -> list[str]:
    """A command prefix that runs the grader as nobody, when this machine allows it."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or not setpriv:
        return []
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import pagedattn_lab.grade"],
                           cwd="/", capture_output=True, env=_with_repo_on_path())
    return prefix if probe.returncode == 0 else []


@pytest.fixture
def shared_tmp():
    """A folder the unprivileged grader can use too."""
    path = Path(tempfile.mkdtemp(prefix="grade-iso-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_user_namespaces_hide_the_solutions_and_take_every_process(shared_tmp):
    subs, out = shared_tmp / "subs", shared_tmp / "grades.csv"
    _save(_load("solutions", "00_why_paging.ipynb"), subs / "alice" / "00_why_paging.ipynb")
    reader = READ_SOLUTIONS.format(solutions=str(REPO / "solutions" / "*.ipynb"),
                                   subs=str(subs))
    _save(_before_every_check(_load("exercises", "00_why_paging.ipynb"), reader),
          subs / "mallory_reader" / "00_why_paging.ipynb")
    daemon = DAEMON.format(forged="notebook,task,result,message\n", csv=str(out),
                           md=str(out), marker=MARKER)
    _save(_first(_load("exercises", "00_why_paging.ipynb"), daemon),
          subs / "mallory_daemon" / "00_why_paging.ipynb")
    for path in shared_tmp.rglob("*"):
        path.chmod(0o777)
    for prefix in ([_as_unprivileged()] if _as_unprivileged() else []) + [[]]:
        proc = _grade([str(subs), "--isolation", "user", "--jobs", "2", "--timeout",
                       str(TIMEOUT), "--out", str(out)], cwd=shared_tmp, prefix=prefix)
        if not (proc.returncode == 2 and "not possible here" in proc.stderr):
            break   # nobody may lack the right to run this Python (e.g. under /root)
    else:
        pytest.skip(f"no user namespaces here: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr
    written = out.read_text()
    time.sleep(1.5)
    assert out.read_text() == written and _leftovers() == []
    rows = {(r["notebook"], r["task"]): r["result"] for r in csv.DictReader(written.splitlines())}
    for task in ("pages_needed", "reserved_waste", "paged_waste"):
        assert rows[("alice/00_why_paging.ipynb", task)] == "pass"
        assert rows[("mallory_reader/00_why_paging.ipynb", task)] == "not attempted"
    assert "WARNING" in proc.stderr and "YOUR uid" in proc.stderr


def test_without_isolation_the_grader_still_grades_and_says_so_loudly(tmp_path):
    subs, outside = tmp_path / "subs", tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    _save(_load("solutions", "00_why_paging.ipynb"), subs / "alice" / "00_why_paging.ipynb")
    vandal = f"import os\nos.remove({str(outside / 'keep.txt')!r})"
    _save(_first(_load("exercises", "00_why_paging.ipynb"), vandal),
          subs / "vandal" / "00_why_paging.ipynb")
    proc = _grade([str(subs), "--isolation", "none", "--timeout", str(TIMEOUT)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("WARNING: NO ISOLATION") == 2   # before and after the table
    assert "| alice/00_why_paging.ipynb | paged_waste | pass |" in proc.stdout
    assert "refused by the grader" in proc.stdout
    assert (outside / "keep.txt").read_text() == "keep"


AUDIT_PROBE = r"""
import os, shutil, sqlite3, subprocess, sys
from pagedattn_lab.grading.sandbox import install
work, outside, cxx = sys.argv[1], sys.argv[2], sys.argv[3]
install(work, compiler=[cxx])
open(os.path.join(work, "ok.txt"), "w").write("fine")          # inside: allowed
os.remove(os.path.join(work, "ok.txt"))
subprocess.run([cxx, "--version"], capture_output=True)      # the graded compiler: allowed
refused = []
for name, action in [
        ("write", lambda: open(os.path.join(outside, "x.txt"), "w")),
        ("append", lambda: open(os.path.join(outside, "keep.txt"), "a")),
        ("remove", lambda: os.remove(os.path.join(outside, "keep.txt"))),
        ("rmtree", lambda: shutil.rmtree(outside)),
        ("rename", lambda: os.rename(os.path.join(outside, "keep.txt"), os.path.join(work, "k"))),
        ("sqlite", lambda: sqlite3.connect(os.path.join(outside, "x.db"))),
        ("shell", lambda: os.system("true")),
        ("subprocess", lambda: subprocess.run(["rm", "-rf", outside])),
        ("wrapper", lambda: subprocess.run([cxx, "-wrapper", "/bin/sh,-c,id", "x.c"])),
        ("gcc", lambda: subprocess.run(["gcc", "--version"])),
        ("fork", lambda: os.fork()),
        ("kill", lambda: os.kill(os.getppid(), 0))]:
    try:
        action()
    except PermissionError as exc:
        assert "refused by the grader" in str(exc)
        refused.append(name)
print(",".join(refused))
open(os.path.join(outside, "keep.txt")).read()                 # reading is allowed
"""


def test_the_audit_hook_refuses_writes_programs_and_signals_outside(tmp_path):
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    cxx = shutil.which("c++") or shutil.which("g++") or "/usr/bin/c++"
    proc = subprocess.run([sys.executable, "-c", AUDIT_PROBE, str(work), str(outside),
                           os.path.realpath(cxx)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().split(",") == ["write", "append", "remove", "rmtree", "rename",
                                              "sqlite", "shell", "subprocess", "wrapper",
                                              "gcc", "fork", "kill"]
    assert sorted(os.listdir(outside)) == ["keep.txt"]
    assert (outside / "keep.txt").read_text() == "keep"
    assert sandbox.compiler_call_allowed([cxx, "--version"], [cxx], [str(work)])
