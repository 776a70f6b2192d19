"""The kernel's own writable data: `__device__` variables and namespace-scope or function
`static` ones, found in the kernel library's symbol table, so that a counted launch counts
their loads and stores (instrument.cpp) as global memory, which they are on a GPU, and a
launch of a kernel that has one runs in one worker process (each would have its own copy).

Without this, such memory would be counted nowhere (the counts know the array arguments
and shared memory only): a warp sum that stages its values in a `__device__ float
scratch[]` would pass the budget of one global read per thread.

The library links the kernel's object with the runtime's, so its writable sections hold
both. The kernel's are the data symbols of the kernel's own file (`kernel.cpp`, the
translation unit compiler.py writes) and the hidden or global ones that the runtime's
objects (the built-in variables, `pal::S`, ...) and the C runtime's do not define; the
shim's own state (cp.async queues, the mma lanes' fragments: names with `__pal`) is counted
nowhere, though kernel code may write it, and so is a global of the kernel's whose symbol
readable() does not read (a class template's static member, a reserved name as `_Scratch`),
which it may write too: an instrumented launch (counted or race-checked) refuses a store
outside the kernel's arrays, shared memory, variables, that state and its own stack
(instrument.cpp), where these are known (variables_known: the library's symbol table was
read and the anchor found in it). ELF only (Linux); another format, or a library without
its symbol table, counts none and refuses no such store.

A template function's `__shared__` array is such a variable too under GCC, which drops its
section attribute (cpu/README.md, "Known gap"): a function's static whose name a `__shared__`
declaration of the source declares is counted as shared memory instead.
"""
from __future__ import annotations

import ctypes as C
import re
from functools import lru_cache

from ..cuda_text import any_word, macro_aliases, strip_comments
from .artifacts import loadable_path
from .kernel_object import defined_symbols, elf_bytes, elf_symbols, section_headers, string_at

__all__ = ["kernel_variables", "variable_ranges", "holds_writable_globals", "shim_state_ranges",
           "unnamed_globals", "variables_known"]

_TU = "kernel.cpp"
_SHF_WRITE, _SHF_ALLOC, _SHF_TLS = 0x1, 0x2, 0x400
_PROGBITS, _NOBITS = 1, 8
_STT_OBJECT, _STT_FILE = 1, 4
# Writable sections that hold no variable of the kernel's (relocated at load, read-only
# after it: -z relro; the shared-memory sections, which the counts know apart)
_NOT_DATA = {".got", ".got.plt", ".data.rel.ro", "pal_shared", "pal_sguards"}
_C_RUNTIME = {"__dso_handle", "__TMC_END__"}   # crtbeginS.o's (and DW.ref.* of any object)
_ANCHOR = "pal_launch_begin"   # an exported function: where the library was loaded


@lru_cache(maxsize=1)
def _runtime_names() -> frozenset[str]:
    """The global names the runtime's objects define (the same with every compiler): a
    kernel's global of such a name would not link."""
    from . import compiler as c   # noqa: PLC0415 - compiler.py imports kernel_object.py
    cmd, ident, _ = c.compiler()
    return frozenset(name for obj in c.runtime_objects(cmd, ident, c._fiber_mode())
                     for name in defined_symbols(obj))


def _runtimes(name: str) -> bool:
    return name in _C_RUNTIME or name.startswith("DW.ref.") or name in _runtime_names()


def readable(name: str) -> str:
    """A C++ symbol's name as written (`_ZL7scratch` -> scratch, `_ZN3lab5tableE` ->
    lab::table, a function's static `_ZZ1kPfE5count` -> count); else the name itself."""
    m = re.fullmatch(r"_Z(?:Z.*E)?L?(N?)((?:[LK]?\d+\w+?)+)E?", name)
    if not m:
        return name
    parts, rest = [], m.group(2)
    while rest:
        step = re.match(r"[LK]?(\d+)", rest)
        if not step:
            return name
        n = int(step.group(1))
        parts.append(rest[step.end():step.end() + n])
        rest = rest[step.end() + n:]
    return "::".join("(anonymous namespace)" if p == "_GLOBAL__N_1" else p for p in parts)


