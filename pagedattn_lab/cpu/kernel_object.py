"""Refuse a kernel object that would run code when its library is loaded, or that reaches
past the shim into the executor's own runtime.

The kernel library is loaded (dlopen) into the launching process, outside the forked
workers and their sandbox (wrap.cpp, sandbox.cpp): a constructor, a global object with a
constructor or destructor, an ifunc resolver or code in an .init/.fini section would run
there, with everything that process may do. Under the grader's kernel host such code
replaced the kernel runner's Python and passed an empty kernel. NVRTC kernels have none of
these, so the kernel's own object (compiled apart from the runtime) must carry none.

The kernel is linked with the runtime into one library, so it could also name the runtime's
hidden internals (`pal::S`, whose `instr` tells a counted launch from the checked one;
`pal_*`) or `__real_fork`, `__real_setsid`..., which the linker's --wrap maps to the
functions wrap.cpp forbids (a process that outlived its launch). The shim's interface is
`__pal_*` and the built-in variables; a kernel object may name nothing else of the runtime.

ELF only (Linux, where the grader runs); another format is not inspected. The symbol-table
reader these checks use (`elf_symbols`) is the executor's one: device_data.py finds the
kernel's variables with it, report_checks.py the shared section's bounds.

Nor may the kernel carry inline assembly (asm(...), also top-level or behind a macro): on
the CPU it is host code that nothing above sees (a raw system call past the wrapped
functions; an assembler `.include` of any file of the machine, whose lines came back in
the compile error). The course's kernels keep their PTX under #ifndef __PAGEDATTN_LAB_CPU__,
and PTX cannot run on the CPU anyway. The compiler marks every inline-assembly block in its
assembly output (#APP ... #NO_APP), which is checked before it is assembled; the C library
headers' own asm labels (symbol names) are no such block.
"""
from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from typing import NamedTuple

from .errors import KernelCompileError

__all__ = ["load_time_code", "runtime_internals", "refuse_load_time_code",
           "inline_assembly", "count_library_copies", "Symbol", "elf_symbols"]

# Sections the dynamic loader runs (or whose entries it calls), by name and by type: the
# linker merges .init_array.N / .ctors.N into .init_array, and a section's type can be set
# apart from its name.
_NAMES = (".init", ".fini", ".ctors", ".dtors", ".preinit_array")
_TYPES = {14: "INIT_ARRAY", 15: "FINI_ARRAY", 16: "PREINIT_ARRAY"}
_SHT_SYMTAB, _STT_GNU_IFUNC = 2, 10
_INTERNAL = ("pal_", "_ZN3pal", "_ZNK3pal", "__real_", "__wrap_")


def string_at(data: bytes, at: int) -> str:
    return data[at:data.index(b"\0", at)].decode("latin-1")


