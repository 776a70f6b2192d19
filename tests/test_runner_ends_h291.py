"""The runner's exit() and its own end (helper 291).

1. `exit(keep_kernel=True)` in a cell: the note said the cell "raised TypeError:
   ExitAutocall.__call__() got an unexpected keyword argument 'keep_kernel'", naming IPython's
   plain shell. Jupyter's exit() (ipykernel's shell, ZMQExitAutocall) takes it: the kernel is
   kept, so the cells after it run; exit(keep_kernel=False) ends the notebook as exit() does.
2. The judge gone (killed) while a thread of the learner's sleeps: the runner's next word to
   it raised ChannelClosed out of main(), and Python's exit waited for the thread, so the
   runner outlived its judge by as long as the thread ran. Now it ends at once, status 1.
"""
import socket
import subprocess
import time

import pytest

from pagedattn_lab.grading import runner
from tests.test_grade_attack_h280 import _code_notebook, _events_of_runner, _start_runner

SLEEPER = "import threading, time\nthreading.Thread(target=time.sleep, args=(300,)).start()"


def test_exit_keeping_the_kernel_runs_the_cells_after_it_as_jupyter_does(tmp_path):
    sent = _events_of_runner(tmp_path, "x = 1", "exit(keep_kernel=True)",
                             "raise ValueError('a later cell ran')")
    assert b"keep_kernel" not in sent and b"ExitAutocall" not in sent
    assert b"a later cell ran" in sent and runner.EXITED.encode() not in sent
    assert b"finished" in sent


@pytest.mark.parametrize("calls", [["exit(keep_kernel=False)"],
                                   ["exit(keep_kernel=True)", "quit()"]])
def test_exit_not_keeping_the_kernel_ends_the_notebook(tmp_path, calls):
    sent = _events_of_runner(tmp_path, "x = 1", *calls, "raise ValueError('a later cell ran')")
    assert runner.EXITED.encode() in sent and b"a later cell ran" not in sent
    assert b"keep_kernel" not in sent and b"finished" in sent


@pytest.mark.parametrize("after", ["x = 1", "check.pages_needed(lambda n, p: 1)"])
def test_a_runner_whose_judge_is_gone_ends_whatever_threads_remain(tmp_path, after):
    """The judge's end of the channel closed before the runner's first word (a check's
    request, or "finished"): the runner ends within seconds, not after the learner's
    thread's 300 s."""
    path = _code_notebook(tmp_path, "from pagedattn_lab import check", SLEEPER, after)
    ours, theirs = socket.socketpair()
    ours.close()   # the judge, killed
    started = time.monotonic()
    proc = _start_runner(tmp_path, path, theirs, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1 and b"ChannelClosed" in err
    assert time.monotonic() - started < 20