_RESERVED = re.compile(r"(?:^|::)(?:__|_[A-Z])")
# The C++ library's namespaces (std's substitutions St, Ss, Sa, Sb, Si, So, Sd; the ABI's and
# GNU's), some of which a toolchain may link into the library: their globals are not the
# kernel's, and one worker per launch for them would only slow every launch down.
_CXX_LIBRARY = re.compile(r"_Z(?:GVZ?|TH|TW)?N?K?(?:S[tsabiod]|9__gnu_cxx|10__cxxabiv1)")


def _kernel_could_name(name: str) -> bool:
    """Whether kernel code could have defined a global of this symbol: a plain name or one
    readable() reads, with no reserved part (`__x`, `_X`) and not std's. Some toolchains link
    parts of libstdc++ into the library (the H200 machine's put `__cxxabiv1::
    __terminate_handler` and std::string's `_ZNSs4_Rep20_S_empty_rep_storageE` there), which
    the runtime's objects do not define either."""
    shown = readable(name)
    if shown == name and name.startswith("_Z"):
        return False   # a mangling readable() does not read: no kernel variable's
    return not _RESERVED.search(shown) and not shown.startswith("std::")


def _from_cxx_library(name: str) -> bool:
    """Whether the symbol is the C++ library's (std, __gnu_cxx, __cxxabiv1), which some
    toolchains link into the library: not kernel code's, so no reason for one worker."""
    return bool(_CXX_LIBRARY.match(name)) or readable(name).startswith("std::")


@lru_cache(maxsize=64)
def _writable_symbols(path: str):
    """(the kernel's variables, as kernel_variables gives them; the build's other writable
    state, counted nowhere: (address, size) of the kernel's globals that readable() cannot
    name (C++ library ones among them), and of the shim's variables (`__pal` in the name); the
    library address of `_ANCHOR` or None) of the library at `path`."""
    data = elf_bytes(path)
    if data is None:
        return (), (), (), None
    heads, names_at = section_headers(data)
    writable = {i for i, h in enumerate(heads)
                if h[1] in (_PROGBITS, _NOBITS) and h[2] & (_SHF_WRITE | _SHF_ALLOC) ==
                (_SHF_WRITE | _SHF_ALLOC) and not h[2] & _SHF_TLS
                and string_at(data, names_at + h[0]) not in _NOT_DATA}
    found, unnamed, shim, anchor, where = [], [], [], None, ""
    for s in elf_symbols(data):
        if s.kind == _STT_FILE:
            where = s.name
        elif s.name == _ANCHOR:
            anchor = s.value
        if not (s.kind == _STT_OBJECT and s.size and s.section in writable):
            continue
        local = bool(where) and s.binding == 0
        runtimes = where != _TU if local else _runtimes(s.name)
        if runtimes:
            continue   # another file's local, or a name the runtime's objects define
        if "__pal" in s.name:   # the shim's state: its build writes it, uncounted
            shim.append((s.value, s.size))
        elif local or _kernel_could_name(s.name):
            found.append((readable(s.name), s.value, s.size, s.name.startswith("_ZZ")))
        else:   # a global readable() cannot name (a class template's static member,
            # `_Scratch`; the C++ library's): the kernel's build writes it, uncounted
            unnamed.append((s.name, s.value, s.size))
    return (tuple(sorted(found, key=lambda v: v[1])), tuple(sorted(unnamed, key=lambda v: v[1])),
            tuple(sorted(shim)), anchor)


def kernel_variables(path: str) -> tuple[tuple[tuple[str, int, int, bool], ...], int | None]:
    """((name as written, address in the library, size, a function's static?), ...) of the
    kernel's writable variables in the library at `path`, and the library address of
    `_ANCHOR` (None: not an ELF library, or no symbol table)."""
    found, _unnamed, _shim, anchor = _writable_symbols(path)
    return found, anchor


