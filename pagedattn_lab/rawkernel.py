"""`RawKernel`: a CUDA C kernel called exactly like `cupy.RawKernel`, run where its arrays live.

    kern = RawKernel(source, "vector_add")
    kern((blocks,), (threads,), (a, b, c, np.int32(n)), shared_mem=0)

CuPy arrays run on the GPU (through cupy.RawKernel); NumPy arrays run on the CPU executor
(`pagedattn_lab.cpu.RawKernel`, the same source compiled for the CPU); a mix is refused.
With no arrays at all, the GPU is used when there is one. Either way the arguments are
checked first against the kernel's signature (`pagedattn_lab.signature`): a float64 array
for a `float*` or a Python int for an `int` is an error here, not silent garbage.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import glob
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np

from .attention_common import MAX_SHARED_MEM
from .signature import check_launch_args, collect_defines, parse_kernel_signature

__all__ = ["RawKernel", "PackedLaunch", "in_process"]

# Set within `in_process()`.
_IN_PROCESS = contextvars.ContextVar("pagedattn_lab_in_process", default=False)


@contextlib.contextmanager
def in_process():
    """Within it, a CPU-executor launch of one of the package's own kernels (made with
    `trusted=True`) that passes no `checked=` and counts or race-checks nothing runs in this
    process, as with `checked=False`: no worker fork, no copies. The serving engine steps
    inside it: its many tiny launches then take about a third of the time (forking a large
    Python process is most of a small launch's cost). Those kernels are tested checked, where a
    bad access is caught; a learner's kernel (not trusted) stays checked here too. A notebook
    that passes `trusted=True` itself gives up the checks for its own launches only: the
    grader builds learners' kernels itself, untrusted (grading/kernel_runner.py). No effect
    on the GPU."""
    token = _IN_PROCESS.set(True)
    try:
        yield
    finally:
        _IN_PROCESS.reset(token)


def in_process_on_cpu() -> bool:
    """Whether the caller is within `in_process()`."""
    return _IN_PROCESS.get()


def _is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def _as_tuple(dims, what: str) -> tuple:
    """grid/block as a tuple of 1-3 Python ints (cupy.RawKernel refuses a bare int)."""
    if isinstance(dims, (int, np.integer)) and not isinstance(dims, bool):
        return (int(dims),)
    if isinstance(dims, (tuple, list)) and 1 <= len(dims) <= 3 and all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
        return tuple(int(d) for d in dims)
    raise TypeError(f"{what}: expected an int or a tuple of 1 to 3 ints, got {dims!r}")


def shared_mem_bytes(shared_mem) -> int:
    """shared_mem as the int a GPU launch takes (cupy.RawKernel's size_t: no float, no None,
    nothing negative, nothing past what any GPU gives a block), checked on both devices."""
    if isinstance(shared_mem, bool) or not isinstance(shared_mem, (int, np.integer)):
        raise TypeError(f"shared_mem: expected an int (bytes of dynamic shared memory per "
                        f"block), got {shared_mem!r}")
    shared_mem = int(shared_mem)
    if shared_mem < 0:
        raise ValueError(f"shared_mem: must be >= 0, got {shared_mem}")
    if shared_mem > MAX_SHARED_MEM:
        raise ValueError(f"shared_mem={shared_mem} bytes: no CUDA GPU gives a block more than "
                         f"{MAX_SHARED_MEM // 1024} KiB of shared memory")
    return shared_mem


_CUDA_HEADERS = re.compile(r'^[ \t]*#[ \t]*include[ \t]*[<"](mma|cuda_bf16|cuda_fp16|cuda_fp8)\.h[>"]',
                           re.M)


@functools.lru_cache(maxsize=1)
def cuda_include_dir() -> str | None:
    """A directory with the CUDA headers a kernel may include (mma.h, cuda_bf16.h,
    cuda_fp8.h), for NVRTC: cuda-pathfinder's, $CUDA_PATH/$CUDA_HOME, CuPy's CUDA path,
    /usr/local/cuda, or an NVIDIA pip wheel's. None when there is none."""
    candidates = []
    try:
        from cuda import pathfinder  # noqa: PLC0415 - optional (cuda-pathfinder)
        candidates.append(pathfinder.find_nvidia_header_directory("cudart"))
    except Exception:  # noqa: BLE001 - absent or too old: try the others
        pass
    candidates += [os.path.join(os.environ[v], "include") for v in ("CUDA_PATH", "CUDA_HOME")
                   if os.environ.get(v)]
    try:
        from cupy.cuda import get_cuda_path  # noqa: PLC0415
        candidates.append(os.path.join(get_cuda_path() or "", "include"))
    except Exception:  # noqa: BLE001
        pass
    candidates.append("/usr/local/cuda/include")
    for site in sys.path:
        candidates += sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))
    # crt/mma.h too: CUDA 13's pip wheels ship mma.h without the crt/mma.h it includes
    # (seen on the H200 image: "cannot open source file crt/mma.h" from cuda-pathfinder's dir).
    for c in candidates:
        if c and all((Path(c) / h).is_file() for h in ("mma.h", "crt/mma.h", "cuda_bf16.h")):
            return c
    return None


