"""Source-level preparation of a CUDA kernel for the C++ compiler.

Rewrites that add no line, so that line numbers do not move: `extern __shared__ T
name[];` (dynamic shared memory, sized at launch) becomes a reference to the runtime's
per-block buffer pointer, `static T*& name = reinterpret_cast<T*&>(__pal_dyn_smem);`, on the
same line; and a statement that declares static `__shared__` variables gets shim.h's
`PAL_SGUARD` before it (a guard of poison between the arrays), at the end of the line before
where it can go there, so that the declaration's columns do not move either, and, in a
template, `PAL_SPOISON(name)` after it (GCC drops the section attribute of a template's
statics: `_template_poison`). And `__constant__`, which shim.h makes `const`, is blanked in
a declaration that says `const` or `constexpr` itself, or moved behind a pointer's `*` (the
pointer is what constant memory holds; the line's later columns move there:
constant_decl.py). Everything else
is handled by macros in shim.h.
"""
from __future__ import annotations

import functools
import re

from ..cuda_text import any_word, macro_aliases, strip_comments
from ..signature import kernel_declarations, kernel_definitions
from .constant_decl import constant_once

__all__ = ["rewrite_extern_shared", "mangled_kernel_name", "uses_printf",
           "has_device_variables", "inline_asm_lines", "shared_initializer_lines",
           "quoted_filename", "translation_unit"]

_EXTERN_SHARED = re.compile(
    r"\bextern\s+__shared__\s+(?P<decl>[^;{}]*?)\s*\b(?P<name>[A-Za-z_]\w*)\s*\[\s*\]\s*"
    r"(?P<attrs>(?:__attribute__\s*\(\(.*?\)\)\s*)*);", re.S)
_ATTRS = re.compile(r"__align__\s*\([^)]*\)|alignas\s*\([^)]*\)|__attribute__\s*\(\(.*?\)\)", re.S)


# What opens a namespace or extern "C" block, just before its '{' in comment-free text (where
# a string is blanked: extern "C" reads extern " "); group 1: the namespace's name, if any.
_BLOCK_HEAD = re.compile(r"(?:\bnamespace(?:\s+([\w:]+))?|\bextern\s+\"\s*\")\s*$")


def _block_head(text: str, brace: int) -> re.Match | None:
    """The namespace or extern "C" head of the block whose '{' is text[brace], or None."""
    return _BLOCK_HEAD.search(text[max(0, brace - 200):brace].rstrip())


def _function_depths(text: str) -> list[int]:
    """For each '{'-nesting position: how many enclosing braces are not namespace/extern "C"
    blocks. Returns a per-character array (cheap enough for kernel sources)."""
    depths = [0] * (len(text) + 1)
    stack: list[bool] = []   # True: a function/class brace
    depth = 0
    for i, c in enumerate(text):
        if c == "{":
            ns = _block_head(text, i) is not None
            stack.append(not ns)
            depth += 0 if ns else 1
        elif c == "}" and stack:
            depth -= 1 if stack.pop() else 0
        depths[i] = depth
    return depths


def _enclosing_braces(text: str, pos: int) -> list[int]:
    """The positions of the '{' that are open at text[pos], outermost first."""
    stack: list[int] = []
    for m in re.finditer(r"[{}]", text[:pos]):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            stack.pop()
    return stack


def _enclosing_blocks(text: str, pos: int) -> list[re.Match]:
    """The heads of the namespace and extern "C" blocks around text[pos], outermost first."""
    return [head for brace in _enclosing_braces(text, pos)
            if (head := _block_head(text, brace)) is not None]


def mangled_kernel_name(source: str, name: str) -> str | None:
    """`lab::name` where kernel `name` is defined in a namespace with C++ linkage: no
    extern "C" on a declaration of it nor around it. Its symbol is then mangled, and
    cupy.RawKernel, which looks the kernel up by its plain name, does not find it (CUDA's
    "named symbol not found"). None for a kernel outside any namespace: the course's lint
    (grading/kernel_lint.py) asks extern "C" of those."""
    text = strip_comments(source)
    definitions = kernel_definitions(source, name)
    if not definitions:
        return None
    blocks = _enclosing_blocks(text, definitions[0][1])
    where = _namespace_path(blocks)
    if not where or any(b.group().startswith("extern") for b in blocks):
        return None
    for paren in kernel_declarations(source, name):
        start = max(text.rfind(c, 0, paren) for c in ";{}") + 1
        # extern "C" (its string blanked) on a declaration of this function: one in another
        # namespace (`extern "C" __global__ void k(...);` before `namespace lab {`) declares
        # another k, which nothing defines
        if re.search(r'\bextern\s+" "', text[start:paren]) and \
                _namespace_path(_enclosing_blocks(text, paren)) == where:
            return None
    return "::".join(where + [name])


