"""A kernel whose parameters the learner renamed gets the hints the stub-named one gets.

The launch passes arguments by position, so `k_cache` may be called anything; the hints and
counts that go by a parameter's name take the stub's name at that position
(grading/stub_params.py). Each wrong kernel here is a mistake the other tests already feed
the checks, graded twice: as written, and with every parameter renamed argN.
"""
import re

import pytest

from pagedattn_lab.grading.stub_params import stub_params
from pagedattn_lab.signature import parse_kernel_signature
from tests.check_helpers import mutate, run_check, solution_source
from tests.test_check_mistakes_decode import KERNELS as DECODE_KERNELS
from tests.test_check_mistakes_kernels import KERNEL_MISTAKES
from tests.test_check_mistakes_quant import KERNELS as QUANT_KERNELS
from tests.test_check_mistakes_tc_decode import TILE_MISTAKES

# (task, workbook, source variable, kernel): the graded kernel tasks
TASKS = {
    "gather_kernel": ("02_page_access.ipynb", "SOURCE_GATHER", "gather_kv"),
    "naive_kernel": ("04_naive_kernel.ipynb", "SOURCE_NAIVE", "prefill_naive"),
    "tiled_kernel": ("05_tiled_kernel.ipynb", "SOURCE_TILED", "prefill_tiled"),
    "decode_partition": ("06_decode_kernel.ipynb", "SOURCE_PARTITION", "decode_partition"),
    "decode_merge": ("06_decode_kernel.ipynb", "SOURCE_MERGE", "decode_merge"),
    "tc_tile_scores": ("09_tensor_core_decode.ipynb", "SOURCE_TILE", "tc_tile_scores"),
    "quantize_write": ("11_kv_compression.ipynb", "SOURCE_WRITE", "quantize_write"),
    "dequant_decode": ("11_kv_compression.ipynb", "SOURCE_READ", "dequant_decode"),
}

_EDITS = {(m[0], m[3]): m[4] for m in KERNEL_MISTAKES}
_EDITS.update({(task, m[0]): m[1] for task, _, m in DECODE_KERNELS + QUANT_KERNELS})
_EDITS.update({("tc_tile_scores", m[0]): m[1] for m in TILE_MISTAKES})

# (task, mistake): off-by-one guards, wrong strides, a missing scale, reads past a row; each
# but the missing scale has a hint looked up by a parameter's name (a fault's or a count's)
RENAMED = [
    ("gather_kernel", "offset + 1"), ("gather_kernel", "no length guard"),
    ("naive_kernel", "no scale"), ("naive_kernel", "table rows max_len / page_size apart"),
    ("tiled_kernel", "last page loaded whole"),
    ("tiled_kernel", "every block loads its whole sequence"),
    ("decode_partition", "reads past seq_len"), ("decode_merge", "one partition too many"),
    ("decode_merge", "out row times max_parts"),
    ("tc_tile_scores", "store ldm head_dim"), ("tc_tile_scores", "store ldm 16 * gridDim.x"),
    ("quantize_write", "static scale read per token"),
    ("dequant_decode", "query head for kv head"), ("dequant_decode", "per_token ignored"),
]


def _renamed(source: str, kernel: str) -> tuple[str, list[str]]:
    """`source` with the kernel's parameter i called argI everywhere; the old names."""
    names = [p.name for p in parse_kernel_signature(source, kernel)]
    assert not re.search(r"\barg\d+\b", source)
    for i, name in enumerate(names):
        source = re.sub(rf"\b{name}\b", f"arg{i}", source)
    return source, names


def _as_stub_named(text: str, names: list[str]) -> str:
    """A report of the renamed kernel read back in the stub's names, the stub's name set
    beside the learner's dropped."""
    text = re.sub(r" \(the stub's \w+\)|the stub's \w+; ", "", text)
    return re.sub(r"\barg(\d+)\b", lambda m: names[int(m[1])], text)


def _failures(task: str, source: str):
    result, printed = run_check(task, source, device="cpu")
    assert result.status == "failed", printed
    return [(c.message, c.hint) for c in result.cases if not c.passed]


@pytest.mark.parametrize("task, mistake", RENAMED, ids=[f"{t}-{m}" for t, m in RENAMED])
def test_renamed_parameters_get_the_stub_named_kernels_report(task, mistake):
    notebook, variable, kernel = TASKS[task]
    source = mutate(solution_source(notebook, variable), _EDITS[task, mistake])
    stub_named = _failures(task, source)
    renamed, names = _renamed(source, kernel)
    got = [(_as_stub_named(m, names), _as_stub_named(h, names))
           for m, h in _failures(task, renamed)]
    assert got == stub_named


def test_a_renamed_kernels_fault_names_its_own_parameter_and_the_stubs():
    source = mutate(solution_source("02_page_access.ipynb", "SOURCE_GATHER"),
                    _EDITS["gather_kernel", "offset + 1"])
    failed = _failures("gather_kernel", _renamed(source, "gather_kv")[0])
    told = " ".join(message for message, _ in failed)
    assert re.search(r"of arg0\[\d+\] \(the stub's k_cache; it has", told), told


@pytest.mark.parametrize("task", TASKS)
def test_stub_parameters_are_the_exercise_notebooks(task):
    notebook, variable, kernel = TASKS[task]
    stub = solution_source(notebook, variable, "exercises")
    assert stub_params(kernel) == [(p.name, p.is_pointer)
                                   for p in parse_kernel_signature(stub, kernel)]
