"""A graded kernel must be one program on both devices (see source_macros.py), in its types
too. NVRTC's built-in variables are of types of their own (threadIdx: a one-byte
`__cuda_builtin_threadIdx_t` that converts to uint3), the CPU executor's are plain uint3 and
dim3 (shim_types.h); and the CPU build aligns float4, int4, double2... to their element only
(shim_types.h says why), NVRTC to 16 bytes. A kernel that asks for the type, sizeof(threadIdx),
decltype(blockIdx), an overload or a template given the variable whole, alignof(float4), can
tell the builds apart in plain C++ (`if (sizeof(threadIdx) == 12) __syncthreads();` keeps the
barrier on the CPU build only), which no preprocessor check sees. A member read
(`threadIdx.x`) and a copy (`uint3 t = threadIdx;`) mean the same on both and pass."""
from __future__ import annotations

import re

from .report import Mismatch
from .source_macros import logical_code, one_program_refusal

_QUERIES = (r"sizeof|decltype|typeid|typeof|__typeof__|__typeof|alignof|_Alignof|__alignof__"
            r"|__alignof")
# a built-in variable whole (no member read), and what goes before it where its type decides:
# an operand of a type query, an argument (overloads, templates), a braced initializer, a
# conditional operator's arm, a reference bound to it (`auto& t = threadIdx`: sizeof(t) is
# the built-in's); `::` before the name read past
_TYPED_USE = re.compile(rf"(?:[(,{{?]|(?<!:):|&\s*\w+\s*=|\b(?:{_QUERIES}))\s*(?:::\s*)?"
                        r"\b(threadIdx|blockIdx|blockDim|gridDim)\b(?!\s*\.)")
_ALIGNOF = re.compile(r"\b(alignof|_Alignof|__alignof__|__alignof)\b\s*(\(\s*([^()]*?)\s*\))?")
# types whose alignment is the same on both builds (any other may be, or hold, a 16-byte vector)
_SAME_ALIGNMENT = re.compile(r"(?:(?:const|volatile|signed|unsigned|short|long)\s+)*"
                             r"(?:bool|char|short|int|long|float|double|half|__half|"
                             r"__nv_bfloat16|size_t|int\d+_t|uint\d+_t)?")


def device_types(source: str) -> Mismatch | None:
    """The grader's refusal of the first place the code asks for a type that differs between
    the GPU compiler and the CPU executor (see above), or None."""
    code, line_of = logical_code(source)   # (line splices joined: `sizeof(\` newline)
    m = _TYPED_USE.search(code)
    if m:
        return _refusal(line_of(m.start(1)), m.group(1),
                        "whole where its type decides (a sizeof or decltype, an argument, an "
                        "initializer), and its type differs between the builds (NVRTC's is a "
                        "built-in type of one byte, the executor's a uint3 or dim3)",
                        f"read its members ({m.group(1)}.x) or copy it first "
                        f"(uint3 t = {m.group(1)};).")
    m = next((a for a in _ALIGNOF.finditer(code)
              if a.group(3) is None or not _SAME_ALIGNMENT.fullmatch(a.group(3))), None)
    if m:
        return _refusal(line_of(m.start()), m.group(1),
                        ", whose answer differs between the builds (the executor aligns "
                        "float4 and the other 16-byte types to their element)",
                        "take it out; write the alignment the kernel needs (16 for a float4).")
    return None


def _refusal(line: int, word: str, why: str, fix: str) -> Mismatch:
    return one_program_refusal(f"line {line} uses `{word}`{'' if why.startswith(',') else ' '}"
                               f"{why}", fix, got=word,
                               expected="member reads of the built-in variables, no type query")
