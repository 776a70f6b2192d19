"""`pagedattn_lab.cpu.RawKernel`: a CUDA kernel run on the CPU, called like cupy.RawKernel."""
from __future__ import annotations

import ctypes as C
import math
import os
import threading

import numpy as np

from ..rawkernel import in_process_on_cpu, shared_mem_bytes
from ..signature import (as_passed, check_launch_args, collect_defines, find_kernels,
                         parse_kernel_signature)
from . import abi, launch
from .artifacts import loadable_path
from .compiler import compile_source, parse_options
from .device_data import holds_writable_globals
from .errors import ExecutorUnavailableError, KernelCompileError
from .source import has_device_variables, uses_printf

DEFAULT_TIMEOUT = 30.0
# The course's own kernels are tested to finish; what stops one on the CPU is a large problem
# (a prefill of 64 heads of 256 dims over 700 tokens takes 28-38 s on 2 cores), not a loop.
TRUSTED_TIMEOUT = 3600.0
DEFAULT_STACK_KB = 256
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
_LIBS: dict[str, C.CDLL] = {}
_LIBS_LOCK = threading.Lock()


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


def _env_timeout(default: float = DEFAULT_TIMEOUT) -> float:
    value = _env_float("PAGEDATTN_LAB_CPU_TIMEOUT", default)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"timeout: $PAGEDATTN_LAB_CPU_TIMEOUT must be a finite number of "
                         f"seconds above 0, got {os.environ.get('PAGEDATTN_LAB_CPU_TIMEOUT')!r}")
    return value


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def check_timeout(timeout) -> float:
    """A launch's time limit in seconds: a finite number above 0, else a ValueError."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer,
                                                             np.floating)):
        raise TypeError(f"timeout: expected a number of seconds (> 0), got {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout: expected a finite number of seconds above 0, got "
                         f"{timeout!r} (there is no 'no limit': pass a large number)")
    return float(timeout)


def _dims(value, what: str) -> tuple[int, int, int]:
    """An int or a tuple of 1-3 ints, as CuPy takes grid and block, as (x, y, z)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        dims = [int(value)]
    elif isinstance(value, (tuple, list)) and 1 <= len(value) <= 3 and \
            all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        dims = [int(v) for v in value]
    else:
        raise TypeError(f"{what}: expected an int or a tuple of 1 to 3 ints, got {value!r}")
    dims += [1] * (3 - len(dims))
    if any(d < 1 for d in dims):
        raise ValueError(f"{what}: every dimension must be at least 1, got {tuple(dims)} (CUDA "
                         f"rejects this launch with 'invalid configuration argument')")
    return dims[0], dims[1], dims[2]


def _load(path: str) -> C.CDLL:
    with _LIBS_LOCK:
        lib = _LIBS.get(path)
        if lib is None:
            lib = abi.bind(C.CDLL(loadable_path(path), mode=getattr(os, "RTLD_LOCAL", 0),
                                  use_errno=True))
            _LIBS[path] = lib
        return lib


def _entry_point(lib, name: str, filename: str) -> int:
    """The address of kernel `name`'s entry point in `lib`. It stands just past each
    definition of the kernel (source.py), so it is missing where the compiler kept none: one
    defined only inside an #if branch that was not compiled (ctypes said "undefined symbol:
    __pal_entry_k", naming no kernel; CuPy says "named symbol not found")."""
    try:
        symbol = getattr(lib, f"__pal_entry_{name}")
    except AttributeError:
        raise KernelCompileError.refused(
            name, filename, f"has no definition of the kernel {name!r} in the code the "
            f"compiler kept (is it only inside an #if branch that was not compiled, or only "
            f"declared?)", f"define {name} outside the #if, or pass the -D option that "
            f"selects its branch") from None
    return C.cast(symbol, C.c_void_p).value


