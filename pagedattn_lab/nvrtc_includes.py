"""Header folders NVRTC may lack: the tensor-core header `mma.h` includes `crt/mma.h`.

CuPy compiles with the headers of the CUDA packages it was installed with. Some of those
(the pip wheels of CUDA 13, for one) ship `mma.h` but not the `crt/mma.h` it includes, so a
kernel with `#include <mma.h>` fails with "cannot open source file crt/mma.h". When a
source includes it, the GPU path adds `-I` for the first CUDA include folder that has the
whole header: the toolkit named by CUDA_PATH or CUDA_HOME, the one beside `nvcc`, or
/usr/local/cuda.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path

_NEEDS_CRT = re.compile(r'^\s*#\s*include\s*[<"]mma\.h[>"]', re.M)


@functools.lru_cache(maxsize=None)
def toolkit_include_dir() -> str | None:
    """A CUDA include folder holding crt/mma.h, or None when none is found."""
    candidates = [os.environ.get(var) for var in ("CUDA_PATH", "CUDA_HOME")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for root in filter(None, candidates):
        include = Path(root) / "include"
        if (include / "crt" / "mma.h").is_file():
            return str(include)
    return None


def extra_options(source: str) -> tuple[str, ...]:
    """NVRTC options a source needs beyond its own: an include folder for <mma.h>."""
    if not _NEEDS_CRT.search(source):
        return ()
    include = toolkit_include_dir()
    return (f"-I{include}",) if include else ()
