"""Turn an exception from a kernel launch into (message, hint) for the learner.

The CPU executor (`pagedattn_lab.cpu`) reports an out-of-bounds access as `KernelFault`
naming the buffer (the kernel parameter), the index, the buffer's size, and the thread and
block that did it; two threads touching one shared-memory byte between barriers (one of
them writing, not both atomics) as `SharedMemoryRace`, with both threads and lines; a
barrier that not every thread reaches as `KernelDeadlock`; a kernel that never ends as
`KernelTimeout`; a compile error as `KernelCompileError` with the
kernel's own line numbers. On the GPU, CuPy raises its own compile and driver errors.
Anything else returns None and is reported as a plain exception.
"""
from __future__ import annotations

import re

from ..cpu.errors import no_barrier_between
from ..words import counted, ranges
from .report import several_fit, text_of
from .stub_params import stub_buffer

_BUFFER_HINTS = {
    "q": "the query index: q is [batch, max_len, num_heads, head_dim], so element (b, t, h, d) "
         "is at ((b * max_len + t) * num_heads + h) * head_dim + d. Is the token past max_len?",
    "block_tables": "a virtual page past the sequence's row: row b starts at b * max_pages, and "
                    "token t lives in entry t / page_size. Do you read keys past the sequence's "
                    "length (or past the query's own position)?",
    "seq_lens": "seq_lens has one entry per sequence: index it with the sequence (batch) index "
                "taken from the right blockIdx component.",
    "out": "the output index: it has q's layout; rows at or past seq_lens[b] still belong to "
           "out, but threads past max_len do not.",
}

# An index below 0 of the buffers above whose hints tell of an index past their end: read
# just before the array's start, which the CPU executor's instrumented launches stop.
_ROW_LAYOUT = ("[batch, max_len, num_heads, head_dim]: the offset ((b * max_len + t) * "
               "num_heads + h) * head_dim + d of a thread's own token t, head h and dims d is "
               "never below 0; work out that thread's index by hand.")
_BEFORE_START_HINTS = {
    "q": "an index before q's start: q is " + _ROW_LAYOUT,
    "out": "an index before out's start: out has q's layout " + _ROW_LAYOUT,
    "block_tables": "an entry before the table's start: sequence b's row starts at b * "
                    "max_pages and token t lives in its entry t / page_size, so token 0 of "
                    "sequence 0 reads entry 0; the index went below 0: work it out by hand for "
                    "that thread.",
}

_CACHE_HINT = ("element offset in the NHD cache [num_pages, page_size, num_kv_heads, head_dim] "
               "is ((page * page_size + offset) * num_kv_heads + kv_head) * head_dim + d, with "
               "offset = token % page_size and kv_head = h / (num_heads / num_kv_heads).")
_PADDING_HINT = ("a negative index into the cache: a page id of -1 gives one (block-table "
                 "padding past the sequence's last page), and so does an offset below 0. Only "
                 "tokens < seq_lens[b] (and, causally, <= the query's own token) may be read, "
                 "and sequence b must use its own row of block_tables.")


def _get(exc, *names, default=None):
    for name in names:
        value = getattr(exc, name, None)
        if value is not None:
            return value
    return default


def _stub_also(buffer, stub) -> str:
    """'the stub's k_cache; ' where the kernel named the parameter otherwise, else ''."""
    same = not isinstance(buffer, str) or stub in (None, buffer)
    return "" if same else f"the stub's {stub}; "


def _xyz(value) -> str:
    if value is None:
        return "?"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(str(int(v)) for v in value) + ")"
    return str(value)


def _below_zero(index) -> bool:
    try:
        return int(index) < 0
    except (TypeError, ValueError):
        return False


def buffer_hint(buffer: str, index) -> str:
    name = (buffer or "").lower()
    if name in _BEFORE_START_HINTS and _below_zero(index):
        return _BEFORE_START_HINTS[name]
    if name in _BUFFER_HINTS:
        return _BUFFER_HINTS[name]
    if "cache" in name:
        return _PADDING_HINT if _below_zero(index) else "the offset is too big: " + _CACHE_HINT
    if "out" in name:
        return ("the output index: out_row = (sequence * max_len + token), then times the row "
                "length (num_kv_heads * head_dim) plus the element.")
    if "shared" in name or "smem" in name or "tile" in name:
        return ("a shared-memory index past what the launch reserved (shared_mem bytes): a tile "
                "of page_size tokens x head_dim floats for K, the same for V.")
    return "check how that buffer's index is computed from the thread and block ids."


