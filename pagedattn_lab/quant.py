"""Compressed KV pages: int8 and fp8 (e4m3) codes with scales, the NumPy reference.

A quantized cache stores one byte per element and a float32 scale; the value is
`code * scale`. Two formats:

    int8      symmetric: code = clip(rint(x / scale), -127, 127) (round to nearest even;
              -128 is never used, so the range is symmetric); NaN is stored as 0.
    fp8_e4m3  e4m3fn as vLLM stores it: uint8 bits of 1 sign, 4 exponent (bias 7) and
              3 mantissa bits; no infinities, 0x7f/0xff are NaN, the largest finite value
              is 448. code = e4m3(x / scale), rounded to nearest even and saturated at
              +-448 (CUDA's __NV_SATFINITE); NaN stays NaN.

and two scale schemes:

    static     one scale per KV head, for K and for V (vLLM's k_scale / v_scale):
               shape [num_kv_heads]; chosen ahead (calibration), e.g. amax / qmax.
    per_token  one scale per (token, KV head), computed when the token is written:
               scale = amax(|x| over head_dim) / qmax (1 when the row is all zeros), at
               least the smallest normal float32, stored in an array laid out like the
               pages: [num_pages, page_size, num_kv_heads].

All arithmetic is float32 (x / scale, amax / qmax), exactly as the kernels do it, so the
kernels' codes match these bit for bit. The kernels run with -ftz (CuPy's, and the CPU
executor's model of it): a subnormal float32 is read as 0. So here subnormal rows are 0
(`_flushed`), a scale is never below the smallest normal float32 (a smaller amax / qmax would
be a scale of 0 to the kernel: x / 0 saturates every code, 0 / 0 is NaN), and scales given
must be at least that (`check_scale`). Read back (`dequantize`), a code times a scale near
that floor can be subnormal: a kernel reads it as 0, NumPy keeps it (at most ~1e-38 apart).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .attention_common import check_storage
from .backend import is_cupy_array, is_torch_tensor, to_numpy
from .validate import check_array, real_values
from .validate_kinds import dtype_label
from .validate_scale import FLOAT32_TINY
from .validate_values import float32_values

SCHEMES = ("static", "per_token")


@dataclass(frozen=True)
class KVFormat:
    name: str             # "int8" or "fp8_e4m3"
    storage: np.dtype     # the cache array's dtype: int8, or uint8 holding e4m3 bits
    qmax: float           # the largest code magnitude: 127 or 448
    kernel_id: int        # -DKV_QUANT=... in the kernels


FORMATS = {
    "int8": KVFormat("int8", np.dtype(np.int8), 127.0, 1),
    "fp8_e4m3": KVFormat("fp8_e4m3", np.dtype(np.uint8), 448.0, 2),
}


# The spellings of a compressed format, one rule for every function that takes a `kv_dtype`
# (both wrappers' plan, PagedKVCache, PagedAttentionManager, EngineConfig, write_kv_quant):
# the names above, vLLM's kv_cache_dtype "fp8" (which is e4m3 there) and "fp8_e4m3", and the
# torch / ml_dtypes names of the types, as a string or as the dtype itself ("float8_e4m3fn",
# torch.float8_e4m3fn, torch.int8, np.int8).
KV_DTYPE_ALIASES = {"fp8": "fp8_e4m3", "float8_e4m3fn": "fp8_e4m3"}


def _kv_name(kv_dtype) -> str | None:
    if isinstance(kv_dtype, (bool, np.ndarray)) or kv_dtype is None:
        return None   # an array of names would read as its one name; True as "True"
    name = str(kv_dtype).replace("torch.", "")
    if name not in FORMATS and name not in KV_DTYPE_ALIASES and not isinstance(kv_dtype, str):
        try:   # np.int8, ml_dtypes.float8_e4m3fn: classes whose str() is no name
            name = np.dtype(kv_dtype).name
        except (TypeError, ValueError):
            return None
    name = KV_DTYPE_ALIASES.get(name, name)
    return name if name in FORMATS else None


def kv_dtype_name(kv_dtype, name: str = "kv_dtype") -> str:
    """'int8' or 'fp8_e4m3' from any spelling of it (see KV_DTYPE_ALIASES); anything else
    is a ValueError naming `name` with the accepted spellings."""
    found = _kv_name(kv_dtype)
    if found is None:
        spellings = ", ".join(" or ".join(repr(s) for s in (n, *(a for a, m in
                                                                 KV_DTYPE_ALIASES.items()
                                                                 if m == n)))
                              for n in FORMATS)
        if kv_dtype is None:   # only a call that needs a compressed format gets here with None
            raise ValueError(f"{name}: expected one of {tuple(FORMATS)}, got None (this call "
                             f"writes or reads compressed pages only); accepted spellings: "
                             f"{spellings}")
        shown = repr(kv_dtype) if isinstance(kv_dtype, str) else \
            f"{kv_dtype!r} ({type(kv_dtype).__name__})"
        raise ValueError(f"{name}: expected one of {tuple(FORMATS)}, got {shown}; accepted "
                         f"spellings: {spellings}, or the torch, NumPy or ml_dtypes dtype "
                         f"(None: uncompressed pages)")
    return found


def kv_format(kv_dtype, name: str = "kv_dtype") -> KVFormat:
    return FORMATS[kv_dtype_name(kv_dtype, name)]


def check_scheme(scale_scheme: str, name: str = "scale_scheme") -> str:
    if not isinstance(scale_scheme, str) or scale_scheme not in SCHEMES:
        raise ValueError(f"{name}: expected one of {SCHEMES}, got {scale_scheme!r}")
    return scale_scheme


# -- codes ---------------------------------------------------------------------------------

def _e4m3():
    import ml_dtypes  # noqa: PLC0415 - imported on first use: it slows every import and fork
    return ml_dtypes.float8_e4m3fn


def encode(x, kv_dtype: str) -> np.ndarray:
    """Codes of already-scaled float32 values (x / scale): int8 or uint8 e4m3 bits. A value
    past float32's range (a float64 1e39) saturates as inf does, to the largest code."""
    fmt = kv_format(kv_dtype)
    x = real_values(x, "x")
    if fmt.name == "int8":
        # np.clip keeps NaN; nan_to_num then stores it as 0. rint rounds half to even.
        return np.nan_to_num(np.rint(np.clip(x, -127.0, 127.0)), nan=0.0).astype(np.int8)
    saturated = np.clip(x, -448.0, 448.0)        # ml_dtypes itself would overflow to NaN
    return saturated.astype(_e4m3()).view(np.uint8)


