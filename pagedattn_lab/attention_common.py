"""What the attention wrappers share: where arrays live, alignment, and output checks."""
from __future__ import annotations

import functools

import numpy as np

from .backend import check_contiguous, data_pointer, is_cupy_array, is_torch_tensor, to_numpy
from .validate import check_array
from .tensor_checks import (DTYPE_NAMES, check_cache_tensor, check_index_width,
                            check_not_uint16_values, check_one_kind)
from .validate_kinds import dtype_label, dtype_shown
from .validate_scale import LOG2E  # noqa: F401 - re-exported

THREADS = 128          # every kernel of this module runs 128-thread blocks
MAX_GRID_YZ = 65535    # CUDA's limit on gridDim.y and gridDim.z
MAX_SHARED_MEM = 227 * 1024   # the most dynamic shared memory a block may opt in to (sm_90)


def check_aligned16(**arrays) -> None:
    """Refuse an array whose data does not start on a 16-byte boundary (the kernels load 16
    bytes at a time), as BatchDecodeWrapper.run does: an aligned copy would be hidden host
    work on every call (a whole cache's worth), so the caller makes it, once."""
    for name, x in arrays.items():
        if data_pointer(x) % 16:
            raise ValueError(f"{name}: expected data starting on a 16-byte boundary (the "
                             "kernels load 16 bytes at a time), not an offset view; pass a "
                             "fresh array (.copy())")


def same_place(x, xp):
    """A small index array (block table, lengths) moved to where the computation runs."""
    return to_numpy(x) if xp is np else xp.asarray(x)


def page_shift(page_size: int) -> int:
    """log2(page_size) for a power of two (the kernels then shift instead of divide), else -1."""
    return page_size.bit_length() - 1 if page_size & (page_size - 1) == 0 else -1


def prepare_out(out, shape, dtype, xp):
    """The output array: a new one, or the caller's `out=` after checking it fits exactly."""
    if out is None:
        return xp.empty(shape, dtype=dtype)
    check_array(out, "out", ndim=len(shape), dtypes=[dtype])
    if (xp is np) == is_cupy_array(out):
        place = "a CuPy (GPU)" if xp is not np else "a NumPy (CPU)"
        raise TypeError(f"out: expected {place} array like q, got {type(out).__module__}.ndarray")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out: expected shape {tuple(shape)}, got {tuple(out.shape)}")
    if data_pointer(out) % 16:
        raise ValueError("out: expected an array whose data starts on a 16-byte boundary "
                         "(a fresh allocation, not an offset view)")
    return out


def check_grid(batch: int, num_heads: int):
    if batch > MAX_GRID_YZ:
        raise ValueError(f"q: batch {batch} exceeds {MAX_GRID_YZ} sequences per launch "
                         "(CUDA's grid limit); split the batch")
    if num_heads > MAX_GRID_YZ:
        raise ValueError(f"q: {num_heads} heads exceed {MAX_GRID_YZ} per launch")


def fast_path(kern, on_gpu: bool):
    """For a plan that runs on the GPU: the cupy.RawKernel inside the course's checked
    `RawKernel` (its `gpu` attribute). Launching it skips the per-launch argument check,
    tens of microseconds of Python; only for plans whose arguments were checked at their
    first launch and never change. Otherwise `kern` itself."""
    return getattr(kern, "gpu", kern) if on_gpu else kern


def allow_shared_memory(kern, nbytes: int) -> None:
    """Let a kernel use more than the default 48 KB of dynamic shared memory (the CUDA
    attribute cudaFuncAttributeMaxDynamicSharedMemorySize, as cupy.RawKernel names it)."""
    if nbytes > 48 * 1024 and kern.max_dynamic_shared_size_bytes < nbytes:
        kern.max_dynamic_shared_size_bytes = nbytes


def gpu_resident_blocks(kern, threads: int, nbytes: int) -> int:
    """Blocks of `kern` (a course RawKernel) one multiprocessor of the current GPU holds at
    once with `threads` threads and `nbytes` of dynamic shared memory, as the driver counts
    them (cuOccupancyMaxActiveBlocksPerMultiprocessor: the compiled registers, not an
    estimate). Measured on the H200 (benchmarks/NOTES.md, session 4): the count is what runs
    (a clock probe saw 3 blocks of 73 KB at once per SM, with or without the largest
    shared-memory carveout preference). Asked once per kernel, shape and device, at plan
    time (never in run); compiles the kernel if need be."""
    from .backend import cupy_module  # noqa: PLC0415
    runtime = cupy_module().cuda.runtime
    return _gpu_resident_blocks(kern, threads, nbytes, runtime.getDevice())


