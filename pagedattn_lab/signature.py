"""A kernel's parameter list, read from its CUDA C source, and the launch-argument check.

CuPy's RawKernel passes whatever it is given: a float64 array to a `float*` parameter, or a
Python int (as a 64-bit value) to an `int` parameter, and the kernel silently computes
garbage. `check_launch_args` refuses such calls before anything runs, on the GPU and on the
CPU executor alike, naming the kernel, the argument, what was expected and what came.
"""
from __future__ import annotations

import functools
import re
from typing import NamedTuple

import numpy as np

from .backend import check_contiguous
from .cuda_text import collect_defines, strip_comments

__all__ = ["Param", "parse_kernel_signature", "find_kernels", "kernel_declarations",
           "kernel_definitions", "check_launch_args", "strip_comments", "collect_defines",
           "as_passed"]


class Param(NamedTuple):
    """One kernel parameter. `dtype` is the pointee dtype for a pointer, the value dtype for
    a scalar, or None when any dtype is accepted (`void*`, `char*`, unknown types)."""
    name: str
    ctype: str           # as written, normalized: "const float*", "int", "__half*"
    is_pointer: bool
    dtype: np.dtype | None
    is_const: bool       # the pointee (pointer) or the value (scalar) is const
    index: int = 0
    base: str = ""       # the base type after resolving typedefs: "float", "unsigned int"
    pointer_depth: int = 0
    itemsize: int | None = None   # sizeof the base type when known


_D = np.dtype
_SCALARS = {
    "float": _D("float32"), "double": _D("float64"), "__half": _D("float16"), "half": _D("float16"),
    "int": _D("int32"), "int32_t": _D("int32"), "unsigned int": _D("uint32"),
    "uint32_t": _D("uint32"),
    "short": _D("int16"), "int16_t": _D("int16"), "unsigned short": _D("uint16"),
    "uint16_t": _D("uint16"), "long long": _D("int64"), "int64_t": _D("int64"), "long": _D("int64"),
    "ptrdiff_t": _D("int64"), "unsigned long long": _D("uint64"), "uint64_t": _D("uint64"),
    "size_t": _D("uint64"), "unsigned long": _D("uint64"), "signed char": _D("int8"),
    "int8_t": _D("int8"), "uint8_t": _D("uint8"), "unsigned char": _D("uint8"), "char": _D("int8"),
    "bool": _D("bool"),
}
# Types NumPy lacks: arrays from ml_dtypes, or their bits in an unsigned array (CuPy has no
# bfloat16 or fp8 dtype, so the GPU takes uint16 / uint8 arrays for them). ml_dtypes is
# imported only for a kernel that has such a parameter (it makes the process bigger, and
# every checked launch forks it).
_EXTRA = {
    "__nv_bfloat16": ("bfloat16", _D("uint16")), "nv_bfloat16": ("bfloat16", _D("uint16")),
    "__nv_fp8_e4m3": ("float8_e4m3fn", _D("uint8")), "__nv_fp8_e5m2": ("float8_e5m2", _D("uint8")),
}
_ALSO: dict[str, tuple] = {}   # base type -> further dtypes it accepts (filled by _extra)


def _extra(name: str) -> np.dtype:
    """The dtype of a bfloat16/fp8 type: ml_dtypes' when it imports, else the bits' dtype."""
    ml_name, bits = _EXTRA[name]
    try:
        import ml_dtypes  # noqa: PLC0415 - see above
    except ImportError:
        return bits
    _ALSO[name] = (bits,)
    return _D(getattr(ml_dtypes, ml_name))


# Vector types: a pointer to them takes an array of their element type.
_VECTORS = {"float": "float", "double": "double", "int": "int", "uint": "unsigned int",
            "short": "short", "ushort": "unsigned short", "char": "signed char",
            "uchar": "unsigned char", "longlong": "long long", "ulonglong": "unsigned long long"}
_VECTOR_TYPES = {f"{v}{n}": (_VECTORS[v], n) for v in _VECTORS for n in (1, 2, 3, 4)}
_VECTOR_TYPES.update({"__half2": ("__half", 2), "half2": ("__half", 2),
                      "__nv_bfloat162": ("__nv_bfloat16", 2), "nv_bfloat162": ("__nv_bfloat16", 2)})
_ANY_POINTEE = {"void", "char", "unsigned char"}
_NORMALIZE = {
    "unsigned": "unsigned int", "signed": "int", "signed int": "int", "short int": "short",
    "signed short": "short", "signed short int": "short", "unsigned short int": "unsigned short",
    "long int": "long", "signed long": "long", "signed long int": "long",
    "unsigned long int": "unsigned long", "long long int": "long long",
    "signed long long": "long long", "signed long long int": "long long",
    "unsigned long long int": "unsigned long long",
}
_QUALIFIERS = {"__restrict__", "__restrict", "restrict", "volatile", "__grid_constant__",
               "register", "struct", "class", "typename"}