def _array_hint(exc) -> str:
    """The hint for an index past a local or static __shared__ array: its valid range."""
    index, size = _get(exc, "index"), _get(exc, "size")
    where = f"{_get(exc, 'array') or 'the index'} at line {_get(exc, 'line')}"
    if index is None:   # through a pointer (the executor's object-size check): no index
        return (f"{where} reads or writes through a pointer past the end of the array it "
                f"points into: check the pointer's offset and the loop bound against the "
                f"array's size.")
    if not size:   # unknown (a variable-length array), or an array of none
        return f"check {where}: the index is past the array."
    side = "below 0" if int(index) < 0 else f"past the last element ({int(size) - 1})"
    # `s[0][40]` of a float s[4][32] is checked against a row (32), `s[5][0]` against the
    # rows (4): neither is the whole array's size
    rows = "[" in (_get(exc, "array") or "").partition("]")[2] or \
        str(_get(exc, "array_type")).count("[") > 1
    what = "that index's dimension of the array has" if rows else "the array has"
    return (f"{what} {int(size)} elements, so its indices run 0..{int(size) - 1}; "
            f"{where} gives {int(index)}, {side}: check the loop bound or the index expression.")


def _dynamic_shared_hint(offset, size) -> str:
    """The hint for an access outside the extern __shared__ buffer: its bytes, where the
    access fell, and that a pointer into part of it (a V tile after a K tile) counts."""
    if not size:
        return ("the launch gave no dynamic shared memory (shared_mem=0): an extern __shared__ "
                "array holds the bytes the launch passes as shared_mem=<bytes>.")
    if _below_zero(offset):
        where = f"byte {int(offset)}, before its start"
    else:
        where = f"byte {offset}, past its end"
    return (f"the launch gave {size} bytes of dynamic shared memory (shared_mem) and this "
            f"access is at {where}: an index into the extern __shared__ array, or into a "
            "pointer to a part of it (a tile after another), runs outside it. Check each "
            "index against the size of the part it points into, in elements, not bytes.")


def _shift_hint(exc) -> str:
    """The hint for a shift by a negative amount or by at least the value's width (`bits`:
    32 for an int, 64 for a long long)."""
    amount, bits = int(_get(exc, "shift")), int(_get(exc, "bits", default=32))
    valid = f"a shift amount must be 0..{bits - 1} (the value's width in bits minus 1)"
    if amount < 0:
        return f"{valid}; this one is negative ({amount}): check how the amount is computed."
    if bits not in (32, 64):
        return f"{valid}."
    one, ones = ("1u", "~0u") if bits == 32 else ("1ull", "~0ull")
    return (f"{valid}: compute the mask another way where the amount can be {bits}, e.g. "
            f"`n >= {bits} ? {ones} : ({one} << n) - 1`.")