def gpu_options(code: str, options: tuple) -> tuple:
    """NVRTC options for `code`: `options`, plus -I<CUDA include dir> when the source includes
    a CUDA header that NVRTC may not find by itself (mma.h, cuda_bf16.h, ...). The CPU
    executor has its own copies of these headers (pagedattn_lab/cpu/include)."""
    if not _CUDA_HEADERS.search(code) or any(str(o).startswith(("-I", "--include-path"))
                                             for o in options):
        return options
    found = cuda_include_dir()
    return options + (f"-I{found}",) if found else options


class RawKernel:
    """One kernel for both devices. See the module docstring.

    `options`: NVRTC options (a tuple of strings), passed to CuPy; on the CPU, -D, -U, -I and
    -std are honoured and the others ignored. Keywords for the CPU executor: `filename`,
    `timeout`, `checked`, `workers`, `stack_kb`, `racecheck`, `trusted` (see
    pagedattn_lab.cpu.RawKernel). `enable_cooperative_groups` goes to both (the CPU executor
    refuses it). Other keywords (`backend`, `jitify`, ...) go to cupy.RawKernel.
    """

    def __init__(self, code: str, name: str, options=(), *, filename: str | None = None,
                 timeout: float | None = None, checked: bool = True, workers: int | None = None,
                 stack_kb: int | None = None, racecheck: bool | None = None,
                 trusted: bool = False, enable_cooperative_groups: bool = False,
                 **cupy_kwargs):
        if timeout is not None:   # refused here, as cpu.RawKernel does, not at the first launch
            from .cpu.kernel import check_timeout  # noqa: PLC0415 - the executor loads on demand
            timeout = check_timeout(timeout)
        self.code = code
        self.name = name
        self.options = tuple(options or ())
        self.signature = parse_kernel_signature(code, name, collect_defines(code, self.options))
        self._cpu_kwargs = dict(filename=filename, timeout=timeout, checked=checked,
                                workers=workers, stack_kb=stack_kb, racecheck=racecheck,
                                trusted=trusted,
                                enable_cooperative_groups=enable_cooperative_groups)
        self._cupy_kwargs = dict(cupy_kwargs,
                                 enable_cooperative_groups=enable_cooperative_groups)
        self._cpu = None
        self._gpu = None
        self._max_dyn_smem: int | None = None

    # -- the two executors, built on first use ------------------------------------------
    @property
    def cpu(self):
        """The kernel on the CPU executor (pagedattn_lab.cpu.RawKernel)."""
        if self._cpu is None:
            from .cpu import RawKernel as CpuRawKernel  # noqa: PLC0415 - loaded on demand
            self._cpu = CpuRawKernel(self.code, self.name, self.options, **self._cpu_kwargs)
            if self._max_dyn_smem is not None:
                self._cpu.max_dynamic_shared_size_bytes = self._max_dyn_smem
        return self._cpu

    @property
    def gpu(self):
        """The kernel as a cupy.RawKernel (needs CuPy and a CUDA device)."""
        if self._gpu is None:
            from .backend import cupy_module  # noqa: PLC0415 - never import CuPy eagerly
            cupy = cupy_module()
            self._gpu = cupy.RawKernel(self.code, self.name,
                                       options=gpu_options(self.code, self.options),
                                       **self._cupy_kwargs)
            if self._max_dyn_smem is not None:
                self._gpu.max_dynamic_shared_size_bytes = self._max_dyn_smem
        return self._gpu

    @property
    def max_dynamic_shared_size_bytes(self) -> int:
        return self._max_dyn_smem if self._max_dyn_smem is not None else 48 * 1024

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value: int) -> None:
        self._max_dyn_smem = int(value)
        if self._cpu is not None:
            self._cpu.max_dynamic_shared_size_bytes = self._max_dyn_smem
        if self._gpu is not None:
            self._gpu.max_dynamic_shared_size_bytes = self._max_dyn_smem

    # -- launching ----------------------------------------------------------------------
    def device_for(self, args) -> str:
        """'gpu' or 'cpu': where a launch with these arguments runs."""
        if not isinstance(args, (tuple, list)):
            return "cpu"   # check_launch_args explains the mistake
        on_gpu = [i for i, a in enumerate(args) if _is_cupy(a)]
        on_cpu = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
        if on_gpu and on_cpu:
            def names(idx):
                return ", ".join(f"{i} ({self.signature[i].name!r})" if i < len(self.signature)
                                 else str(i) for i in idx)
            raise TypeError(
                f"kernel {self.name!r}: arguments live in different places: CuPy (GPU) arrays "
                f"at argument(s) {names(on_gpu)} and NumPy (CPU) arrays at argument(s) "
                f"{names(on_cpu)}. Move them to one device first (cupy.asarray(x) or x.get()).")
        if on_gpu:
            return "gpu"
        if on_cpu:
            return "cpu"
        from .backend import gpu_available  # noqa: PLC0415
        return "gpu" if gpu_available() else "cpu"

    def __call__(self, grid, block, args, shared_mem: int = 0, **cpu_options) -> None:
        """Launch like cupy.RawKernel: kern(grid, block, args, shared_mem=0).

        `cpu_options` (timeout=, checked=, workers=, racecheck=) apply to the CPU executor
        only; the GPU has compute-sanitizer for races.
        """
        if self.device_for(args) == "cpu":
            self.cpu(grid, block, args, shared_mem=shared_mem, **cpu_options)
            return
        from .backend import cupy_module  # noqa: PLC0415
        cupy = cupy_module()
        check_launch_args(self.signature, args, self.name, (cupy.ndarray,))
        # cupy.RawKernel wants tuples; an int is accepted here as in the course's examples.
        self.gpu(_as_tuple(grid, "grid"), _as_tuple(block, "block"), tuple(args),
                 shared_mem=shared_mem_bytes(shared_mem))

    def __repr__(self) -> str:
        return f"<pagedattn_lab.RawKernel {self.name!r}>"


