"""Review of `rawkernel.in_process()` (helper 302): the grader's launches of a learner's
kernel stay checked within it, and a race check asked for by the environment keeps the
package's own kernels checked there (the workers race-check)."""
import numpy as np

from pagedattn_lab.cpu import RawKernel
from pagedattn_lab.grading.kernel_runner import Kernel
from pagedattn_lab.rawkernel import in_process
from tests.test_in_process import FILL, launches  # noqa: F401 - the fixture


def test_the_graders_launches_of_a_learners_kernel_stay_checked_within_it(launches):
    x = np.zeros(4, np.float32)
    learners = Kernel(FILL, "fill", "cpu")
    with in_process():   # a notebook could enter it around its own check
        learners.launch_once((1,), (4,), [x], outputs=(0,))               # race-checked
        learners.launch_once((1,), (4,), [x], outputs=(0,), plain=True)   # slack_reads' rerun
    assert [checked for _, checked in launches] == [True, True], launches


def test_a_race_check_from_the_environment_keeps_the_packages_kernels_checked(launches,
                                                                            monkeypatch):
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_RACECHECK", "1")
    x = np.zeros(4, np.float32)
    with in_process():
        RawKernel(FILL, "fill", trusted=True)((1,), (4,), (x,))
    assert [checked for _, checked in launches] == [True]
    assert x.tolist() == [1.0] * 4
