"""The grader builds and launches a submission's CUDA C in a sandbox of its own (the kernel
host, grading/kernel_host.py), not in the submission's process.

When the runner's process built the kernels, a notebook could replace the kernel runner
there with one that returns the reference's outputs: the stub of workbook 02's gather
kernel then passed under the grader without a line of CUDA C. Run with the grader's CLI at
whatever isolation this machine allows: the patch is plain Python in the learner's process,
so it needs no privilege, and it must reach nothing either way.
"""
import csv
import subprocess
import sys

import nbformat
import pytest

from tests.test_grade import _first, _load

FAKE_KERNEL_RUNNER = """
from pagedattn_lab.grading import kernel_runner as _kernel_runner
from pagedattn_lab.grading.variants import gather_variant as _gather

class _Fake:   # reports no race check, so no store counts are asked for
    device, racecheck = "cpu", False

    def launch(self, grid, block, args, shared_mem=0, outputs=()):
        k_cache, v_cache, tables, lens, _, _, max_len = args[:7]
        return [_gather(k_cache, tables, lens, int(max_len)),
                _gather(v_cache, tables, lens, int(max_len))]

_kernel_runner.Kernel = lambda source, name, device="auto": _Fake()
"""


def _grade(folder, out_csv, level):
    proc = subprocess.run([sys.executable, "-m", "pagedattn_lab.grade", str(folder),
                           "--timeout", "120", "--isolation", level, "--out", str(out_csv)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr
    with open(out_csv, newline="") as fh:
        return {(r["notebook"], r["task"]): r for r in csv.DictReader(fh)}


@pytest.mark.parametrize("level", ["auto", "none"])
def test_a_kernel_runner_patched_in_the_notebook_fakes_no_launch(tmp_path, level):
    """At level none too (no namespaces): there the audit hook refused the executor's own
    link flags (its --wrap list), so no kernel of any submission could be built."""
    subs = tmp_path / "subs"
    for who, nb in (("honest", _load("solutions", "02_page_access.ipynb")),
                    ("mallory", _first(_load("exercises", "02_page_access.ipynb"),
                                       FAKE_KERNEL_RUNNER))):
        (subs / who).mkdir(parents=True)
        nbformat.write(nb, subs / who / "02_page_access.ipynb")
    table = _grade(subs, tmp_path / "grades.csv", level)
    assert table[("honest/02_page_access.ipynb", "gather_kernel")]["result"] == "pass", table
    faked = table[("mallory/02_page_access.ipynb", "gather_kernel")]
    assert faked["result"] == "not attempted", faked
