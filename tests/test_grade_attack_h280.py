"""The grader attacked from the learner's side, with fresh eyes (hunt 280).

Fixed: (a) a notebook of format 3 (its cells in "worksheets", a code cell's source in
"input"; Jupyter opens it, converting it) was read as a notebook of no cells, and so was JSON
with no "cells" at all (`{"metadata": {}}`): every task read "not run: this task's check was
never called (cell deleted or an error before it)", and no row said the file was not read
(runner.code_cells). (b) A thread the notebook started and never ended (not a daemon: a
background loop, a sleep) kept the runner's exit waiting for it after the last cell: a
notebook that had run to the end was stopped at the time limit, its (notebook) row said "ran
past the limit", and the grader waited out that limit for it (runner.main). (c) `exit()`
or `quit()` in a cell (IPython's, which call the shell's ask_exit): the note said the cell
"raised AttributeError: 'InteractiveShell' object has no attribute 'ask_exit'", naming the
grader's shell, and the cells after it ran; in Jupyter the kernel ends there. Now the
notebook ends there too, and the note says so. (d) A task that passed, checked again, and
the sandbox gone during that check (the time limit, a crash): the row kept the earlier pass,
with no word of the last check, which counts (judge.check).

Held (21 notebooks graded end to end and the attacks below): os.chdir('/'), np.seterr(all=
'raise') with print options, raise SystemExit/KeyboardInterrupt/GeneratorExit in a cell,
__del__ that raises, sys.stdout closed, deep recursion, %time and %timeit around a check
("checked 3 times"), %%writefile, !ls (refused: a note), raw cells, a UTF-8 BOM or Latin-1
file (not read, said so, as Jupyter refuses it), a wrong answer checked after a right one
(the last check counts, and the row says how many).
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pagedattn_lab.grading import runner, table
from tests.check_helpers import REPO
from tests.test_grade_protocol import remotely


def _write(tmp_path, nb) -> str:
    path = tmp_path / "00_why_paging.ipynb"
    path.write_text(json.dumps(nb))
    return str(path)


def test_a_format_3_notebooks_code_cells_are_read(tmp_path):
    nb = {"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": [
        {"cells": [{"cell_type": "heading", "level": 1, "source": "Title"},
                   {"cell_type": "code", "input": ["x = 1\n", "y = 2"], "language": "python"}]},
        {"cells": [{"cell_type": "code", "input": "check.pages_needed(f)"}]}]}
    assert runner.code_cells(_write(tmp_path, nb)) == [(1, "x = 1\ny = 2"),
                                                       (2, "check.pages_needed(f)")]


@pytest.mark.parametrize("nb", [
    {"metadata": {}}, {"nbformat": 4}, {"worksheets": [{"cells": 3}]}, {"worksheets": [7]},
    [], 3, "cells"])   # (JSON that is no object: helper 292's mutant took it as no cells)
def test_json_with_no_cells_is_no_notebook(tmp_path, nb):
    with pytest.raises(ValueError, match="no list of cells"):
        runner.code_cells(_write(tmp_path, nb))


def _code_notebook(tmp_path, *sources) -> str:
    """The path of a notebook of code cells `sources`, written in tmp_path."""
    return _write(tmp_path, {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": source} for source in sources]})


def _start_runner(tmp_path, path, channel, env=None, **streams) -> subprocess.Popen:
    """The runner of the notebook at `path`, in tmp_path, with `env` (os.environ if None) and
    the package on its path, talking to the judge over socket `channel` (closed here, the
    runner's end alone holding it); `streams` as Popen's (stdout=..., stderr=...)."""
    proc = subprocess.Popen([sys.executable, "-m", "pagedattn_lab.grading.runner", str(path),
                             "--channel-fd", str(channel.fileno())], pass_fds=[channel.fileno()],
                            cwd=tmp_path, env={**(os.environ if env is None else env),
                                               "PYTHONPATH": str(REPO)}, **streams)
    channel.close()
    return proc


def _events_of_runner(tmp_path, *sources, env=None, stdout=subprocess.DEVNULL) -> bytes:
    """What the runner sends the judge for a notebook of code cells `sources` (the bytes of
    its frames, up to its end); it must end within a minute of its start, with status 0."""
    ours, theirs = socket.socketpair()
    proc = _start_runner(tmp_path, _code_notebook(tmp_path, *sources), theirs, env,
                         stdout=stdout, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    try:
        received = b""
        ours.settimeout(60)
        while chunk := ours.recv(1 << 16):   # EOF once the runner is gone
            received += chunk
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
        ours.close()
    assert time.monotonic() - started < 60
    return received


def test_the_runner_ends_after_the_last_cell_whatever_threads_remain(tmp_path):
    """The notebook ran to the end ("finished" sent): its process must end too, not wait for
    a learner's thread that sleeps for minutes."""
    sent = _events_of_runner(tmp_path, "import threading, time\n"
                             "threading.Thread(target=time.sleep, args=(300,)).start()")
    assert b"finished" in sent


@pytest.mark.parametrize("call", ["exit()", "quit()", "exit"])
def test_exit_ends_the_notebook_as_jupyters_kernel_does(tmp_path, call):
    sent = _events_of_runner(tmp_path, "x = 1", call, "raise ValueError('a later cell ran')")
    assert runner.EXITED.encode() in sent and b"SystemExit" in sent
    assert b"ask_exit" not in sent and b"a later cell ran" not in sent
    assert b"finished" in sent


def test_a_check_cut_short_is_the_tasks_last_check():
    """A pass, then the same task checked again and the sandbox gone during that check (the
    notebook's time limit, a crash): the row read "pass: all 12 cases passed", with no word
    of the check that never ended; the last check counts, so the task was not run."""
    def learner(peer):
        check = runner.forwarder(peer, "pages_needed")
        check(lambda seq_len, page_size: -(-seq_len // page_size))

        def cut_short(seq_len, page_size):
            peer.channel.close()   # the sandbox ends here
            return 0
        check(cut_short)

    report = remotely("pages_needed", learner=learner, salt=3)
    assert report["running"] == "pages_needed" and "pages_needed" not in report["tasks"]
    row, = [r for r in table.rows("nb.ipynb", ["pages_needed"], {"timeout": True}, report, 60)
            if r.task == "pages_needed"]
    assert row.result == "not run" and "during this task's check" in row.message