class RawKernel:
    """A CUDA C kernel compiled for, and run on, the CPU.

    `RawKernel(code, name, options=())` then `kern(grid, block, args, shared_mem=0)`, as with
    cupy.RawKernel; arrays are NumPy arrays (written back in place), scalars NumPy scalars.

    Extra keywords: `filename` (used in compiler messages; default "<first kernel>.cu"), `timeout`
    (seconds, default $PAGEDATTN_LAB_CPU_TIMEOUT or 30), `trusted` (default False; True for the
    package's own kernels: without `timeout` or $PAGEDATTN_LAB_CPU_TIMEOUT their limit is an
    hour, and a timeout blames the problem's size, not a loop; their build leaves out the
    check of indices past an array, kernel_checks.py), `checked` (default True: run in
    worker processes, catch out-of-bounds accesses and crashes; False: in-process, faster,
    a crash kills the process), `workers` (processes for a checked launch), `stack_kb` (per
    CUDA thread, default $PAGEDATTN_LAB_CPU_STACK_KB or 256), `racecheck` (default
    $PAGEDATTN_LAB_CPU_RACECHECK or False: run an instrumented build that raises
    SharedMemoryRace on unordered shared-memory accesses). The options -D, -U, -I and -std
    are honoured; other NVRTC options are ignored on the CPU.
    """

    def __init__(self, code: str, name: str, options=(), backend: str = "nvrtc", *,
                 filename: str | None = None, timeout: float | None = None,
                 checked: bool = True, workers: int | None = None,
                 stack_kb: int | None = None, racecheck: bool | None = None,
                 trusted: bool = False, translate_cucomplex: bool = False,
                 enable_cooperative_groups: bool = False, jitify: bool = False):
        if os.name != "posix":
            raise ExecutorUnavailableError(
                "the CPU executor needs Linux or macOS (it uses fork and guard pages); on "
                "Windows, run the course in WSL")
        if enable_cooperative_groups:
            raise NotImplementedError("the CPU executor does not support cooperative groups")
        self.code = code
        self.name = name
        self.options = tuple(options or ())
        self.backend = backend
        # Default file name: from the source's first kernel, so that every kernel of one
        # source shares one compiled library.
        self.filename = filename or f"{(find_kernels(code) or [name])[0]}.cu"
        self.timeout = None if timeout is None else check_timeout(timeout)
        self.trusted = bool(trusted)
        self.checked = checked
        self.workers = workers
        self.stack_kb = stack_kb
        self.racecheck = racecheck
        # As cupy.RawKernel's: a launch with more dynamic shared memory is refused, as on a
        # GPU, where more than 48 KiB needs this opt-in.
        self.max_dynamic_shared_size_bytes = 48 * 1024
        # As cupy.RawKernel's: 1024, or the kernel's __launch_bounds__ maximum once compiled.
        self.max_threads_per_block = 1024
        self.signature = parse_kernel_signature(code, name, collect_defines(code, self.options))
        self.compile_seconds: float | None = None
        self.cached: bool | None = None
        self._lib = None
        self._entry = None
        # instrumented? -> (library, entry, path, one worker?)
        self._builds: dict[bool, tuple] = {}
        flags, ignored = parse_options(self.options)
        self.ignored_options = tuple(ignored)
        self._prints = uses_printf(code, flags)
        self._single_worker = self._prints or has_device_variables(code)

    def compile(self, instrumented: bool = False) -> "RawKernel":
        """Compile now (otherwise the first call does). Sets compile_seconds and cached.
        `instrumented`: the build for access counts and the race check."""
        if instrumented not in self._builds:
            names = find_kernels(self.code, include_templates=False)
            if self.name not in names:
                names.append(self.name)
            result = compile_source(self.code, names, self.options, filename=self.filename,
                                    kernel=self.name, instrumented=instrumented,
                                    bounds=not self.trusted)
            self.compile_seconds, self.cached = result.seconds, result.cached
            lib = _load(result.path)
            entry = _entry_point(lib, self.name, self.filename)
            # writable globals the source shows, or only the library's symbol table does (a
            # header's, a -D macro's): each worker would have its own copy
            one_worker = self._single_worker or holds_writable_globals(result.path, self.code)
            self._builds[instrumented] = (lib, entry, result.path, one_worker)
            if hasattr(lib, f"__pal_max_threads_{self.name}"):
                self.max_threads_per_block = min(1024, C.c_longlong.in_dll(
                    lib, f"__pal_max_threads_{self.name}").value)
            if not instrumented:
                self._lib, self._entry = lib, entry
        return self

    @property
    def fiber_kind(self) -> str:
        return self.compile()._lib.pal_fiber_kind().decode()

    def __call__(self, grid, block, args, shared_mem: int = 0, *, timeout: float | None = None,
                 checked: bool | None = None, workers: int | None = None,
                 racecheck: bool | None = None) -> None:
        self._launch(grid, block, args, shared_mem, timeout=timeout, checked=checked,
                     workers=workers, racecheck=racecheck)

    def _launch(self, grid, block, args, shared_mem: int = 0, *, timeout=None, checked=None,
                workers=None, racecheck=None, count: bool = False):
        """One launch; with `count`, the raw access counts (see counters.Counters.read)."""
        check_launch_args(self.signature, args, self.name, (np.ndarray,))
        g = _dims(grid, "grid")
        b = _dims(block, "block")
        for axis, v, m in zip("xyz", b, MAX_BLOCK):
            if v > m:
                raise ValueError(f"block {b}: block.{axis} = {v} is over CUDA's limit of {m} "
                                 f"(x, y <= 1024, z <= 64)")
        if b[0] * b[1] * b[2] > 1024:
            raise ValueError(f"block {b}: CUDA allows at most 1024 threads per block; got "
                             f"{b[0] * b[1] * b[2]}")
        for axis, v, m in zip("xyz", g, MAX_GRID):
            if v > m:
                raise ValueError(f"grid {g}: grid.{axis} = {v} is over CUDA's limit of {m}")
        shared_mem = self._check_shared_mem(shared_mem)
        if timeout is None:
            timeout = self.timeout if self.timeout is not None else _env_timeout(
                TRUSTED_TIMEOUT if self.trusted else DEFAULT_TIMEOUT)
        timeout = check_timeout(timeout)
        if racecheck is None:
            racecheck = self.racecheck if self.racecheck is not None else _env_flag(
                "PAGEDATTN_LAB_CPU_RACECHECK")
        instrument = (abi.INSTR_COUNT if count else 0) | (abi.INSTR_RACE if racecheck else 0)
        if checked is None:
            checked = self.checked and not (self.trusted and not instrument
                                            and in_process_on_cpu())
        lib, entry, path, one_worker = self.compile(bool(instrument))._builds[bool(instrument)]
        if b[0] * b[1] * b[2] > self.max_threads_per_block:
            raise ValueError(
                f"block {b}: {b[0] * b[1] * b[2]} threads per block is over the kernel's "
                f"__launch_bounds__ maximum of {self.max_threads_per_block}; a GPU refuses this "
                f"launch (CUDA_ERROR_INVALID_VALUE). Launch at most that many threads per block "
                f"or raise the bound")
        nblocks = g[0] * g[1] * g[2]
        if one_worker:
            nworkers = 1   # printf output in block order; writable globals in one process
        else:
            nworkers = (workers or self.workers
                        or launch.default_workers(nblocks, b[0] * b[1] * b[2]))
        stack_kb = self.stack_kb or int(_env_float("PAGEDATTN_LAB_CPU_STACK_KB", DEFAULT_STACK_KB))
        return launch.run(lib, entry, kernel=self.name, sig=self.signature,
                          args=as_passed(self.signature, args),
                          grid=g, block=b, shared_mem=shared_mem, checked=bool(checked),
                          timeout=timeout, workers=min(nworkers, nblocks),
                          stack_bytes=max(16, stack_kb) * 1024, instrument=instrument,
                          last_first=bool(checked) and not self._prints,
                          source=(path, self.filename, self.code), trusted=self.trusted)

    def _check_shared_mem(self, shared_mem) -> int:
        """shared_mem as the GPU would take it, within the kernel's dynamic shared limit."""
        shared_mem = shared_mem_bytes(shared_mem)
        limit = int(self.max_dynamic_shared_size_bytes)
        if shared_mem > limit:
            # The GPU refuses such a launch (CUDA_ERROR_INVALID_VALUE) until the kernel opts in.
            raise ValueError(
                f"shared_mem={shared_mem} bytes is over the kernel's "
                f"max_dynamic_shared_size_bytes ({limit}); a GPU refuses this launch with "
                f"CUDA_ERROR_INVALID_VALUE. Set kern.max_dynamic_shared_size_bytes = "
                f"{shared_mem} first (above 48 KiB a kernel must opt in)")
        return shared_mem

    def __repr__(self) -> str:
        return f"<pagedattn_lab.cpu.RawKernel {self.name!r} ({self.filename})>"