def decode(codes, kv_dtype: str) -> np.ndarray:
    """float32 values of codes (without the scale)."""
    fmt = kv_format(kv_dtype)
    # a torch tensor is checked as it is (NumPy cannot read torch's float8): check_storage
    # tells the caller to pass codes.view(torch.uint8)
    if not is_torch_tensor(codes):
        codes = np.asarray(codes)
    check_storage(codes, fmt, "codes")
    codes = np.asarray(codes)
    if fmt.name == "int8":
        return codes.astype(np.float32)
    return codes.view(_e4m3()).astype(np.float32)


# -- scales --------------------------------------------------------------------------------

def per_token_scales(x, kv_dtype: str) -> np.ndarray:
    """float32 [..., num_kv_heads]: amax over the last axis (head_dim) / qmax, 1 for zero rows.

    NaN is ignored in the amax (as fmaxf does in the kernel); subnormal values count as 0 and
    the scale is at least the smallest normal float32 (see the module docstring: -ftz). An
    infinite x (or one past float32's range) is refused by name: its scale would be inf,
    which every cache refuses (and its row reads back as NaN)."""
    return _scales_of_flushed(_flushed(float32_values(x, "x")), kv_dtype)


def _scales_of_flushed(x: np.ndarray, kv_dtype: str) -> np.ndarray:
    """`per_token_scales` of float32 x already `_flushed` (quantize_rows flushes its rows
    once, for the scales and the codes)."""
    qmax = np.float32(kv_format(kv_dtype).qmax)
    amax = np.fmax.reduce(np.abs(x), axis=-1, initial=np.float32(0))
    scale = np.maximum(amax / qmax, np.float32(FLOAT32_TINY))
    return np.where(amax > 0, scale, np.float32(1.0)).astype(np.float32)