def _race_hint(exc, advice: str) -> str:
    """The course's hint for a shared-memory race, from its kind, variable and lines."""
    kind = getattr(exc, "kind", "")
    variable = getattr(exc, "variable", None)
    dynamic = "dynamic shared memory" in str(exc)
    if dynamic and kind in ("read after write", "write after read"):
        # Which barrier is missing depends on the order threads ran in: name both places.
        return ("one thread stored into the shared tile and another read the same element "
                "with no barrier between. Each page needs a __syncthreads() between its load "
                "and its compute (no thread reads a part before it is stored) and another "
                "between the compute and the next page's load (no thread overwrites a part "
                "another still reads); every thread must reach both.")
    line, other_line = getattr(exc, "line", None), getattr(exc, "other_line", None)
    if dynamic and kind == "write after write" and None not in (line, other_line) \
            and line != other_line:
        # two stores of different lines met: parts of the buffer overlap, or two stores
        # into one part give an element to both (the race alone cannot tell which)
        return several_fit([
            f"the parts of the extern __shared__ array overlap (lines {other_line} and {line} "
            "stored into the same element): a part after another starts past all of it (the "
            "tiled kernel's v_tile = smem + page_size * head_dim, after K's page_size * "
            "head_dim floats).",
            f"the stores of lines {other_line} and {line} go into the same part: give each "
            "element of a tile to one store, and one thread."], "race")
    if dynamic:
        return ("two threads store the same element of the shared tile: the load loop must "
                "give each element to one thread (start at threadIdx.x, step blockDim.x).")
    if kind == "write after write" or (kind == "read after write" and
                                       exc.line is not None and exc.line == exc.other_line):
        name = f"`{variable}`" if variable else "the same shared variable"
        return (f"every thread writes {name}: one copy for the whole block, so the threads "
                "overwrite each other's values. A value each thread needs for itself belongs "
                "in a register (a plain local variable or array); a value the block computes "
                "together needs atomicAdd, or a slot per thread and a reduction after a "
                "__syncthreads().")
    return advice


RACE_ADVICE = "separate the two accesses with __syncthreads()."


def describe_kernel_exception(exc: BaseException) -> tuple[str, str] | None:
    """(message, hint) for the executor's and CuPy's kernel exceptions, else None: also for
    one only named like them (the learner's own class, or one that crossed the grader's
    channel with attributes of the learner's choosing), whose fields cannot be described.
    So even a KernelFault may get None: a caller that wants its message whatever it is asks
    `kernel_message`."""
    try:
        return _described(exc)
    except Exception:   # noqa: BLE001 - e.g. a thread of ("x",): reported as raised
        return None


def kernel_message(exc: BaseException) -> str:
    """describe_kernel_exception's message (for a caller with a hint of its own), or, where
    that is None, the exception's own text (the GPU's OutOfBoundsWrite says what it is)."""
    described = describe_kernel_exception(exc)
    return described[0] if described is not None else text_of(exc) or type(exc).__name__


