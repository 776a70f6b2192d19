"""The CPU executor's compile errors as a learner reads them: the compiler's messages with
the kernel's own lines beside them, hints for what NVRTC code meets on a C++ compiler
(INFINITY, the old shuffles, PTX in asm()), and never the assembler's lines (they quote the
assembly, which an assembler `.include` makes any file of the machine)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..cuda_text import any_word, macro_aliases, strip_comments
from ..signature import find_kernels
from .errors import KernelCompileError
from .source import inline_asm_lines, mangled_kernel_name, shared_initializer_lines

__all__ = ["compile_error", "inline_asm_error", "shared_initializer_error",
           "diagnostic_pragma_error", "mangled_kernel_error",
           "template_kernel_error"]

HERE = Path(__file__).resolve().parent
_HINTS = [
    (re.compile(r"'INFINITY' (was not declared|undeclared)|undeclared identifier 'INFINITY'"),
     "NVRTC does not define INFINITY either; use __int_as_float(0xff800000) for -infinity "
     "(__int_as_float(0x7f800000) for +infinity), or a large finite value such as -3.4e38f"),
    (re.compile(r"'NAN' (was not declared|undeclared)|undeclared identifier 'NAN'"),
     "NVRTC does not define NAN either; use __int_as_float(0x7fffffff)"),
    (re.compile(r"'(FLT_MAX|FLT_MIN|DBL_MAX)' (was not declared|undeclared)|"
                r"undeclared identifier 'FLT_"),
     "FLT_MAX and friends are not predefined under NVRTC; write 3.402823466e+38f or "
     "#define the constant in the kernel source"),
    (re.compile(r"'__shfl(_up|_down|_xor)?' (was not declared|undeclared)|identifier '__shfl"),
     "the shuffles without _sync were removed for Volta and later GPUs; use "
     "__shfl_sync(0xffffffff, ...) / __shfl_down_sync / __shfl_xor_sync"),
    (re.compile(r"variable length array|variable-length array"),
     "NVRTC refuses a variable-length array (\"expression must have a constant value\"): give "
     "the array a size the compiler knows, a number, a #define or a constexpr int (a -D "
     "option sets one from Python)"),
    (re.compile(r"'std' has not been declared|is not a member of 'std'"),
     "NVRTC kernels have no C++ standard library; use the CUDA functions (fmaxf, min, ...)"),
    (re.compile(r"Assembler messages|no such instruction|invalid instruction mnemonic"),
     "inline PTX assembly (asm(...)) cannot run on the CPU executor; guard it with "
     "#ifndef __PAGEDATTN_LAB_CPU__ and give a plain C++ fallback (not in a graded kernel: the "
     "grader refuses a kernel that is not one program on both devices; write it in CUDA C)"),
]
# Summary lines, which the errors shown say better: GCC's "cc1plus: some warnings being treated as errors" after a
# -Werror=vla error, Clang's count ("1 warning and 1 error generated.")
_WARNING_SUMMARY = re.compile(r"^(\S+: some warnings being treated as errors|"
                              r"(\d+ warnings? and )?\d+ errors? generated\.)$")
# The lines that place the next diagnostic ("FILE: In function 'void k(float*)':", "In file
# included from FILE:3:", until it comes): shown with an error, left out with a warning
_CONTEXT = re.compile(r"^(In file included from |\s+from |.*: In (member )?function |"
                      r".*: In instantiation of |.*: At global scope:)")
# asm() operands the C++ compiler rejects before the assembler sees them ("f": x87 registers)
_ASM_CONSTRAINT = re.compile(r"impossible constraint in .asm.|constraint \d+ must specify a single "
                             r"register|must use '&' constraint")
_ASM_HINT = _HINTS[-1][1]
# The assembler's (GNU as): "FILE: Assembler messages:", "FILE:LINE: Error: TEXT"
_ASSEMBLER_LINE = re.compile(r".*(: Assembler messages:$|:\d+: (Error|Warning|Info|Fatal error): )")
_POISON = re.compile(r"attempt to use (a )?poisoned")
_POISONED_HINT = ("a kernel may not leave the CPU executor's instrumented build or its index and "
                  "shift checks (no_sanitize, no_sanitize_undefined or "
                  "disable_sanitizer_instrumentation attributes) nor name a library function "
                  "through weakref: the access counts and the race check see every load and "
                  "store the kernel makes, and the checks stop what a GPU computes otherwise")
# an extern "C" function named like one of the C library's: gcc's words, then clang's; the
# last (clang, `void div(...)` against `div_t div(int, int)`) names no function: its name is
# read off the kernel's line at the message's column
_C_LIBRARY_CLASH = re.compile(r"conflicting declaration of C function '[^']*?\b(\w+)\(|"
                              r"declaration of '(\w+)' has a different language linkage|"
                              r"conflicting types for '(\w+)'|"
                              r":(\d+):(\d+): error: functions that differ only in their return "
                              r"type cannot be overloaded")
_PREVIOUS = re.compile(r"^(?P<file>.*?):\d+:(?:\d+:)? note: previous declaration")
# A write to a read-only variable (GCC's words, then Clang's), its name in group 1 or 2;
# a write to a member of a read-only object (the object unnamed: its line tells); and a const
# left uninitialized (GCC names it; Clang's words name its type only)
_READ_ONLY_WRITE = re.compile(r"(?:assignment|increment|decrement) of read-only "
                              r"(?:location|variable) '\**\(?([A-Za-z_]\w*)|cannot assign to "
                              r"variable '(\w+)' with const-qualified type")
_READ_ONLY_MEMBER = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?:\d+:)? error: (?:(?:assignment|"
                               r"increment|decrement) of member .* in read-only object|cannot "
                               r"assign to non-static data member within const)", re.M)
_UNINITIALIZED_CONST = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?:\d+:)? error: "
                                  r"(?:uninitialized 'const|default initialization of an object "
                                  r"of const type)", re.M)
# a const pointer passed where a pointer to writable memory is taken (GCC's, Clang's words)
_CONST_CONVERSION = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?:\d+:)? error: (?:invalid "
                               r"conversion from 'const|cannot initialize .* of type 'const)",
                               re.M)
_CONST_ARGUMENT = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?:\d+:)? error: no matching function "
                             r"for call .*\n(?:.*note: .*\n)*?.*note: candidate function not "
                             r"viable: no known conversion from 'const", re.M)   # (Clang's)
_CONSTANT_WRITE_HINT = ("a __constant__ variable is read-only to kernel code (NVRTC refuses the "
                        "write too): write the values into a local array or a __device__ "
                        "one instead")
_CONSTANT_UNSET_HINT = ("the CPU executor cannot set __constant__ memory from the host "
                        "(cudaMemcpyToSymbol, RawModule.get_global): give the variable its "
                        "values where it is declared (= {...}), or pass them as an argument")
_CONSTANT_POINTER_HINT = ("a __constant__ variable is read-only to kernel code: a pointer to "
                          "it, a variable or a function's parameter, is a pointer to const "
                          "(const float *p)")
# A write to a built-in variable, or a reference to one that would let it be written (the
# errors' words name only the type, dim3 or uint3, as they do for a __constant__ dim3's: the
# hint goes by what the error's line writes)
_BUILTIN = r"\b(?:threadIdx|blockIdx|gridDim|blockDim)\b"
_BUILTIN_WRITE = re.compile(rf"{_BUILTIN}(?:\s*\.\s*[xyz])?\s*(?:(?:[-+*/%&|^]|<<|>>)?=(?!=)|"
                            rf"\+\+|--)|(?:\+\+|--)\s*{_BUILTIN}|"
                            rf"(?<!const )\b(?:dim3|uint3)\s*&\s*\w+\s*=\s*{_BUILTIN}")
_CONST_ERROR = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?:\d+:)? error: .*(?:read-only|"
                          r"const|discards qualifiers|overloaded '=')", re.M)
_BUILTIN_WRITE_HINT = ("threadIdx, blockIdx, gridDim and blockDim are read-only built-ins; "
                       "NVRTC refuses a write to them too (\"expression must be a modifiable "
                       "lvalue\"): copy the value into a local variable (unsigned blocks = "
                       "gridDim.x;) and change that")
_MMA_PTX = re.compile(r"\b(mma|ldmatrix)\.sync\b")
_MMA_PTX_HINT = ("for mma.sync and ldmatrix, call the functions of kernels/mma_ptx.cuh "
                 "(#include \"mma_ptx.cuh\": mma_m16n8k16, ldmatrix_x4, ...) instead of writing "
                 "the asm: the CPU executor runs those")


def _without_assembler_lines(log: str) -> tuple[str, int]:
    """`log` without the assembler's messages, and how many there were: they quote the
    assembly's lines, which an assembler `.include` (from a section attribute's name, say)
    makes those of any file of the machine."""
    kept, hidden = [], 0
    for line in log.splitlines():
        if _ASSEMBLER_LINE.match(line):
            hidden += 1
        else:
            kept.append(line)
    return "\n".join(kept), hidden


def _clash_name(clash: re.Match, source_lines: list[str]) -> str | None:
    """The function a _C_LIBRARY_CLASH match names, or the name at its line and column."""
    *names, line, column = clash.groups()
    if not line:
        return next(filter(None, names))
    text = source_lines[int(line) - 1] if 0 < int(line) <= len(source_lines) else ""
    name = re.compile(r"[A-Za-z_]\w*").match(text, int(column) - 1)
    return name.group() if name else None


def _c_library_clash(log: str, filename: str, source_lines: list[str]) -> str | None:
    """The name of an extern "C" clash whose previous declaration (the note after it) lies
    outside the kernel's file: the C library's. One inside it is the kernel's own two
    declarations of a function, which the same words report."""
    lines = log.splitlines()
    for k, line in enumerate(lines):
        if (clash := _C_LIBRARY_CLASH.search(line)) and (
                not clash.group(4) or line.startswith(f"{filename}:")):
            for later in lines[k + 1:]:
                if previous := _PREVIOUS.match(later):
                    if previous.group("file") != filename:
                        return _clash_name(clash, source_lines)
                    break
    return None


def _constant_hints(log: str, filename: str, source_lines: list[str], options=()
                    ) -> list[str]:
    """Hints for a write to a __constant__ variable (shim.h makes it const) and for one left
    without its values, only where the error's name or line is such a variable's. `options`:
    the compile's, whose `-DCMEM=__constant__` declares such variables as a #define would."""
    text = strip_comments("\n".join(source_lines))
    aliases = macro_aliases(text, {"__constant__"}, whole=True, options=options)
    keyword = any_word(aliases, capture=False)
    if not re.search(keyword, text):
        return []
    lines = text.splitlines()
    declared = {m.group(1) for m in re.finditer(
        keyword + r"[^;={(\[]*?\b([A-Za-z_]\w*)\s*[;={(\[]", text)}
    hints = []
    written = [re.split(r"[^=!<>]=[^=]|\+\+|--", at)[0] for at in _error_lines(
        _READ_ONLY_MEMBER, log, filename, lines)]   # (each line's part before its write)
    if (any((m.group(1) or m.group(2)) in declared for m in _READ_ONLY_WRITE.finditer(log))
            or any(declared & set(re.findall(r"[A-Za-z_]\w*", at)) for at in written)):
        hints.append(_CONSTANT_WRITE_HINT)
    if any(re.search(keyword, at) for at in _error_lines(
            _UNINITIALIZED_CONST, log, filename, lines)):
        hints.append(_CONSTANT_UNSET_HINT)
    if any(declared & set(re.findall(r"[A-Za-z_]\w*", at)) for pattern in (
            _CONST_CONVERSION, _CONST_ARGUMENT) for at in _error_lines(pattern, log, filename,
                                                                        lines)):
        hints.append(_CONSTANT_POINTER_HINT)
    return hints


