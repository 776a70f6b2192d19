"""Grade submitted workbook notebooks from the command line.

    python -m pagedattn_lab.grade submissions/ [more paths] --timeout 300 --jobs 2 \\
        --out grades.csv --out grades.md [--summary gradebook.csv] [--seed N]

Each notebook (a file, or every *.ipynb under a folder) runs in a sandbox of its own
(grading/isolation.py: namespaces, a fresh uid, a private file system, resource limits,
its whole process tree killed at the time limit), with one time limit for the whole
notebook. The sandbox only runs the learner's code: every `check.<task>(...)` is decided
by a judge process of the grader's (grading/judge.py), which generates the cases from
seeds only it knows, asks the sandbox to run the learner's code on them and compares the
answers itself; a workbook's judge checks that workbook's tasks only (lessons.py, by the
file name; a notebook of no known workbook, any task). Tasks the notebook never checked
are "not run". The table (notebook, task, result, message) is printed as Markdown, and
written as CSV or Markdown for each --out, by its suffix, after every sandbox is gone
(TABLE_HELP: what its columns hold). A file in a given folder that is not a notebook, or
is a symbolic link, has a row saying it was not graded (grading/submissions.py); a notebook
over Limits.file_mb, or one the grader cannot read, is not run. Each judge's heap is bounded
(Limits.judge_mb). --summary writes the gradebook, one line per file
(grading/gradebook.py). The seed of the cases is printed first (seeds.py).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .grading import gradebook, isolation, seeds
from .grading.submissions import find_notebooks, not_graded, not_read, too_large
from .grading.time_limits import CASE_TIME_LIMIT
from .grading.runner import graded_tasks
from .grading.report import text_of
from .grading.table import NOTEBOOK_ROW, Row, clean, rows, to_csv, to_markdown
from .lessons import expected_tasks
from .validate import check_int

JUDGE_GRACE = 60.0   # seconds the judge may take after its sandbox is gone
BANNER = "#" * 78
MAX_SEED = (1 << 63) - 1
EXIT_GRADER_FAILED = 3   # 2 is argparse's and "nothing graded"; 1 an uncaught exception's
TABLE_HELP = f"""\
The table, one row per (notebook, task), printed as Markdown and written by --out as CSV
(columns notebook, task, result, message) or Markdown:
  notebook  the file's path under the folder given, or the path given (full paths
            when two files would share a name)
  task      a task of the notebook's workbook (its file name's NN_name), or {NOTEBOOK_ROW}
  result    pass | fail | not attempted (the stub untouched) | not run (its check never
            ran: message says why) | error (only in the {NOTEBOOK_ROW} row, present when the
            notebook had trouble: a cell raised, the time limit, not a notebook, a link,
            over the size a file may be, unreadable)
  message   the first failing case (expected, got, hint), or why the task was not run