def _described(exc: BaseException) -> tuple[str, str] | None:
    kind = type(exc).__name__
    text = text_of(exc).strip()
    if kind == "SharedMemoryRace":
        missing = no_barrier_between(bool(getattr(exc, "same_warp", False)))
        fact, _, advice = text.partition(f"{missing}. ")
        fact = fact.split(": ", 1)[-1] + f"{missing}."
        return f"a {fact}", _race_hint(exc, advice.strip())
    if kind == "KernelFault":
        buffer = _get(exc, "buffer", "param", "name")
        index = _get(exc, "index")
        size = _get(exc, "size", "length")
        thread = _get(exc, "thread", "thread_idx", "threadIdx")
        block = _get(exc, "block", "block_idx", "blockIdx")
        access = _get(exc, "access", "op", "kind", default="access")
        if _get(exc, "region") == "local or shared array":
            return text.split(": ", 1)[-1], _array_hint(exc)   # ("out-of-bounds index 8 of ...")
        if _get(exc, "region") == "static shared memory":   # through a pointer, no thread
            name = _get(exc, "variable")
            return text.split(": ", 1)[-1], (
                f"a {_get(exc, 'access') or 'write'} through a pointer ran past "
                + (f"the static __shared__ array `{name}` (the pointer may start in an "
                   "array before it)" if name else "a static __shared__ array")
                + ": check the pointer's offset and the loop bound against the array's size.")
        if _get(exc, "region") == "dynamic shared memory":
            return text.split(": ", 1)[-1], _dynamic_shared_hint(index, size)
        if _get(exc, "shift") is not None:
            return f"an undefined shift: {text.split(': ', 1)[-1]}", _shift_hint(exc)
        stub = stub_buffer(exc) or buffer
        also = _stub_also(buffer, stub)
        if buffer is not None and thread is not None:
            message = (f"out-of-bounds {access} of {buffer}[{index}] ({also}it has "
                       f"{counted(size, 'element')}) by thread {_xyz(thread)} of block "
                       f"{_xyz(block)}.")
        elif buffer is not None and index is not None:   # seen after the launch: no thread
            message = (f"out-of-bounds {access} of {buffer}[{index}] ({also}it has "
                       f"{counted(size, 'element')}), found after the launch (which thread "
                       f"wrote it is not known).")
        elif "arithmetic exception" in text:   # SIGFPE: no index was out of bounds
            return (f"the kernel crashed: {text}", "an integer division or modulo by 0: look "
                    "at every / and % between ints. A divisor computed from the arguments can "
                    "be 0 (int division rounds down: num_kv_heads / num_heads is 0 when there "
                    "are more query heads than KV heads).")
        else:
            message = f"out-of-bounds access: {text}"
        return message, buffer_hint(stub, index)
    if kind == "WarpSyncError":
        return (f"a warp intrinsic waits for lanes that never come: {text}",
                left_out_of_mask_hint(exc) or
                "the mask of a __shfl_*_sync / __syncwarp names every lane that takes part: "
                "all of them must reach the call (none returned early, the block size a "
                "multiple of 32 for a full mask).")
    if kind == "KernelDeadlock":
        text = text.split(" Every thread of a block must reach")[0]  # the advice is below
        if getattr(exc, "exited_threads", None):
            hint = ("every thread of a block must reach every __syncthreads(): threads that "
                    "returned early (like the guide's `if (token >= seq_len) return;` before "
                    "the barrier) leave the others waiting forever. Keep idle threads in the "
                    "loop: guard the work with an if, not the barrier.")
        else:
            hint = ("the threads of the block wait at different __syncthreads() (a barrier "
                    "inside a branch, or a loop that threads run a different number of "
                    "times): every thread must reach the same barriers in the same order.")
        return f"deadlock at __syncthreads(): {text}", hint
    if kind == "UncountedWrite":
        return (f"the kernel wrote {_get(exc, 'buffer')}[{_get(exc, 'index')}] in a way the "
                f"access counts cannot see (a compiler builtin, another library's code)",
                "store into the arrays with plain assignments, as CUDA code does: each thread "
                "its own elements.")
    if kind == "KernelTimeout":
        return (f"the kernel did not finish: {text}",
                "a loop that never ends: check that every loop variable advances (for example "
                "`i += blockDim.x` in a strided loop) and that its bound does not grow.")
    if kind in ("KernelCompileError", "CompileException"):
        hint = "fix the first error the compiler reports (line numbers are the kernel's own)."
        if re.search(r"\bINFINITY\b", text):
            hint = ("INFINITY is not defined under NVRTC (no <math.h>): use -FLT_MAX style "
                    "constants such as -3.0e38f, or __int_as_float(0xff800000) for -inf.")
        elif "math.h" in text or "cmath" in text:
            hint = "NVRTC has no <math.h>: drop the #include; expf, fmaxf, sqrtf are built in."
        elif "cooperative groups are not supported" in text:
            hint = ("cooperative groups compile on a GPU, but the CPU executor, which runs "
                    "the check and counts its accesses, has none: write the kernel with "
                    "__syncthreads(), __syncwarp() and the __shfl_*_sync intrinsics.")
        return f"the kernel does not compile:\n{text}", hint
    if kind in ("CUDADriverError", "CUDARuntimeError") and "ILLEGAL_ADDRESS" in text.upper():
        return (f"the GPU reported an illegal memory access: {text}",
                "an index past a buffer. Rerun the check with device='cpu': the CPU executor "
                "names the buffer, the index, the thread and the block. (Restart the Jupyter "
                "kernel afterwards: the CUDA context is unusable after this error.)")
    return None


def left_out_of_mask_hint(exc) -> str | None:
    """For a WarpSyncError whose lanes all came (none exited or waits elsewhere): the lane
    that stopped it called with a mask that leaves it out (None for a full mask)."""
    if getattr(exc, "bad_lanes", None):
        return None
    mask = getattr(exc, "mask", 0xffffffff)
    left_out = [lane for lane in range(32) if not (mask >> lane) & 1]
    return None if not left_out else (
        f"the mask {mask:#010x} leaves out lane{'s' if len(left_out) > 1 else ''} "
        f"{ranges(left_out)}, and one of them called this shuffle (the message names it): "
        "the mask names every lane that calls a __shfl_*_sync (0xffffffff when the whole "
        "warp does).")
