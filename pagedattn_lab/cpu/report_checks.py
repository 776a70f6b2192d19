"""Word the failures of the compiler's checks on kernel code (ubsan.cpp): an index past an
array whose size the compiler knows (a local array, a static `__shared__` array), and a shift
by a negative amount or by at least the value's width; and a write past the static
`__shared__` variables, found after the block (shared_guards.cpp's checks). The worker gives
the line and column, the value, and the array's (or shifted value's) type; the array's name
is read off the source at that column (GCC points it at the subscript's closing bracket,
Clang at the start of the array's name; elsewhere the message leaves the name out)."""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from types import MappingProxyType

from ..cuda_text import strip_comments
from . import abi
from .errors import KernelFault
from .kernel_object import elf_bytes, elf_symbols
from .report import LaunchInfo, fmt3

# the size the index is checked against: the first dimension of the array's type (GCC's
# "float [4][32]", Clang's "float[4][32]"): `s[5][0]` is checked against the 4 rows, where
# the last dimension (32) called 5 valid
_SIZE = re.compile(r"\[(\d+)\]")
_SHARED_DECL = r"\b__shared__\b[^;{{}}()]*\b{name}\s*\["


def _checked(r) -> tuple[str, str, int]:
    """(type name, file of the line, value) of a failed check's result record."""
    type_name, _, file = r.msg.decode(errors="replace").partition("\t")
    value = r.offset - (1 << 64) if r.offset >= 1 << 63 else r.offset
    return type_name.strip("'"), file, value


def _subscript(info: LaunchInfo, file: str, line: int, column: int, dims: int) -> str | None:
    """The indexing expression ending at `column` of `line` (GCC: `acc[i + 1]`, `s[0][j]`), or
    starting there (Clang), when the line is the kernel source's. `dims`: the dimensions of
    the type checked (1 for `s[0][j]` of a float s[4][32], 2 for `s[i]`)."""
    if not info.source or file != info.source[1]:
        return None
    lines = info.source[2].splitlines()
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    # the compiler counts the column in bytes: a character before it may take several (a
    # comment's `é`), and the name is read off the characters
    end = len(text.encode()[:column].decode(errors="ignore")) - 1
    if not (0 <= end < len(text) and text[end] == "]"):
        return _subscript_from(text, end, info.source[2], dims)
    i = end
    while 0 <= i and text[i] == "]":   # back over the subscripts: `[j]`, then `[0]`, ...
        depth = 0
        while i >= 0:
            depth += {"]": 1, "[": -1}.get(text[i], 0)
            i -= 1
            if depth == 0:
                break
        while i >= 0 and text[i].isspace():
            i -= 1
    m = re.search(r"[A-Za-z_][\w.]*(?:->[\w.]+)*\s*$", text[:i + 1])
    return text[m.start():end + 1].strip() if m else None


def _closing(text: str, i: int) -> int:
    """The index of the `]` that closes the `[` at text[i], or -1."""
    depth = 0
    for j in range(i, len(text)):
        depth += {"[": 1, "]": -1}.get(text[j], 0)
        if depth == 0:
            return j
    return -1


def _subscript_from(text: str, start: int, source: str, dims: int) -> str | None:
    """Clang's form: the expression whose name starts at text[start] (`s[0][j]`), with as
    many subscripts as reach the checked dimension: the array has as many dimensions as its
    most subscripted use in the source (its declaration's, `float s[4][32]`, at least)."""
    m = re.compile(r"[A-Za-z_][\w.]*(?:->[\w.]+)*\s*").match(text, max(start, 0))
    if start < 0 or not m or (start and (text[start - 1].isalnum() or text[start - 1] == "_")):
        return None
    name = re.escape(m.group().strip().rsplit(".", 1)[-1].rsplit(">", 1)[-1])
    total = max((len(re.findall(r"\[", u.group(1))) for u in re.finditer(
        rf"\b{name}\s*((?:\[[^\[\]]*\]\s*)+)", strip_comments(source))), default=dims)
    end = m.end() - 1
    for _ in range(max(total - dims + 1, 1)):
        k = end + 1
        while k < len(text) and text[k].isspace():
            k += 1
        if k >= len(text) or text[k] != "[" or (close := _closing(text, k)) < 0:
            break
        end = close
    return text[start:end + 1].strip() if text[end] == "]" else None


