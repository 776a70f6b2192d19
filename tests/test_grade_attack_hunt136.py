"""The grader attacked through CUDA C answers (hunt 136).

The own-work check (own_work.kernel_findings) compared a kernel's text with the package's
kernel files with comments and spacing removed, but the preprocessor and the lexer undo more
than that: the package's prefill_naive.cu, pasted whole with a backslash-newline after each
`;`, or its braces and brackets spelled as digraphs (`<% %> <: :>`), or `&&` spelled `and`,
or a null directive (`#` alone on a line) between its statements, is token for token the
package's kernel, and passed all twelve cases of naive_kernel as the learner's own work.

With a GPU, the tiled prefill's staged loads and the decode partition's read budget were
counted on a CPU run whose outputs nothing compared with the GPU's: a kernel that skipped its
work under __PAGEDATTN_LAB_CPU__ passed both with any kernel on the GPU.
"""
import time
from pathlib import Path

import pytest

from pagedattn_lab import check
from pagedattn_lab.grading import own_work
from pagedattn_lab.grading.own_work import kernel_findings
from tests.test_grade_own_work import EXPECTED, _naive_copied

KERNELS = Path(own_work.__file__).parent.parent / "kernels"
RESPELLED = {
    "a line splice after each statement": lambda body: body.replace(";", ";\\\n"),
    "digraphs": lambda body: body.replace("{", "<%").replace("}", "%>").replace(
        "[", "<:").replace("]", ":>"),
    "a null directive after each statement": lambda body: body.replace(";\n", ";\n  #\n"),
}


def _respelled(how: str) -> str:
    """The package's prefill_naive.cu with `how`, then the task's wrapper, unchanged."""
    source = _naive_copied("open")
    body, wrapper = source.rsplit('extern "C"', 1)
    return RESPELLED[how](body) + 'extern "C"' + wrapper


@pytest.mark.parametrize("how", sorted(RESPELLED))
def test_the_packages_kernel_respelled_is_still_its_text(how):
    found = kernel_findings([_respelled(how)], {})
    assert any("pagedattn_lab/kernels/prefill_naive.cu line" in f for f in found), found


@pytest.mark.parametrize("how", sorted(RESPELLED))
def test_the_packages_kernel_respelled_fails_naive_kernel(how):
    summary = check.naive_kernel(_respelled(how), device="cpu").summary
    assert EXPECTED in summary and "prefill_naive.cu" in summary, summary


def test_operators_spelled_by_name_are_the_packages_text():
    """prefill_tiled.cu with `&&`, `||` and `!=` spelled `and`, `or` and `not_eq`."""
    text = (KERNELS / "prefill_tiled.cu").read_text()
    spelled = text.replace("&&", " and ").replace("||", " or ").replace("!=", " not_eq ")
    assert spelled != text
    assert kernel_findings([spelled], {}) == kernel_findings([text], {}) != []


def test_each_body_found_starts_at_the_line_named():
    """The package's own line splices (decode_params.cuh, decode_timeline.cuh) are joined
    without moving the lines below them: each body's `{` is on the line its finding names."""
    for where, _ in own_work._kernel_bodies():
        name, line = where.split(" line ")
        assert "{" in (KERNELS / name).read_text().splitlines()[int(line) - 1], where


def test_a_source_of_splices_and_respellings_is_read_in_linear_time():
    start = time.perf_counter()
    for filler in ("\\\n" * 16000, "\\" * 32000, "and " * 8000, "#\n" * 16000, "<:" * 16000):
        kernel_findings(["__global__" + filler], {})
    assert time.perf_counter() - start < 2.0


# -- the counted run and the checked one: a kernel that tells the CPU executor apart -----------
# With a GPU, lesson 05's staged loads and lesson 06's read budget were counted on the CPU
# executor while the values checked came from the GPU, and nothing compared the two runs: a
# kernel that returns at once under __PAGEDATTN_LAB_CPU__ counted no load and no read, and
# passed with whatever the GPU ran (the puzzles and the gather compared them already). The
# GPU is a stand-in here: the honest kernel, launched on the CPU executor.
CPU_SKIPS = "\n#ifdef __PAGEDATTN_LAB_CPU__\n    return;\n#endif\n"


def _skipping_on_the_cpu(source: str, name: str) -> str:
    body = source.index("{", source.index(f"void {name}(")) + 1
    return source[:body] + CPU_SKIPS + source[body:]


def _on_a_stand_in_gpu(source: str, name: str, gpu_source: str):
    """A _Compiled whose counted runs are `source`'s and whose checked launches are
    `gpu_source`'s, as on a machine with a GPU."""
    from pagedattn_lab.grading.checks_kernels import _Compiled
    from pagedattn_lab.grading.kernel_runner import Kernel
    comp = _Compiled(source, name, "cpu")
    kern = comp.get()
    kern.device, kern.launch = "gpu", Kernel(gpu_source, name, "cpu").launch
    return comp


def _tiled_case(comp):
    from pagedattn_lab.grading.checks_kernels import TILE_Q, _prefill_case
    _prefill_case(comp, 58, threads=TILE_Q, tiled=True, count_loads=True, seq_lens=[37, 21, 9],
                  num_heads=2, num_kv_heads=1, head_dim=8, page_size=8, max_len=40)


def _partition_case(comp):
    from pagedattn_lab.grading.checks_decode import _partition_case as case
    case(comp, 61, 16, seq_lens=[37, 21, 9], num_heads=4, num_kv_heads=2, head_dim=32,
         page_size=8)


SKIPPERS = {"prefill_tiled": ("05_tiled_kernel.ipynb", "SOURCE_TILED", _tiled_case),
            "decode_partition": ("06_decode_kernel.ipynb", "SOURCE_PARTITION", _partition_case)}


@pytest.mark.parametrize("name", sorted(SKIPPERS))
def test_a_kernel_that_skips_its_work_on_the_cpu_fails_with_a_gpu(name, monkeypatch):
    """(The lint refuses the #ifdef itself since hunt 140, test_grade_macros_hunt140.py; the
    comparison of the two runs is the second line, for what no source check sees.)"""
    from pagedattn_lab.grading import kernel_lint
    from pagedattn_lab.grading.report import Mismatch
    from tests.check_helpers import solution_source
    monkeypatch.setattr(kernel_lint, "device_conditional", lambda source: None)
    notebook, variable, case = SKIPPERS[name]
    honest = solution_source(notebook, variable)
    comp = _on_a_stand_in_gpu(_skipping_on_the_cpu(honest, name), name, honest)
    with pytest.raises(Mismatch, match="the GPU's values differ from those of the CPU "
                                       "executor's run"):
        case(comp)


@pytest.mark.parametrize("name", sorted(SKIPPERS))
def test_an_honest_kernel_still_passes_with_a_gpu(name):
    from tests.check_helpers import solution_source
    notebook, variable, case = SKIPPERS[name]
    honest = solution_source(notebook, variable)
    case(_on_a_stand_in_gpu(honest, name, honest))