def section_headers(data: bytes) -> tuple[list[tuple], int]:
    """The raw headers (name offset, type, flags, address, offset, size, link, info,
    alignment, entsize) of every section of an ELF64 little-endian file, in index order,
    and the offset of the section names' table."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    first = struct.unpack_from("<IIQQQQIIQQ", data, shoff) if shoff else None
    # Extended numbering (65,280 sections or more: many templates' COMDAT groups): the
    # count is then section 0's size, the names' index its link.
    shnum = shnum or (first[5] if first else 0)
    shstrndx = first[6] if shstrndx == 0xFFFF and first else shstrndx
    heads = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    return heads, heads[shstrndx][4] if heads else 0


def _sections(data: bytes):
    """(name, type, offset, size, entsize, link's offset) of every section of an ELF64
    little-endian file."""
    heads, names_at = section_headers(data)
    shnum = len(heads)
    for h in heads:
        link = heads[h[6]][4] if h[6] < shnum else 0
        yield string_at(data, names_at + h[0]), h[1], h[4], h[5], h[9], link


def elf_bytes(path: str) -> bytes | None:
    with open(path, "rb") as fh:
        data = fh.read()
    return data if data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1 else None


class Symbol(NamedTuple):
    """One entry of an ELF symbol table. `kind` is its type (STT_*: 1 object, 4 file, 10
    ifunc), `binding` 0 for a local, `section` its section's index (0: undefined); `entry`
    is where the entry lies in the file and `names` where its string table starts (what
    renaming it in place needs)."""
    name: str
    kind: int
    binding: int
    section: int
    value: int
    size: int
    entry: int
    names: int


def elf_symbols(data: bytes) -> Iterator[Symbol]:
    """Every entry of the symbol tables (.symtab) of an ELF64 little-endian file, in the
    table's order (a local's STT_FILE entry goes before that file's locals), but each table's
    first, the null symbol, which names nothing."""
    for _, typ, offset, size, entsize, names in _sections(data):
        if typ != _SHT_SYMTAB:
            continue
        for at in range(offset + (entsize or 24), offset + size, entsize or 24):
            name_at, info, _other, section, value, length = struct.unpack_from(
                "<IBBHQQ", data, at)
            yield Symbol(string_at(data, names + name_at), info & 0xF, info >> 4, section,
                         value, length, at, names)


def _symbol_names(path: str, defined: bool) -> list[str]:
    """The global names the object at `path` defines, or refers to and does not define
    (empty: not ELF)."""
    data = elf_bytes(path)
    return [s.name for s in (elf_symbols(data) if data else ())
            if s.name and (s.section != 0) == defined and (not defined or s.binding)]


def undefined_symbols(path: str) -> list[str]:
    """The names the object at `path` refers to and does not define (empty: not ELF)."""
    return _symbol_names(path, defined=False)


def defined_symbols(path: str) -> list[str]:
    """The global (or weak) names the object at `path` defines (empty: not ELF)."""
    return _symbol_names(path, defined=True)


def runtime_internals(path: str) -> list[str]:
    """The runtime internals (or --wrap escapes) that the object at `path` refers to."""
    return [name for name in undefined_symbols(path) if name.startswith(_INTERNAL)]


def load_time_code(path: str, instrumented: bool) -> list[str]:
    """What in the object at `path` would run at load time (empty: nothing). An instrumented
    object (-fsanitize=thread) has one constructor of the compiler's own, which calls the
    runtime's no-op __tsan_init: one pointer in its init sections is allowed there."""
    data = elf_bytes(path)
    if data is None:
        return []
    found, init_bytes = [], 0
    for name, typ, _, size, _, _ in _sections(data):
        if (name.startswith(_NAMES) or typ in _TYPES) and size and not name.startswith(".rela"):
            if name.startswith(".init_array") and typ == 14:
                init_bytes += size
            else:
                found.append(f"a {name} section")
    found += ["an ifunc symbol (its resolver runs at load)"
              for s in elf_symbols(data) if s.kind == _STT_GNU_IFUNC]
    if init_bytes > (8 if instrumented else 0):
        found.append("a constructor (__attribute__((constructor)), or a global whose "
                     "initializer is computed at run time)")
    return found


def refuse_load_time_code(path: str, instrumented: bool, *, kernel: str, filename: str) -> None:
    """Raise KernelCompileError when `load_time_code` or `runtime_internals` finds anything."""
    internals = runtime_internals(path)
    if internals:
        raise KernelCompileError.refused(
            kernel, filename, f"refers to the CPU executor's own runtime "
            f"({', '.join(sorted(set(internals))[:5])}), which a kernel may not touch",
            "a kernel uses only the CUDA built-ins (threadIdx, __syncthreads(), ...); remove "
            "the declaration of the executor's internals")
    found = load_time_code(path, instrumented)
    if found:
        what = "; ".join(dict.fromkeys(found))
        raise KernelCompileError.refused(
            kernel, filename, f"runs code when its library is loaded ({what}): the CPU "
            f"executor loads the library into the launching process, outside the launch's "
            f"sandbox, so it refuses such code",
            "a CUDA kernel needs no constructor, global object or load-time code: compute "
            "values inside the kernel, or give a global a constant initializer")


# GCC's and Clang's marker of an inline-assembly block ("#APP"; "//APP", "@APP", ";APP" where
# the assembler's comment character differs)
_APP = re.compile(r"^\s*(#|//|@|;)\s*APP\s*$", re.M)


def inline_assembly(asm_path: str) -> bool:
    """Whether the compiler's assembly output at `asm_path` holds inline assembly."""
    with open(asm_path, errors="replace") as fh:
        return _APP.search(fh.read()) is not None


_COPIES = ("memcpy", "memmove", "memset")


def count_library_copies(path: str) -> None:
    """In an instrumented object: make the references to memcpy, memmove and memset refer to
    the hooks that count them (__tsan_memcpy...; the shim puts those names in the object):
    the compiler's own calls (a large local copied or zeroed) and one named by an asm label
    (`void *c(void *, const void *, size_t) __asm__("memcpy")`), which read the kernel's
    arrays where the counts did not see it. The symbol's name is pointed at the hook's name,
    in place."""
    data = elf_bytes(path)
    if data is None:
        return
    sizes = {offset: size for _, _, offset, size, _, _ in _sections(data)}
    copies = [s for s in elf_symbols(data) if s.name in _COPIES and s.section == 0]
    data = bytearray(data)
    for s in copies:
        hook = data.find(b"\0__tsan_" + s.name.encode() + b"\0", s.names,
                         s.names + sizes.get(s.names, 0))
        if hook >= 0:   # (else it stays, and library_calls.py refuses it)
            struct.pack_into("<I", data, s.entry, hook + 1 - s.names)
    with open(path, "wb") as fh:
        fh.write(data)