def _where(info: LaunchInfo, file: str, line: int) -> str:
    own = not file or (info.source and file == info.source[1])
    return f"line {line}" if own else f"{file}:{line}"   # a header's line names its file


def _array_kind(info: LaunchInfo, expr: str | None) -> str:
    name = re.match(r"[A-Za-z_]\w*", expr or "")
    if name and info.source and re.search(_SHARED_DECL.format(name=re.escape(name.group())),
                                          strip_comments(info.source[2])):
        return "__shared__ array"
    return "array"


def bounds_error(r, info: LaunchInfo) -> KernelFault:
    type_name, file, index = _checked(r)
    # one spelling whatever the compiler: GCC's "float [4][32]" (Clang writes "float[4][32]")
    type_name = re.sub(r"(?<=[^\s\[\]])\[", " [", type_name, count=1)
    m = _SIZE.search(type_name)
    size = int(m.group(1)) if m else None
    expr = _subscript(info, file, r.line, r.op, max(type_name.count("["), 1))
    what = f"{_array_kind(info, expr)} `{expr}`" if expr else "an array"
    at = _where(info, file, r.line)
    rows = "its first index " if type_name.count("[") > 1 else ""
    valid = (f"{rows}valid 0..{size - 1}" if size else "it has no elements" if size == 0 else
             # GCC's "float [*]": `float acc[n];`, a GNU extension, not C++'s (nor CUDA's)
             "a variable-length array, whose size is set at run time: give it a constant one")
    # `s[0][40]` of a float s[4][32]: the check sees the row, the GPU reads the next one
    row = expr is not None and re.search(r"\]\s*\[", expr) is not None
    gpu = ("on a GPU it reaches into another row, or past the array; index a flat array "
           "(`a[row * width + col]`) to cross rows on purpose" if row else
           "on a GPU it overwrites or reads another variable, or faults")
    return KernelFault(
        f"kernel {info.kernel!r}: out-of-bounds index {index} of {what} at {at} "
        f"({type_name}: {valid}){info.where(r)}. The CPU executor stops here; {gpu}.",
        region="local or shared array",
        kernel=info.kernel, block=tuple(r.block), thread=tuple(r.thread), address=None,
        signal=None, access=None, buffer=None, arg_index=None, index=index, size=size,
        array=expr, array_type=type_name, line=r.line)


def _bits(type_name: str) -> int:
    """The width of a shifted value of type `type_name` (GCC's "long long unsigned int",
    Clang's "unsigned long long" or "uint64_t"): 64 for a long (LP64, as on Linux and macOS),
    else 32 (a narrower value is promoted to int before it is shifted)."""
    if "128" in type_name:
        return 128
    return 64 if "long" in type_name or "64" in type_name else 32


def _article(word: str) -> str:
    """"an" before a vowel (an int, an unsigned), else "a"."""
    return "an" if word[:1] in tuple("aeiou") else "a"


def shift_error(r, info: LaunchInfo) -> KernelFault:
    type_name, file, amount = _checked(r)
    return KernelFault(
        f"kernel {info.kernel!r}: a shift by {amount} of {_article(type_name)} {type_name} at "
        f"{_where(info, file, r.line)}"
        f"{info.where(r)}: a shift by a negative amount or by at least the value's width in "
        f"bits, such as 1u << 32, is undefined: the GPU clamps the amount (1u << 32 gives 0), "
        f"the CPU wraps it (1u << 0 gives 1), so the executor stops here.", region="unknown",
        kernel=info.kernel, block=tuple(r.block), thread=tuple(r.thread), address=None,
        signal=None, access=None, buffer=None, arg_index=None, index=None, size=None,
        shift=amount, bits=_bits(type_name), line=r.line)


def _library_symbols(info: LaunchInfo) -> Mapping[str, tuple[int, int]]:
    """name (as the symbol table spells it) -> (address, size) of what the kernel's library
    defines; empty where it is not an ELF file or cannot be read (the report then says less,
    never something wrong)."""
    try:
        return _symbols_at(info.source[0]) if info.source else {}
    except OSError:
        return {}


@functools.lru_cache(maxsize=32)
def _symbols_at(path: str) -> Mapping[str, tuple[int, int]]:
    """_library_symbols' table of the library at `path`, read once: a guard's report looks
    in it for the shared section's bounds and for the read-only variables."""
    data = elf_bytes(path)
    return MappingProxyType({s.name: (s.value, s.size) for s in elf_symbols(data) if s.section}
                            if data else {})


