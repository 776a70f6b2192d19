"""The grader attacked from the learner's side (hunt 177).

Fixed: (a) a kernel task's check takes `device` ("auto": the GPU when there is one), and under
the grader the judge called the check with the arguments the submission sent: a notebook that
called `check.naive_kernel(SOURCE, device="cpu")` (or "cpu" as the second argument) was graded
on the CPU executor alone on a grader with a GPU, skipping the GPU's run, and with it the
comparison of the GPU's values with the CPU executor's (hunt 136), NVRTC's compile, and every
mistake that only the GPU shows (a race on global memory, blocks that rely on running in
order, a misaligned vector load). The judge now makes device="cpu" "auto": the grader's
machine decides ("gpu" and "auto" reach the check as given). No kernel is compiled for these:
the check is a stand-in that records what the judge gave it. (b) Clang's
disable_sanitizer_instrumentation and (c) GCC's no_sanitize_undefined left a kernel's function
out of the counts and the race check, or of the index and shift checks: both are poisoned now,
like no_sanitize (hunt 36). (d) A `__device__` array's accesses were counted nowhere: they
count as global accesses now (hunt 184, tests/test_cpu_device_data_hunt184.py).
"""
import inspect
import shutil

import numpy as np
import pytest

from pagedattn_lab import check
from pagedattn_lab.grading import judge
from pagedattn_lab.grading.report import PASSED, CaseResult, CheckResult
from pagedattn_lab.grading.runner import graded_tasks
from tests.test_grade_protocol import remotely

SOURCE = 'extern "C" __global__ void k(float *x) { x[threadIdx.x] = 1.0f; }\n'
KERNEL_TASKS = sorted(t for t in graded_tasks()
                      if "device" in inspect.signature(getattr(check, t)).parameters)


def _recording(seen: list):
    """A stand-in for a kernel task's check, of its signature: records the device given."""
    def stand_in(source: str, device: str = "auto") -> CheckResult:
        seen.append(device)
        return CheckResult("naive_kernel", PASSED, [CaseResult("one", {}, PASSED)], [])
    return stand_in


@pytest.mark.parametrize("args, kwargs", [((SOURCE,), {"device": "cpu"}), ((SOURCE, "cpu"), {})],
                         ids=["by-keyword", "positional"])
def test_the_learner_cannot_keep_a_kernel_off_the_graders_gpu(monkeypatch, args, kwargs):
    seen = []
    monkeypatch.setattr(check, "naive_kernel", _recording(seen))
    report = remotely("naive_kernel", *args, salt=177, **kwargs)
    assert report["tasks"]["naive_kernel"]["status"] == "passed", report
    assert seen == ["auto"], seen


@pytest.mark.parametrize("kwargs, expected", [({}, "auto"), ({"device": "auto"}, "auto"),
                                              ({"device": "gpu"}, "gpu")])
def test_the_other_devices_reach_the_check_as_given(monkeypatch, kwargs, expected):
    """("gpu" without a GPU is the CPU executor with a note: test_grader_hunt93.py)"""
    seen = []
    monkeypatch.setattr(check, "naive_kernel", _recording(seen))
    remotely("naive_kernel", SOURCE, salt=177, **kwargs)
    assert seen == [expected], seen


def test_arguments_that_fit_no_call_still_fail_the_task_as_before():
    report = remotely("naive_kernel", SOURCE, "cpu", "one too many", salt=177)
    verdict = report["tasks"]["naive_kernel"]
    assert verdict["status"] == "failed" and "could not run" in verdict["summary"], verdict


@pytest.mark.parametrize("task", KERNEL_TASKS)
def test_every_kernel_tasks_check_gets_the_graders_device(task):
    for args, kwargs in (([SOURCE, "cpu"], {}), ([SOURCE], {"device": "cpu"})):
        args, kwargs = judge.graders_device(getattr(check, task), args, kwargs)
        bound = inspect.signature(getattr(check, task)).bind(*args, **kwargs)
        assert bound.arguments["device"] == "auto" and bound.arguments["source"] == SOURCE


def test_the_kernel_tasks_are_found():
    assert {"naive_kernel", "puzzle_map", "decode_partition"} <= set(KERNEL_TASKS)


@pytest.mark.parametrize("device", ["tpu", np.array(["cpu", "cpu"]), None])
def test_a_device_the_check_refuses_is_left_for_it_to_refuse(device):
    args, kwargs = judge.graders_device(check.naive_kernel, [SOURCE], {"device": device})
    assert args == [SOURCE] and kwargs["device"] is device


def test_a_python_tasks_arguments_are_left_as_they_are():
    fn = object()
    assert judge.graders_device(check.pages_needed, [fn], {}) == ([fn], {})


# -- Clang's disable_sanitizer_instrumentation -------------------------------------------------
# The instrumented build (access counts, race check) is -fsanitize=thread: a function the
# compiler builds without its hooks makes loads and stores nobody sees. no_sanitize and
# no_sanitize_thread were poisoned (hunt 36), but Clang has a second such attribute: with
# CXX=clang++, `__attribute__((disable_sanitizer_instrumentation))` on a __noinline__ helper
# made its reads uncounted (a puzzle's whole row read by every thread, within its budget of
# one read) and unchecked for races; only its writes were caught, after the launch
# (UncountedWrite). GCC has no such attribute; the refusal is the same with both.
UNSEEN_HELPER = """
%s __device__ __noinline__ float first(const float *a) { return a[0]; }
extern "C" __global__ void k(const float *a, float *x) { x[threadIdx.x] = first(a); }
"""


