"""The instructor's grader on a folder of mixed submissions, honest and hostile, --jobs 2.

The submissions are built here from the solution and exercise notebooks (none is committed,
so nbval never collects them): a good one, a wrong one, an untouched one, one that kills its
process, one that loops forever, one that deletes a file outside its folder; and, where
this machine allows the grader's namespaces (grading/isolation.py), one per attack of
issue 14: forged result lines, checks patched to run zero cases, forged protocol frames,
reading the solutions and the other submissions, the compiler's -wrapper and $CXX,
sqlite3 outside its folder, killing every process it can name (the grader, a canary
process, its neighbour graded at the same time), a setsid child holding the grader's
output, and a detached daemon that rewrites the grade files after grading.
"""
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from pagedattn_lab import grade
from pagedattn_lab.grading import isolation

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 30
MARKER = "8642097531"   # in the command line of every process an attack leaves behind
NOT_CREDITED = {"not attempted", "not run", "fail"}
ATTACKS = ("aa_killer", "mallory_results", "mallory_zero", "mallory_forge", "mallory_reader",
           "mallory_compiler", "mallory_setsid", "mallory_daemon")


def _load(folder: str, name: str):
    return nbformat.read(REPO / folder / name, as_version=4)


def _check_cells(nb):
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "check." in c.source
            and "check.backend" not in c.source]


def _after_check(nb, task: str, source: str):
    i = next(i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and f"check.{task}(" in c.source)
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell(source))
    return nb


def _first(nb, source: str):
    """`source` as the cell after the imports (before any task)."""
    i = next(i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and "from pagedattn_lab import check" in c.source)
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell(source))
    return nb


def _before_every_check(nb, source: str):
    for i in reversed(_check_cells(nb)):
        nb.cells.insert(i, nbformat.v4.new_code_cell(source))
    return nb


def _wrong_allocator():
    wrong = _load("solutions", "01_page_table.ipynb")
    for cell in wrong.cells:  # the guide's mistake: freed pages never return to the pool
        cell.source = cell.source.replace("                self._free.append(page)",
                                          "                pass")
    return wrong


FORGE_RESULTS = """
import glob, json, os
lines = "".join(json.dumps({"task": t, "status": "passed", "passed": True, "cases": [],
                            "summary": "all 7 cases passed"}) + "\\n"
                for t in ("pages_needed", "reserved_waste", "paged_waste", "allocator",
                          "refcounts", "append_tokens", "block_tables"))
targets = [os.environ.get("PAGEDATTN_LAB_RESULTS", "")] + glob.glob("/tmp/**/*.jsonl",
                                                                     recursive=True)
os.environ["PAGEDATTN_LAB_RESULTS"] = os.path.abspath("results.jsonl")
for path in filter(None, targets + [os.environ["PAGEDATTN_LAB_RESULTS"]]):
    try:
        with open(path, "a") as fh:
            fh.write(lines)
    except OSError:
        pass
"""

ZERO_CASES = """
from pagedattn_lab.grading import report as _report, checks_sizing as _sizing
from pagedattn_lab.grading.report import CheckResult
_run = _report.run_cases
_report.run_cases = _sizing.run_cases = lambda task, title, cases, **kw: _run(task, title, [],
                                                                                **kw)
check.reserved_waste = lambda fn: CheckResult("reserved_waste", "passed", [], [])
"""

FORGE_FRAMES = """
import json, os, socket, stat, struct
frames = [{"t": "rep", "id": 1, "value": {"$dict": [["status", "passed"]]}, "blobs": []},
          {"t": "ev", "ev": "result", "blobs": [],
           "data": {"$dict": [["task", "pages_needed"], ["status", "passed"]]}},
          {"t": "req", "id": 99, "op": "check", "blobs": [], "fields": {"$dict": [
              ["task", "pages_needed"], ["args", [5]], ["kwargs", {"$dict": []}]]}}]
for fd in range(3, 256):
    try:
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            with socket.socket(fileno=os.dup(fd)) as s:
                for frame in frames:
                    data = json.dumps(frame).encode()
                    s.sendall(struct.pack(">I", len(data)) + data)
    except OSError:
        pass
"""

