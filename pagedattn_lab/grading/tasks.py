"""Which tasks each workbook notebook holds, in order (the grader lists missing ones).

Keys are the two-digit lesson number at the start of the notebook's file name; values are
the check names the solution notebook calls (`check.<name>(...)`). A test keeps this in
step with solutions/.
"""
from __future__ import annotations

import re
from pathlib import Path

TASKS: dict[str, list[str]] = {
    "00": ["pages_needed", "reserved_waste", "paged_waste"],
    "01": ["allocator", "refcounts", "append_tokens", "block_tables"],
    "02": ["slot_of", "kv_offset", "gather_numpy", "gather_kernel"],
    "03": ["online_softmax", "attend_one", "naive_kernel"],
    "04": ["tile_pages", "tiled_launch", "tiled_kernel"],
    "05": ["pages_for_next_token", "decode_step", "serve"],
    "06": ["kv_bytes", "decode_floor_ms", "choose_page_size"],
}

_LESSON = re.compile(r"(?:^|[^0-9])(0[0-9])_")


def lesson_of(path) -> str | None:
    """'01' for '01_page_table.ipynb', 'alice/01_page_table.ipynb', 'alice_01_page_table...'."""
    match = _LESSON.search(Path(path).name)
    return match.group(1) if match else None


def expected_tasks(path) -> list[str]:
    return list(TASKS.get(lesson_of(path) or "", []))