def _namespace_path(blocks: list[re.Match]) -> list[str]:
    """The names of the namespaces among `blocks` (_enclosing_blocks), outermost first."""
    return [b.group(1) or "(anonymous namespace)" for b in blocks
            if b.group().startswith("namespace")]


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


# A statement that declares static __shared__ variables: at a line's start or after ; { or },
# its specifiers (`static`, `volatile`, `__align__(16)`, ...), then __shared__ (in a #define's
# body too, where it starts a line or follows ; { or }: each use of the macro gets a guard).
# Elsewhere (just after a #define's name, in a macro's argument, after a label or `case x:`)
# it is left alone: such arrays get no guard between them. In an un-braced body
# (`for (...)` then the declaration on the next line) the guard takes the declaration's line,
# moving its columns.
# the specifiers that may stand between `static` and __shared__, or before it
_SPECIFIER = r"volatile|const|__align__\s*\([^()]*\)|alignas\s*\([^()]*\)"
_STATIC_SHARED = re.compile(
    rf"(?:^|[;{{}}])[ \t]*(?P<decl>(?:(?:static|{_SPECIFIER})\s+)*)__shared__\b", re.M)


def guard_static_shared(source: str) -> str:
    """`source` with `PAL_SGUARD` before each static __shared__ declaration (see above)."""
    text = strip_comments(source)
    matches = list(_STATIC_SHARED.finditer(text))
    source = _without_own_static(source, text)
    starts = sorted({_statement_start(text, m.start("decl")) for m in matches})
    inserts = []
    for at in starts:
        end = _previous_line_end(text, at)
        inserts.append((at, "PAL_SGUARD ") if end is None else (end, " PAL_SGUARD"))
    inserts += [poison for m in matches if (poison := _template_poison(text, m.end())) is not None]
    for at, what in sorted(inserts, reverse=True):
        source = f"{source[:at]}{what}{source[at:]}"
    return source


_PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}
# What opens a template's body: a template's head (after `public:` too), a generic lambda's
# (C++20's `[]<typename T>`), or an `auto` parameter's (a generic lambda's, or C++20's
# abbreviated template), whose operator() or function is a template too. A false match costs
# nothing: the poison leaves an array in the pal_shared section alone.
_TEMPLATE_HEAD = re.compile(
    r"\btemplate\s*<|\[[^\[\]]*\]\s*<\s*(?:typename|class)\b|\([^()]*\bauto\b")


def _head_start(text: str, brace: int) -> int:
    """Where the head of the block whose '{' is text[brace] starts: past the last ';', '{' or
    '}' before it outside parentheses (a default argument's `int{4}` is inside them)."""
    depth = 0
    for i in range(brace - 1, -1, -1):
        c = text[i]
        if c in ")]":
            depth += 1
        elif c in "([":
            depth -= 1
        elif depth <= 0 and c in ";{}":
            return i + 1
    return 0


