"""The one place kernel sources are loaded from.

Each `.cu` file in this folder is plain CUDA C with `extern "C"` kernels, compiled by NVRTC
through CuPy on a GPU and by the CPU executor elsewhere. Notebooks print these sources, the
exercises start from them, and the wrappers launch them through `kernel()`.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
# `#include "x.cuh"`: a header of this folder, pasted in so NVRTC and the CPU executor
# (and their caches, keyed by the text) see one self-contained source.
_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([\w.]+\.cuh)"[ \t]*$', re.M)


def source(filename: str) -> str:
    """The text of `pagedattn_lab/kernels/<filename>` (".cu" may be left off)."""
    path = KERNEL_DIR / (filename if filename.endswith(".cu") else filename + ".cu")
    if not path.is_file():
        available = sorted(p.name for p in KERNEL_DIR.glob("*.cu"))
        raise FileNotFoundError(f"filename: no kernel source {path.name!r}; have {available}")
    return _LOCAL_INCLUDE.sub(lambda m: (KERNEL_DIR / m.group(1)).read_text(), path.read_text())


@functools.lru_cache(maxsize=None)
def kernel(filename: str, name: str, options: tuple[str, ...] = ()):
    """The compiled kernel `name` from `filename`, built once per process and reused.

    Returns a `pagedattn_lab.RawKernel`: the GPU when CuPy has a device, else the CPU executor.
    """
    from ..rawkernel import RawKernel  # noqa: PLC0415 - avoids importing CuPy at package import
    return RawKernel(source(filename), name, options=options)
