"""docs/ARCHITECTURE.md's package table against the helpers other modules now share.

A row says what its modules hold; a helper that several modules import from one home is
what a reader looks for there. These were missing from their rows: `cuda_text.any_word`
(the launch row spoke only of the signature check, though the CPU executor's and the
grader's source checks read CUDA C through the same module), `page_bytes.check_page_memory`
and `check_cache_memory` (the refusals the cache and the engine's store size their pools
by), `prefill_masks.PackedBatch`, and the CPU executor's one ELF walk,
`kernel_object.elf_symbols`. The row said the executor compiles with g++; it takes `$CXX`,
else c++, g++ or clang++ (cpu/toolchain.py).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pagedattn_lab.cpu import toolchain

ROOT = Path(__file__).resolve().parents[1]


def _row(layer: str) -> str:
    text = (ROOT / "docs/ARCHITECTURE.md").read_text(encoding="utf-8")
    table = text[text.index("## The package"):text.index("Dependencies point downwards")]
    rows = [line for line in table.splitlines() if line.startswith(f"| {layer} | ")]
    assert len(rows) == 1, layer
    return rows[0]


@pytest.mark.parametrize("layer, module, names", [
    ("launch", "cuda_text.py", ("any_word",)),
    ("paging", "page_bytes.py", ("check_page_memory", "check_cache_memory")),
    ("prefill", "prefill_masks.py", ("PackedBatch",)),
    ("CPU executor", "cpu/kernel_object.py", ("elf_symbols",)),
])
def test_a_shared_helper_is_named_in_its_modules_row(layer, module, names):
    row = _row(layer)
    assert f"`{module}`" in row
    missing = [name for name in names if f"`{name}`" not in row]
    assert not missing, f"the {layer} row leaves out {missing}"


def test_the_cpu_row_names_the_compilers_the_executor_tries():
    row = _row("CPU executor")
    tried = re.search(r"candidates = .*", Path(toolchain.__file__).read_text()).group(0)
    for name in ("c++", "g++", "clang++"):
        assert f'["{name}"]' in tried   # what toolchain.py tries, as the row says
        assert f"`{name}`" in row, name
    assert "`$CXX`" in row