READ_SOLUTIONS = """
import glob, json
for _path in (glob.glob({solutions!r}) + glob.glob({subs!r} + "/**/*.ipynb", recursive=True)
              + glob.glob("/tmp/**/*.ipynb", recursive=True)):
    try:
        _cells = json.load(open(_path))["cells"]
    except (OSError, ValueError):
        continue
    for _cell in _cells:
        _src = "".join(_cell["source"])
        if _cell["cell_type"] == "code" and "BEGIN SOLUTION" in _src and "check." not in _src:
            exec(_src, globals())
"""

COMPILER = """
import os, sqlite3, subprocess
import numpy as np
from pagedattn_lab.cpu import RawKernel
outside = {outside!r}
for cmd in (["gcc", "-wrapper", f"/bin/sh,-c,touch {{outside}}/pwned-wrapper", "-x", "c",
             "-fsyntax-only", "/dev/null"], ["sh", "-c", f"touch {{outside}}/pwned-shell"]):
    try:
        subprocess.run(cmd, timeout=30)
    except Exception:
        pass
for attempt in (lambda: sqlite3.connect(f"{{outside}}/pwned.db").execute("create table t(x)"),
                lambda: open(f"{{outside}}/pwned-open", "w").write("x"),
                lambda: os.remove(f"{{outside}}/keep.txt")):
    try:
        attempt()
    except Exception:
        pass
here = os.getcwd()
os.environ["CXX"] = f"gcc -wrapper /bin/sh,-c,touch {{here}}/cxx-ran"
kern = RawKernel('extern "C" __global__ void k(float* x) {{ x[threadIdx.x] = 1.0f; }}', "k",
                 options=("-wrapper", f"/bin/sh,-c,touch {{here}}/option-ran", "-I/etc"))
x = np.zeros(4, np.float32)
kern((1,), (4,), (x,))
ran = [f for f in ("cxx-ran", "option-ran") if os.path.exists(f)]
assert x.tolist() == [1.0] * 4 and not ran, f"WRAPPER RAN: {{ran}}"
"""

KILLER = """
import ctypes, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
me, end = os.getpid(), time.time() + 4
mine = {{int(t) for t in os.listdir("/proc/self/task")}}   # kill(thread id) kills us too
while time.time() < end:
    for target in [{canary}, os.getppid(), 1, *range(2, 4096)]:
        if target not in mine:
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass
    for pid in [{canary}] + [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        fd = libc.syscall(434, pid, 0) if pid not in mine else -1    # pidfd_open
        if fd >= 0:
            libc.syscall(424, fd, signal.SIGKILL, None, 0)             # pidfd_send_signal
            os.close(fd)
    time.sleep(0.05)
"""

SETSID = f"""
import os, subprocess, time
subprocess.Popen(["setsid", "sleep", "{MARKER}"])     # holds the runner's stdout and stderr
if os.fork() == 0:                                     # a double-forked daemon, all fds open
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "{MARKER}"])
    os._exit(0)
"""

