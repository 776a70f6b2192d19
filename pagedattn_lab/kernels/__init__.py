"""The one place kernel sources are loaded from.

Each `.cu` file in this folder is plain CUDA C with `extern "C"` kernels, compiled by NVRTC
through CuPy on a GPU and by the CPU executor elsewhere. Notebooks print these sources, the
exercises start from them, and the wrappers launch them through `kernel()`.

A source may include a header of this folder (`#include "common.cuh"`). `kernel()` compiles
`expanded_source()`, in which such includes are replaced by the header's text: CuPy caches
compiled kernels by the hash of the source it is given, so a header edit must change it.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([\w.]+\.cuh)"[ \t]*$', re.M)


def source(filename: str, directory: Path = KERNEL_DIR) -> str:
    """The text of `pagedattn_lab/kernels/<filename>` (".cu" may be left off); `directory`:
    another folder of kernel sources (an older version's, for an A/B)."""
    path = directory / (filename if filename.endswith((".cu", ".cuh")) else filename + ".cu")
    if not path.is_file():
        available = sorted(p.name for p in directory.glob("*.cu"))
        raise FileNotFoundError(f"filename: no kernel source {path.name!r}; have {available}")
    return path.read_text()


def expanded_source(filename: str, directory: Path = KERNEL_DIR) -> str:
    """`source(filename)` with each `#include "<header>.cuh"` of this folder replaced by the
    header's text, between #line directives so that compiler messages keep each file's own
    name and line numbers."""
    text = source(filename, directory)
    name = Path(filename).name if filename.endswith((".cu", ".cuh")) else filename + ".cu"

    def inline(m: re.Match) -> str:
        line = text.count("\n", 0, m.start()) + 1
        header = source(m.group(1), directory)
        if not header.endswith("\n"):
            header += "\n"
        return f'#line 1 "{m.group(1)}"\n{header}#line {line + 1} "{name}"'

    return _LOCAL_INCLUDE.sub(inline, text)


@functools.lru_cache(maxsize=None)
def kernel(filename: str, name: str, options: tuple[str, ...] = ()):
    """The compiled kernel `name` from `filename`, built once per process and reused.

    Returns a `pagedattn_lab.RawKernel`: the GPU when CuPy has a device, else the CPU executor,
    where it is `trusted` (a large problem may run past the 30 s meant for learners' loops).
    """
    from ..rawkernel import RawKernel  # noqa: PLC0415 - avoids importing CuPy at package import
    return RawKernel(expanded_source(filename), name, options=options, trusted=True)