@pytest.mark.parametrize("attribute", ["__attribute__((disable_sanitizer_instrumentation))",
                                       "__attribute__((__disable_sanitizer_instrumentation__))",
                                       "[[clang::disable_sanitizer_instrumentation]]"])
def test_a_kernel_may_not_switch_the_sanitizer_off_either(attribute):
    from pagedattn_lab.cpu import RawKernel, count_accesses
    from pagedattn_lab.cpu.errors import KernelCompileError
    a, x = np.ones(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises(KernelCompileError, match="poisoned") as refused:
        count_accesses(RawKernel(UNSEEN_HELPER % attribute, "k"), (1,), (4,), (a, x))
    assert any("disable_sanitizer_instrumentation" in h for h in refused.value.hints)


# GCC's no_sanitize_undefined switched the index and shift checks off in the function it marks:
# `1u << 32` ran and gave the CPU's 1, where the check stops the thread because a GPU gives 0
# (the shift amount is clamped there), and an index past a local array read its neighbour.
WRAPPED_SHIFT = """
%s __device__ __noinline__ unsigned bit(unsigned n) { return 1u << n; }
extern "C" __global__ void k(const unsigned *n, float *x) { x[threadIdx.x] = (float)bit(n[0]); }
"""


@pytest.mark.parametrize("attribute", ["__attribute__((no_sanitize_undefined))",
                                       "__attribute__((__no_sanitize_undefined__))",
                                       "[[gnu::no_sanitize_undefined]]"])
def test_a_kernel_may_not_switch_the_shift_and_index_checks_off(attribute):
    from pagedattn_lab.cpu import RawKernel
    from pagedattn_lab.cpu.errors import KernelCompileError
    n, x = np.array([32], np.uint32), np.zeros(1, np.float32)
    with pytest.raises(KernelCompileError, match="poisoned") as refused:
        RawKernel(WRAPPED_SHIFT % attribute, "k")((1,), (1,), (n, x))
    assert any("no_sanitize_undefined" in h for h in refused.value.hints)


def test_the_shift_check_still_stops_a_shift_by_the_width():
    from pagedattn_lab.cpu import RawKernel
    from pagedattn_lab.cpu.errors import KernelFault
    n, x = np.array([32], np.uint32), np.zeros(1, np.float32)
    with pytest.raises(KernelFault, match="a shift by 32"):
        RawKernel(WRAPPED_SHIFT % "", "k")((1,), (1,), (n, x))


@pytest.mark.skipif(shutil.which("clang++") is None, reason="the attack needs Clang")
def test_under_clang_too_the_sanitizer_stays_on(tmp_path, monkeypatch):
    """With Clang the attribute is real (without the poison, the helper's read was counted
    nowhere: 0 reads of `a` for 4 threads that each read it)."""
    from pagedattn_lab.cpu import RawKernel, count_accesses
    from pagedattn_lab.cpu.errors import KernelCompileError
    monkeypatch.setenv("CXX", "clang++")
    monkeypatch.setenv("PAGEDATTN_LAB_CACHE_DIR", str(tmp_path))
    source = UNSEEN_HELPER % "__attribute__((disable_sanitizer_instrumentation))"
    with pytest.raises(KernelCompileError, match="poisoned"):
        count_accesses(RawKernel(source, "k"), (1,), (4,), (np.ones(4, np.float32),
                                                           np.zeros(4, np.float32)))


# -- memory of static storage ------------------------------------------------------------------
# The access counts knew the arguments' arrays and shared memory; a `__device__` array (global
# memory on a GPU) or a namespace-scope static is neither, and its loads and stores were
# counted nowhere (instrument.cpp's on_access dropped an address outside both). Warp sum's
# point is the shuffle, with a budget of one global read and no shared write per thread: a
# scratch `__device__` array that lane 0 sums passed every case and the budget. Now its
# accesses are global ones (hunt 184: device_data.py), and the hint names the array.
DEVICE_SCRATCH = """
__device__ float scratch[1 << 16];
extern "C" __global__ void warp_sum(const float* a, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    scratch[i] = i < n ? a[i] : 0.0f;
    __syncthreads();
    if (i % 32 == 0 && i < n) {
        float s = 0.0f;
        for (int j = 0; j < 32; ++j) s += scratch[i + j];
        out[i / 32] = s;
    }
}
"""


def test_a_warp_sum_through_a_device_array_fails_its_budget():
    from tests.check_helpers import run_check
    result, _ = run_check("puzzle_warp_sum", DEVICE_SCRATCH)
    assert result.status == "failed"
    case = result.cases[0]
    assert "made 33 global reads; the budget is 1" in case.message, case
    assert case.hint.startswith("scratch was read 32 times in all: a __device__"), case