def _template_poison(text: str, after: int) -> tuple[int, str] | None:
    """Where and what to insert after the declaration whose `__shared__` ends at text[after],
    in a template (shim.h's PAL_SPOISON for each variable it declares: GCC drops the section
    attribute of a template's statics, so the section's poison before each block misses
    them): just past its `;`, where nothing but blanks follows on the line, so that no column
    moves; None outside a template, or where the names cannot be read off with certainty."""
    heads = (re.sub(r"(?m)^[ \t]*#.*$", "", text[_head_start(text, brace):brace])
             for brace in _enclosing_braces(text, after))   # (not a directive's line)
    if not any(_TEMPLATE_HEAD.search(head) for head in heads):
        return None
    parts, depth, start, semi = [], [], after, None
    for i in range(after, len(text)):
        c = text[i]
        if c in _PAIRS and (c != "<" or not depth or depth[-1] == ">"):   # (`[N < 4 ? ..]`)
            depth.append(_PAIRS[c])
        elif depth and c == depth[-1]:
            depth.pop()
        elif not depth and c in ",;":
            parts.append(_ATTRS.sub(" ", text[start:i]))
            start = i + 1
            if c == ";":
                semi = i
                break
    line_end = text.find("\n", semi) if semi is not None else -1
    if semi is None or text[semi + 1:line_end if line_end >= 0 else len(text)].strip():
        return None
    # (the declarator follows a class body's `}`: `union { float a[N]; int b[N]; } u`)
    names = [re.fullmatch(r"[^\[(=]*?\b([A-Za-z_]\w*)\s*(?:\[.*)?",
                          part.rpartition("}")[2].strip(), re.S) for part in parts]
    if not all(names):
        return None
    return semi + 1, "".join(f" PAL_SPOISON({n.group(1)})" for n in names)


# `static` among a __shared__ declaration's specifiers, wherever the declaration stands (after
# a label or `case x:`, in a #define's body), not only where a guard goes.
_OWN_STATIC = re.compile(rf"\bstatic\b(?=(?:\s+(?:{_SPECIFIER}))*\s+__shared__\b)")


def _without_own_static(source: str, text: str) -> str:
    """`source` (`text`: it with comments blanked) with the `static` of `static __shared__`
    blanked out, column for column: nvcc takes it (NVIDIA's own samples write it), and
    shim.h's `__shared__` is already static, so the C++ compiler would read `static static`
    and refuse the declaration."""
    for word in _OWN_STATIC.finditer(text):
        source = f"{source[:word.start()]}{' ' * 6}{source[word.end():]}"
    return source


def _previous_line_end(text: str, at: int) -> int | None:
    """Just past the `;`, `{` or `}` that ends the code of a line before text[at] (blank or
    comment lines between), where a guard moves no column of the declaration's line: the
    compiler's messages and the index check's report (report_checks) read columns off the
    kernel's own lines. None where the declaration shares its line with code before it, or
    what comes before is not a statement's end (a directive, a continued macro line)."""
    end = len(text[:at].rstrip())
    start = text.rfind("\n", 0, end) + 1
    if not end or text[end - 1] not in ";{}" or "\n" not in text[end:at] or \
            text[start:end].lstrip().startswith("#") or text[:start].rstrip().endswith("\\"):
        return None   # (the last line of a #define continued over lines, too)
    return end


def _statement_start(text: str, at: int) -> int:
    """Where the declaration whose `__shared__` specifiers start at text[at] begins: there,
    or, after a class body (`struct Stat { float m, l; } __shared__ st[32];`, where a guard
    between `}` and `__shared__` would end the struct's statement), at its `struct`."""
    close = len(text[:at].rstrip()) - 1
    if close < 0 or text[close] != "}":
        return at
    depth = 0
    for open_ in range(close, -1, -1):
        depth += {"}": 1, "{": -1}.get(text[open_], 0)
        if depth == 0:
            break
    else:
        return at
    head = max(text.rfind(c, 0, open_) for c in ";{}") + 1
    if not re.search(r"\b(?:struct|class|union|enum)\b", text[head:open_]):
        return at
    return head + len(text[head:open_]) - len(text[head:open_].lstrip())


def uses_printf(source: str, options=()) -> bool:
    """Whether the source calls printf, itself or through a macro that names it (`#define
    LOG printf`, or the compile's `options`' `-DLOG=printf`): such a launch runs its blocks
    in order, in one worker (kernel.py)."""
    text = strip_comments(source)
    names = macro_aliases(text, {"printf"}, options=options)
    return re.search(any_word(names) + r"\s*\(", text) is not None


