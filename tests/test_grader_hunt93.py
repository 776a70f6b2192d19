"""Hunt 93: the grader's known gaps.

- A kernel answer checked with device="gpu" on a machine without a GPU failed its task
  (RuntimeError from backend.resolve_device, raised by the puzzle runner before its cases
  and by the kernel host inside the first): it is graded on the CPU executor instead, and
  the report and the grade table's line say so.
- The lint refused a kernel inside an `extern "C" { ... }` block, which NVRTC accepts.
- serve's out-of-pages and KeyError branches named their own mistake where a call past a
  finished request's end came first; and a right loop "did not finish" when the cache's first
  append imported ml_dtypes inside the loop's 2 s.
- checks_paging.py was over the package's 400 lines a module.
- describe_kernel_exception's None (a KernelFault it cannot describe) crashed the callers
  that unpacked it.
"""
import contextlib
import socket
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab import backend
from pagedattn_lab.grading import (checks_serve, decode_launch, faults, kernel_host,
                                   kernel_lint, kernel_runner, remote, runner)
from pagedattn_lab.grading.channel import Channel
from pagedattn_lab.grading.judge import Judge
from pagedattn_lab.grading.report import Mismatch
from tests.check_helpers import run_check, solution_source
from tests.test_check_mistakes_system import serve_factory

NO_GPU = "graded on the CPU executor: no usable GPU (gpu_status() says why)"


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine without a GPU, whatever it has."""
    monkeypatch.setattr(backend, "_probe_cupy", lambda: (None, "no GPU here (a test's)"))


# -- 1. device="gpu" without a GPU: graded on the CPU executor, and said ---------------------

def test_a_puzzle_asked_for_the_gpu_is_graded_on_the_cpu_executor_and_says_so(no_gpu):
    result, printed = run_check("puzzle_map", solution_source("03_cuda_onramp.ipynb",
                                                              "SOURCE_MAP"), device="gpu")
    assert result.status == "passed", printed
    assert f"note: {NO_GPU}" in printed
    assert result.summary == f"({NO_GPU}) all 4 cases passed"


def test_a_kernel_asked_for_the_gpu_is_graded_on_the_cpu_executor_and_says_so(no_gpu):
    result, printed = run_check("gather_kernel", solution_source("02_page_access.ipynb",
                                                                 "SOURCE_GATHER"), device="gpu")
    assert result.status == "passed", printed
    assert printed.count(NO_GPU) == 1   # once per check, not once per case
    assert result.summary.startswith(f"({NO_GPU}) ")


def test_a_failing_kernel_asked_for_the_gpu_keeps_its_failure_and_the_note(no_gpu):
    source = solution_source("03_cuda_onramp.ipynb", "SOURCE_MAP").replace("10.0f", "11.0f")
    result, printed = run_check("puzzle_map", source, device="gpu")
    assert result.status == "failed", printed
    assert result.summary.startswith(f"({NO_GPU}) n = 32: 32 of 32 values differ"), \
        result.summary


def test_device_cpu_and_auto_without_a_gpu_say_nothing(no_gpu):
    for device in ("cpu", "auto"):
        result, printed = run_check("puzzle_map", solution_source("03_cuda_onramp.ipynb",
                                                                  "SOURCE_MAP"), device=device)
        assert result.passed and "note:" not in printed and "(" not in result.summary


def test_a_gpu_where_there_is_one_stays_the_gpu(monkeypatch):
    monkeypatch.setattr(backend, "_probe_cupy", lambda: (object(), "a GPU (a test's)"))
    assert kernel_runner.kernel_device("gpu") == "gpu"
    assert "GPU (CuPy)" in kernel_runner.where("gpu")


def test_a_bad_device_is_still_refused(no_gpu):
    for device in ("tpu", ["gpu"], None):
        with pytest.raises(ValueError, match="device"):
            kernel_runner.kernel_device(device)


def test_a_note_outside_a_check_goes_nowhere(no_gpu, capsys):
    kernel_runner.note_device("gpu", "cpu")
    result, printed = run_check("puzzle_map", solution_source("03_cuda_onramp.ipynb",
                                                              "SOURCE_MAP"), device="cpu")
    assert "note:" not in printed and not result.notes and capsys.readouterr().out == ""


def _judged(calls, tasks):
    """The judge's report after the notebook made `calls` ((task, args, kwargs)), with the
    real kernel host answering its kernel requests (threads of this process)."""
    judge_end, learner_end = socket.socketpair()
    judge_kernel_end, kernel_end = socket.socketpair()
    judge = Judge(remote.Peer(Channel(judge_end), strict=True, call_timeout=120), salt=None,
                  tasks=tasks, kernels=remote.Peer(Channel(judge_kernel_end), strict=True,
                                                   call_timeout=120))
    host = threading.Thread(target=kernel_host.serve,
                            args=(kernel_host.kernel_peer(Channel(kernel_end)),), daemon=True)
    learner = remote.Peer(Channel(learner_end), strict=False)

    def notebook():
        try:
            for task, args, kwargs in calls:
                runner.forwarder(learner, task)(*args, **kwargs)
        finally:
            learner.channel.close()

    host.start()
    thread = threading.Thread(target=notebook, daemon=True)
    thread.start()
    judge.serve(idle_timeout=120)
    thread.join(120)
    return judge.report()["tasks"]


def test_under_the_grader_a_kernel_asked_for_the_gpu_passes_on_the_cpu_executor(no_gpu):
    """The kernel host builds the kernel (gather_kernel), the judge the puzzle's runner: both
    fell back, and the grade table's line says where the kernel ran."""
    tasks = _judged([("gather_kernel", (solution_source("02_page_access.ipynb",
                                                        "SOURCE_GATHER"),), {"device": "gpu"}),
                     ("puzzle_map", (solution_source("03_cuda_onramp.ipynb", "SOURCE_MAP"),),
                      {"device": "gpu"})], ["gather_kernel", "puzzle_map"])
    for task in ("gather_kernel", "puzzle_map"):
        assert tasks[task]["status"] == "passed", tasks
        assert tasks[task]["summary"].startswith(f"({NO_GPU}) all "), tasks