def _shared_symbols(info: LaunchInfo) -> list[tuple[int, int, str]]:
    """(start, size, name) of the kernel library's static `__shared__` variables, as far as
    the symbol table tells (none without `nm`, or without the pal_shared section: the data
    symbols around would be the runtime's, such as gridDim)."""
    from .race import data_symbols  # noqa: PLC0415 - rare: a failed guard
    # where the section of the static __shared__ variables starts and stops (the linker's)
    section = _library_symbols(info)
    if "__start_pal_shared" not in section:
        return []
    first = section["__start_pal_shared"][0]
    stop = section.get("__stop_pal_shared", (1 << 64, 0))[0]
    return [(start, size, sym.rsplit("::", 1)[-1])
            for start, size, sym in data_symbols(info.source[0]) if first <= start < stop]


def _shared_variable_before(symbols: list, offset: int) -> tuple[str, int, int] | None:
    """(name, size, bytes from its end to `offset`) of the static `__shared__` variable of
    `symbols` (_shared_symbols') that ends nearest before `offset` (library-relative), or None."""
    ends = [v for v in symbols if v[0] + v[1] <= offset]
    best = max(ends, key=lambda v: v[0] + v[1], default=None)
    return (best[2], best[1], offset - sum(best[:2])) if best else None


def _shared_variable_after(symbols: list, offset: int) -> tuple[str, int] | None:
    """(name, bytes from `offset` to its start) of the static `__shared__` variable of
    `symbols` that starts nearest after `offset` (library-relative), or None."""
    best = min((v for v in symbols if v[0] > offset), default=None)
    return (best[2], best[0] - offset) if best else None


# The runtime's variables that kernel code reads but may not write (shared_guards.cpp compares
# them after each block): read-only built-ins on a GPU, where NVRTC refuses an assignment to them.
_READ_ONLY = {"gridDim": "`gridDim`", "blockDim": "`blockDim`",
              "__pal_dyn_smem": "the address of `extern __shared__` memory"}


def _read_only_changed(info: LaunchInfo, offset: int) -> str:
    """The message's words for a changed read-only variable at `offset` (library-relative),
    which only a stray write reaches (an assignment to gridDim or blockDim does not compile,
    as under NVRTC); "" where no such variable lies there (a guard's, or the guards' table)."""
    defined = _library_symbols(info)
    for name, words in _READ_ONLY.items():
        start, size = defined.get(name, (0, 0))
        if start <= offset < start + size:
            return (f" It changed {words}, which kernel code can only read: a write "
                    f"through a pointer past static __shared__ memory landed there.")
    return ""


def dyn_guard_error(r, info: LaunchInfo) -> KernelFault:
    """A write just before dynamic shared memory's start (runtime.cpp's guard of poison
    there), found after the block: which thread wrote it is not known."""
    block, off = tuple(r.block), r.region_thread
    return KernelFault(
        f"kernel {info.kernel!r}: out-of-bounds write of dynamic shared memory (extern "
        f"__shared__) at byte offset {off}, before its start, by a thread of block "
        f"{fmt3(block)} (found after the block, so the thread is not known; the results were "
        f"discarded). Check an index such as `i - 1` at i = 0.", region="dynamic shared memory",
        kernel=info.kernel, block=block, thread=None, address=r.addr, signal=None,
        access="write", buffer=None, arg_index=None, index=off, size=info.shared_mem)


