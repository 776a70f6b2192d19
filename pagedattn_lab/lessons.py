"""The lesson registry: every lesson, its workbook and the checks its workbook calls.

This is the one list the course is built from. `pagedattn_lab.check` exposes the checks
named here, the grader expects these tasks in this order, and the tests walk it to find
every notebook. Adding lesson NN means: `notebooks/NN_<slug>.ipynb`,
`solutions/NN_<slug>.ipynb` (then `make exercises`), a checks module under
`pagedattn_lab/grading/`, and one `Lesson` entry below.

`checks` maps each task, in the order the workbook calls it, to the module under
`pagedattn_lab.grading` that defines the check of that name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Lesson:
    number: str                 # two digits (or more): the file-name prefix
    slug: str                   # the rest of the file name, without .ipynb
    title: str
    part: int                   # 1: the guide's five steps; 2: beyond the guide
    checks: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """File name shared by the lesson, its solutions and its exercises notebook."""
        return f"{self.number}_{self.slug}.ipynb"

    @property
    def notebook(self) -> str:
        return f"notebooks/{self.name}"

    @property
    def solutions(self) -> str:
        return f"solutions/{self.name}"

    @property
    def workbook(self) -> str:
        return f"exercises/{self.name}"

    @property
    def tasks(self) -> list[str]:
        return list(self.checks)


def _tasks(module: str, *names: str) -> dict[str, str]:
    return {name: module for name in names}


LESSONS: tuple[Lesson, ...] = (
    Lesson("00", "why_paging", "Why paging", 1,
           _tasks("checks_sizing", "pages_needed", "reserved_waste", "paged_waste")),
    Lesson("01", "page_table", "The page table (guide step 1)", 1,
           {**_tasks("checks_paging", "allocator"), **_tasks("checks_refcounts", "refcounts"),
            **_tasks("checks_block_tables", "append_tokens", "block_tables")}),
    Lesson("02", "page_access", "Page access (guide step 2)", 1,
           {**_tasks("checks_addressing", "slot_of", "kv_offset", "gather_numpy"),
            **_tasks("checks_gather_kernel", "gather_kernel")}),
    Lesson("03", "cuda_onramp", "A CUDA on-ramp: threads, memory, warps", 1,
           _tasks("checks_onramp", "puzzle_map", "puzzle_guard", "puzzle_2d", "puzzle_shared",
                  "puzzle_warp_sum", "puzzle_block_sum")),
    Lesson("04", "naive_kernel", "The naive kernel (guide step 3)", 1,
           {**_tasks("checks_softmax", "online_softmax", "attend_one"),
            **_tasks("checks_kernels", "naive_kernel")}),
    Lesson("05", "tiled_kernel", "The tiled kernel (guide step 4)", 1,
           {**_tasks("checks_tiling", "tile_pages", "tiled_launch"),
            **_tasks("checks_kernels", "tiled_kernel")}),
    Lesson("06", "decode_kernel", "The decode kernel: memory bound, split-K", 1,
           _tasks("checks_decode", "merge_partitions", "decode_partition", "decode_merge")),
    Lesson("07", "complete_system", "The complete system (guide step 5)", 1,
           {**_tasks("checks_next_page", "pages_for_next_token"),
            **_tasks("checks_system", "decode_step"), **_tasks("checks_serve", "serve")}),
    Lesson("08", "pitfalls_and_performance", "Pitfalls and performance", 1,
           _tasks("checks_performance", "kv_bytes", "decode_floor_ms", "choose_page_size")),
    Lesson("09", "tensor_core_decode", "Tensor cores for GQA decode", 2,
           {**_tasks("checks_tc_rows", "group_rows"),
            **_tasks("checks_tc_decode", "tc_tile_scores"),
            **_tasks("checks_tc_mask", "mask_tile")}),
    Lesson("10", "tensor_core_prefill", "Prefill on tensor cores: packed, chunked, mixed", 2,
           {**_tasks("checks_prefill", "chunk_mask", "visible_keys"),
            **_tasks("checks_tile_work", "tile_work")}),
    Lesson("11", "kv_compression", "KV-cache compression: int8 and fp8 pages", 2,
           {**_tasks("checks_quant", "kv_scales", "quantize_write"),
            **_tasks("checks_dequant", "dequant_decode")}),
    Lesson("12", "serving_engine", "A serving engine on the paged cache", 2,
           {**_tasks("checks_engine", "block_hashes", "cached_prefix"),
            **_tasks("checks_engine_step", "schedule_step")}),
    Lesson("13", "multi_gpu", "Multi-GPU: attention heads over GPUs", 2,
           _tasks("checks_tp", "head_split", "gather_heads", "wire_bytes")),
)

# Checks a workbook may call that are not graded tasks (they report, they do not score).
HELPER_CHECKS: dict[str, str] = {"backend": "checks_kernels"}

_BY_NUMBER = {lesson.number: lesson for lesson in LESSONS}
_PREFIX = re.compile(r"(?:^|[^0-9])([0-9]{2,3})_([a-z][a-z0-9_]*)")


def lesson(number: str) -> Lesson:
    """The lesson numbered `number` ('04'), or a KeyError listing the numbers there are."""
    try:
        return _BY_NUMBER[number]
    except KeyError:
        raise KeyError(f"no lesson {number!r}; lessons: {', '.join(_BY_NUMBER)}") from None


def lesson_of(path) -> Lesson | None:
    """The lesson a notebook belongs to, from its file name: '01_page_table.ipynb',
    'alice/01_page_table.ipynb' and 'alice_01_page_table (1).ipynb' all give lesson 01.
    A known slug after the number wins; a bare known number is accepted too."""
    name = Path(str(path)).name
    numbered = [m for m in _PREFIX.finditer(name) if m.group(1) in _BY_NUMBER]
    for match in numbered:
        if match.group(2).startswith(_BY_NUMBER[match.group(1)].slug):
            return _BY_NUMBER[match.group(1)]
    return _BY_NUMBER[numbered[0].group(1)] if numbered else None


def expected_tasks(path) -> list[str]:
    """The tasks the workbook at `path` should check, in order ([] for an unknown file)."""
    found = lesson_of(path)
    return found.tasks if found else []


def check_modules() -> dict[str, str]:
    """Every check name the workbooks can call -> its module under pagedattn_lab.grading."""
    names = dict(HELPER_CHECKS)
    for entry in LESSONS:
        names.update(entry.checks)
    return names
