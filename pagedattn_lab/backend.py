"""Where arrays live: NumPy on the CPU, CuPy on a GPU when one is usable.

The course runs everywhere. A learner without a GPU never needs CuPy; a learner with
one gets the same code on the device. Everything that has to ask "is there a GPU?"
asks here, so the answer and the message explaining it are the same everywhere.
"""
from __future__ import annotations

import functools

import numpy as np

from .validate_kinds import is_one_of


@functools.lru_cache(maxsize=None)
def _probe_cupy() -> tuple[object | None, str]:
    """Import CuPy and look for a device once. Returns (module or None, reason)."""
    try:
        import cupy  # noqa: PLC0415 - optional dependency, imported on demand
    except ImportError:
        # Said for every set-up (make, pip, a hosted notebook): %pip installs into the
        # environment of the running notebook kernel, wherever that is.
        return None, ("CuPy is not installed, so kernels run on the CPU executor. To use an "
                      "NVIDIA GPU, install the CuPy build for its CUDA driver version (nvidia-smi "
                      "prints it): run `%pip install cupy-cuda12x` (CUDA 12) or "
                      "`%pip install cupy-cuda13x` (CUDA 13) in a notebook cell, then restart "
                      "the kernel.")
    except Exception as exc:  # a broken install: say so instead of crashing the import
        return None, f"CuPy is installed but failed to import ({exc!r}); using the CPU executor."
    try:
        if not cupy.is_available():
            return None, ("CuPy is installed but sees no usable CUDA device "
                          "(no GPU, or no driver); kernels run on the CPU executor.")
    except Exception as exc:
        return None, f"CuPy could not query the CUDA driver ({exc!r}); using the CPU executor."
    return cupy, "CuPy found a CUDA device."


def gpu_available() -> bool:
    """True when CuPy imports and has at least one CUDA device."""
    return _probe_cupy()[0] is not None


def gpu_status() -> str:
    """One sentence saying whether the GPU is used, and if not, why."""
    return _probe_cupy()[1]


def cupy_module():
    """The CuPy module; raises RuntimeError with the reason when there is no usable GPU."""
    module, reason = _probe_cupy()
    if module is None:
        raise RuntimeError(reason)
    return module


def is_cupy_array(x) -> bool:
    """True for a cupy.ndarray, without importing CuPy when it is not loaded."""
    return type(x).__module__.startswith("cupy")


def is_torch_tensor(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _contiguous_fix(x, name: str) -> str:
    """The call that gives a C-contiguous copy of `x` (named `name`) in x's own library
    (torch has no ascontiguousarray)."""
    if is_torch_tensor(x):
        return f"{name}.contiguous()"
    return f"{'cupy' if is_cupy_array(x) else 'np'}.ascontiguousarray({name})"


def check_contiguous(x, name: str, where: str | None = None) -> None:
    """Refuse a strided view (a transpose, a slice with a step) of a NumPy or CuPy array or a
    torch tensor: the kernels index it by the strides of its shape. The one wording of every
    path: `where` (default: `name`) and the copy in x's own library, made of `name`."""
    if x.is_contiguous() if is_torch_tensor(x) else x.flags.c_contiguous:
        return
    kind = "a contiguous tensor" if is_torch_tensor(x) else "a C-contiguous array"
    raise ValueError(f"{where or name}: expected {kind} (the kernels index it by strides of "
                     f"its shape); call {_contiguous_fix(x, name)} first")


def array_module(*arrays):
    """numpy or cupy, from where the given arrays live (all must live in one place)."""
    on_gpu = [is_cupy_array(a) for a in arrays if a is not None]
    if any(on_gpu) and not all(on_gpu):
        raise TypeError("arrays live in different places: some are CuPy (GPU) arrays and some "
                        "NumPy (CPU) arrays; move them all to one device first")
    return cupy_module() if any(on_gpu) else np


def resolve_device(device: str) -> str:
    """Map device="auto"|"cpu"|"gpu" to "cpu" or "gpu", refusing "gpu" without one."""
    if not is_one_of(device, ("auto", "cpu", "gpu")):
        raise ValueError(f"device: expected 'auto', 'cpu' or 'gpu', got {device!r}")
    if device == "auto":
        return "gpu" if gpu_available() else "cpu"
    if device == "gpu" and not gpu_available():
        raise RuntimeError(f"device='gpu' was asked for, but: {gpu_status()}")
    return device


def device_module(device: str = "auto"):
    """numpy or cupy for device "auto"|"cpu"|"gpu" (as resolve_device picks): the module to
    make new arrays with where no array exists yet to ask (array_module)."""
    return cupy_module() if resolve_device(device) == "gpu" else np


def data_pointer(x) -> int:
    """The address of an array's first element (NumPy or CuPy)."""
    return int(x.data.ptr) if is_cupy_array(x) else int(x.ctypes.data)


def to_numpy(x) -> np.ndarray:
    """A NumPy copy (or view) of a NumPy or CuPy array."""
    return x.get() if is_cupy_array(x) else np.asarray(x)


def to_numpy_together(*arrays, into=None) -> tuple:
    """NumPy copies of several arrays with one wait for the GPU instead of one per array: the
    CuPy ones are copied asynchronously into page-locked host memory (CuPy's pinned pool, or
    `into`: one page-locked array per array, of its shape and dtype, that a caller calling
    again and again keeps) on the current stream, which is then synchronised once. NumPy
    arrays come back as they are."""
    on_gpu = [a for a in arrays if is_cupy_array(a)]
    if not on_gpu:
        return tuple(np.asarray(a) for a in arrays)
    cp = cupy_module()
    import cupyx  # noqa: PLC0415 - ships with CuPy

    out = []
    for i, a in enumerate(arrays):
        if is_cupy_array(a):
            host = into[i] if into is not None else cupyx.empty_pinned(a.shape, a.dtype)
            if not a.flags.c_contiguous:
                a = cp.ascontiguousarray(a)   # a view: one copy on the GPU first
            a.get(out=host, blocking=False)
            out.append(host)
        else:
            out.append(np.asarray(a))
    cp.cuda.get_current_stream().synchronize()
    return tuple(out)


def pinned_like(*arrays) -> tuple:
    """Page-locked host arrays of these CuPy arrays' shapes and dtypes (`into=` above)."""
    import cupyx  # noqa: PLC0415 - ships with CuPy
    return tuple(cupyx.empty_pinned(a.shape, a.dtype) for a in arrays)
