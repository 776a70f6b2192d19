"""The grader builds and launches a submission's CUDA C in a sandbox of its own (the kernel
host, grading/kernel_host.py), not in the submission's process.

When the runner's process built the kernels, a notebook could replace the kernel runner
there with one that returns the reference's outputs: the stub of workbook 02's gather
kernel then passed under the grader without a line of CUDA C. Run with the grader's CLI at
whatever isolation this machine allows: the patch is plain Python in the learner's process,
so it needs no privilege, and it must reach nothing either way.
"""
import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import nbformat
import pytest

from pagedattn_lab.grading import isolation, kernel_host, remote, runner, wire
from pagedattn_lab.grading.channel import Channel
from pagedattn_lab.grading.judge import Judge
from tests.check_helpers import solution_source
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


def test_a_kernel_host_that_dies_fails_its_task_and_the_other_checks_go_on():
    """A kernel that brought its process down (the CPU executor's sandbox makes that rare)
    closes the kernel host's channel: that task fails, saying so, and a check that needs no
    kernel still gets its verdict; the judge does not take it for the submission's end."""
    judge_end, learner_end = socket.socketpair()
    judge_kernel_end, kernel_end = socket.socketpair()
    judge = Judge(remote.Peer(Channel(judge_end), strict=True, call_timeout=60), salt=None,
                  tasks=["gather_kernel", "pages_needed"],
                  kernels=remote.Peer(Channel(judge_kernel_end), strict=True, call_timeout=60))

    def crash(peer, header, blobs):
        peer.channel.close()
        raise wire.ChannelClosed("the kernel host is gone")

    host_peer = remote.Peer(Channel(kernel_end), strict=False, services={"kernel": crash})
    host = threading.Thread(target=kernel_host.serve, args=(host_peer,), daemon=True)
    learner = remote.Peer(Channel(learner_end), strict=False)
    source = solution_source("02_page_access.ipynb", "SOURCE_GATHER")

    def notebook():
        try:
            runner.forwarder(learner, "gather_kernel")(source, device="cpu")
            runner.forwarder(learner, "pages_needed")(lambda num_tokens, page_size:
                                                      -(-num_tokens // page_size))
        finally:
            learner.channel.close()

    host.start()
    thread = threading.Thread(target=notebook, daemon=True)
    thread.start()
    judge.serve(idle_timeout=60)
    thread.join(60)
    tasks = judge.report()["tasks"]
    assert tasks["gather_kernel"]["status"] == "failed"
    assert "kernel host ended" in tasks["gather_kernel"]["summary"], tasks
    assert tasks["pages_needed"]["status"] == "passed", tasks
    assert judge.report()["running"] is None


def test_a_sandbox_that_cannot_start_leaves_no_judge_behind(tmp_path, monkeypatch):
    """isolation.start raising after the judge started (the kernel host's sandbox, or the
    runner's) left the judge process unwaited, holding its pipes."""
    from pagedattn_lab import grade
    from pagedattn_lab.grading import isolation

    started = []
    real = grade._start_judge

    def spy(*args):
        started.append(real(*args))
        return started[-1]

    def refuse(*args, **kwargs):
        raise OSError("no sandbox here")

    monkeypatch.setattr(grade, "_start_judge", spy)
    monkeypatch.setattr(isolation, "start", refuse)
    nb = tmp_path / "02_page_access.ipynb"
    nbformat.write(_load("solutions", "02_page_access.ipynb"), nb)
    with pytest.raises(OSError, match="no sandbox here"):
        grade.grade([nb], isolation_level="none")
    assert started and started[0].poll() is not None


def test_a_compiler_outside_usr_is_shared_with_the_sandboxes():
    """The GPU image's compiler is /opt/gcc/bin/g++ ($CXX): the boxes were given /usr and
    not /opt/gcc, so the kernel host found no compiler and an honest gather kernel failed
    (its stores are counted on the CPU executor). Here a compiler of its own folder, a
    readable one outside every secret, stands in for it."""
    assert isolation.compiler_roots(["/opt/gcc/bin/g++"]) == ["/opt/gcc"]
    root = Path(tempfile.mkdtemp(prefix="pagedattn-toolchain-", dir="/tmp"))
    try:
        wrapper = root / "bin" / "c++"
        wrapper.parent.mkdir()
        real = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
        wrapper.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
        for path in (root, wrapper.parent, wrapper):
            path.chmod(0o755)
        binds, _, _ = isolation.file_system_view([], [str(wrapper)])
        assert (str(root), str(root)) in binds
        subs = root.parent / f"{root.name}-subs"
        (subs / "honest").mkdir(parents=True)
        nbformat.write(_load("solutions", "02_page_access.ipynb"),
                       subs / "honest" / "02_page_access.ipynb")
        out = root.parent / f"{root.name}-out" / "grades.csv"
        out.parent.mkdir()
        proc = subprocess.run([sys.executable, "-m", "pagedattn_lab.grade", str(subs),
                               "--timeout", "120", "--out", str(out)], capture_output=True,
                              text=True, timeout=400, env=dict(os.environ, CXX=str(wrapper)))
        assert proc.returncode == 0, proc.stderr
        with open(out, newline="") as fh:
            rows = {r["task"]: r for r in csv.DictReader(fh)}
        assert rows["gather_kernel"]["result"] == "pass", rows["gather_kernel"]
    finally:
        for path in (root, root.parent / f"{root.name}-subs", root.parent / f"{root.name}-out"):
            shutil.rmtree(path, ignore_errors=True)