# -- 2. a kernel inside an extern "C" { } block ------------------------------------------------

@pytest.mark.parametrize("source", [
    'extern "C" { __global__ void k(float* x) { x[0] = 1.0f; } }',
    'extern "C"\n{\n__global__ void g(float* x) {}\n__global__ void k(float* x) {}\n}\n',
    '#include <cuda_fp16.h>\nextern "C" {\nnamespace n { __device__ float f(); }\n'
    '__global__ void k(float* x) { x[0] = 1.0f; }\n}',
    'extern "C" __global__ void k(float* x) {}',
])
def test_a_kernel_with_c_linkage_passes_the_lint(source):
    kernel_lint.lint(source, "k")


@pytest.mark.parametrize("source", [
    '__global__ void k(float* x) {}',
    'extern "C" { } __global__ void k(float* x) {}',          # the block closed before it
    'extern "C" int y; __global__ void k(float* x) {}',
    'extern "C++" { __global__ void k(float* x) {} }',
    'extern "C" { __device__ float f() { return 1.0f; } }\n__global__ void k(float* x) {}',
    '/* extern "C" { */ __global__ void k(float* x) {}',      # a comment is not a block
])
def test_a_kernel_without_c_linkage_is_still_refused(source):
    with pytest.raises(Mismatch, match='not declared extern "C"'):
        kernel_lint.lint(source, "k")


def test_a_puzzle_in_an_extern_c_block_is_graded():
    source = solution_source("03_cuda_onramp.ipynb", "SOURCE_MAP").replace(
        'extern "C" __global__', 'extern "C" {\n__global__') + "}\n"
    result, printed = run_check("puzzle_map", source, device="cpu")
    assert result.passed, printed


@pytest.mark.parametrize("source", [
    'extern "C" {' * 2700 + "__global__ k(",
    "{__global__ k(" * 2300,
    "}" * 16000 + 'extern "C" { k(',
    ('extern "C"' + " " * 60 + "{") * 450 + "__global__ " * 500 + "k(",
    "k(;" + 'extern "C"' * 3000,
])
def test_the_linkage_scan_stays_linear(source):
    started = time.perf_counter()
    with contextlib.suppress(Mismatch):
        kernel_lint.lint(source[:kernel_lint.MAX_SOURCE], "k")
    assert time.perf_counter() - started < 1.0


# -- 3. serve: a call past a finished request's end is named before what it led to --------------