_ATTR_CALLS = {"__launch_bounds__", "__attribute__", "__declspec", "alignas", "__align__",
               "__maxnreg__", "__cluster_dims__", "__launch_bounds"}


def _skip_group(text: str, i: int, pair: str = "()") -> int:
    """Index just past the group starting at text[i] == pair[0] (parenthesized by default)."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == pair[0]:
            depth += 1
        elif text[j] == pair[1]:
            depth -= 1
            if depth == 0:
                return j + 1
    return len(text)


_TOKEN = re.compile(r"[A-Za-z_]\w*|\(|;|\{|\S")


def _is_template(text: str, pos: int) -> bool:
    """Whether the declaration containing text[pos] starts with `template`."""
    start = max(text.rfind(";", 0, pos), text.rfind("}", 0, pos), text.rfind("{", 0, pos))
    return re.search(r"\btemplate\b", text[start + 1:pos]) is not None


@functools.lru_cache(maxsize=128)
def _kernel_heads(text: str, include_templates: bool = True) -> tuple:
    """(name, index of its '(', its __launch_bounds__'s first argument or None) for every
    __global__ function in comment-free text (remembered: every plan's kernels read the same
    sources again)."""
    return tuple(_scan_kernel_heads(text, include_templates))


def _scan_kernel_heads(text: str, include_templates: bool):
    for m in re.finditer(r"\b__global__\b", text):
        if not include_templates and _is_template(text, m.start()):
            continue
        pos = m.end()
        last_ident = bounds = None
        while pos < len(text):
            t = _TOKEN.search(text, pos)
            if t is None:
                break
            tok = t.group(0)
            if tok == "(":
                if last_ident in _ATTR_CALLS:
                    pos = _skip_group(text, t.start())
                    if last_ident in ("__launch_bounds__", "__launch_bounds"):
                        bounds = _split_params(text[t.start() + 1:pos - 1])[0].strip() or None
                    last_ident = None
                    continue
                if last_ident:
                    yield last_ident, t.start(), bounds
                break
            if tok in (";", "{"):
                break
            last_ident = tok if re.match(r"[A-Za-z_]", tok) else None
            pos = t.end()


def find_kernels(source: str, include_templates: bool = True) -> list[str]:
    """Names of the __global__ functions of a source, in order, without duplicates."""
    names = []
    for name, _, _ in _kernel_heads(strip_comments(source), include_templates):
        if name not in names:
            names.append(name)
    return names


def kernel_declarations(source: str, name: str) -> list[int]:
    """The index of the parameter list's '(' of every declaration and definition of kernel
    `name`, in order."""
    return [paren for kernel, paren, _ in _kernel_heads(strip_comments(source)) if kernel == name]


def kernel_definitions(source: str, name: str) -> list[tuple[str | None, int, int]]:
    """Kernel `name`'s definitions (one, or one per branch of an #if): for each, its
    __launch_bounds__ maximum of threads per block (the first argument, as written, on the
    definition or a declaration before it, not on another definition: that one is in another
    #if branch; None without), the index of its parameter list's '(' and the index just past
    its closing brace."""
    text = strip_comments(source)
    declared, found = None, []
    for kernel, paren, attr in _kernel_heads(text):
        if kernel != name:
            continue
        body = re.compile(r"[;{]").search(text, _skip_group(text, paren))
        if body is not None and body.group() == "{":
            found.append((attr or declared, paren, _skip_group(text, body.start(), "{}")))
        else:
            declared = attr or declared
    return found


def _split_params(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for c in text:
        if c in "(<[{":
            depth += 1
        elif c in ")>]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip() and p.strip() != "void"]


def _resolve(base: str, defines: dict[str, str]) -> str:
    for _ in range(10):
        if base in defines and defines[base] and defines[base] != base:
            base = " ".join(defines[base].split())
            base = " ".join(w for w in base.split() if w not in ("const", "volatile"))
        else:
            break
    base = re.sub(r"^(std|::)\s*::\s*|^::", "", base).strip()
    return _NORMALIZE.get(base, base)


def _parse_param(text: str, index: int, defines: dict[str, str]) -> Param:
    text = text.split("=", 1)[0]
    for attr in _ATTR_CALLS:
        while True:
            m = re.search(r"\b" + attr + r"\s*\(", text)
            if not m:
                break
            end = _skip_group(text, m.end() - 1)
            text = text[:m.start()] + " " + text[end:]
    is_array = "[" in text
    text = re.sub(r"\[[^\]]*\]", " ", text)
    tokens = re.findall(r"[A-Za-z_]\w*(?:\s*::\s*[A-Za-z_]\w*)*|\*|&", text)
    tokens = [re.sub(r"\s+", "", t) for t in tokens if t not in _QUALIFIERS]
    name = f"arg{index}"
    words = [t for t in tokens if t not in ("*", "&", "const")]
    type_words = {"unsigned", "signed", "int", "long", "short", "char", "float", "double",
                  "bool", "void"}
    if tokens and tokens[-1] not in ("*", "&", "const") and len(words) >= 2 and \
            not (tokens[-1] in type_words and all(w in type_words for w in words)):
        name = tokens.pop()
    stars = tokens.count("*") + (1 if is_array else 0)
    first_star = tokens.index("*") if "*" in tokens else len(tokens)
    is_const = "const" in tokens[:first_star] if stars else "const" in tokens
    base_words = [t for t in tokens[:first_star] if t not in ("const", "&")]
    written = " ".join(base_words)
    base = _resolve(written, defines)
    ctype = ("const " if is_const else "") + written + "*" * stars
    dtype, itemsize = None, None
    if base in _EXTRA or (base in _VECTOR_TYPES and _VECTOR_TYPES[base][0] in _EXTRA):
        elem = _VECTOR_TYPES[base][0] if base in _VECTOR_TYPES else base
        dtype = _extra(elem)
        itemsize = dtype.itemsize * (_VECTOR_TYPES[base][1] if base in _VECTOR_TYPES else 1)
        if base in _VECTOR_TYPES and not stars:
            dtype = None   # a pair by value: any scalar of its size, as for __half2
    elif base in _SCALARS:
        dtype = _SCALARS[base]
        itemsize = dtype.itemsize
    elif base in _VECTOR_TYPES:
        elem, count = _VECTOR_TYPES[base]
        itemsize = _SCALARS[elem].itemsize * count
        dtype = _SCALARS[elem] if stars else None
    if stars and (base in _ANY_POINTEE or stars > 1):
        dtype = None
    return Param(name, ctype, stars > 0, dtype, is_const, index, base, stars, itemsize)


def parse_kernel_signature(source: str, name: str, defines: dict[str, str] | None = None
                           ) -> list[Param]:
    """The parameters of the __global__ function `name` in `source`.

    `defines` (e.g. from `collect_defines(source, options)`) resolves typedefs and macros
    used as parameter types. Raises ValueError when there is no such kernel.
    """
    text = strip_comments(source)
    if defines is None:
        defines = collect_defines(source)
    heads = [(n, i) for n, i, _ in _kernel_heads(text) if n == name]
    if not heads:
        found = find_kernels(source)
        raise ValueError(f"kernel {name!r} not found in the source: it has no __global__ function "
                         f"of that name (found: {', '.join(found) if found else 'none'})")
    # Prefer a definition (followed by '{') over a declaration.
    chosen = heads[0]
    for head in heads:
        end = _skip_group(text, head[1])
        if text[end:].lstrip().startswith("{"):
            chosen = head
            break
    open_paren = chosen[1]
    inner = text[open_paren + 1:_skip_group(text, open_paren) - 1]
    return [_parse_param(p, i, defines) for i, p in enumerate(_split_params(inner))]


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"a {x.dtype} NumPy array of shape {x.shape}"
    if type(x).__module__.startswith("cupy"):
        return f"a {getattr(x, 'dtype', '?')} CuPy array of shape {getattr(x, 'shape', '?')}"
    if isinstance(x, np.generic):
        return f"np.{x.dtype.name}({x.item()!r})"
    return f"a Python {type(x).__name__} ({x!r})" if isinstance(x, (bool, int, float)) \
        else f"a {type(x).__module__}.{type(x).__qualname__}"


def _dtype_expr(dtype: np.dtype) -> str:
    """How to write the dtype in Python: np.float32, ml_dtypes.bfloat16."""
    return f"np.{dtype.name}" if dtype.type.__module__ == "numpy" else f"ml_dtypes.{dtype.name}"


def _accepts(p: Param, dtype: np.dtype) -> bool:
    return dtype == p.dtype or dtype in _ALSO.get(p.base, ()) or (
        p.base in _VECTOR_TYPES and dtype in _ALSO.get(_VECTOR_TYPES[p.base][0], ()))


def _wanted(p: Param) -> str:
    also = _ALSO.get(p.base) or (_ALSO.get(_VECTOR_TYPES[p.base][0]) if p.base in _VECTOR_TYPES
                                 else None)
    return f"{p.dtype} (or {' / '.join(str(d) for d in also)} bits)" if also else str(p.dtype)


def _where(kernel_name: str, p: Param, n: int) -> str:
    return f"kernel {kernel_name!r}, argument {p.index} of {n} ({p.name!r}, {p.ctype})"


def _cupy_passes(a) -> tuple[np.dtype | None, str]:
    """The C type CuPy gives a Python scalar (cupy/_core/_scalar.pyx): bool a 1-byte bool, int
    a 64-bit long long, float a double. (None, ...) for an int that long long cannot hold."""
    if isinstance(a, bool):
        return _D("bool"), "a 1-byte bool"
    if isinstance(a, int):
        fits = -2**63 <= a < 2**63
        return (_D("int64") if fits else None), "a 64-bit long long"
    if isinstance(a, float):
        return _D("float64"), "a 64-bit double"
    return None, "a 128-bit complex double"


def as_passed(sig: list[Param], args) -> tuple:
    """`args` (checked by check_launch_args) with each Python scalar as the NumPy scalar that
    CuPy would pass for it, so that the CPU executor gets the same bytes."""
    return tuple(_cupy_passes(a)[0].type(a) if isinstance(a, (bool, int, float)) and
                 not isinstance(a, np.generic) and not p.is_pointer else a
                 for p, a in zip(sig, args))


def check_launch_args(sig: list[Param], args, kernel_name: str, array_types: tuple) -> None:
    """Refuse launch arguments that CuPy would pass but the kernel would misread.

    `array_types`: the array classes that may stand for pointers here (numpy.ndarray on the
    CPU executor, cupy.ndarray on the GPU). Raises TypeError or ValueError.
    """
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"kernel {kernel_name!r}: args must be a tuple of the kernel's arguments, "
                        f"got {_describe(args)}")
    if len(args) != len(sig):
        names = ", ".join(f"{p.ctype} {p.name}" for p in sig)
        raise TypeError(f"kernel {kernel_name!r} takes {len(sig)} argument(s) ({names}), "
                        f"got {len(args)}")
    kinds = " or ".join(f"{t.__module__.split('.')[0]}.{t.__name__}" for t in array_types)
    for p, a in zip(sig, args):
        where = _where(kernel_name, p, len(sig))
        if p.is_pointer:
            if a is None:
                continue   # a null pointer, as CuPy passes it
            if not isinstance(a, array_types):
                hint = ""
                if isinstance(a, np.ndarray) or type(a).__module__.startswith("cupy"):
                    hint = " (arrays must live where the kernel runs: all NumPy or all CuPy)"
                want = f"a {p.dtype} array" if p.dtype is not None else "an array"
                raise TypeError(f"{where}: expected {want} ({kinds}), got {_describe(a)}{hint}")
            if p.pointer_depth > 1 and p.dtype is None and a.dtype.itemsize != 8:
                raise TypeError(f"{where}: a pointer-to-pointer parameter takes an array of "
                                f"64-bit addresses, got {_describe(a)}")
            if p.dtype is not None and not _accepts(p, a.dtype):
                raise TypeError(
                    f"{where}: expected a {_wanted(p)} array, got {_describe(a)}. CuPy would "
                    f"pass it unchecked and the kernel would read the bytes as {p.base}; convert "
                    f"it with .astype({_dtype_expr(p.dtype)})")
            check_contiguous(a, p.name, where)
            continue
        if isinstance(a, (bool, int, float, complex)) and not isinstance(a, np.generic):
            dtype, passed = _cupy_passes(a)
            if dtype is not None and dtype == p.dtype:
                continue   # what CuPy passes is what the kernel reads: a float for a double
            want = f"np.{p.dtype.name}({a!r})" if p.dtype is not None else "a NumPy scalar"
            raise TypeError(
                f"{where}: got {_describe(a)}. CuPy would pass a Python {type(a).__name__} as "
                f"{passed}, which the kernel misreads as {p.base}; pass {want}")
        if isinstance(a, np.ndarray) or isinstance(a, array_types):
            raise TypeError(f"{where}: expected a scalar ({p.dtype or p.base}), got "
                            f"{_describe(a)}" + (" (use .item() or np." + p.dtype.name + "(x))"
                                                 if p.dtype is not None else ""))
        if not isinstance(a, np.generic):
            raise TypeError(f"{where}: expected a NumPy scalar, got {_describe(a)}")
        if p.dtype is not None and not _accepts(p, a.dtype):
            raise TypeError(f"{where}: expected {_dtype_expr(p.dtype)}, got {_describe(a)}; "
                            f"pass {_dtype_expr(p.dtype)}(...)")
        if p.dtype is None and p.itemsize is not None and a.dtype.itemsize != p.itemsize:
            raise TypeError(f"{where}: expected a {p.itemsize}-byte NumPy scalar for {p.base}, "
                            f"got {_describe(a)}")