DAEMON = """
import subprocess, sys
code = '''
import sys, time
forged = {forged!r}
end = time.time() + 120
while time.time() < end:
    for path in ({csv!r}, {md!r}):
        try:
            open(path, "w").write(forged)
        except OSError:
            pass
    time.sleep(0.1)
'''
subprocess.Popen([sys.executable, "-c", code, "{marker}"], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""


def make_submissions(root: Path, outside: Path, outputs, canary: int, attacks: bool) -> None:
    def save(nb, rel):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)

    save(_load("solutions", "01_page_table.ipynb"), "alice/01_page_table.ipynb")
    save(_wrong_allocator(), "bob/01_page_table.ipynb")
    save(_load("exercises", "00_why_paging.ipynb"), "carol/00_why_paging.ipynb")
    save(_after_check(_load("solutions", "00_why_paging.ipynb"), "pages_needed",
                      "import os\nos._exit(3)"), "dave/00_why_paging.ipynb")
    save(_after_check(_load("solutions", "00_why_paging.ipynb"), "reserved_waste",
                      "while True:\n    pass"), "erin/00_why_paging.ipynb")
    save(_after_check(_load("solutions", "00_why_paging.ipynb"), "pages_needed",
                      f"import os\nos.remove({str(outside / 'keep.txt')!r})"),
         "frank/00_why_paging.ipynb")
    if not attacks:
        return
    exercise = lambda: _load("exercises", "00_why_paging.ipynb")  # noqa: E731
    save(_first(exercise(), KILLER.format(canary=canary)), "aa_killer/00_why_paging.ipynb")
    save(_load("solutions", "01_page_table.ipynb"), "ab_neighbour/01_page_table.ipynb")
    save(_first(exercise(), FORGE_RESULTS), "mallory_results/00_why_paging.ipynb")
    save(_first(_wrong_allocator(), FORGE_RESULTS), "mallory_results/01_page_table.ipynb")
    save(_first(exercise(), ZERO_CASES), "mallory_zero/00_why_paging.ipynb")
    save(_first(exercise(), FORGE_FRAMES), "mallory_forge/00_why_paging.ipynb")
    reader = READ_SOLUTIONS.format(solutions=str(REPO / "solutions" / "*.ipynb"),
                                   subs=str(root))
    save(_before_every_check(_load("exercises", "01_page_table.ipynb"), reader),
         "mallory_reader/01_page_table.ipynb")
    save(_first(exercise(), COMPILER.format(outside=str(outside))),
         "mallory_compiler/00_why_paging.ipynb")
    save(_first(exercise(), SETSID), "mallory_setsid/00_why_paging.ipynb")
    forged = ("notebook,task,result,message\n"
              "mallory_daemon/00_why_paging.ipynb,pages_needed,pass,\n")
    save(_first(exercise(), DAEMON.format(forged=forged, csv=str(outputs[0]),
                                          md=str(outputs[1]), marker=MARKER)),
         "mallory_daemon/00_why_paging.ipynb")


def _leftovers() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and MARKER in (proc / "cmdline").read_bytes().decode(
                    errors="replace"):
                found.append(proc.name)
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def level():
    return isolation.choose("auto", secrets=isolation.secret_paths())


@pytest.fixture(scope="module")
def graded(tmp_path_factory, level):
    base = tmp_path_factory.mktemp("grading")
    subs, outside = base / "submissions", base / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("do not delete")
    out_csv, out_md = base / "grades.csv", base / "grades.md"
    canary = subprocess.Popen(["sleep", "600"])
    try:
        make_submissions(subs, outside, (out_csv, out_md), canary.pid, level.isolated)
        before = {p: p.read_bytes() for p in subs.rglob("*.ipynb")}
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pagedattn_lab.grade", str(subs),
                               "--timeout", str(TIMEOUT), "--jobs", "2", "--out", str(out_csv),
                               "--out", str(out_md)], capture_output=True, text=True,
                              timeout=400)
        elapsed = time.monotonic() - started
        written = (out_csv.read_text(), out_md.read_text())
        time.sleep(1.5)   # long enough for a surviving daemon to rewrite them
        canary_alive = canary.poll() is None
    finally:
        canary.kill()
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"proc": proc, "rows": rows, "table": {(r["notebook"], r["task"]): r for r in rows},
            "md": out_md.read_text(), "written": written, "now": (out_csv.read_text(),
                                                                  out_md.read_text()),
            "outside": outside, "before": before, "elapsed": elapsed, "level": level,
            "canary_alive": canary_alive, "leftovers": _leftovers()}


def test_cli_succeeds_and_writes_both_tables(graded):
    assert graded["proc"].returncode == 0, graded["proc"].stderr
    assert graded["md"].startswith("| notebook | task | result | message |")
    assert graded["proc"].stdout == graded["md"]
    assert len(graded["rows"]) == len(graded["md"].splitlines()) - 2
    assert graded["elapsed"] < 300


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


def test_deleting_outside_fails_and_harms_nothing(graded):
    t = graded["table"]
    assert (graded["outside"] / "keep.txt").read_text() == "do not delete"
    assert sorted(os.listdir(graded["outside"])) == ["keep.txt"]
    assert all(t[("frank/00_why_paging.ipynb", task)]["result"] == "pass"
               for task in ("pages_needed", "reserved_waste", "paged_waste"))
    note = t[("frank/00_why_paging.ipynb", "(notebook)")]["message"]
    expected = "FileNotFoundError" if graded["level"].isolated else "refused by the grader"
    assert expected in note


def test_submissions_are_not_modified(graded):
    assert {p: p.read_bytes() for p in graded["before"]} == graded["before"]


def _attacks(graded):
    if not graded["level"].isolated:
        pytest.skip(f"no namespaces here, attacks not run: {graded['level'].reason}")
    return graded["table"]


def test_attacks_get_no_credit(graded):
    t = _attacks(graded)
    for (notebook, task), row in t.items():
        if notebook.startswith(ATTACKS) and task != "(notebook)":
            honest_pass = notebook == "mallory_results/01_page_table.ipynb" and \
                task in ("refcounts", "append_tokens", "block_tables")
            assert honest_pass or row["result"] in NOT_CREDITED, (notebook, row)
    assert t[("mallory_results/01_page_table.ipynb", "allocator")]["result"] == "fail"
    for task in ("allocator", "refcounts", "append_tokens", "block_tables"):   # unreadable
        assert t[("mallory_reader/01_page_table.ipynb", task)]["result"] == "not attempted"
    zero = {task: t[("mallory_zero/00_why_paging.ipynb", task)]["result"]
            for task in ("pages_needed", "reserved_waste", "paged_waste")}
    assert zero == {"pages_needed": "not attempted", "reserved_waste": "not run",
                    "paged_waste": "not attempted"}
    forged = t[("mallory_forge/00_why_paging.ipynb", "pages_needed")]
    assert forged["result"] == "not attempted" and "the last check counts" in forged["message"]


def test_attacks_harm_nothing_outside_their_folder(graded):
    _attacks(graded)
    assert sorted(os.listdir(graded["outside"])) == ["keep.txt"]
    assert graded["now"] == graded["written"], "a daemon rewrote the grade files"
    assert graded["written"][1] == graded["proc"].stdout
    assert graded["leftovers"] == [], "processes of a submission outlived the grader"
    assert graded["canary_alive"]
    note = graded["table"].get(("mallory_compiler/00_why_paging.ipynb", "(notebook)"))
    assert note is None or "WRAPPER RAN" not in note["message"], note


def test_neighbours_and_the_grader_survive_an_attack(graded):
    t = _attacks(graded)
    for task in ("allocator", "refcounts", "append_tokens", "block_tables"):
        assert t[("ab_neighbour/01_page_table.ipynb", task)]["result"] == "pass"
    for name in ("aa_killer", "mallory_setsid", "mallory_daemon"):   # ran to their end
        assert (f"{name}/00_why_paging.ipynb", "(notebook)") not in t, t


def test_submissions_with_the_same_file_name_stay_apart(tmp_path):
    for student in ("alice", "bob"):
        (tmp_path / student).mkdir()
        (tmp_path / student / "01_page_table.ipynb").write_text("{}")
    names = [name for _, name in grade.find_notebooks([tmp_path / "alice", tmp_path / "bob"])]
    assert len(set(names)) == 2 and all(n.endswith("01_page_table.ipynb") for n in names)
    names = [name for _, name in grade.find_notebooks([tmp_path])]
    assert names == ["alice/01_page_table.ipynb", "bob/01_page_table.ipynb"]
    with pytest.raises(SystemExit):
        grade.main([str(tmp_path / "missing")])