def _error_lines(pattern: re.Pattern, log: str, filename: str, lines: list[str]) -> list[str]:
    """The kernel's lines (comment-free) at which `pattern` (groups file, line) matched."""
    return [lines[int(m.group("line")) - 1] for m in pattern.finditer(log)
            if m.group("file") == filename and 0 < int(m.group("line")) <= len(lines)]


def compile_error(kernel: str, filename: str, source: str, log: str, ident: str,
                  options=()) -> KernelCompileError:
    """The error of a failed build: the compiler's `log` with the kernel's lines, and hints
    (`options`: the compile's flags, whose -D macros the hints read as the source's)."""
    lines = source.splitlines()
    errors, shown, first = [], [], None
    pat = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?:(?P<col>\d+):)? (?P<kind>fatal error|error|"
                     r"warning|note): (?P<msg>.*)$")
    log, hidden = _without_assembler_lines(log)
    warning = False   # in a warning and its notes: the build's -w left out (compiler.py)
    context: list[str] = []   # the lines placing the next diagnostic, shown with an error
    for raw in log.splitlines():
        line = raw.replace(str(HERE) + os.sep, "pagedattn_lab/cpu/")
        m = pat.match(line)
        if not m and (context or _CONTEXT.match(line)):   # (and GCC's "required from")
            context.append(line)
            continue
        if m:   # (a note belongs to the warning or error before it)
            warning = warning if m.group("kind") == "note" else m.group("kind") == "warning"
            shown += [] if warning else context
            context = []
        if warning or _WARNING_SUMMARY.match(line):
            continue
        if m and m.group("kind") in ("error", "fatal error"):
            errors.append((m.group("file"), int(m.group("line")), int(m.group("col") or 0),
                           m.group("msg")))
        shown.append(line)
        if m and m.group("file") == filename:
            n = int(m.group("line"))
            if first is None and m.group("kind") in ("error", "fatal error"):
                first = n
            if 1 <= n <= len(lines):
                shown.append(f"{n:5d} | {lines[n - 1].rstrip()}")
    shown += [] if warning else context   # (no diagnostic came after them)
    if hidden:
        shown.append(f"({hidden} lines of the assembler's messages are not shown: they quote "
                     f"the assembly, which a kernel source does not write)")
    hints = [hint for pat_, hint in _HINTS if pat_.search(log)]
    if name := _c_library_clash(log, filename, lines):
        hints.append(f"`{name}` is also a C library function, which the CPU "
                     f"executor's C++ build declares (NVRTC has no C library, so the GPU takes "
                     f"the name): give it another name")
    hints += _constant_hints(log, filename, lines, options)
    code_lines = strip_comments(source).splitlines()
    if any(_BUILTIN_WRITE.search(at) for at in _error_lines(_CONST_ERROR, log, filename,
                                                            code_lines)):
        hints.append(_BUILTIN_WRITE_HINT)
    asm = inline_asm_lines(source)
    if _POISON.search(log):   # (the names of source.POISONED)
        hints.append(_POISONED_HINT)
    if asm and _ASM_HINT not in hints and _ASM_CONSTRAINT.search(log):
        hints.append(_ASM_HINT)
    if _ASM_HINT in hints and _MMA_PTX.search(source):
        hints.append(_MMA_PTX_HINT)
    if asm and any("Assembler" in h or "asm(" in h for h in hints):
        first = first or asm[0]
    if len(shown) > 60:
        shown = shown[:60] + [f"... ({len(shown) - 60} more lines in .log)"]
    msg = (f"kernel source {filename!r} (kernel {kernel!r}) does not compile for the CPU executor "
           f"({ident.split(' :: ')[-1]}):\n" + "\n".join(shown))
    if hints:
        msg += "\n" + "\n".join(f"hint: {h}" for h in hints)
    return KernelCompileError(msg, kernel=kernel, filename=filename, lineno=first,
                              errors=errors, log=log, hints=hints)


