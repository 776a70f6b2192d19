"""What a learner's kernel source may not hold, refused before it is compiled
(kernel_runner.Kernel): what NVRTC would refuse or what would hide the kernel (`lint`, with
the one-program checks of source_*.py), and, under the grader on the GPU, an #include of
anything but a listed CUDA header (`refuse_unlisted_headers`)."""
from __future__ import annotations

import re
from pathlib import Path

from ..cpu.includes import graded
# the lint reads the source with comments and string and char literals blanked (extern "C"
# reads extern " "), in one pass from the left
from ..cuda_text import strip_comments as code_only
from .report import Mismatch
from .source_builtins import device_types
from .source_layout import vector_layouts
from .source_macros import device_conditional
from .source_overloads import substitution_choices

# Characters of a kernel source the checks read (the course's kernels are a few thousand):
# their scans run before any time limit, and a long source made them run for hours.
MAX_SOURCE = 32 << 10


def lint(source: str, name: str) -> None:
    """Refuse, before compiling, what NVRTC would refuse or what would hide a kernel."""
    if not isinstance(source, str):
        raise Mismatch(f"expected the kernel source as a string, got {type(source).__name__}",
                       "pass the SOURCE string defined in the cell above.")
    if len(source) > MAX_SOURCE:
        raise Mismatch(f"the kernel source is {len(source)} characters long, more than the "
                       f"{MAX_SOURCE} a check reads",
                       "pass the kernel's own source (the SOURCE string of the cell above): a "
                       "kernel of this course is a few thousand characters.",
                       expected=f"at most {MAX_SOURCE} characters", got=str(len(source)))
    code = code_only(source)
    if re.search(r"\bINFINITY\b", code) and not re.search(r"#\s*define\s+INFINITY\b", code):
        raise Mismatch("the kernel uses INFINITY, which NVRTC does not define (there is no "
                       "<math.h> on the GPU compiler)",
                       "start the running max at -FLT_MAX style constant, e.g. -3.0e38f, or "
                       "__int_as_float(0xff800000) for a true -inf (the guide's bug).")
    if re.search(r"#\s*include\s*<(math\.h|cmath|stdio\.h|cstdio|stdlib\.h)>", code):
        raise Mismatch("the kernel includes a host C header", "NVRTC has no C library "
                       "headers: expf, fmaxf, sqrtf and printf are built in; drop the #include.")
    if not re.search(rf"\b{re.escape(name)}\s*\(", code):
        raise Mismatch(f"no kernel named {name!r} in the source",
                       f"keep the kernel's name and signature from the prompt: "
                       f"extern \"C\" __global__ void {name}(...).")
    if not _declared_extern_c(code, name):
        raise Mismatch(f"{name} is not declared extern \"C\" __global__",
                       "without extern \"C\" the C++ compiler mangles the name and CuPy cannot "
                       "find the kernel: write extern \"C\" __global__ void "
                       f"{name}(...).")
    refused = (device_conditional(source) or device_types(source) or vector_layouts(source)
               or substitution_choices(source))
    if refused is not None:
        raise refused


def _declared_extern_c(code: str, name: str) -> bool:
    """Whether one declaration (the text between two of ; { }) holds __global__, then
    `name(`, with C linkage: extern "C" before the __global__ in it, or an enclosing
    `extern "C" { ... }` block (which NVRTC and the CPU executor accept too). Each word is
    searched from the first of the one before, and the braces are read once, so the time is
    linear in the source (one pattern with two lazy gaps took minutes on a long run of
    __global__ words, outside any time limit)."""
    call = re.compile(rf"\b{re.escape(name)}\s*\(")
    c_linkage = [False]   # per open brace: whether what it holds has C linkage
    opens_block = False   # the text just read ends in extern "C": the { next opens a block
    for piece in re.finditer(r"[^;{}]+|[;{}]", code):
        start, end = piece.span()
        if piece[0] == "{":
            c_linkage.append(opens_block or c_linkage[-1])
        elif piece[0] == "}" and len(c_linkage) > 1:
            c_linkage.pop()
        if piece[0] in ";{}":
            opens_block = False
            continue
        opens_block = _EXTERN_C_BLOCK.search(code, start, end) is not None
        extern = _EXTERN_C.search(code, start, end)
        if extern is None and not c_linkage[-1]:
            continue
        globl = _GLOBAL.search(code, start if extern is None else extern.end(), end)
        if globl and call.search(code, globl.end(), end):
            return True
    return False


_EXTERN_C = re.compile(r'extern\s+" "')   # extern "C" with its string blanked (code_only)
_EXTERN_C_BLOCK = re.compile(r'extern\s+" "\s*\Z')   # (\s* ends where a piece does)
_GLOBAL = re.compile(r"__global__")
# The CUDA headers a graded kernel may include on the GPU: those the CPU executor provides too.
GRADED_HEADERS = frozenset(p.name for p in (Path(__file__).parent.parent / "cpu" / "include")
                           .glob("*.h") if not p.name.startswith("pagedattn_lab"))
# One token at a time, so that a comment's start inside a literal (or a quote inside a comment,
# a digit separator's ' in 1'000) hides nothing: raw strings, identifiers, numbers, strings,
# character literals, comments.
_TOKENS = re.compile(r'(?:u8|[uUL])?R"([^()\\\s]{0,16})\((?:.|\n)*?\)\1"'
                     r"|[A-Za-z_]\w*|\.?\d(?:'?\w|[eEpP][+-]|\.)*"
                     r'|"(?:\\.|[^"\\\n])*"'
                     r"|'(?:\\.|[^'\\\n])*'|/\*(?:.|\n)*?\*/|//[^\n]*")
_DIRECTIVE = re.compile(r"^[ \t]*(?:#|%:)[ \t]*(include|include_next|import|embed)\b[ \t]*"
                        r"(.*)$", re.M)


def _directives_text(source: str) -> str:
    """The source as the preprocessor reads its directives: continued lines joined, each
    comment one space, literals kept."""
    return _TOKENS.sub(lambda m: " " if m[0].startswith("/") else m[0],
                       source.replace("\\\n", ""))


def refuse_unlisted_headers(source: str) -> None:
    """Under the grader, on the GPU: refuse an #include of anything but a listed CUDA header.
    NVRTC reads any file an #include names and its log echoes the lines of a file it cannot
    compile (the CPU build's list of files read, cpu/includes.py, has no NVRTC counterpart), so
    the directives themselves are read: an include computed by a macro, #include_next, #import
    and #embed are refused with the rest."""
    if not graded():
        return
    for kind, target in _DIRECTIVE.findall(_directives_text(source)):
        header = re.fullmatch(r"<([A-Za-z0-9_]+\.h)>[ \t]*", target)
        if kind != "include" or not header or header[1] not in GRADED_HEADERS:
            raise Mismatch(f"the kernel was refused by the grader: #{kind} {target.strip()} "
                           f"names no CUDA header a graded kernel may include",
                           "a graded kernel includes only the CUDA headers ("
                           + ", ".join(f"<{h}>" for h in sorted(GRADED_HEADERS)) +
                           "); paste what it needs from another file into the kernel source.")
