"""Grade submitted workbook notebooks from the command line.

    python -m pagedattn_lab.grade submissions/ [more paths] --timeout 300 \
        --out grades.csv --out grades.md

Each notebook (a file, or every *.ipynb under a folder) is copied into its own temporary
folder and executed there in its own Jupyter kernel (nbclient), with a time limit for the
whole notebook. Every `check.<task>(...)` call in it reports its result to the grader;
tasks the notebook never checked (deleted, or not reached because of a crash or the time
limit) appear as "not run". The table (notebook, task, result, message) is printed as
Markdown and written as CSV or Markdown for each --out, by its suffix.

A submission that raises, loops forever, kills its kernel, or tries to write or delete
files outside its folder does not stop the grading: the run happens in a separate process
group that is killed at the deadline, the original file is never touched (only its copy
runs), and an audit hook in the kernel refuses writes outside the copy's folder. See
`pagedattn_lab/grading/sandbox.py` for what that hook does not cover: grade untrusted
code in a container.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .grading.report import RESULTS_ENV
from .lessons import expected_tasks

RESULT_WORDS = {"passed": "pass", "failed": "fail", "not attempted": "not attempted"}
NOTEBOOK_ROW = "(notebook)"


@dataclass
class Row:
    notebook: str
    task: str
    result: str
    message: str


def find_notebooks(paths) -> list[tuple[Path, str]]:
    """(path, display name) for each notebook under `paths`, skipping checkpoints."""
    found = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for nb in sorted(path.rglob("*.ipynb")):
                if ".ipynb_checkpoints" not in nb.parts:
                    found.append((nb, str(nb.relative_to(path))))
        elif path.is_file():
            found.append((path, str(path)))
        else:
            raise FileNotFoundError(f"{raw}: no such file or folder")
    names = [name for _, name in found]
    if len(set(names)) < len(names):  # e.g. two folders holding the same file names
        found = [(nb, str(nb)) for nb, _ in found]
    return found


def _kernel_env(workdir: Path, results: Path) -> dict:
    env = dict(os.environ)
    home = workdir / ".home"
    tmp = workdir / ".tmp"
    home.mkdir()
    tmp.mkdir()
    env.update({RESULTS_ENV: str(results), "HOME": str(home), "TMPDIR": str(tmp),
                "XDG_CACHE_HOME": str(home / ".cache"), "MPLCONFIGDIR": str(home / ".mpl"),
                "IPYTHONDIR": str(home / ".ipython"), "PYTHONDONTWRITEBYTECODE": "1",
                "MPLBACKEND": "Agg", "JUPYTER_PLATFORM_DIRS": "1",
                # compiled kernels: a private cache per notebook, inside its folder
                "PAGEDATTN_LAB_CACHE_DIR": str(home / ".cache" / "pagedattn_lab")})
    env.pop("PYTHONSTARTUP", None)
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_kernel(pidfile: Path) -> None:
    """Kill the notebook's kernel (its own session, with its children) if it still runs.

    jupyter_client starts kernels in a new session, so killing the runner's group does
    not reach them; a kernel normally exits when its parent dies, but not necessarily
    while it spins in native code. The pid is checked to still be an ipykernel first.
    """
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        if cmdline.exists() and b"ipykernel" not in cmdline.read_bytes():
            return  # the pid was reused by something else
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def grade_notebook(path: Path, name: str, timeout: float) -> list[Row]:
    """Run one notebook in isolation; its rows for the table."""
    private = Path(tempfile.mkdtemp(prefix="pagedattn-grade-"))
    try:
        workdir = private / "work"
        workdir.mkdir()
        copy = workdir / path.name
        shutil.copyfile(path, copy)
        results, status_file = private / "results.jsonl", private / "status.json"
        results.touch()
        cmd = [sys.executable, "-m", "pagedattn_lab.grading.runner", str(copy), str(workdir),
               str(results), str(status_file), "--timeout", str(timeout)]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=workdir, env=_kernel_env(workdir, results),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        timed_out = False
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            _kill_kernel(Path(str(status_file) + ".kernel-pid"))
            _, stderr = proc.communicate()
        finally:
            _kill_group(proc)  # anything the runner left behind in its group
        elapsed = time.monotonic() - start
        status = _read_json(status_file) or {}
        checks = _read_results(results)
        return _rows(name, path, status, checks, timed_out, timeout, elapsed,
                     stderr.decode(errors="replace") if stderr else "", proc.returncode)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_results(path: Path) -> dict[str, dict]:
    """Last result per task (a learner may re-run a check)."""
    checks: dict[str, dict] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return checks
    for line in lines:
        try:
            entry = json.loads(line)
            checks[str(entry["task"])] = entry
        except (ValueError, KeyError, TypeError):
            continue
    return checks


def _rows(name, path, status, checks, timed_out, timeout, elapsed, stderr, returncode) -> list[Row]:
    rows = []
    problem = None
    if timed_out or (status.get("error") or "").startswith("a cell ran longer"):
        problem = f"stopped: the notebook ran past the {timeout:g} s limit"
    elif status.get("error"):
        problem = status["error"]
    elif not status.get("finished"):
        tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        problem = "the notebook did not run to the end" + (f": {tail[0]}" if tail else
                                                           f" (exit code {returncode})")
    tasks = expected_tasks(path)
    for task in list(checks):
        if task not in tasks:
            tasks.append(task)
    for task in tasks:
        entry = checks.get(task)
        if entry is None:
            why = problem or ("this task's check was never called (cell deleted or an error "
                              "before it)")
            rows.append(Row(name, task, "not run", why))
        else:
            rows.append(Row(name, task, RESULT_WORDS.get(entry.get("status"), "fail"),
                            str(entry.get("summary", ""))))
    notes = []
    if problem:
        notes.append(problem)
    for err in status.get("cell_errors", []):
        interrupted = problem and err["ename"] == "KeyboardInterrupt"
        if err["ename"] == "NotImplementedError" or interrupted:
            continue  # an unfinished task (reported per task), or the grader's own interrupt
        notes.append(f"cell {err['cell'] + 1} raised {err['ename']}: {err['evalue']}")
    if notes:
        rows.append(Row(name, NOTEBOOK_ROW, "error", "; ".join(notes)))
    return rows


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["notebook", "task", "result", "message"])
    for r in rows:
        writer.writerow([r.notebook, r.task, r.result, r.message])
    return buf.getvalue()


def to_markdown(rows: list[Row]) -> str:
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    lines = ["| notebook | task | result | message |", "|---|---|---|---|"]
    lines += [f"| {cell(r.notebook)} | {cell(r.task)} | {cell(r.result)} | {cell(r.message)} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def grade(paths, *, timeout: float = 300, jobs: int = 1, progress=None) -> list[Row]:
    """Grade every notebook under `paths`; rows in the order of the notebooks found."""
    notebooks = find_notebooks(paths)

    def one(item):
        path, name = item
        started = time.monotonic()
        rows = grade_notebook(path, name, timeout)
        if progress:
            passed = sum(r.result == "pass" for r in rows)
            tasks = sum(r.task != NOTEBOOK_ROW for r in rows)
            progress(f"{name}: {passed}/{tasks} tasks passed "
                     f"({time.monotonic() - started:.0f} s)")
        return rows

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return [row for rows in pool.map(one, notebooks) for row in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pagedattn_lab.grade",
                                     description="Grade workbook notebooks; print a table.")
    parser.add_argument("paths", nargs="+", help="notebooks, or folders searched for *.ipynb")
    parser.add_argument("--timeout", type=float, default=300,
                        help="wall-clock seconds allowed for each notebook, kernel start-up "
                             "included (default 300)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks graded at once")
    parser.add_argument("--out", action="append", default=[], type=Path,
                        help="write the table to this .csv or .md file (repeatable)")
    args = parser.parse_args(argv)
    try:
        rows = grade(args.paths, timeout=args.timeout, jobs=args.jobs,
                     progress=lambda line: print(line, file=sys.stderr, flush=True))
    except FileNotFoundError as exc:
        parser.error(str(exc))
    print(to_markdown(rows), end="")
    for out in args.out:
        text = to_csv(rows) if out.suffix.lower() == ".csv" else to_markdown(rows)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
