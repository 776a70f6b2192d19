"""Turn a failed launch's result record into an exception that names what went wrong."""
from __future__ import annotations

import re
import signal as _signal

from . import abi
from .errors import (KernelAssertionError, KernelDeadlock, KernelError, KernelFault,
                     KernelTimeout, UncountedWrite, WarpSyncError)
from ..words import counted


def xyz(linear: int, block) -> tuple[int, int, int]:
    bx, by = block[0], block[1]
    return linear % bx, (linear // bx) % by, linear // (bx * by)


def fmt3(t) -> str:
    return f"({t[0]},{t[1]},{t[2]})"


def ranges(linears, block, limit: int = 6) -> str:
    """Linear thread ids as compact runs: '64..127' (1-D blocks) or '(0,1,0)..(31,1,0)'."""
    linears = sorted(linears)
    runs, start = [], None
    for i, v in enumerate(linears):
        if start is None:
            start = v
        if i + 1 == len(linears) or linears[i + 1] != v + 1:
            runs.append((start, v))
            start = None
    one_d = block[1] == 1 and block[2] == 1
    name = (lambda v: str(v)) if one_d else (lambda v: fmt3(xyz(v, block)))
    parts = [name(a) if a == b else f"{name(a)}..{name(b)}" for a, b in runs[:limit]]
    if len(runs) > limit:
        parts.append(f"and {len(runs) - limit} more runs")
    return ", ".join(parts)


def lanes_text(mask: int) -> str:
    lanes = [i for i in range(32) if (mask >> i) & 1]
    return ranges(lanes, (32, 1, 1)) if lanes else "none"


class LaunchInfo:
    """What report needs to know about a launch."""

    def __init__(self, kernel, sig, grid, block, shared_mem, stack_bytes, buffers, args,
                 source=None, trusted=False, variables=()):
        self.kernel, self.sig, self.grid, self.block = kernel, sig, grid, block
        self.shared_mem, self.stack_bytes, self.buffers, self.args = (
            shared_mem, stack_bytes, buffers, args)
        self.source = source   # (library path, file name, source text) for race reports
        self.trusted = trusted   # the package's own kernel: a timeout is the problem's size
        # the kernel's own variables' (name, lo, hi, shared), known in an instrumented launch
        self.variables = variables

    def where(self, r) -> str:
        if not r.has_thread:
            return ""
        return (f" by thread {fmt3(r.thread)} of block {fmt3(r.block)} "
                f"(grid {fmt3(self.grid)}, block {fmt3(self.block)})")


def _access(r) -> str | None:
    return {1: "write", 0: "read"}.get(r.is_write)


def _signame(signo: int) -> str:
    try:
        return _signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def fault_error(r, info: LaunchInfo) -> KernelError:
    k = info.kernel
    who = info.where(r)
    thread = tuple(r.thread) if r.has_thread else None
    block = tuple(r.block) if r.has_thread else None
    common = dict(kernel=k, block=block, thread=thread, address=r.addr, signal=_signame(r.signo),
                  access=_access(r), buffer=None, arg_index=None, index=None, size=None)
    acc = _access(r) or "access"
    if r.sicode <= 0:   # SI_USER, SI_TKILL...: sent by raise()/kill(), not a memory fault
        return KernelFault(f"kernel {info.kernel!r}: the thread sent itself "
                           f"{_signame(r.signo)} (raise(), kill() or abort()){who}.",
                           region="unknown", **{**common, "access": None, "address": None})
    if r.signo in (_signal.SIGSEGV, _signal.SIGBUS):
        if r.region == abi.REGION_STACK:
            kib = info.stack_bytes // 1024
            return KernelFault(
                f"kernel {k!r}: stack overflow{who}: each CUDA thread has a {kib} KiB stack on "
                f"the CPU executor and this one ran past it (a large local array, or deep "
                f"recursion?). Raise it with RawKernel(..., stack_kb=...) or the environment "
                f"variable PAGEDATTN_LAB_CPU_STACK_KB.", region="stack", **common)
        if r.region == abi.REGION_DYN_SHARED:
            off = r.region_thread
            extra = (" The launch passed shared_mem=0: pass shared_mem=<bytes> to size the "
                     "extern __shared__ array." if info.shared_mem == 0 else "")
            return KernelFault(
                f"kernel {k!r}: out-of-bounds {acc} of dynamic shared memory (extern __shared__) "
                f"at byte offset {off}; the launch gave shared_mem={info.shared_mem} bytes"
                f"{who}.{extra}", region="dynamic shared memory",
                **{**common, "index": off, "size": info.shared_mem})
        if r.region == abi.REGION_PAST_ARRAY:   # (instrument.cpp: into another argument)
            from .report_overrun import past_array_error  # noqa: PLC0415 - rare
            return past_array_error(r, info)
        # (a wrapped index first: it faults in the reservation after its array, which
        # _find_buffer would name as an element 4 billion past the end)
        wrapped = _find_wrapped(r.addr, info.buffers)
        hit = None if wrapped else _find_buffer(r.addr, info.buffers)
        if hit is not None:
            param, arr, index = hit
            size = arr.size
            where_arg = f"{param.name!r} (argument {param.index}, {param.ctype})"
            if 0 <= index < size:
                what = f"a faulting {acc} inside {where_arg} at element {index}"
            else:
                valid = f"valid 0..{size - 1}" if size else "it is empty"
                what = (f"out-of-bounds {acc} of {where_arg}: element {index}, but the array "
                        f"has {size} element{'s' if size != 1 else ''} ({valid})")
            return KernelFault(f"kernel {k!r}: {what}{who}.", region="argument",
                               slack=_in_slack(r.addr, info.buffers),
                               **{**common, "buffer": param.name, "arg_index": param.index,
                                  "index": index, "size": size})
        if wrapped is not None:
            param, arr, index = wrapped
            return KernelFault(
                f"kernel {k!r}: out-of-bounds {acc} of {param.name!r} (argument {param.index}, "
                f"{param.ctype}): element {index}, which is {index - (1 << 32)} wrapped around "
                f"as an unsigned 32-bit index (such as `i - 1` with an unsigned i at 0){who}. "
                f"Compute the index in a signed int, or test it before subtracting.",
                region="argument", slack=False,
                **{**common, "buffer": param.name, "arg_index": param.index, "index": index,
                   "size": arr.size})
        ended = [(name, hi - lo) for name, lo, hi, _ in info.variables if hi == r.addr]
        if ended and r.is_write == 1:   # (instrument.cpp names the first byte past it)
            name, size = ended[0]
            return KernelFault(
                f"kernel {k!r}: invalid write at address {r.addr:#x}{who}: just past the end "
                f"of the kernel's variable {name!r} ({counted(size, 'byte')}); "
                f"a store that runs past a variable changes whatever follows it. Store within "
                f"the variable (its type's size, at an offset that leaves room).",
                region="unknown", **common)
        if r.addr < 65536:
            nulls = [p.name for p, a in zip(info.sig, info.args) if p.is_pointer and a is None]
            why = (f" ({', '.join(repr(n) for n in nulls)} "
                   f"{'was' if len(nulls) == 1 else 'were'} passed as None)") if nulls else ""
            return KernelFault(f"kernel {k!r}: {acc} through a null pointer (address "
                               f"{r.addr:#x}){why}{who}.", region="unknown", **common)
        return KernelFault(
            f"kernel {k!r}: invalid {acc} at address {r.addr:#x}, outside every array argument "
            f"(a wild pointer, or an index so far out of range that it jumped the guard "
            f"region){who}.", region="unknown", **common)
    if r.signo == _signal.SIGFPE:
        return KernelFault(f"kernel {k!r}: arithmetic exception (integer division by zero or "
                           f"overflow){who}.", region="unknown", **common)
    why = (" (illegal instruction: code the compiler saw as unreachable, such as the end of a "
           "function that returns a value without a return statement)"
           if r.signo == _signal.SIGILL else "")
    return KernelFault(f"kernel {k!r}: the thread crashed with {_signame(r.signo)}{why}{who}.",
                       region="unknown", **common)


def slack_write_error(info: LaunchInfo, param, arr, index: int) -> KernelFault:
    """A write that landed just before an array, where no guard page can sit (launch.py's
    slack), found after the launch: which thread wrote it is not known."""
    return KernelFault(
        f"kernel {info.kernel!r}: out-of-bounds write of {param.name!r} (argument {param.index}, "
        f"{param.ctype}): element {index}, before the array's start (found after the launch, "
        f"so the thread is not known; the results were discarded).", region="argument",
        kernel=info.kernel, block=None, thread=None, address=None, signal=None, access="write",
        buffer=param.name, arg_index=param.index, index=index, size=arr.size, slack=True)


def uncounted_write_error(info: LaunchInfo, param, arr, index: int) -> UncountedWrite:
    """A counted launch changed an element that no counted store wrote (counters.py)."""
    return UncountedWrite(
        f"kernel {info.kernel!r}: element {index} of {param.name!r} (argument {param.index}) "
        f"changed, but no store the access counts see wrote it (a compiler builtin such as "
        f"__builtin_ia32_movntps did, or another library's code): the counts would miss it, "
        f"so the launch is refused. Write array elements with assignments (x[i] = v) or "
        f"memcpy.", kernel=info.kernel, buffer=param.name, arg_index=param.index, index=index)


def _find_buffer(addr: int, buffers):
    """(param, array, element index) of the argument nearest to a faulting address inside a
    guarded reservation, or None."""
    for buf in buffers:
        if not (buf.base <= addr < buf.base + buf.length):
            continue
        best = None
        for param, arr, dev in buf.members:
            end = dev + arr.nbytes
            dist = dev - addr if addr < dev else (addr - end if addr >= end else 0)
            if best is None or dist < best[0]:
                best = (dist, param, arr, dev)
        if best is not None:
            _, param, arr, dev = best
            return param, arr, (addr - dev) // max(arr.itemsize, 1)
    return None


def _in_slack(addr: int, buffers) -> bool:
    """Whether `addr` lies in the slack before an array (launch.py): mapped and filled, so no
    signal comes from there; only an instrumented launch's check stops an access to it
    (instrument.cpp's in_slack), where a plain launch reads the fill."""
    return any(buf.slack <= addr < buf.data for buf in buffers if buf.slack)


def _find_wrapped(addr: int, buffers):
    """(param, array, element index) of the argument that `addr` is an unsigned 32-bit index
    below 0 of (element 2^32 - k, k up to 2^16: `x[i - 1u]` at i = 0), or None."""
    for buf in buffers:
        for param, arr, dev in buf.members:
            index, rest = divmod(addr - dev, max(arr.itemsize, 1))
            if not rest and (1 << 32) - (1 << 16) <= index < 1 << 32:
                return param, arr, index
    return None


def _activemask_hint(info: LaunchInfo) -> str:
    """The GPU's __activemask() gives the lanes that run this branch together; the CPU knows
    no branches, so its mask names every lane that has not exited (runtime.cpp), and a
    shuffle with it inside a branch waits for lanes that never come."""
    code = info.source[2] if info.source else ""
    if not re.search(r"\b__activemask\s*\(", code):
        return ""
    return (" The kernel calls __activemask(): on the CPU it names every lane of the warp "
            "that has not exited, not only the lanes in the current branch as on a GPU (where "
            "even that is not guaranteed); build the mask from the branch's condition instead, "
            "e.g. `unsigned m = __ballot_sync(0xffffffff, cond);` before `if (cond)`.")


def deadlock_error(r, info: LaunchInfo) -> KernelError:
    block, n = info.block, r.nthreads
    states = list(r.tstate[:n])
    exited = [i for i in range(n) if states[i] == abi.T_EXITED]
    waiting = [i for i in range(n) if states[i] in (abi.T_BARRIER, abi.T_WARP)]
    groups: dict[tuple, list[int]] = {}
    for i in waiting:
        op = r.top[i]
        key = (op, r.tline[i], r.tmask[i] if op != 0 else 0)
        groups.setdefault(key, []).append(i)
    parts = []
    for (op, line, mask), ids in groups.items():
        m = f", mask {mask:#010x}" if op not in (0,) else ""
        many = len(ids) > 1
        parts.append(f"thread{'s' if many else ''} {ranges(ids, block)} wait"
                     f"{'' if many else 's'} at {abi.OP_NAMES.get(op, '?')} (line {line}{m})")
    text = "; ".join(parts)
    if exited:
        text += (f"; thread{'s' if len(exited) > 1 else ''} {ranges(exited, block)} already "
                 f"exited (returned)")
        advice = (" Every thread of a block must reach every __syncthreads(): an early "
                  "`return` before a barrier (e.g. `if (i >= n) return;`) leaves the others "
                  "waiting forever. Guard the work with an if instead of returning, and keep "
                  "the barrier outside it.")
    else:
        advice = (" Threads of a block wait at different barriers or warp intrinsics that can "
                  "never all be reached (a barrier or a full-mask shuffle inside a branch that "
                  "not all threads take?).")
    lines = sorted({r.tline[i] for i in waiting})
    return KernelDeadlock(
        f"kernel {info.kernel!r} deadlocked in block {fmt3(r.block)}: {len(waiting)} of {n} "
        f"threads wait and none can go on: {text}.{advice}{_activemask_hint(info)}",
        kernel=info.kernel, block=tuple(r.block), thread=tuple(r.thread),
        num_waiting=len(waiting), waiting_threads=[xyz(i, block) for i in waiting],
        exited_threads=[xyz(i, block) for i in exited], lines=lines)


def warp_error(r, info: LaunchInfo) -> KernelError:
    block, n = info.block, info.block[0] * info.block[1] * info.block[2]
    warp, mask, bad = r.warp, r.mask, r.bad_lanes
    op = abi.OP_NAMES.get(r.op, "a warp intrinsic")
    in_warp = min(32, n - 32 * warp)
    missing = [lane for lane in range(32) if (bad >> lane) & 1 and lane >= in_warp]
    present = [lane for lane in range(32) if (bad >> lane) & 1 and lane < in_warp]
    exited = [lane for lane in present if r.tstate[32 * warp + lane] == abi.T_EXITED]
    apart = [lane for lane in present if lane not in exited]   # at another warp-wide call
    head = (f"kernel {info.kernel!r}: {op} at line {r.line} in warp {warp} of block "
            f"{fmt3(r.block)} (thread {fmt3(r.thread)}) with mask {mask:#010x}")
    why = []
    warp_wide = r.op in abi.WARP_WIDE_OPS
    if warp_wide:
        head = head.replace(f" with mask {mask:#010x}", " (warp-wide: all 32 lanes take part)")
    if missing:
        fix = "" if warp_wide else " or pass a mask of the lanes that exist"
        why.append(f"names lane{'s' if len(missing) > 1 else ''} "
                   f"{lanes_text(sum(1 << i for i in missing))} "
                   f"that do{'es' if len(missing) == 1 else ''} not exist (the block has {n} "
                   f"threads, so warp {warp} has only lanes 0..{in_warp - 1}; make the block "
                   f"size a multiple of 32{fix})")
    if exited:
        why.append(f"{'needs' if warp_wide else 'names'} lane{'s' if len(exited) > 1 else ''} "
                   f"{lanes_text(sum(1 << i for i in exited))} "
                   f"that already exited (returned), so the intrinsic can never complete; all "
                   f"lanes {'of the warp' if warp_wide else 'in the mask'} must reach it")
    if apart:   # (device_api.cpp's wide_call_apart)
        at, several = 32 * warp + apart[0], len(apart) > 1
        other = abi.OP_NAMES.get(r.top[at], "another warp-wide call")
        why.append(f"lane{'s' if several else ''} {lanes_text(sum(1 << i for i in apart))} "
                   f"wait{'' if several else 's'} at {other} (line {r.tline[at]}) instead, so "
                   "each call has only part of the warp: all 32 lanes must make every "
                   "warp-wide call together (none skips one inside an if)")
    msg = r.msg.decode(errors="replace")
    text = head + ": " + ("; ".join(why) if why else msg) + "." + _activemask_hint(info)
    lanes = [lane for lane in range(32) if (bad >> lane) & 1]
    states = list(r.tstate[:r.nthreads])
    waiting = [i for i, s in enumerate(states) if s in (abi.T_BARRIER, abi.T_WARP)]
    return WarpSyncError(
        text, kernel=info.kernel, block=tuple(r.block), thread=tuple(r.thread), warp=warp,
        mask=mask, bad_lanes=lanes, apart_lanes=apart, op=op, lines=[r.line],
        num_waiting=len(waiting), waiting_threads=[xyz(i, block) for i in waiting],
        exited_threads=[xyz(i, block) for i, s in enumerate(states) if s == abi.T_EXITED])


def result_error(r, info: LaunchInfo) -> KernelError:
    s = r.status
    if s == abi.FAULT and r.region == abi.REGION_STATIC_SHARED:   # (no signal: runtime.cpp)
        from .report_checks import shared_guard_error  # noqa: PLC0415 - rare
        return shared_guard_error(r, info)
    if s == abi.FAULT and r.region == abi.REGION_DYN_SHARED and not r.signo:   # (runtime.cpp)
        from .report_checks import dyn_guard_error  # noqa: PLC0415 - rare
        return dyn_guard_error(r, info)
    if s == abi.FAULT:
        return fault_error(r, info)
    if s == abi.DEADLOCK:
        return deadlock_error(r, info)
    if s == abi.WARP:
        return warp_error(r, info)
    if s == abi.SYSCALL:
        from .report_calls import syscall_error  # noqa: PLC0415 - rare
        return syscall_error(r, info)
    if s in (abi.BOUNDS, abi.SHIFT, abi.OBJSIZE):
        from .report_checks import bounds_error, pointer_error, shift_error  # noqa: PLC0415
        return {abi.BOUNDS: bounds_error, abi.SHIFT: shift_error,
                abi.OBJSIZE: pointer_error}[s](r, info)
    if s == abi.RACE:
        from .race import race_error  # noqa: PLC0415 - only for the rare failed race check
        return race_error(r, info)
    thread = tuple(r.thread) if r.has_thread else None
    block = tuple(r.block) if r.has_thread else None
    if s == abi.ASSERT:
        return KernelAssertionError(
            f"kernel {info.kernel!r}: device-side assertion failed{info.where(r)}: "
            f"{r.msg.decode(errors='replace')}", kernel=info.kernel, block=block, thread=thread,
            line=r.line)
    if s == abi.TRAP:
        return KernelFault(f"kernel {info.kernel!r}: __trap() at line {r.line}{info.where(r)}.",
                           kernel=info.kernel, block=block, thread=thread, signal="trap",
                           region="unknown", buffer=None, arg_index=None, index=None, size=None,
                           access=None, address=None)
    return KernelError(f"kernel {info.kernel!r}: the CPU executor failed: "
                       f"{r.msg.decode(errors='replace')}", kernel=info.kernel)


def worker_died(info: LaunchInfo, signo: int, timeout, r=None) -> KernelError:
    """A worker ended by a signal it could not report (r: its result, for who ran)."""
    thread = block = None
    if r is not None and r.run_thread >= 0:
        thread, block = xyz(r.run_thread, info.block), xyz(r.run_block, info.grid)
    who = f" while running thread {fmt3(thread)} of block {fmt3(block)}" if thread else ""
    if signo == _signal.SIGALRM:
        return KernelTimeout(f"kernel {info.kernel!r} did not finish within its time limit and "
                             f"was stopped{who}. {_timeout_hint(info)}", kernel=info.kernel,
                             timeout=timeout, thread=thread, block=block)
    hint = {_signal.SIGKILL: " (killed for using too much memory, or the kernel signalled "
                             "itself?)",
            _signal.SIGSYS: " (a forbidden system call, such as fork, exec or system(), "
                            "made with every signal blocked)"}.get(signo, "")
    return KernelFault(f"kernel {info.kernel!r}: a worker process died from {_signame(signo)}"
                       f"{who}{hint}.", kernel=info.kernel, thread=thread, block=block,
                       signal=_signame(signo), region="unknown", buffer=None, arg_index=None,
                       index=None, size=None, access=None, address=None)


def _timeout_hint(info: LaunchInfo) -> str:
    if info.trusted:   # launched by the package's functions, which take no timeout=
        return ("This is one of the course's own kernels, tested to finish: the problem is large "
                "for the CPU executor, which runs one CUDA thread at a time per worker. Run it "
                "on a GPU, shrink it, or raise the limit with PAGEDATTN_LAB_CPU_TIMEOUT "
                "(seconds, read at every launch; timeout=... where you launch the kernel "
                "yourself).")
    return ("An endless loop? Or a thread spinning on a flag that another thread of its block "
            "sets: the CPU executor switches between the threads of a block only at "
            "__syncthreads() and warp intrinsics. Raise the limit with timeout=... or "
            "PAGEDATTN_LAB_CPU_TIMEOUT.")


def timeout_error(info: LaunchInfo, timeout: float, running=()) -> KernelTimeout:
    who = "; ".join(f"thread {fmt3(r.thread)} of block {fmt3(r.block)}" for r in running)
    first = running[0] if running else None
    return KernelTimeout(
        f"kernel {info.kernel!r} did not finish within {timeout:g} s (grid {fmt3(info.grid)}, "
        f"block {fmt3(info.block)}) and was stopped"
        f"{f' while running {who}' if who else ''}. {_timeout_hint(info)}", kernel=info.kernel,
        timeout=timeout,
        block=tuple(first.block) if first else None, thread=tuple(first.thread) if first else None)