def inline_asm_error(kernel: str, filename: str, source: str) -> KernelCompileError:
    """The compiled kernel holds inline assembly (kernel_object.inline_assembly)."""
    lines = inline_asm_lines(source)
    where = f" (line {lines[0]})" if lines else ""
    return KernelCompileError.refused(
        kernel, filename, f"holds inline assembly{where}, which the CPU executor refuses: on "
        f"the CPU it would be host code, not PTX", _ASM_HINT,
        *([_MMA_PTX_HINT] if _MMA_PTX.search(source) else []), lineno=lines[0] if lines else None)


def shared_initializer_error(kernel: str, filename: str, source: str) -> KernelCompileError | None:
    """A `__shared__` variable with an initializer, which the GPU's compiler refuses."""
    lines = shared_initializer_lines(source)
    if not lines:
        return None
    return KernelCompileError.refused(
        kernel, filename, f"gives a __shared__ variable an initializer (line {lines[0]}), which "
        f"the GPU's compiler refuses (\"initializer not allowed for __shared__ variables\"): "
        f"shared memory holds garbage when a block starts",
        "declare it without a value and let one thread set it (if (threadIdx.x == 0) s = 0;), "
        "then __syncthreads() before any thread reads it", lineno=lines[0])


# A diagnostic pragma that lowers one (`#pragma GCC diagnostic ignored "-Wvla"`, or its
# _Pragma form): it would switch off the build's -Werror=vla, and a variable-length array,
# which NVRTC refuses, would run here (kernel_checks.py)
_LOWERING_PRAGMA = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+(GCC|clang)[ \t]+diagnostic[ \t]+"
                              r"(ignored|warning)\b", re.M)
