"""The workbook's checks: one call per task, e.g. `check.allocator(MyAllocator)`.

Each check runs seeded random cases sized to expose the classic mistakes and prints, per
case, PASS or FAIL with the case's parameters, expected vs got, where they differ, and a
hint. It returns a `CheckResult` (`.passed`, `.cases`, `.messages`) and, under the grader,
records it. Code still raising NotImplementedError (or a kernel that writes nothing) is
reported as "not attempted".

CUDA C tasks run on the GPU when CuPy has one, else on the CPU executor; pass
`device="cpu"` to force the executor, which names the thread and block of a bad access.
"""
from __future__ import annotations

from .grading.checks_addressing import gather_numpy, kv_offset, slot_of
from .grading.checks_kernels import backend, gather_kernel, naive_kernel, tiled_kernel
from .grading.checks_block_tables import append_tokens, block_tables
from .grading.checks_paging import allocator, refcounts
from .grading.checks_sizing import (choose_page_size, decode_floor_ms, kv_bytes, pages_needed,
                                    paged_waste, reserved_waste)
from .grading.checks_softmax import attend_one, online_softmax
from .grading.checks_system import decode_step, pages_for_next_token, serve
from .grading.checks_tiling import tile_pages, tiled_launch
from .grading.report import CheckResult

__all__ = [
    "CheckResult", "allocator", "append_tokens", "attend_one", "backend", "block_tables",
    "choose_page_size", "decode_floor_ms", "decode_step", "gather_kernel", "gather_numpy",
    "kv_bytes", "kv_offset", "naive_kernel", "online_softmax", "paged_waste", "pages_needed",
    "pages_for_next_token",
    "refcounts", "reserved_waste", "serve", "slot_of", "tile_pages", "tiled_kernel",
    "tiled_launch",
]