@functools.lru_cache(maxsize=None)
def _gpu_resident_blocks(kern, threads: int, nbytes: int, device: int) -> int:
    from .backend import cupy_module  # noqa: PLC0415
    cuda = cupy_module().cuda
    cuda.runtime.setDevice(device)   # the driver call wants the device's context current
    allow_shared_memory(kern, nbytes)
    function = kern.gpu.kernel.ptr   # this device's compiled function
    return max(1, int(cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(function, threads,
                                                                            nbytes)))


# ---- element types and array libraries ---------------------------------------------------
# A cache holds float32, float16 or bfloat16. NumPy holds bfloat16 through the ml_dtypes
# package; CuPy has no bfloat16 dtype (cupy issue 7527), so on the GPU bfloat16 data comes as
# torch.bfloat16 tensors (through DLPack, no copy) or as CuPy uint16 arrays holding the bits.
# DTYPE_NAMES (tensor_checks.py): those three names.

KV_C_TYPES = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}
# The spellings of an element type, one rule for every function that takes a `dtype`
# (PagedKVCache, PagedAttentionManager, both wrappers' plan, LlamaModel, which allow a subset):
# the names above, torch's aliases "float" and "half" (NumPy would read "float" as float64),
# the short names "fp32", "fp16" and "bf16" (the prefill plan took "bf16"; torch and
# FlashInfer's plan() read none of the three, but nothing else could be meant), and a NumPy,
# ml_dtypes or torch dtype (or a spelling NumPy reads, such as "f2").
DTYPE_ALIASES = {"float": "float32", "half": "float16", "fp32": "float32", "fp16": "float16",
                 "bf16": "bfloat16"}


def bfloat16_dtype():
    """ml_dtypes.bfloat16 as a NumPy dtype (ml_dtypes is a dependency of the course)."""
    import ml_dtypes  # noqa: PLC0415 - only bfloat16 callers need it
    return np.dtype(ml_dtypes.bfloat16)


class DtypeError(TypeError, ValueError):
    """A `dtype` argument that names no element type the call takes. Both: a TypeError, as
    NumPy's np.dtype("x") raises and the cache and the prefill plan raised, and a ValueError,
    as the decode plan raised, so code written against either still catches it."""


def _known_name(dtype) -> str | None:
    """One of DTYPE_NAMES for a spelling of it (see DTYPE_ALIASES), else None."""
    name = str(dtype).replace("torch.", "")
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_NAMES and dtype is not None:   # NumPy reads None as float64
        try:
            name = np.dtype(dtype).name
        except (TypeError, ValueError):
            pass
    return name if name in DTYPE_NAMES else None


def _listed(names) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def dtype_name(dtype, allowed=DTYPE_NAMES, why: str = "") -> str:
    """'float32', 'float16' or 'bfloat16' (one of `allowed`) from any spelling of it (see
    DTYPE_ALIASES). Anything else is a DtypeError naming `dtype`; `why` (shown when a known
    element type is not allowed) says why; a string it cannot read gets the accepted
    spellings."""
    name = _known_name(dtype)
    if name in allowed:
        return name
    spellings = ""
    if name is None and isinstance(dtype, str):
        spellings = "; accepted spellings: " + ", ".join(
            " or ".join(repr(s) for s in (n, *(a for a, m in DTYPE_ALIASES.items() if m == n)))
            for n in allowed) + ", or a NumPy, ml_dtypes or torch dtype"
    raise DtypeError(f"dtype: expected {_listed(allowed)}{why if name else ''}, got "
                    f"{name or dtype_shown(dtype)}{spellings}")


def element_dtype(dtype, allowed=DTYPE_NAMES, why: str = "") -> np.dtype:
    """A `dtype` argument (read by `dtype_name`) as the NumPy dtype of its arrays on the CPU
    (bfloat16: ml_dtypes')."""
    found = dtype_name(dtype, allowed, why)
    return bfloat16_dtype() if found == "bfloat16" else np.dtype(found)