def has_device_variables(source: str) -> bool:
    """True when the source declares global memory a kernel may write: __device__ or
    __managed__ variables, or a function's static one (not __shared__, const or constexpr).
    Each worker process has its own copy, so such a launch runs in one (kernel.py): spread
    over workers, a `__managed__` ticket that picks the last block to finish would count
    per worker, and no block would ever be last."""
    text = strip_comments(source)
    for m in re.finditer(r"\b(__device__|__managed__|static)\b", text):
        rest = re.search(r"[(;={\[]", text[m.end():])
        if rest and rest.group(0) != "(" and not (m.group(1) == "static" and re.search(
                r"\b(__shared__|const|constexpr)\b", text[m.end():m.end() + rest.start()])):
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
# counts and the race check then never see (a one-thread copy would pass the gather kernel's
# store count; under Clang's disable_sanitizer_instrumentation a helper's reads count none,
# and only its writes are caught, after the launch), GCC's no_sanitize_undefined, which
# switches off the index and shift checks (`1u << 32` would give the CPU's 1 where a GPU
# gives 0), and `weakref`, which names a library function (memcpy's symbol, past the
# shim's counted memcpy) without writing its name. A poisoned name cannot be #undef'd,
# pasted together or hidden in a macro of the source. (Inline assembly is refused in the
# compiled code instead, kernel_object.py: the C library's headers use it.)
POISONED = ("no_sanitize", "__no_sanitize__", "no_sanitize_thread", "__no_sanitize_thread__",
            "disable_sanitizer_instrumentation", "__disable_sanitizer_instrumentation__",
            "no_sanitize_undefined", "__no_sanitize_undefined__", "weakref", "__weakref__")


def quoted_filename(filename: str) -> str:
    """`filename` as the translation unit's `#line` quotes it (and -E's line markers)."""
    return filename.replace("\\", "\\\\").replace('"', '\\"')


def _with_entry_points(source: str, kernel_names: list[str]) -> tuple[str, str]:
    """`source` with, just past each kernel's closing brace and on its line (the lines after
    keep their numbers), its entry point: an exported function that unpacks a void*[]
    argument list and calls the kernel. There the kernel's name means the kernel in its own
    namespace (`namespace lab { extern "C" __global__ void k(...) }`, which CuPy finds by its
    plain name, as its symbol is not mangled). And its __launch_bounds__ maximum, evaluated by
    the compiler there (a macro or a constant expression), where it names what the kernel's
    attribute named though the source #undef's the macro later: a GPU refuses a launch of
    more threads per block (kernel.py). A kernel defined in each branch of an #if gets them
    after each definition (the compiler keeps one); one without a definition, at the end (the
    compiler then says what is missing)."""
    tail = ""
    found = []
    for name in kernel_names:
        entry = (f'extern "C" PAL_EXPORT void __pal_entry_{name}(void **a) '
                 f"{{ __pal_invoke({name}, a); }}")
        definitions = kernel_definitions(source, name)
        if not definitions:
            tail += entry + "\n"
        for bound, _, end in definitions:
            bounded = entry if bound is None else (
                f'{entry} extern "C" PAL_EXPORT const long long __pal_max_threads_{name} = '
                f"(long long)({' '.join(bound.split())});")
            found.append((end, bounded))
    for end, entry in sorted(found, reverse=True):
        source = f"{source[:end]} {entry}{source[end:]}"
    return source, tail


def translation_unit(source: str, kernel_names: list[str], filename: str, shim_path: str,
                     options=()) -> str:
    """The C++ file to compile: the shim, then the kernel source at its own line numbers with
    each kernel's exported entry point just past its definition (`_with_entry_points`; after
    the source, for a kernel it does not define). `options`: the compile's, whose `-D`
    macros constant_once follows as the source's own."""
    return _translation_unit(source, tuple(kernel_names), filename, shim_path, tuple(options))


# Remembered: every plan builds its kernels again from the same sources, and the rewriting
# (~40 ms a source) comes before the compile cache's lookup, whose key is this text.
@functools.lru_cache(maxsize=64)
def _translation_unit(source: str, kernel_names: tuple, filename: str, shim_path: str,
                      options: tuple) -> str:
    body, entries = _with_entry_points(source, kernel_names)
    body = guard_static_shared(rewrite_extern_shared(constant_once(body, options)))
    if not body.endswith("\n"):
        body += "\n"
    quoted = quoted_filename(filename)
    return (f'#include "{shim_path}"\n'
            f"#pragma GCC poison {' '.join(POISONED)}\n"
            f'#line 1 "{quoted}"\n'
            f"{body}"
            f'#line 1 "<pagedattn_lab entry points>"\n'
            f"{entries}"
            f"PAL_SGUARD_N(tail)\n")   # GCC lays statics out in reverse: first in the section