def shared_guard_error(r, info: LaunchInfo) -> KernelFault:
    """A write into the poisoned guard after a static `__shared__` array (shim.h's between
    them, runtime.cpp's pal_shared_guard after the last) or before one (`p[-1]`: the guard
    that precedes it, shim.h's or source.py's before the first), found after the block: it
    went through a pointer, which the index check (bounds_error) does not see. A changed byte
    nearer the next array's start than the previous one's end is taken as before the next."""
    block = tuple(r.block)
    symbols = _shared_symbols(info)   # one symbol read for both look-ups
    last = _shared_variable_before(symbols, int(r.offset))
    after = _shared_variable_after(symbols, int(r.offset))
    if after and (last is None or after[1] <= last[2]):
        where, variable, offset = (f": byte {after[1]} before the start of `{after[0]}`",
                                   after[0], -after[1])
        what = "before the start of"
    else:
        where = f": byte {last[2]} past the end of `{last[0]}` ({last[1]} bytes)" if last else ""
        variable, offset = (last[0], sum(last[1:])) if last else (None, None)
        what = "past"
    return KernelFault(
        f"kernel {info.kernel!r}: out-of-bounds write {what} a static __shared__ "
        f"array{where}, by a thread of block {fmt3(block)} (found after the block, so the "
        f"thread is not known; the results were discarded). It went through a pointer "
        f"(`float *p = tile; p[i] = x`): an index on the array itself is checked where it "
        f"happens. On a GPU it overwrites other shared data or faults (compute-sanitizer "
        f"reports it).{_read_only_changed(info, int(r.offset))}", region="static shared memory",
        kernel=info.kernel, block=block, thread=None, address=r.addr, signal=None,
        access="write", buffer=None, arg_index=None, index=None, size=None,
        variable=variable, offset=offset)


def _accessed(info: LaunchInfo, file: str, line: int, column: int) -> tuple[str | None, str]:
    """(the indexing expression GCC's object-size check points at, or None; the line's code).
    GCC points a load or store of `acc[k] += x` at the subscript's `]`, a store `p[i] = x`
    at its `=`, a load `float v = p[i];` at the declared name: the expression is read where
    it can be, and the line is quoted whole."""
    if not info.source or file != info.source[1]:
        return None, ""
    lines = info.source[2].splitlines()
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    at = len(text.encode()[:column].decode(errors="ignore")) - 1
    # just past the expression's last `]`: at it, or (a store) before the `=` there
    stop = at + 1 if 0 <= at < len(text) and text[at] == "]" else \
        len(text[:at].rstrip()) if 0 <= at < len(text) and text[at] == "=" else 0
    expr = _subscript(info, file, line, len(text[:stop].encode()), 1) \
        if stop > 0 and text[stop - 1] == "]" else None
    if expr is None:   # a load: the line's one indexing expression, if it has one
        opens = [m.end() - 1 for m in re.finditer(r"[A-Za-z_]\w*\s*\[", text)
                 if not text[:m.start()].rstrip().endswith("]")]
        close = _closing(text, opens[0]) if len(opens) == 1 else -1
        expr = _subscript(info, file, line, len(text[:close + 1].encode()), 1) \
            if close > 0 else None
    return expr, " ".join(text.split())


def pointer_error(r, info: LaunchInfo) -> KernelFault:
    """An access through a pointer past a local or static `__shared__` array (GCC's
    object-size check, ubsan.cpp): the thread stops there; the array a static `__shared__`
    pointer ran past is named from the symbol table (a local one has no symbol)."""
    type_name, file, offset = _checked(r)
    expr, code = _accessed(info, file, r.line, r.op)
    shared = r.region == abi.REGION_STATIC_SHARED
    last = _shared_variable_before(_shared_symbols(info), offset) if shared else None
    access = {1: "write", 0: "read"}.get(r.is_write, "access")
    what = (f"static __shared__ array `{last[0]}` ({last[1]} bytes; byte {last[2]} past its "
            f"end)" if last else "a static __shared__ array" if shared else
            "a local array" if r.region == abi.REGION_STACK else "an array")
    through = f"`{expr}`" if expr else "a pointer"
    return KernelFault(
        f"kernel {info.kernel!r}: out-of-bounds {access} of {_article(type_name)} {type_name} "
        f"through {through} past the end of {what} at {_where(info, file, r.line)}"
        f"{f' (`{code}`)' if code and code != expr else ''}{info.where(r)}. The CPU executor "
        f"stops here; on a GPU it {'overwrites' if r.is_write == 1 else 'reads'} another "
        f"variable, or faults. A pointer into an array must stay inside it: check the "
        f"index or offset added to it.",
        region="static shared memory" if shared else "local or shared array",
        kernel=info.kernel, block=tuple(r.block), thread=tuple(r.thread), address=r.addr,
        signal=None, access=access if access != "access" else None, buffer=None,
        arg_index=None, index=None, size=None, array=expr or (last[0] if last else None),
        line=r.line, variable=last[0] if last else None,
        offset=sum(last[1:]) if last else None)