def to_elements(x, dtype: np.dtype, xp):
    """A float array (NumPy or CuPy; ml_dtypes.bfloat16 too) as a C-contiguous array of
    element type `dtype` (from `element_dtype`) on xp's device, rounded to nearest even (a
    value past dtype's range is inf, as a GPU's conversion gives it, without NumPy's overflow
    warning, which names no argument); bfloat16 on CuPy as uint16 bits.
    bfloat16 is rounded on the host, by ml_dtypes: its cast from float64 rounds once, where a
    device cast through float32 (CuPy has no bfloat16) would round twice."""
    with np.errstate(over="ignore"):
        if dtype.name == "bfloat16":
            rounded = np.ascontiguousarray(to_numpy(x), dtype=dtype)
            return rounded if xp is np else xp.asarray(rounded.view(np.uint16))
        if x.dtype.name == "bfloat16":   # ml_dtypes' rows, which CuPy cannot read: widened
            x = to_numpy(x).astype(np.float32)   # on the host, exactly, so rounded only once
        if xp is np:   # a CuPy x is copied to the host first
            x = to_numpy(x)
        return xp.ascontiguousarray(xp.asarray(x, dtype=dtype))


def array_dtypes(name: str, on_gpu: bool) -> tuple:
    """The NumPy/CuPy dtypes an array of element type `name` may have: bfloat16 is
    ml_dtypes.bfloat16 on the CPU, or uint16 holding its bits (the only way on CuPy)."""
    if name == "bfloat16":
        return (np.dtype(np.uint16),) if on_gpu else (bfloat16_dtype(), np.dtype(np.uint16))
    return (np.dtype(name),)


def cache_dtypes(bits: bool) -> tuple:
    """The dtypes of a cache whose element type the call reads off the array: float32,
    float16, then the bfloat16 forms: ml_dtypes.bfloat16 (NumPy) and, where `bits` (CuPy, or
    a torch.bfloat16 tensor's view), uint16 holding its bits."""
    bf16 = (bfloat16_dtype(),) + ((np.dtype(np.uint16),) if bits else ())
    return (np.dtype(np.float32), np.dtype(np.float16)) + bf16


def from_torch(x, name: str = "tensor"):
    """A torch tensor as a CuPy (CUDA tensor) or NumPy (CPU tensor) array sharing its memory;
    a torch.bfloat16 tensor becomes uint16 (its bits). Anything else is returned as it is.
    name: the argument, for the errors on a tensor that requires grad and on a float8 one
    (which neither library holds: shared_arrays tells e4m3 pages' tensors the view)."""
    if not is_torch_tensor(x):
        return x
    if str(x.dtype).startswith("torch.float8"):   # torch itself refuses it naming nothing
        codes = (f"; if it holds e4m3 codes, pass {name}.view(torch.uint8) with "
                 f"kv_dtype='fp8_e4m3' and its scales" if name in ("k_cache", "v_cache") and
                 str(x.dtype) == "torch.float8_e4m3fn" else "")
        raise TypeError(f"{name}: a {x.dtype} tensor, which NumPy and CuPy cannot share (they "
                        f"have no fp8 type){codes}")
    if x.requires_grad:   # .numpy() and DLPack refuse it with a RuntimeError naming nothing
        raise TypeError(f"{name}: a torch tensor that requires grad; the kernels compute no "
                        f"gradient: pass {name}.detach()")
    import torch  # noqa: PLC0415 - only reached with a torch tensor in hand
    bits = x.view(torch.int16) if x.dtype == torch.bfloat16 else x
    if bits.is_cuda:
        from .backend import cupy_module  # noqa: PLC0415
        arr = cupy_module().from_dlpack(bits)
    else:
        arr = bits.numpy()
    return arr.view(np.uint16) if x.dtype == torch.bfloat16 else arr


def shared_arrays(named: dict, kv_format=None, elements: bool = False,
                  float_caches: bool = False) -> list:
    """The values of `named` (argument name: value) with each torch tensor as the NumPy or
    CuPy array sharing its memory (`from_torch`, or `from_torch_elements` where `elements`),
    for arguments the kernels read as they are. Every tensor is checked before any is
    shared, as a tensor: once an array, its errors would name that library's fix, not torch's
    (a strided view: .contiguous(); pages of torch.float8_e4m3fn codes where `kv_format`, a
    quant.KVFormat, is the plan's: .view(torch.uint8); integers in torch.uint16 values, which
    would pass for bfloat16 bits once shared; an index of another integer width:
    .to(torch.int32); where `float_caches`, caches of no float type a cache holds). Values (q,
    K, V, out) with bfloat16 among them are all tensors or all arrays (check_one_kind)."""
    check_one_kind(named)
    for name, x in named.items():
        if is_torch_tensor(x):
            check_contiguous(x, name)
            check_not_uint16_values(x, name)
            check_index_width(x, name)
            if float_caches and name in ("k_cache", "v_cache"):
                check_cache_tensor(x, name)
            if kv_format is not None and name in ("k_cache", "v_cache"):
                check_storage(x, kv_format, name, planned=True)
    share = from_torch_elements if elements else from_torch
    return [share(x, name) for name, x in named.items()]


