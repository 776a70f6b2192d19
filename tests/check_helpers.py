"""Helpers for the tests that feed wrong answers to the workbook checks."""
import contextlib
import inspect
import io
import json
import re
from collections import deque
from pathlib import Path

import numpy as np

import pagedattn_lab as pl
from pagedattn_lab import check

REPO = Path(__file__).resolve().parents[1]
# The gather checks' hint for a block-table row's -1 read as a page (grading/padding_reads.py)
PADDING = "the row's padding (-1) was used as a page id"


def run_check(task, impl, **kwargs):
    # the check's cases only: tests here stand the package's own answers in for a learner's,
    # which a workbook's check refuses before its cases (grading/own_work.py)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        result = inspect.unwrap(getattr(check, task))(impl, **kwargs)
    return result, out.getvalue()


def beyond_held(running_pages):
    """A running request's new pages as the solution counts them: what it holds after its
    chunk by `running_pages(tokens, page_size)`, less the num_pages it holds."""
    def new_pages(req, n, page_size):
        return max(0, running_pages(req.num_computed + n, page_size) - req.num_pages)
    return new_pages


def _tokens_wanted(req):
    return req.num_tokens - req.num_computed


def schedule_step_answer(new_pages, prompt_pages, chunk_of=min, wanted_of=_tokens_wanted):
    """Workbook 12's schedule_step written as the solution writes it, with a learner's page
    counts: `new_pages(req, n, page_size)` for the pages a running request's chunk of n
    tokens takes (the solution's: beyond_held(ceil)), `prompt_pages(n, page_size)` for a
    waiting prompt's chunk of n tokens; and the chunk size `chunk_of(wanted, budget left,
    max_chunk)` of the tokens a request wants, `wanted_of(req)`."""
    def schedule_step(running, waiting, budget, free_pages, watermark, page_size, max_chunk):
        batch, free = [], free_pages
        for req in running:
            if budget <= 0:
                break
            n = chunk_of(wanted_of(req), budget, max_chunk)
            free -= new_pages(req, n, page_size)
            batch.append((req.rid, n))
            budget -= n
        for req in waiting:
            if budget <= 0:
                break
            n = chunk_of(wanted_of(req), budget, max_chunk)
            if prompt_pages(n, page_size) + watermark > free:
                break
            free -= prompt_pages(n, page_size)
            batch.append((req.rid, n))
            budget -= n
        return batch
    return schedule_step


def _flat(text: str) -> str:
    return " ".join(text.split()).lower()


def assert_caught(task, impl, phrase, *, not_phrases=(), **kwargs):
    """The check fails `impl` (not "not attempted"), a failed case's hint or message holds
    `phrase`, and no hint holds any of `not_phrases` (hints name only what the evidence
    shows)."""
    result, printed = run_check(task, impl, **kwargs)
    assert result.status == "failed", printed
    failed = [c for c in result.cases if not c.passed]
    told = _flat(" ".join(f"{c.message} {c.hint}" for c in failed))
    assert _flat(phrase) in told, printed
    hints = _flat(" ".join(c.hint for c in failed))
    for wrong in not_phrases:
        assert _flat(wrong) not in hints, printed
    assert "FAIL" in printed and "hint:" in printed
    return result, printed


def assert_several_fit(task, impl, params, what, phrases):
    """The check fails `impl` on the case with `params`, and its hint names the mistakes
    that give this same answer in report.several_fit's one wording, numbered: the i-th
    holds phrases[i], and there are no others."""
    result, printed = run_check(task, impl)
    case = next(c for c in result.cases if c.params == params)
    assert not case.passed, printed
    lead = f"these mistakes give the same {what} here, check each: (1) "
    hint = _flat(case.hint)
    assert lead in hint, printed
    named = re.split(r"; \(\d+\) ", hint.split(lead, 1)[1])
    assert len(named) == len(phrases), printed
    for phrase, text in zip(phrases, named):
        assert _flat(phrase) in text, printed
    return case


