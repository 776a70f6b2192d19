"""Compile and launch a learner's CUDA C kernel where the course runs kernels.

`device="auto"` uses the GPU when CuPy has one (`backend.gpu_available()`), else the CPU
executor; so does `device="gpu"`, noting it in the report (`kernel_device`): a kernel written
for the GPU is still graded on a machine without one. `device="cpu"` forces the executor,
whose checked mode names the thread and block of a bad access, and whose race check (on for
every check launch) names two threads that touch one shared-memory byte between barriers,
at least one writing, without atomics.

Outputs are poisoned before the launch with a NaN of a bit pattern no arithmetic makes
(`POISON_BITS`): an element still holding it was never written (`unwritten`), while a NaN
the kernel computed has another pattern. So a kernel that writes nothing is
recognized as "not attempted", and an unwritten element is told apart from a 0/0.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from ..backend import gpu_available, resolve_device
from ..validate_kinds import is_one_of
from . import slack_reads
from .faults import describe_kernel_exception
from .kernel_lint import lint, refuse_unlisted_headers
from .report import Mismatch, note
from .stub_params import by_stub_names, name_as_stub, stub_arrays
from .time_limits import CaseTimeout
from .wire import ProtocolError

KERNEL_TIMEOUT = 10.0  # seconds per launch on the CPU executor (checks launch small problems)
# On the GPU every array argument lies between two bands of GUARD_BYTES bytes of GUARD_FILL:
# the GPU does not fault on a write just outside an allocation (the CPU executor's guard pages
# do), so such a write would go unseen; in a band it shows after the launch.
GUARD_BYTES = 4096
GUARD_FILL = 0xA5


class OutOfBoundsWrite(Mismatch):
    """A GPU launch wrote into the band before or after argument `arg_index` (`buffer`, its
    parameter's name); `index` is the first element written there, negative before its start."""

    def __init__(self, buffer: str, arg_index: int, index: int):
        self.buffer, self.arg_index, self.index = buffer, arg_index, index
        where = "before its start" if index < 0 else "past its end"
        super().__init__(f"the kernel wrote {where}: {buffer}[{index}]",
                         "an index " + ("below 0" if index < 0 else "past the last element") +
                         f" reached a write to {buffer}: check the index before writing.")


def band_write(before: np.ndarray, after: np.ndarray, nbytes: int, itemsize: int):
    """The element index of the first byte a launch changed in the bands around an array of
    nbytes (before / after: the bands' bytes after the launch), or None."""
    hit = np.flatnonzero(before != GUARD_FILL)
    if hit.size:
        return (int(hit[0]) - before.size) // itemsize   # (negative: before element 0)
    hit = np.flatnonzero(after != GUARD_FILL)
    return None if not hit.size else (nbytes + int(hit[0])) // itemsize
# Under the grader's judge: (source, name, device) -> the kernel, built and launched in the
# submission's sandbox, never in the grader's process (see grading/judge.py). Per thread.
_elsewhere = threading.local()


@contextlib.contextmanager
def kernels_elsewhere(factory):
    """Within the block, `Kernel` compiles and launches through `factory` (the grader)."""
    previous = getattr(_elsewhere, "factory", None)
    _elsewhere.factory = factory
    try:
        yield
    finally:
        _elsewhere.factory = previous


# (no GPU, no driver, or CuPy missing or broken: gpu_status() says which, at length)
NO_GPU_NOTE = "graded on the CPU executor: no usable GPU (gpu_status() says why)"


def kernel_device(device: str) -> str:
    """"cpu" or "gpu": where a check runs a learner's kernel for `device`, as
    backend.resolve_device says, except that device="gpu" without a GPU is the CPU executor
    (the same CUDA C) rather than an error, so that a kernel written for the GPU is still
    graded where there is none; `note_device` puts that in the report."""
    if is_one_of(device, ("gpu",)) and not gpu_available():
        return "cpu"
    return resolve_device(device)


def note_device(asked, ran: str) -> None:
    """Note in the running check's report a kernel asked to run on the GPU that ran on the
    CPU executor (`ran`: where it ran)."""
    if is_one_of(asked, ("gpu",)) and ran == "cpu":
        note(NO_GPU_NOTE)


def where(device: str) -> str:
    return ("the GPU (CuPy)" if kernel_device(device) == "gpu"
            else "the CPU executor (checked mode: bad accesses name their thread and block)")


class Kernel:
    """A compiled learner kernel plus where it runs."""

    def __init__(self, source: str, name: str, device: str = "auto"):
        from ..rawkernel import RawKernel  # noqa: PLC0415 - CuPy / executor on demand
        lint(source, name)
        self.name, self.remote = name, None
        factory = getattr(_elsewhere, "factory", None)
        if factory is not None:
            self.remote = factory(source, name, device)
            self.device, self.racecheck = str(self.remote.device), bool(self.remote.racecheck)
            note_device(device, self.device)
            return
        self.device = kernel_device(device)
        note_device(device, self.device)
        self.racecheck = self.device == "cpu"
        if self.device == "gpu":   # the CPU build checks the files it read (cpu/includes.py)
            refuse_unlisted_headers(source)
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
        """The race check's (instrumented) build; where the compiler cannot instrument at all,
        the plain build, without the race check. A source that builds only uninstrumented
        (an `#error` under __SANITIZE_THREAD__) chose to skip the race check and the counts:
        its instrumented build's error is reported."""
        try:
            self.kernel.cpu.compile(instrumented=True)
        except Exception:
            self.kernel.cpu.compile()     # the learner's own compile error surfaces here
            if _can_instrument():
                raise
            self.racecheck = False

    def count(self, grid, block, args: list, shared_mem: int = 0, *, racecheck: bool = False,
              timeout=None):
        """One launch on the CPU executor with its memory accesses counted (AccessCounts,
        its arrays filed under the stub's names: stub_params.by_stub_names); `args` (a list)
        is written in place, as by `pagedattn_lab.cpu.count_accesses`."""
        with self._stub_names():
            if self.remote is not None:   # the counts and the outputs come from the sandbox
                counts = self.remote.count(grid, block, args, shared_mem,
                                           racecheck=racecheck, timeout=timeout)
            else:
                from ..cpu import count_accesses  # noqa: PLC0415 - the executor on demand
                counts = count_accesses(self.kernel, grid, block, args, shared_mem,
                                        racecheck=racecheck, timeout=timeout)
        return by_stub_names(counts, stub_arrays(self.name))

    @contextlib.contextmanager
    def _stub_names(self):
        """A fault raised within names its argument as the stub does too (`stub_buffer`):
        the hints go by the stub's names, whatever the kernel calls its parameters."""
        try:
            yield
        except Exception as exc:
            name_as_stub(exc, self.name)
            raise

    def launch(self, grid, block, args, shared_mem: int = 0, outputs=()) -> list[np.ndarray]:
        """Launch with NumPy args; return NumPy copies of the arguments at `outputs`. In a
        running case, a launch stopped at a read just before an array's start is rerun plain
        on fresh copies of `args`, and the fault kept for the case's end (slack_reads.py);
        where the rerun fails too, the fault is raised, as the first bad access."""
        try:
            return self.launch_once(grid, block, args, shared_mem, outputs)
        except Exception as exc:   # noqa: BLE001 - all but one kind raised again
            if not slack_reads.rerun_wanted(exc):
                raise
            fault = exc
        fresh = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        try:
            got = self.launch_once(grid, block, fresh, shared_mem, outputs, plain=True)
        except (CaseTimeout, ProtocolError):
            raise
        except Exception:   # noqa: BLE001 - see the docstring
            raise fault from None
        slack_reads.seen(fault)
        return got

    def launch_once(self, grid, block, args, shared_mem: int = 0, outputs=(),
                    plain: bool = False) -> list[np.ndarray]:
        """One launch (`plain`: without the race check, on the CPU); see `launch`."""
        with self._stub_names():
            return self._launch_once(grid, block, args, shared_mem, outputs, plain)

    def _launch_once(self, grid, block, args, shared_mem, outputs, plain) -> list[np.ndarray]:
        if self.remote is not None:
            return [np.asarray(a) for a in self.remote.launch_once(grid, block, args,
                                                                   shared_mem, outputs, plain)]
        if self.device == "cpu":
            args = tuple(np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a
                         for a in args)
            try:
                self.kernel(grid, block, args, shared_mem=shared_mem, timeout=KERNEL_TIMEOUT,
                            racecheck=self.racecheck and not plain)
            except TypeError as exc:
                raise Mismatch(f"the launch was refused: {exc}", "keep the kernel's parameter "
                               "list exactly as in the prompt (names may change, types and "
                               "order may not).") from exc
            return [args[i].copy() for i in outputs]
        from ..backend import cupy_module  # noqa: PLC0415
        cp = cupy_module()
        guarded = {i: _guarded(cp, a) for i, a in enumerate(args) if isinstance(a, np.ndarray)}
        dev_args = tuple(guarded[i][1] if i in guarded else a for i, a in enumerate(args))
        poison_shared_memory(cp)
        try:
            self.kernel(grid, block, dev_args, shared_mem=shared_mem)
        except TypeError as exc:
            raise Mismatch(f"the launch was refused: {exc}", "keep the kernel's parameter "
                           "list exactly as in the prompt.") from exc
        cp.cuda.runtime.deviceSynchronize()
        for i, (buf, arr) in guarded.items():
            index = band_write(cp.asnumpy(buf[:GUARD_BYTES]), cp.asnumpy(buf[-GUARD_BYTES:]),
                               arr.nbytes, arr.itemsize)
            if index is not None:
                raise OutOfBoundsWrite(self._param_name(i), i, index)
        return [cp.asnumpy(dev_args[i]) for i in outputs]

    def _param_name(self, i: int) -> str:
        signature = self.kernel.signature   # (RawKernel's, read from the source)
        return signature[i].name if i < len(signature) else f"argument {i}"


_PROBE_SOURCE = 'extern "C" __global__ void probe(float *x) { x[threadIdx.x] = 1.0f; }\n'


def _can_instrument() -> bool:
    """Whether the CPU executor's compiler builds an instrumented library of a plain kernel
    (asked only when a learner's instrumented build failed; the build is cached on disk)."""
    from ..cpu import RawKernel as CpuKernel  # noqa: PLC0415 - the executor on demand
    try:
        CpuKernel(_PROBE_SOURCE, "probe").compile(instrumented=True)
    except Exception:
        return False
    return True


_POISON_SOURCE = r"""
extern "C" __global__ void poison_shared(int words) {
    extern __shared__ unsigned int smem[];
    for (int i = threadIdx.x; i < words; i += blockDim.x) smem[i] = 0xffffffffu;
}
"""


def poison_shared_memory(cp) -> None:
    """Fill every SM's shared memory with 0xff bytes (NaN as float or half, -1 as int) just
    before a learner's launch, as the CPU executor does before each block: shared memory is
    not cleared between kernels, so a tile element the kernel never writes reads this NaN,
    not whatever an earlier kernel left there, often a harmless 0 (a K row left unzeroed
    passed that way). One whole-SM block per SM, twice over; best effort where other
    processes share the GPU."""
    kern = cp.RawKernel(_POISON_SOURCE, "poison_shared")
    device = cp.cuda.Device()
    nbytes = device.attributes["MaxSharedMemoryPerBlockOptin"]
    kern.max_dynamic_shared_size_bytes = nbytes
    kern((2 * device.attributes["MultiProcessorCount"],), (1024,), (np.int32(nbytes // 4),),
         shared_mem=nbytes)


# A signalling NaN with a payload: arithmetic never produces it (a NaN result is quiet), and
# copies keep it bit for bit, on the GPU and through the CPU executor.
POISON_BITS = 0x7FA5A5A5


def _guarded(cp, a: np.ndarray):
    """(the band-framed device buffer, a's copy in it): see GUARD_BYTES."""
    a = np.ascontiguousarray(a)
    buf = cp.full(a.nbytes + 2 * GUARD_BYTES, GUARD_FILL, dtype=cp.uint8)
    view = cp.ndarray(a.shape, a.dtype, memptr=buf.data + GUARD_BYTES)
    view.set(a)
    return buf, view


def poisoned(shape) -> np.ndarray:
    """A float32 output filled with the poison NaN."""
    return np.full(shape, POISON_BITS, dtype=np.uint32).view(np.float32)


def unwritten(out: np.ndarray) -> np.ndarray:
    """True where `out` (float32, from `poisoned`) still holds the poison."""
    return np.ascontiguousarray(out, dtype=np.float32).view(np.uint32) == POISON_BITS