def _storage_hint(dtype, fmt, name: str) -> str:
    """The fix for a cache of e4m3 codes held as float8_e4m3fn, ml_dtypes' (the CPU's natural
    fp8 array, as ml_dtypes.bfloat16 is its bfloat16) or torch's: the same bytes viewed as
    the storage, in the array's own library. "" for any other dtype: another one-byte type
    (float8_e5m2, uint8 beside int8) need not hold this format's codes, and viewing it would
    read garbage without an error."""
    torch = str(dtype) == "torch.float8_e4m3fn"
    if fmt.name != "fp8_e4m3" or not (torch or (isinstance(dtype, np.dtype)
                                                and dtype.name == "float8_e4m3fn")):
        return ""
    library = "torch" if torch else "np"
    return f"; those are the e4m3 codes' bytes: pass {name}.view({library}.uint8)"


def check_storage(x, fmt, name: str, planned: bool = False) -> None:
    """Refuse compressed pages `x` (a NumPy or CuPy array, or a torch tensor before it is
    shared: torch's fp8 types have no NumPy twin) whose dtype is not fmt's storage: the one
    wording of every path that reads or writes codes, with the e4m3 view where it applies.
    planned: fmt is a wrapper plan's kv_dtype (its run's caches), and the message says so:
    the pages may be right and the plan's kv_dtype the mistake."""
    if str(x.dtype).startswith("torch."):
        if str(x.dtype) == f"torch.{fmt.storage.name}":
            return
        label = str(x.dtype)
    elif x.dtype == fmt.storage:
        return
    else:
        label = dtype_label(x.dtype)
    raise TypeError(f"{name}: expected dtype {fmt.storage.name} (the codes of {fmt.name} "
                    f"pages{', as planned' if planned else ''}), got "
                    f"{label}{_storage_hint(x.dtype, fmt, name)}")


def to_torch_like(arr, like):
    """`arr` (from `from_torch(like)`'s library) as a torch tensor of like's dtype, no copy."""
    import torch  # noqa: PLC0415
    t = torch.from_dlpack(arr) if is_cupy_array(arr) else torch.from_numpy(arr)
    return t.view(torch.bfloat16) if like.dtype == torch.bfloat16 else t


def from_torch_elements(x, name: str = "tensor"):
    """`from_torch`, but a CPU torch.bfloat16 tensor comes as ml_dtypes.bfloat16 elements, the
    CPU executor's bfloat16 (a NumPy uint16 array holds integers there); on the GPU its bits
    stay uint16, CuPy's way of holding bfloat16."""
    arr = from_torch(x, name)
    if is_torch_tensor(x) and not x.is_cuda and str(x.dtype) == "torch.bfloat16":
        return arr.view(bfloat16_dtype())
    return arr


def to_torch_as(arr, like):
    """`arr` as `like`'s kind: itself when `like` is None (no torch input), else a torch tensor
    of like's dtype sharing arr's memory (`to_torch_like`, ml_dtypes.bfloat16 included)."""
    if like is None:
        return arr
    if not is_cupy_array(arr) and arr.dtype == bfloat16_dtype():
        arr = arr.view(np.uint16)
    return to_torch_like(arr, like)


def result_for(arr, like, out):
    """What a call that wrote `arr` returns: the caller's own `out` where it is a torch tensor
    (arr shares its memory; "returns out" means that very tensor), else `arr` as like's kind
    (`to_torch_as`)."""
    return out if is_torch_tensor(out) else to_torch_as(arr, like)


def sm_count(on_gpu: bool, cpu_count: int = 4) -> int:
    """Multiprocessors of the current GPU; `cpu_count` for the CPU executor."""
    if not on_gpu:
        return cpu_count
    from .backend import cupy_module  # noqa: PLC0415
    return _sm_count(cupy_module().cuda.runtime.getDevice())


@functools.lru_cache(maxsize=None)
def _sm_count(device: int) -> int:
    # Asked once per device: CuPy's Device.attributes queries every attribute (~0.1 ms).
    from .backend import cupy_module  # noqa: PLC0415
    return int(cupy_module().cuda.Device(device).attributes["MultiProcessorCount"])