class PackedLaunch:
    """One planned launch of a `cupy.RawKernel` whose arguments are packed once, on the host.

    `cupy.RawKernel` converts every argument at every call (an ndarray into a C struct of its
    pointer, size, shape and strides; a NumPy scalar into a typed C value) and looks up the
    compiled function of the current device: microseconds for a kernel of ~20 arguments, at
    every layer of every step. A plan's launches repeat with the same arguments but a few,
    so here every argument value sits in an 8-byte slot of a host buffer filled once
    (`pack_arguments`), and the kernel gets `cupy.cuda.function.CPointer`s to the slots, which
    CuPy hands to cuLaunchKernel as they are. `launch(values)` writes the changing arguments
    into the first slots and launches; cuLaunchKernel copies the values when it is called, so
    the next launch may rewrite them at once, and a lock keeps two threads that run one plan
    from interleaving. The launch goes to the device current at construction.
    Called like a cupy.RawKernel (`(grid, block, args, shared_mem=...)`), it launches unpacked.
    """

    def __init__(self, kern, grid, block, shared_mem: int, make_args, n_varying: int):
        from .backend import cupy_module  # noqa: PLC0415 - never import CuPy eagerly
        cupy = cupy_module()
        self.kern = kern
        self._function = kern.kernel   # compiled (or found in CuPy's cache) for this device
        self._grid, self._block = _as_tuple(grid, "grid"), _as_tuple(block, "block")
        self._shared = int(shared_mem)
        values, arg_slots = pack_arguments(make_args, n_varying, kern.name)
        self._slots = (ctypes.c_uint64 * len(values))(*values)
        base = ctypes.addressof(self._slots)
        self._args = tuple(cupy.cuda.function.CPointer(base + 8 * i) for i in arg_slots)
        self._make_args = make_args   # keeps the packed arrays alive
        self._n_varying = n_varying
        self._lock = threading.Lock()

    def launch(self, values: tuple) -> None:
        """Launch with `values`: the changing arguments in make_args' order, each as the
        integer its slot holds (an address; a float32's bits)."""
        with self._lock:
            self._slots[:self._n_varying] = values
            self._function(self._grid, self._block, self._args, self._shared)

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        self.kern(grid, block, args, shared_mem=shared_mem)


def pack_arguments(make_args, n_varying: int, name: str = "kernel") -> tuple[list, list]:
    """(slot values, the slot of each argument) of a kernel's arguments, 8 bytes a slot.

    `make_args(*varying)` returns the argument tuple with the `n_varying` changing arguments
    placed where they go; it is called once, with markers, to find their places: they take
    slots 0 .. n_varying-1 (value 0 until launched). Every other argument gets the next
    slot: a CuPy array its data pointer, a NumPy scalar of at most 8 bytes its bytes
    (little-endian, zero-padded: the kernel reads as many as its parameter's type has)."""
    markers = [_Varying(i) for i in range(n_varying)]
    values, arg_slots = [0] * n_varying, []
    for position, arg in enumerate(make_args(*markers)):
        if isinstance(arg, _Varying):
            arg_slots.append(arg.index)
            continue
        if _is_cupy(arg):
            values.append(int(arg.data.ptr))
        elif isinstance(arg, np.generic) and arg.dtype.itemsize <= 8:
            values.append(int.from_bytes(arg.tobytes().ljust(8, b"\0"), "little"))
        else:
            raise TypeError(f"kernel {name!r}: argument {position} ({type(arg).__name__}) "
                            f"cannot be packed: expected a CuPy array or a NumPy scalar of "
                            f"at most 8 bytes")
        arg_slots.append(len(values) - 1)
    return values, arg_slots


class _Varying:
    """Marks the place of a changing argument in pack_arguments' call of make_args."""
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index