def solution_source(notebook: str, variable: str, folder: str = "solutions") -> str:
    """The kernel source string a workbook cell defines (read as plain JSON)."""
    cells = json.loads((REPO / folder / notebook).read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "code" and source.startswith(f"{variable} = "):
            scope: dict = {}
            exec(source, scope)  # noqa: S102 - our own notebook
            return scope[variable]
    raise LookupError(variable)


def mutate(source: str, edits) -> str:
    for old, new in edits:
        assert old in source, f"the solution no longer contains {old!r}"
        source = source.replace(old, new)
    return source


# Each CUDA task's finished kernel: (its solutions notebook, the cell's variable).
KERNEL_CELLS = {
    "gather_kernel": ("02_page_access.ipynb", "SOURCE_GATHER"),
    "puzzle_map": ("03_cuda_onramp.ipynb", "SOURCE_MAP"),
    "puzzle_guard": ("03_cuda_onramp.ipynb", "SOURCE_GUARD"),
    "puzzle_2d": ("03_cuda_onramp.ipynb", "SOURCE_2D"),
    "puzzle_shared": ("03_cuda_onramp.ipynb", "SOURCE_SHARED"),
    "puzzle_warp_sum": ("03_cuda_onramp.ipynb", "SOURCE_WARP_SUM"),
    "puzzle_block_sum": ("03_cuda_onramp.ipynb", "SOURCE_BLOCK_SUM"),
    "naive_kernel": ("04_naive_kernel.ipynb", "SOURCE_NAIVE"),
    "tiled_kernel": ("05_tiled_kernel.ipynb", "SOURCE_TILED"),
    "decode_partition": ("06_decode_kernel.ipynb", "SOURCE_PARTITION"),
    "decode_merge": ("06_decode_kernel.ipynb", "SOURCE_MERGE"),
    "tc_tile_scores": ("09_tensor_core_decode.ipynb", "SOURCE_TILE"),
    "quantize_write": ("11_kv_compression.ipynb", "SOURCE_WRITE"),
    "dequant_decode": ("11_kv_compression.ipynb", "SOURCE_READ"),
}


def kernel_mutant(task: str, edits) -> str:
    """The finished kernel of CUDA task `task` with `edits` (old, new) applied."""
    return mutate(solution_source(*KERNEL_CELLS[task]), edits)


def with_solution_body(notebook: str, variable: str, body: str) -> str:
    """The kernel of `variable` with the code between its BEGIN and END SOLUTION markers
    replaced by `body` (a right answer written another way)."""
    source = solution_source(notebook, variable)
    start, end = source.index("// ### BEGIN SOLUTION"), source.index("// ### END SOLUTION")
    return source[:start] + body + source[end:]


def assert_passes_without_hint(task, impl, **kwargs):
    result, printed = run_check(task, impl, **kwargs)
    assert result.passed, printed
    assert not any(c.hint for c in result.cases), printed


def solution_cell(notebook: str, start) -> str:
    """The source of the code cell of solutions/`notebook` that begins with `start` (a
    string, or a tuple of them)."""
    cells = json.loads((REPO / "solutions" / notebook).read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith(start):
            return source
    raise LookupError(start)


def solution_object(notebook: str, name: str, edits=(), **scope):
    """The function or class `name` that a code cell of solutions/`notebook` defines, with
    `edits` made to its source (np, pl and deque in its scope, and whatever `scope` adds)."""
    scope = {"np": np, "pl": pl, "deque": deque, **scope}
    source = solution_cell(notebook, (f"def {name}(", f"class {name}(", f"class {name}:"))
    exec(mutate(source, edits), scope)  # noqa: S102 - our notebook
    return scope[name]


def solution_of(workbook: str, name: str, edits=()):
    """solution_object of workbook `workbook` ("07": solutions/07_*.ipynb)."""
    notebook = next((REPO / "solutions").glob(f"{workbook}_*.ipynb")).name
    # (workbook 07's MyManager calls its Task 1, defined in a cell of its own)
    scope = {"pages_for_next_token": solution_of("07", "pages_for_next_token")} \
        if name == "MyManager" else {}
    return solution_object(notebook, name, edits, **scope)


def solution_allocator(edits, **scope):
    """Workbook 01's MyAllocator class with `edits` made to its solution (names the edited
    code uses besides deque and pl, such as heapq, given in `scope`)."""
    return solution_object("01_page_table.ipynb", "MyAllocator", edits, **scope)


def assert_kernel_checks_on_the_gpu(task, notebook, variable, mistakes, *, rights=(),
                                    other_evidence=(), stub=True):
    """A kernel task's check on the GPU: the solution passes, the exercise's stub is "not
    attempted" (`stub`), every wrong kernel, (name, edits, phrase), fails with its phrase
    (or, named in `other_evidence`, fails: the GPU shows it by evidence of its own), and every
    right one, (name, edits), passes."""
    solution = solution_source(notebook, variable)
    result, printed = run_check(task, solution, device="gpu")
    assert result.passed, printed
    if stub:
        result, _ = run_check(task, solution_source(notebook, variable, "exercises"),
                              device="gpu")
        assert result.status == "not attempted"
    for name, edits, phrase in mistakes:
        if name in other_evidence:
            result, printed = run_check(task, mutate(solution, edits), device="gpu")
            assert result.status == "failed", f"{name}: {printed}"
        else:
            assert_caught(task, mutate(solution, edits), phrase, device="gpu")
    for name, edits in rights:
        result, printed = run_check(task, mutate(solution, edits), device="gpu")
        assert result.passed, f"{name}: {printed}"


class GoodAllocator:
    """A correct allocator with reference counts: the base the wrong ones edit."""

    def __init__(self, num_pages):
        self.num_pages = num_pages
        self.free_list = deque(range(num_pages))
        self.refs = [0] * num_pages

    @property
    def num_free(self):
        return len(self.free_list)

    def ref_count(self, page):
        return self.refs[page]

    def allocate(self, n):
        if n > len(self.free_list):
            raise pl.OutOfPagesError(n, len(self.free_list), self.num_pages)
        pages = [self.free_list.popleft() for _ in range(n)]
        for p in pages:
            self.refs[p] = 1
        return pages

    def _valid(self, pages):
        for p in pages:
            if not (isinstance(p, int) and 0 <= p < self.num_pages):
                raise ValueError(f"page {p} is not in the pool")

    def free(self, pages):
        pages = self._check_free(pages)
        self._release(pages)

    def _check_free(self, pages):
        pages = list(pages)
        self._valid(pages)
        for p in pages:
            if self.refs[p] < pages.count(p):
                raise ValueError(f"page {p} is already free")
        return pages

    def _release(self, pages):
        for p in pages:
            self.refs[p] -= 1
            if self.refs[p] == 0:
                self.free_list.append(p)

    def fork(self, pages):
        pages = list(pages)
        self._valid(pages)
        for p in pages:
            if self.refs[p] == 0:
                raise ValueError(f"page {p} is free")
        for p in pages:
            self.refs[p] += 1
        return list(pages)



def as_params(mistakes):
    """pytest params from (task, impl, phrase[, not_phrases]) entries."""
    import pytest  # noqa: PLC0415 - only the test modules need it
    params = []
    for task, impl, phrase, *rest in mistakes:
        params.append(pytest.param(task, impl, phrase, tuple(rest[0]) if rest else (),
                                   id=f"{task}-{phrase[:28]}"))
    return params