def variables_known(path: str) -> bool:
    """Whether the writable variables of the library built at `path` are known (its symbol
    table read, `_ANCHOR` found in it): only then may an instrumented launch refuse a store
    outside them as a wild write (pal_config.vars_known); else kernel_variables and
    shim_state_ranges give none, and every store to a `__device__` variable, a cp.async
    queue or the mma lanes' state would be refused."""
    return _writable_symbols(loadable_path(path))[3] is not None


def holds_writable_globals(path: str, source: str) -> bool:
    """Whether the library at `path`, built from `source`, holds a writable variable of the
    kernel's: a `__device__`, `__managed__` or `static` one wherever it was declared (a
    header the source includes, a macro or `-D` option that stands for `__device__`, after
    `__align__(16)`), which the source check (source.has_device_variables) can miss, one
    that readable() cannot name (`_Scratch`, a class template's static member) among them.
    Each worker process has its own copy of one, so such a launch runs in one (kernel.py).
    Not one of them: a template function's `__shared__` array (GCC), per block; the shim's
    state (`__pal`: the cp.async queues, the mma lanes' published fragments, the template
    poison's serials), which holds what one block's threads pass each other and is
    restarted by each block (its serial), so a copy per worker is what it needs; the C++
    library's globals."""
    path = loadable_path(path)
    found, _ = kernel_variables(path)
    if any(not local for _, _, _, local in found) or unnamed_globals(path):
        return True
    # (the source is read only where a function's static might be a template's __shared__
    # array)
    return bool(found) and not {name for name, _, _, _ in found} <= shared_names(source)


def unnamed_globals(path: str) -> list[str]:
    """The symbols of the kernel's writable globals that readable() cannot name (`_Scratch`,
    `_ZN4KeepILi1EE1vE`: a class template's static member) in the library at `path`: the
    build's writable globals that are neither the runtime's, the shim's nor the C++
    library's."""
    return [name for name, _, _ in _writable_symbols(path)[1] if not _from_cxx_library(name)]


@lru_cache(maxsize=64)
def shared_names(source: str) -> frozenset[str]:
    """Every identifier of the source's `__shared__` declarations, the keyword spelled
    directly or through a macro that stands for it alone (`#define SMEM __shared__`): a
    superset of the names they declare (a function's static of another name is never
    taken for one). Read once per source: every instrumented launch asks (variable_ranges)."""
    text = strip_comments(source)
    keyword = any_word(macro_aliases(text, {"__shared__"}, whole=True), capture=False)
    return frozenset(word for m in re.finditer(keyword + r"([^;{}]*)", text)
                     for word in re.findall(r"[A-Za-z_]\w*", m.group(1)))


def variable_ranges(lib, path: str, source: str) -> list[tuple[str, int, int, bool]]:
    """(name, lo, hi, shared) of the kernel's writable variables in the loaded library `lib`,
    built at `path` (read where it was loaded from: the sealed copy where the cache is not
    trusted) from `source`; `shared`: a template function's `__shared__` array."""
    found, anchor = kernel_variables(loadable_path(path))
    if not found or anchor is None:
        return []
    base = C.cast(getattr(lib, _ANCHOR), C.c_void_p).value - anchor
    shared = shared_names(source)
    return [(name, base + value, base + value + size, local and name in shared)
            for name, value, size, local in found]


def shim_state_ranges(lib, path: str) -> list[tuple[int, int]]:
    """(lo, hi) of the writable state of the kernel's build that is counted nowhere, in the
    loaded library `lib` (see variable_ranges): the shim's (the cp.async queues, the mma
    lanes' fragments, the template poison's serials) and the kernel's globals that readable()
    cannot name. A counted launch lets kernel code write there, uncounted (instrument.cpp)."""
    _found, unnamed, shim, anchor = _writable_symbols(loadable_path(path))
    if anchor is None:
        return []
    base = C.cast(getattr(lib, _ANCHOR), C.c_void_p).value - anchor
    where = sorted([(value, size) for _name, value, size in unnamed] + list(shim))
    return [(base + value, base + value + size) for value, size in where]