_PRAGMA_OPERATOR = re.compile(r"\b_Pragma\s*\(")


def diagnostic_pragma_error(kernel: str, filename: str, source: str
                            ) -> KernelCompileError | None:
    """A pragma that silences or lowers a compiler diagnostic, which the CPU executor's checks
    are (NVRTC ignores GCC's pragmas: the GPU build would not be changed by it)."""
    code = strip_comments(source)   # (a _Pragma's text is a string literal: read it raw)
    found = [m.start() for m in _LOWERING_PRAGMA.finditer(code)] + [
        m.start() for m in _PRAGMA_OPERATOR.finditer(code)
        if "diagnostic" in source[m.start():source.find(")", m.end()) + 1]]
    if not found:
        return None
    line = code.count("\n", 0, min(found)) + 1
    return KernelCompileError.refused(
        kernel, filename, f"lowers a compiler diagnostic with a pragma (line {line}): the CPU "
        f"executor's checks are diagnostics (a variable-length array, which NVRTC refuses, "
        f"is an error here), and NVRTC ignores GCC's and Clang's pragmas",
        "remove the pragma; give every array a size the compiler knows (a number, a #define "
        "or a constexpr int)", lineno=line)


def mangled_kernel_error(kernel: str, filename: str, source: str) -> KernelCompileError | None:
    """A kernel in a namespace without extern "C", which cupy.RawKernel cannot find."""
    qualified = mangled_kernel_name(source, kernel)
    if qualified is None:
        return None
    return KernelCompileError.refused(
        kernel, filename, f"defines the kernel inside a namespace without extern \"C\" "
        f"({qualified}): the compiler mangles its name, and CuPy, which looks the kernel up by "
        f"its plain name {kernel!r}, cannot find it on the GPU (named symbol not found)",
        f"declare it extern \"C\" __global__ void {kernel}(...), or define it outside the "
        f"namespace")


def template_kernel_error(kernel: str, filename: str, source: str) -> KernelCompileError | None:
    """A kernel defined only as a template, which cupy.RawKernel cannot find. Built, its
    entry point (just past the kernel's closing brace, source.py) failed to convert it,
    and the error stood at that brace's line of the learner's file, with no hint."""
    if kernel not in find_kernels(source) or kernel in find_kernels(source, False):
        return None
    return KernelCompileError.refused(
        kernel, filename, f"defines the kernel as a template (template <...> __global__ void "
        f"{kernel}): a template has no symbol until it is instantiated, so CuPy, which looks "
        f"the kernel up by its plain name {kernel!r}, cannot find it on the GPU (named "
        f"symbol not found), and nothing here can launch it without its template arguments",
        f"make the work a template __device__ function and launch an extern \"C\" __global__ "
        f"void {kernel}(...) that calls it with its template arguments")
