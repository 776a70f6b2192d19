"""Compile and launch a learner's CUDA C kernel where the course runs kernels.

`device="auto"` uses the GPU when CuPy has one (`backend.gpu_available()`), else the CPU
executor; `device="cpu"` forces the executor, whose checked mode names the thread and
block of a bad access, and whose race check (on for every check launch) names two threads
that touch one shared-memory byte between barriers, at least one writing, without atomics.

Outputs are poisoned before the launch with a NaN of a bit pattern no arithmetic makes
(`POISON_BITS`): an element still holding it was never written (`unwritten`), while a NaN
the kernel computed has another pattern. So a kernel that writes nothing is
recognized as "not attempted", and an unwritten element is told apart from a 0/0.
"""
from __future__ import annotations

import re

import numpy as np

from ..backend import resolve_device
from .faults import describe_kernel_exception
from .report import Mismatch

KERNEL_TIMEOUT = 10.0  # seconds per launch on the CPU executor (checks launch small problems)


def where(device: str) -> str:
    return ("the GPU (CuPy)" if resolve_device(device) == "gpu"
            else "the CPU executor (checked mode: bad accesses name their thread and block)")


def _code_only(source: str) -> str:
    """The source without comments and string literals (for the lint)."""
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    source = re.sub(r"//[^\n]*", " ", source)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', source)


def lint(source: str, name: str) -> None:
    """Refuse, before compiling, what NVRTC would refuse or what would hide a kernel."""
    if not isinstance(source, str):
        raise Mismatch(f"expected the kernel source as a string, got {type(source).__name__}",
                       "pass the SOURCE string defined in the cell above.")
    code = _code_only(source)
    if re.search(r"\bINFINITY\b", code) and not re.search(r"#\s*define\s+INFINITY\b", code):
        raise Mismatch("the kernel uses INFINITY, which NVRTC does not define (there is no "
                       "<math.h> on the GPU compiler)",
                       "start the running max at -FLT_MAX style constant, e.g. -3.0e38f, or "
                       "__int_as_float(0xff800000) for a true -inf (the guide's bug).")
    if re.search(r"#\s*include\s*<(math\.h|cmath|stdio\.h|cstdio|stdlib\.h)>", code):
        raise Mismatch("the kernel includes a host C header", "NVRTC has no C library "
                       "headers: expf, fmaxf, sqrtf and printf are built in; drop the #include.")
    if not re.search(rf"\b{re.escape(name)}\s*\(", code):
        raise Mismatch(f"no kernel named {name!r} in the source",
                       f"keep the kernel's name and signature from the prompt: "
                       f"extern \"C\" __global__ void {name}(...).")
    head = re.search(rf'extern\s+"C"[^;{{}}]*?__global__[^;{{}}]*?\b{re.escape(name)}\s*\(',
                     _code_only(source.replace('"C"', "EXTERN_C")).replace("EXTERN_C", '"C"'))
    if not head:
        raise Mismatch(f"{name} is not declared extern \"C\" __global__",
                       "without extern \"C\" the C++ compiler mangles the name and CuPy cannot "
                       "find the kernel: write extern \"C\" __global__ void "
                       f"{name}(...).")


class Kernel:
    """A compiled learner kernel plus where it runs."""

    def __init__(self, source: str, name: str, device: str = "auto"):
        from ..rawkernel import RawKernel  # noqa: PLC0415 - CuPy / executor on demand
        self.name, self.device = name, resolve_device(device)
        self.racecheck = self.device == "cpu"
        lint(source, name)
        try:
            self.kernel = RawKernel(source, name)
            if self.device == "gpu":
                self.kernel.gpu.compile()
            else:
                self._compile_cpu()
        except Exception as exc:  # a compile error: report once, run no case
            described = describe_kernel_exception(exc)
            if described is None:
                raise Mismatch(f"the kernel could not be built: {type(exc).__name__}: {exc}",
                               "keep the signature from the prompt.") from exc
            hints = getattr(exc, "hints", None)
            hint = described[1] + (" " + " ".join(hints) if hints else "")
            raise Mismatch(described[0], hint) from exc

    def _compile_cpu(self) -> None:
        """The race check's (instrumented) build; if only that build fails, where the compiler
        cannot instrument, the plain build, without the race check."""
        try:
            self.kernel.cpu.compile(instrumented=True)
        except Exception:
            self.kernel.cpu.compile()     # the learner's own compile error surfaces here
            self.racecheck = False

    def launch(self, grid, block, args, shared_mem: int = 0, outputs=()) -> list[np.ndarray]:
        """Launch with NumPy args; return NumPy copies of the arguments at `outputs`."""
        if self.device == "cpu":
            args = tuple(np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a
                         for a in args)
            try:
                self.kernel(grid, block, args, shared_mem=shared_mem, timeout=KERNEL_TIMEOUT,
                            racecheck=self.racecheck)
            except TypeError as exc:
                raise Mismatch(f"the launch was refused: {exc}", "keep the kernel's parameter "
                               "list exactly as in the prompt (names may change, types and "
                               "order may not).") from exc
            return [args[i].copy() for i in outputs]
        from ..backend import cupy_module  # noqa: PLC0415
        cp = cupy_module()
        dev_args = tuple(cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args)
        try:
            self.kernel(grid, block, dev_args, shared_mem=shared_mem)
        except TypeError as exc:
            raise Mismatch(f"the launch was refused: {exc}", "keep the kernel's parameter "
                           "list exactly as in the prompt.") from exc
        cp.cuda.runtime.deviceSynchronize()
        return [cp.asnumpy(dev_args[i]) for i in outputs]


# A signalling NaN with a payload: arithmetic never produces it (a NaN result is quiet), and
# copies keep it bit for bit, on the GPU and through the CPU executor.
POISON_BITS = 0x7FA5A5A5


def poisoned(shape) -> np.ndarray:
    """A float32 output filled with the poison NaN."""
    return np.full(shape, POISON_BITS, dtype=np.uint32).view(np.float32)


def unwritten(out: np.ndarray) -> np.ndarray:
    """True where `out` (float32, from `poisoned`) still holds the poison."""
    return np.ascontiguousarray(out, dtype=np.float32).view(np.uint32) == POISON_BITS