Only "pass" earns a task. Seeds: the cases are drawn from the seed printed first; the same
file graded again with --seed N meets the same cases (to reproduce a learner's result).
Exit status: 0 when the table was made (whatever the learners' results), 2 when nothing
was graded (no notebook found, an --out or --summary that cannot be written, an
isolation level that is not possible here, a bad option), {EXIT_GRADER_FAILED} when the table (and
gradebook) was written but the grader itself failed on a notebook (its judge or its
sandbox could not be run, or the file could not be read: grader_failed 1 in the gradebook,
its tasks "not run", its (notebook) row says why): grade that file again (a submission
that ends its own sandbox can look the same: if it fails again, read the notebook).
"""

__all__ = ["Row", "find_notebooks", "grade", "main", "to_csv", "to_markdown"]


@dataclass
class Run:
    """What every submission of one grading run shares."""
    level: isolation.Level
    timeout: float
    limits: isolation.Limits
    compiler: list[str] | None
    workdir: Path
    seed: int
    seed_cache: str | None = None
    seed_ready: threading.Event | None = None


def _compiler() -> list[str] | None:
    """The instructor's C++ compiler ($CXX or the first found): the only one graded
    kernels are built with."""
    from .cpu.toolchain import find_compiler  # noqa: PLC0415

    try:
        return list(find_compiler(os.environ.get("CXX") or None)[0])
    except Exception:  # noqa: BLE001 - no compiler: kernel tasks will say so
        return None


def _build_seed_cache(run: Run) -> None:
    """Compile the CPU executor's runtime once, with the graded compiler, for every sandbox
    to start from (the runtime is the package's own code, not a submission's)."""
    target = run.workdir / "seed-cache"
    env = dict(os.environ, PAGEDATTN_LAB_CACHE_DIR=str(target),
               PAGEDATTN_LAB_GRADING_CXX=shlex.join(run.compiler or []))
    code = ("from pagedattn_lab.cpu import compiler as c\n"
            "cmd, ident, _ = c.compiler()\n"
            "c._supported_flags(cmd, ident)\n"
            "c.runtime_objects(cmd, ident, c._fiber_mode())\n")
    try:
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300,
                       check=True)
        if (target / "cpu").is_dir():
            run.seed_cache = str(target / "cpu")
    except (OSError, subprocess.SubprocessError):
        pass   # every sandbox then compiles the runtime itself
    finally:
        run.seed_ready.set()


def _start_judge(fd: int, kernel_fd: int, private: Path, salt: int, tasks: list[str],
                 memory_mb: int = 0) -> subprocess.Popen:
    with open(private / "judge.log", "wb") as log:
        judge = subprocess.Popen([sys.executable, "-m", "pagedattn_lab.grading.judge", str(fd),
                                  str(kernel_fd)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                 pass_fds=[fd, kernel_fd], start_new_session=True,
                                 # (on a machine of 64 cores, 2.5 GiB of its heap bound
                                 # went to OpenBLAS's idle threads: isolation.ONE_THREAD)
                                 env={**os.environ, **isolation.ONE_THREAD})
    settings = {"salt": salt, "tasks": tasks, "call_timeout": CASE_TIME_LIMIT + 30,
                "memory_mb": memory_mb}
    judge.stdin.write((json.dumps(settings) + "\n").encode())
    judge.stdin.flush()   # kept open: closing it tells the judge its sandbox is gone
    return judge


def _judge_report(judge: subprocess.Popen, private: Path) -> tuple[dict | None, str]:
    try:
        judge.stdin.close()
        judge.stdin = None   # so that communicate() does not flush it
        out, _ = judge.communicate(timeout=JUDGE_GRACE)
        return json.loads(out.decode().strip().splitlines()[-1]), ""
    except subprocess.TimeoutExpired:
        judge.kill()
        judge.communicate()
        return None, f"it did not finish within {JUDGE_GRACE:g} s"
    except (ValueError, IndexError, OSError):
        log = (private / "judge.log").read_text(errors="replace").strip().splitlines()
        return None, (log[-1] if log else f"exit code {judge.returncode}")


def _submission_bytes(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None past `limit` (read no further): a notebook of gigabytes (a
    sparse file in a learner's archive takes no room there) was copied whole to the grader's
    temporary folder and read whole into its memory, and the MemoryError ended the run
    without a table."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    return data if len(data) <= limit else None


def grade_notebook(path: Path, name: str, run: Run) -> list[Row]:
    """Run one notebook in its sandbox with its judge; its rows for the table."""
    private = Path(tempfile.mkdtemp(prefix="nb-", dir=run.workdir))
    kernels_private = Path(tempfile.mkdtemp(prefix="kernels-", dir=run.workdir))
    ends = [*socket.socketpair(), *socket.socketpair()]
    judge = kernel_box = None
    try:
        try:
            data = _submission_bytes(path, run.limits.file_mb << 20)
        except OSError as exc:   # e.g. mode 000 from a learner's archive (it ended the run)
            return not_read(name, expected_tasks(path), clean(
                f"not graded: the grader could not read the file ({exc})"), True)
        if data is None:
            return not_read(name, expected_tasks(path), too_large(run.limits.file_mb))
        notebook = private / "submission.ipynb"
        notebook.write_bytes(data)
        run.seed_ready.wait()
        judge_end, box_end, judge_kernel_end, kernel_end = ends
        # A workbook's judge checks only that workbook's tasks: another lesson's task,
        # checked here, would be a row of this notebook's that its own workbook never had.
        judge = _start_judge(judge_end.fileno(), judge_kernel_end.fileno(), private,
                             seeds.submission_salt(run.seed, data),
                             expected_tasks(path) or graded_tasks(), run.limits.judge_mb)
        box_settings = dict(notebook=notebook, name=Path(name).name, timeout=run.timeout,
                            limits=run.limits, compiler=run.compiler, seed_cache=run.seed_cache)
        # The learner's CUDA C runs in a sandbox of its own (grading/kernel_host.py), which
        # the submission's code cannot reach: its outputs and counts are the kernel's.
        kernel_box = isolation.start(run.level, private=kernels_private,
                                     channel_fd=kernel_end.fileno(), argv=[
                                         sys.executable, "-m", "pagedattn_lab.grading.kernel_host",
                                         "--channel-fd", str(kernel_end.fileno())],
                                     audit=True, **box_settings)
        box = isolation.start(run.level, private=private, channel_fd=box_end.fileno(),
                              **box_settings)
        for end in ends:
            end.close()
        outcome = box.wait(run.timeout)   # returns once every process of the sandbox is gone
        report, judge_error = _judge_report(judge, private)
        try:
            return rows(name, expected_tasks(path), outcome, report, run.timeout, judge_error)
        except Exception as exc:  # noqa: BLE001 - the report holds what the sandbox sent:
            # raising here lost every notebook's rows (pool.map); this one's are "not run"
            return rows(name, expected_tasks(path), outcome, None, run.timeout,
                        f"its report could not be read ({type(exc).__name__}: "
                        f"{text_of(exc)})")
    finally:
        for end in ends:
            end.close()
        if kernel_box is not None:   # it ends when the judge closes its channel; else now
            kernel_box.kill()
            kernel_box.wait(JUDGE_GRACE)
        if judge is not None and judge.poll() is None:   # a sandbox that did not start
            judge.kill()
            judge.wait()
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(kernels_private, ignore_errors=True)


def _warn(level: isolation.Level) -> None:
    if level.name == "root":
        return
    if level.name == "user":
        print(f"{BANNER}\nWARNING: the grader is not root: submissions run in namespaces "
              f"under YOUR uid (no uid of their own).\n{level.reason}\n{BANNER}",
              file=sys.stderr, flush=True)
        return
    print(f"{BANNER}\nWARNING: NO ISOLATION. Submissions run as YOUR user with only an audit "
          f"hook between\nthem and your files; a submission that means harm can read the "
          f"solutions, change\nyour files and outlive the time limit. Do not grade untrusted "
          f"work like this.\nWhy: {level.reason}\n{BANNER}", file=sys.stderr, flush=True)


def grade(paths, *, timeout: float = 300, jobs: int = 1, progress=None, isolation_level="auto",
          outputs=(), limits: isolation.Limits | None = None, seed: int | None = None
          ) -> list[Row]:
    """Grade every notebook under `paths`; rows in the order of the notebooks found, then
    a row for each other file of the folders. seed: of every submission's cases (see
    seeds.submission_salt; None: a fresh one)."""
    seed = secrets.randbits(63) if seed is None else _seed(seed)
    others = []
    notebooks = find_notebooks(paths, others)
    limits = limits or isolation.Limits()
    if limits.memory_mb and any(Path("/dev").glob("nvidia*")):
        limits.memory_mb = 0   # CUDA reserves far more address space than it uses
    secret = isolation.secret_paths([p for p, _ in notebooks] + list(paths), outputs)
    compiler = _compiler()
    level = isolation.choose(isolation_level, secrets=secret, limits=limits, compiler=compiler)
    _warn(level)
    workdir = Path(tempfile.mkdtemp(prefix="pagedattn-grade-"))
    run = Run(level, timeout, limits, compiler, workdir, seed, seed_ready=threading.Event())
    threading.Thread(target=_build_seed_cache, args=(run,), daemon=True).start()

    def one(item):
        path, name = item
        started = time.monotonic()
        table = grade_notebook(path, name, run)
        if progress:
            entry, = gradebook.entries(table)
            failed = " (the grader failed on it)" if entry.grader_failed else ""
            # (the name is the submission's: no control character reaches a terminal)
            progress(f"{clean(name)}: {entry.passed}/{entry.tasks} tasks passed{failed} "
                     f"({time.monotonic() - started:.0f} s)")
        return table

    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            graded = [row for table in pool.map(one, notebooks) for row in table]
        return graded + [not_graded(path, name) for path, name in others]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        _warn(level)


def _seed(value) -> int:
    return check_int(value, "seed", minimum=0, maximum=MAX_SEED)


def _seed_arg(text: str) -> int:
    try:
        return _seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int from 0 to {MAX_SEED}, got "
                                         f"{text!r}") from None


def _unwritable(out: Path) -> str:
    """Why the table cannot be written to `out` ("" if it can)."""
    if out.is_dir():
        return "is a folder; name a .csv or .md file"
    if not out.parent.is_dir():
        return f"the folder {out.parent} does not exist"
    if not os.access(out if out.exists() else out.parent, os.W_OK):
        return "not writable by this user"
    return ""


def _summary_problem(summary: Path, outs: list[Path]) -> str:
    if summary.suffix.lower() != ".csv":
        return "the gradebook is CSV; name a .csv file"
    if any(summary.resolve() == out.resolve() for out in outs):
        return "also an --out: the gradebook would overwrite the table"
    return ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pagedattn_lab.grade",
                                     description="Grade workbook notebooks; print a table.",
                                     epilog=TABLE_HELP + "\n" + gradebook.SUMMARY_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="notebooks, or folders searched for *.ipynb")
    parser.add_argument("--timeout", type=float, default=300,
                        help="wall-clock seconds allowed for each notebook (default 300)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks graded at once")
    parser.add_argument("--out", action="append", default=[], type=Path,
                        help="write the table to this .csv or .md file (repeatable)")
    parser.add_argument("--summary", type=Path, default=None, metavar="PATH",
                        help="write the gradebook, one line per file, to this .csv file")
    parser.add_argument("--isolation", default="auto", choices=("auto", *isolation.LEVELS),
                        help="auto (default): the best this machine allows, with a warning "
                             "when it is not root; see grading/isolation.py")
    parser.add_argument("--memory-mb", type=int, default=isolation.Limits.memory_mb,
                        help="address-space limit per process of a submission (0: none)")
    parser.add_argument("--seed", type=_seed_arg, default=None,
                        help="the seed of the random cases (default: a fresh one, printed); "
                             "give the printed one to grade a file again on the same cases")
    args = parser.parse_args(argv)
    outputs = [*args.out, *([args.summary] if args.summary else [])]
    for out in outputs:   # before grading: else hours of work end in a traceback
        option = "--summary" if out is args.summary else "--out"
        problem = _unwritable(out)
        if not problem and out is args.summary:
            problem = _summary_problem(out, args.out)
        if problem:
            parser.error(f"{option} {out}: {problem}")
    seed = secrets.randbits(63) if args.seed is None else args.seed
    print(f"cases drawn with --seed {seed} (grade a file again with it to meet the same "
          f"cases)", file=sys.stderr, flush=True)
    try:
        table = grade(args.paths, seed=seed, timeout=args.timeout, jobs=args.jobs,
                      progress=lambda line: print(line, file=sys.stderr, flush=True),
                      isolation_level=args.isolation, outputs=outputs,
                      limits=isolation.Limits(memory_mb=args.memory_mb))
    except (FileNotFoundError, RuntimeError) as exc:
        parser.error(str(exc))
    # every sandbox is gone by now: nothing of a submission's can touch these files
    print(to_markdown(table), end="")
    for out in args.out:
        text = to_csv(table) if out.suffix.lower() == ".csv" else to_markdown(table)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    book = gradebook.entries(table)
    if args.summary:
        args.summary.write_text(gradebook.to_summary_csv(book), encoding="utf-8")
        print(f"wrote {args.summary}", file=sys.stderr)
    failed = [entry.file for entry in book if entry.grader_failed]
    if failed:
        print(f"the grader itself failed on {len(failed)} file(s), grade again: "
              f"{', '.join(clean(f) for f in failed)}", file=sys.stderr)
        return EXIT_GRADER_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
