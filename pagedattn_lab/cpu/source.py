"""Source-level preparation of a CUDA kernel for the C++ compiler.

The only rewrite: `extern __shared__ T name[];` (dynamic shared memory, sized at launch)
becomes a reference to the runtime's per-block buffer pointer,
`static T*& name = reinterpret_cast<T*&>(__pal_dyn_smem);`, on the same line, so that line
numbers do not move. Everything else is handled by macros in shim.h.
"""
from __future__ import annotations

import re

from ..cuda_text import strip_comments
from ..signature import launch_bounds

__all__ = ["rewrite_extern_shared", "uses_printf", "has_device_variables", "inline_asm_lines",
           "shared_initializer_lines", "quoted_filename", "translation_unit"]

_EXTERN_SHARED = re.compile(
    r"\bextern\s+__shared__\s+(?P<decl>[^;{}]*?)\s*\b(?P<name>[A-Za-z_]\w*)\s*\[\s*\]\s*"
    r"(?P<attrs>(?:__attribute__\s*\(\(.*?\)\)\s*)*);", re.S)
_ATTRS = re.compile(r"__align__\s*\([^)]*\)|alignas\s*\([^)]*\)|__attribute__\s*\(\(.*?\)\)", re.S)


def _function_depths(text: str) -> list[int]:
    """For each '{'-nesting position: how many enclosing braces are not namespace/extern "C"
    blocks. Returns a per-character array (cheap enough for kernel sources)."""
    depths = [0] * (len(text) + 1)
    stack: list[bool] = []   # True: a function/class brace
    depth = 0
    for i, c in enumerate(text):
        if c == "{":
            head = text[max(0, i - 200):i].rstrip()
            ns = bool(re.search(r"(\bnamespace(\s+\w+)?|\bextern\s+\"\s*\")\s*$", head))
            stack.append(not ns)
            depth += 0 if ns else 1
        elif c == "}" and stack:
            depth -= 1 if stack.pop() else 0
        depths[i] = depth
    return depths


def rewrite_extern_shared(source: str) -> str:
    """Replace every `extern __shared__ T name[];` as described in the module docstring."""
    text = strip_comments(source)
    matches = list(_EXTERN_SHARED.finditer(text))
    if not matches:
        return source
    depths = _function_depths(text)
    out, last, seen_global = [], 0, set()
    for m in matches:
        typ = " ".join(_ATTRS.sub(" ", m.group("decl")).split())
        name = m.group("name")
        span = source[m.start():m.end()]
        newlines = "\n" * span.count("\n")
        at_namespace = depths[m.start()] == 0
        if at_namespace and name in seen_global:
            repl = ""   # a repeated global declaration: the first one defines the name
        else:
            if at_namespace:
                seen_global.add(name)
            repl = f"static {typ}*& {name} = reinterpret_cast<{typ}*&>(__pal_dyn_smem);"
        out.append(source[last:m.start()])
        out.append(repl + newlines)
        last = m.end()
    out.append(source[last:])
    return "".join(out)


def uses_printf(source: str) -> bool:
    return re.search(r"\bprintf\s*\(", strip_comments(source)) is not None


def has_device_variables(source: str) -> bool:
    """True when the source declares __device__ variables (globals a kernel may write)."""
    text = strip_comments(source)
    for m in re.finditer(r"\b__device__\b", text):
        rest = re.search(r"[(;={\[]", text[m.end():])
        if rest and rest.group(0) != "(":
            return True
    return False


def inline_asm_lines(source: str) -> list[int]:
    """1-based lines with inline assembly (PTX cannot run on the CPU)."""
    text = strip_comments(source)
    return [text.count("\n", 0, m.start()) + 1
            for m in re.finditer(r"\b(asm|__asm__|__asm)\s*(volatile\s*|__volatile__\s*)?\(", text)]


# `__shared__ T name = value;` (or `[N] = {...}`): NVRTC refuses it ("initializer not allowed
# for __shared__ variables"); here the variable is a static, initialized once and then
# poisoned before every block, so the kernel would compile and read NaN or -1 instead.
_SHARED_INIT = re.compile(r"\b__shared__\b[^;{}()]*?(?<![=!<>])=(?!=)")


def shared_initializer_lines(source: str) -> list[int]:
    """1-based lines of `__shared__` declarations with an initializer."""
    text = strip_comments(source)
    return [text.count("\n", 0, m.start()) + 1 for m in _SHARED_INIT.finditer(text)]


# Identifiers the kernel source may not use (the shim, included before, may): the attributes
# that leave a function out of the instrumented build, whose loads and stores the access
# counts and the race check then never see (a one-thread copy passed the gather kernel's
# store count), and `weakref`, which names a library function (memcpy's symbol, past the
# shim's counted memcpy) without writing its name. A poisoned name cannot be #undef'd,
# pasted together or hidden in a macro of the source. (Inline assembly is refused in the
# compiled code instead, kernel_object.py: the C library's headers use it.)
POISONED = ("no_sanitize", "__no_sanitize__", "no_sanitize_thread", "__no_sanitize_thread__",
            "weakref", "__weakref__")


def quoted_filename(filename: str) -> str:
    """`filename` as the translation unit's `#line` quotes it (and -E's line markers)."""
    return filename.replace("\\", "\\\\").replace('"', '\\"')


def _with_launch_bounds(source: str, kernel_names: list[str]) -> str:
    """`source` with each kernel's __launch_bounds__ maximum exported, evaluated by the compiler
    (a macro or a constant expression) just past the kernel's closing brace, on its line: there
    it names what the kernel's attribute named, in the kernel's namespace, though the source
    #undef's the macro later; on one line, so the lines after keep their numbers. A GPU
    refuses a launch of more threads per block (kernel.py)."""
    found = sorted(((b[1], name, " ".join(b[0].split())) for name in kernel_names
                    if (b := launch_bounds(source, name)) is not None), reverse=True)
    for end, name, bound in found:
        source = (f'{source[:end]} extern "C" PAL_EXPORT const long long '
                  f"__pal_max_threads_{name} = (long long)({bound});{source[end:]}")
    return source


def translation_unit(source: str, kernel_names: list[str], filename: str, shim_path: str) -> str:
    """The C++ file to compile: the shim, the kernel source at its own line numbers, and one
    exported entry point per kernel that unpacks a void*[] argument list."""
    body = rewrite_extern_shared(_with_launch_bounds(source, kernel_names))
    if not body.endswith("\n"):
        body += "\n"
    entries = "".join(
        f'extern "C" PAL_EXPORT void __pal_entry_{name}(void **a) {{ __pal_invoke({name}, a); }}\n'
        for name in kernel_names)
    quoted = quoted_filename(filename)
    return (f'#include "{shim_path}"\n'
            f"#pragma GCC poison {' '.join(POISONED)}\n"
            f'#line 1 "{quoted}"\n'
            f"{body}"
            f'#line 1 "<pagedattn_lab entry points>"\n'
            f"{entries}")