def _flushed(x: np.ndarray) -> np.ndarray:
    """float32 x with subnormal values as signed zeros, as a kernel compiled with -ftz reads
    them (so a row of them quantizes as the kernel quantizes it)."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(np.abs(x) < np.float32(FLOAT32_TINY), np.copysign(np.float32(0), x), x)


def static_scales(x, kv_dtype: str) -> np.ndarray:
    """Calibrated per-KV-head scales [num_kv_heads] from sample rows [n, num_kv_heads, dim]
    (finite, as `per_token_scales` takes them: an inf sample is named where it lies in x)."""
    x = float32_values(x, "x")
    if x.ndim != 3:
        raise ValueError(f"x: expected [n_tokens, num_kv_heads, head_dim], got {x.shape}")
    rows = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    return _scales_of_flushed(_flushed(rows), kv_dtype)


def _refuse_bad_scales(scales: np.ndarray, name: str, given=None) -> None:
    """A ValueError naming the first scale that is not finite and > 0 (x / 0 saturates every
    code, a negative scale flips the signs, NaN and inf give codes of 0), or is subnormal
    (a kernel's -ftz reads it as 0).
    given: the values `scales` (float32) were rounded from, to show one past float32's range
    (inf once rounded) as it was given."""
    bad = np.argwhere(~(np.isfinite(scales) & (scales > 0)))
    if bad.size:
        i = tuple(int(j) for j in bad[0])
        shown = float(scales[i])
        if given is not None and np.isinf(shown) and np.isfinite(np.asarray(given)[i]):
            shown = f"{float(np.asarray(given)[i]):g}, past float32's range (+-3.4e38)"
        raise ValueError(f"{name}: every scale must be finite and > 0; {name}"
                         f"[{', '.join(map(str, i))}] is {shown}")
    tiny = np.argwhere(scales < FLOAT32_TINY)
    if tiny.size:
        i = tuple(int(j) for j in tiny[0])
        raise ValueError(f"{name}: every scale must be at least {FLOAT32_TINY:.4g}, the "
                         f"smallest normal float32 (the kernels, compiled with -ftz, read a "
                         f"subnormal one as 0); {name}[{', '.join(map(str, i))}] is "
                         f"{float(scales[i])}")


def refuse_single_number(scale, name: str, shape, library: str = "np") -> None:
    """A ValueError for one number where static scales [num_kv_heads] are due: vLLM's k_scale
    is one float per layer, and a shape error ("got ()") would not say how to spread it.
    library: the hint's array library ("cp" where the scales must be CuPy arrays)."""
    if len(shape) != 1 or scale is None or np.ndim(scale) != 0:
        return
    value = np.asarray(to_numpy(scale))
    if value.dtype.kind not in "fiu":   # (bool, a string: the dtype checks name those)
        return
    if not (np.isfinite(value) and value >= FLOAT32_TINY):   # (no scale worth spreading)
        raise ValueError(f"{name}: expected one static scale per KV head, shape "
                         f"{tuple(shape)}, each finite, > 0 and not subnormal; got the single "
                         f"number {float(value)!r}")
    raise ValueError(f"{name}: expected one static scale per KV head, shape {tuple(shape)}, "
                     f"got the single number {float(value)!r}; the same scale for every "
                     f"head is {library}.full({tuple(shape)}, {float(value)!r}, "
                     f"{library}.float32)")


def check_scale(scale, name: str, shape: tuple[int, ...],
                qmax: float | None = None) -> np.ndarray:
    """A float32 scale array of `shape`, finite, > 0 and not subnormal; raises naming `name`
    otherwise.
    qmax: the format's largest code; then qmax * scale must be a finite float32 too (a larger
    scale turns the largest codes into inf when they are read back, and the output into NaN)."""
    if scale is None:
        raise ValueError(f"{name}: a quantized cache needs scales of shape {shape}, got None")
    refuse_single_number(scale, name, shape)
    arr = np.asarray(to_numpy(scale))   # (CuPy scales are checked on the host)
    if arr.dtype != np.float32:   # (a list or a float reads as float64: say what it was)
        got = dtype_label(arr.dtype) if hasattr(scale, "dtype") else \
            f"a {type(scale).__name__} ({arr.dtype}); pass np.array(..., np.float32)"
        raise TypeError(f"{name}: expected float32 scales, got {got}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
    _refuse_bad_scales(arr, name)
    if qmax is not None:
        limit = float(np.finfo(np.float32).max) / qmax
        over = np.flatnonzero(arr > limit)
        if over.size:
            i = tuple(int(j) for j in np.unravel_index(int(over[0]), arr.shape))
            raise ValueError(f"{name}: expected scales <= {limit:.3g} (code {qmax:g} x scale "
                             f"must stay a finite float32); {name}[{', '.join(map(str, i))}] is "
                             f"{float(arr[i])}")
    return arr


# -- quantize / dequantize -----------------------------------------------------------------

def quantize(x, kv_dtype: str, scale) -> np.ndarray:
    """Codes of x [..., num_kv_heads, head_dim] with `scale` broadcast over head_dim:
    static [num_kv_heads] or per-token [..., num_kv_heads], each finite, > 0 and normal
    (one past float32's range, a float64 1e39, is refused by name as inf is). An x past
    float32's range saturates to the largest code, silently, as inf does."""
    x = _flushed(real_values(x, "x"))
    _refuse_one_value(x, "x")
    return encode(x / _checked_scale(scale, x.shape)[..., None], kv_dtype)


def dequantize(codes, kv_dtype: str, scale) -> np.ndarray:
    """float32 code * scale, scale broadcast and refused as in `quantize`: code * 0 reads
    every value back as 0, a negative scale flips the signs, NaN and inf (or a value past
    float32's range) give NaN."""
    _refuse_one_value(codes, "codes")
    s = _checked_scale(scale, np.shape(codes))   # (before the codes, as quantize's x)
    return decode(codes, kv_dtype) * s[..., None]


def _refuse_one_value(x, name: str) -> None:
    """A 0-d x has no head_dim axis for the scale to broadcast over: it came back as an
    array of shape (1,)."""
    if np.ndim(x) == 0:
        raise ValueError(f"{name}: expected values [..., num_kv_heads, head_dim], got a single "
                         f"number (a 0-d array)")


def dequantize_written(codes, kv_dtype: str, scale) -> np.ndarray:
    """`dequantize` of pages with the scales the cache holds, taken as they are, as a kernel
    reads them: a row holding inf has the per-token scale inf (as the kernel computes it) and
    reads back as NaN (PagedKVCache.gather); unused slots may hold any scale at all (one past
    float32's range is inf, silently)."""
    values = decode(codes, kv_dtype)
    with np.errstate(invalid="ignore"):   # a row's scale inf: code 0 x inf, a NaN
        return values * _scale_for(scale, values.shape)[..., None]


def _checked_scale(scale, shape) -> np.ndarray:
    """`scale` for values of `shape` as `_scale_for` takes it, each entry finite, > 0 and
    normal (`_refuse_bad_scales`)."""
    s = _scale_for(scale, shape)
    _refuse_bad_scales(s, "scale", scale)
    return s


def _scale_for(scale, shape) -> np.ndarray:
    """`scale` as float32, refused by name unless it is static [num_kv_heads] or per token
    [..., num_kv_heads] for values of `shape` [..., num_kv_heads, head_dim] (another shape
    fails in NumPy's broadcasting, naming nothing, or broadcasts to the wrong heads)."""
    refuse_single_number(scale, "scale", tuple(shape[-2:-1]))
    s = real_values(scale, "scale")
    if s.shape not in (tuple(shape[-2:-1]), tuple(shape[:-1])):
        raise ValueError(f"scale: expected shape {tuple(shape[-2:-1])} (static, one per KV "
                         f"head) or {tuple(shape[:-1])} (per token) for values of shape "
                         f"{tuple(shape)}, got {s.shape}")
    return s


def quantize_rows(x, kv_dtype: str, scale_scheme: str, static_scale=None):
    """(codes, scales) for new rows x [n_tokens, num_kv_heads, head_dim]: the static scale
    [num_kv_heads] as given (finite, > 0 and normal, as `quantize` takes it), or per-token
    scales [n_tokens, num_kv_heads] computed from x. An x past float32's range is inf, as
    `quantize` takes it: a static code saturates, a per-token scale is inf."""
    check_scheme(scale_scheme)
    x = _flushed(real_values(x, "x"))   # once, for the scales and the codes
    if scale_scheme == "per_token":
        # not through quantize's check: a row holding inf has the per-token scale inf, as
        # the kernel computes it
        scales = _scales_of_flushed(x, kv_dtype)
    else:
        scales = _static_scale_for(static_scale, x.shape)
    with np.errstate(invalid="ignore"):   # a row holding inf: inf / inf, a NaN code (int8: 0)
        return encode(x / scales[..., None], kv_dtype), scales


def _static_scale_for(scale, shape) -> np.ndarray:
    """quantize_rows' `static_scale` as float32 [num_kv_heads] for rows of `shape`, refused
    by name as `quantize` refuses its scale (0 saturated every code, a negative scale
    flipped the signs, NaN stored every code as 0 or NaN, and None read as NaN)."""
    heads = tuple(shape[-2:-1])
    if scale is None:
        raise ValueError(f"static_scale: static scales need one scale per KV head, shape "
                         f"{heads}, got None")
    refuse_single_number(scale, "static_scale", heads)
    s = real_values(scale, "static_scale")
    if s.shape != heads:
        raise ValueError(f"static_scale: expected shape {heads} (one per KV head) for rows of "
                         f"shape {tuple(shape)}, got {s.shape}")
    _refuse_bad_scales(s, "static_scale", scale)
    return s


# -- the scales a kernel reads ---------------------------------------------------------------

def scale_shape(scale_scheme: str, num_pages: int, page_size: int, num_kv_heads: int) -> tuple:
    """The shape of k_scale / v_scale: [num_kv_heads] or laid out like the pages."""
    if check_scheme(scale_scheme) == "static":
        return (num_kv_heads,)
    return (num_pages, page_size, num_kv_heads)


SEEN_SCALES = 64   # CuPy static scale arrays a wrapper remembers as checked (layers x 2)


def check_run_scales(fmt: KVFormat | None, scale_scheme: str | None, cache_shape, k_scale,
                     v_scale, on_gpu: bool, seen: dict | None = None) -> None:
    """The scales an attention wrapper's `run` is given for a cache of `cache_shape`
    ([num_pages, page_size, num_kv_heads, head_dim]), planned for `fmt` (None: an fp16 /
    bf16 / fp32 cache, which takes no scales) and `scale_scheme`. Raises naming the argument.

    Static scales ([num_kv_heads]) must be finite, normal and small enough that code * scale
    stays finite: NumPy ones are checked on every call; a CuPy one is read back the first
    time its (id, address) is met, not on every run, which would stall the GPU at every
    layer (scales are set once, when a model is loaded). `seen` remembers it and holds the
    array: else a temporary's id and pool memory pass to the next temporary, whose values
    would never be read. Per-token arrays ([num_pages, page_size, num_kv_heads]) are
    outputs of the cache write: checked for dtype, shape and place only."""
    if fmt is None:
        if k_scale is not None or v_scale is not None:
            raise ValueError("k_scale, v_scale: the plan has no kv_dtype (an uncompressed "
                             "cache), so scales mean nothing; plan with kv_dtype=...")
        return
    num_pages, page_size, num_kv_heads = (int(n) for n in cache_shape[:3])
    shape = scale_shape(scale_scheme, num_pages, page_size, num_kv_heads)
    where = "CuPy" if on_gpu else "NumPy"
    for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
        if s is None:
            raise ValueError(f"{name}: a quantized cache needs {scale_scheme} scales "
                             f"({fmt.name}), a float32 {where} array of shape {shape}; got None")
        if scale_scheme == "static":
            refuse_single_number(s, name, shape, "cp" if on_gpu else "np")
        check_array(s, name, dtypes=[np.float32])
        if tuple(s.shape) != shape or is_cupy_array(s) != on_gpu:
            raise ValueError(f"{name}: expected shape {shape} ({scale_scheme} scales, a float32 "
                             f"{where} array), got {tuple(s.shape)} "
                             f"{type(s).__module__.split('.')[0]}")
        if scale_scheme == "static":
            key = (id(s), int(s.data.ptr)) if on_gpu else None
            if key is None or seen is None or key not in seen:
                check_scale(s, name, shape, fmt.qmax)
                if key is not None and seen is not None:
                    seen[key] = s
                    if len(seen) > SEEN_SCALES:   # the oldest goes (and is checked again)
                        del seen[next(iter(seen))]