def _pages(cache, n):
    return -(-n // cache.page_size)


def serve_decoding_a_stale_list(cache, requests, kv_for):
    """Finishes first, then decodes the step's list as it was before: a request freed in
    this step is asked for one more token (and its freed sequence appended to: KeyError)."""
    waiting, running, done, lens = deque(range(len(requests))), {}, [], {}
    while waiting or running:
        while waiting:
            i = waiting[0]
            promised = sum(_pages(cache, sum(requests[j])) - _pages(cache, cache.seq_len(s))
                           for j, s in running.items())
            if _pages(cache, sum(requests[i])) > cache.allocator.num_free - promised:
                break
            waiting.popleft()
            running[i] = cache.add_sequence()
            cache.append(running[i], *kv_for(i, 0, requests[i][0]))
            lens[i] = requests[i][0]
        items = list(running.items())
        for i, s in items:
            if lens[i] == sum(requests[i]):
                cache.free_sequence(s)
                del running[i]
                done.append(i)
        for i, s in items:
            cache.append(s, *kv_for(i, lens[i], 1))
            lens[i] += 1
    return done


def serve_asking_whole_requests(cache, requests, kv_for):
    """Asks every running request for a token, whole ones too, and admits on the prompt's
    pages alone (two mistakes: the first call past an end comes before the pool runs out)."""
    waiting, running, done = deque(range(len(requests))), {}, []
    while waiting or running:
        while waiting and _pages(cache, requests[waiting[0]][0]) <= cache.allocator.num_free:
            i = waiting.popleft()
            running[i] = cache.add_sequence()
            cache.append(running[i], *kv_for(i, 0, requests[i][0]))
        for i, s in list(running.items()):
            cache.append(s, *kv_for(i, cache.seq_len(s), 1))
            if cache.seq_len(s) == sum(requests[i]):
                cache.free_sequence(s)
                del running[i]
                done.append(i)
    return done


def test_a_freed_request_asked_for_a_token_is_named_before_the_key_error():
    result, printed = run_check("serve", serve_decoding_a_stale_list)
    failed = [c for c in result.cases if not c.passed]
    assert failed and all("past the end of request" in c.message for c in failed), printed
    assert "freed already" not in printed and "already held all its" in printed


def test_a_whole_request_asked_for_a_token_is_named_before_the_pool_runs_out():
    with pytest.raises(Mismatch) as caught:
        checks_serve._serve_case(serve_asking_whole_requests, 1, [(4, 0), (3, 6), (8, 1)],
                                 num_pages=3, page_size=4)
    assert "kv_for(0, 4, 1) asked for tokens past the end of request 0" in caught.value.message
    assert "already held all its 4 tokens" in caught.value.hint


def test_running_out_of_pages_with_no_call_past_an_end_still_names_the_admission():
    with pytest.raises(Mismatch) as caught:
        checks_serve._serve_case(serve_asking_whole_requests, 1, [(3, 9), (1, 12), (6, 5)],
                                 num_pages=10, page_size=2)
    assert "ran out of pages" in caught.value.message
    hint = " ".join(caught.value.hint.split())
    assert hint.startswith("request 1 was admitted with 8 pages free and 4 promised"), hint
    assert "the prompt's pages alone" in hint and "not <= num_free alone" in hint, hint


def test_a_cold_cache_does_not_spend_the_loops_time(monkeypatch):
    """The first append asks the cache's row dtypes, whose ml_dtypes import took 3.8 s on a
    loaded machine: inside the loop's 2 s, a right loop 'did not finish'."""
    from pagedattn_lab import cache as cache_module
    first = []

    def slow_rows():
        if not first:
            first.append(time.sleep(2.5))
        return (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
    monkeypatch.setattr(cache_module, "_float_rows", slow_rows)
    checks_serve._serve_case(serve_factory(), 31, [(5, 3), (9, 2), (2, 6)], 32, 4)
    assert first   # (the slow first call ran)


# -- 5. describe_kernel_exception's None: every caller has a message ----------------------------

class KernelFault(Exception):
    """Named like the executor's, with a field no message can be made of (a thread of
    ("x",)): what crosses the grader's channel with fields a kernel could choose."""

    def __init__(self, buffer, index=3, block=(0, 0, 0), access="read"):
        super().__init__(f"bad access to {buffer}")
        self.buffer, self.index, self.size, self.access = buffer, index, 2, access
        self.thread, self.block = ("x",), block


class _Raising:
    def __init__(self, exc):
        self.exc, self.device = exc, "cpu"

    def get(self):
        return self

    def launch(self, *args, **kwargs):
        raise self.exc

    count = launch


def test_an_undescribable_kernel_fault_still_has_a_message():
    fault = KernelFault("q")
    assert faults.describe_kernel_exception(fault) is None
    assert faults.kernel_message(fault) == "bad access to q"
    assert faults.kernel_message(Exception()) == "Exception"


def test_decode_launch_gives_its_hint_for_an_undescribable_fault():
    with pytest.raises(Mismatch) as caught:
        decode_launch.launch_warp(_Raising(KernelFault("q")), (1,), (), outputs=(0,))
    assert caught.value.message == "bad access to q"
    assert caught.value.hint == decode_launch.DECODE_BUFFER_HINTS["q"]


def test_dequant_gives_its_hint_for_an_undescribable_fault():
    from pagedattn_lab.grading import checks_dequant
    with pytest.raises(Mismatch) as caught:
        checks_dequant._launch_read(_Raising(KernelFault("k_scale", index=9)), (1,), (),
                                    per_token=0, heads=2, kv_heads=1)
    assert caught.value.message == "bad access to k_scale" and "k_scale" in caught.value.hint


def test_quantize_write_gives_its_hint_for_an_undescribable_fault():
    from pagedattn_lab.grading import checks_quant
    slots = np.array([0, -1], np.int32)
    with pytest.raises(Mismatch) as caught:
        checks_quant._launch_write(_Raising(KernelFault("k_scale", block=(1, 0, 0))),
                                   np.zeros((2, 1, 4), np.float32), slots, 1, 4, 0,
                                   np.ones(1, np.float32), np.zeros((1, 4, 1, 4), np.int8))
    assert caught.value.message == "bad access to k_scale"
    assert "slot_mapping[1] = -1" in caught.value.hint


# -- 4. small modules --------------------------------------------------------------------------

def test_no_module_of_the_package_reaches_400_lines():
    """checks_paging.py had 401 (its refcounts task is checks_refcounts.py now), and report.py
    399 before its notes (its time limits are time_limits.py now)."""
    package = Path(kernel_runner.__file__).parents[1]
    long = {str(p.relative_to(package)): n for p in package.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) >= 400}
    assert not long, long
