"""An access that ran past the end of one array argument into another argument's memory.

Arguments whose memory overlaps (views of one buffer, one holding part of another) share one
guarded mapping (launch.py), so no guard page sits between them and such an access lands in
the other argument. An instrumented launch stops it where it happens (instrument.cpp's
past_array_end, region PAST_ARRAY); a change found only after a counted launch, within reach
past an argument's end, is named as that argument's overrun rather than as a store the
counts cannot see.
"""
from __future__ import annotations

from .errors import KernelFault
from .report import LaunchInfo, uncounted_write_error
from ..words import counted

# The widest store a CPU core makes (AVX-512's 64 bytes): one that starts inside an array
# ends at most this far past its end.
OVERRUN_REACH = 64


def _array_arguments(info: LaunchInfo):
    """(param, array, address in the launch) of each array argument, in the order of the
    launch's ranges (launch.py: the pointer parameters passed an array)."""
    placed = {p.index: addr for buf in info.buffers for p, _a, addr in buf.members}
    return [(p, a, placed.get(p.index, a.__array_interface__["data"][0]))
            for p, a in zip(info.sig, info.args) if p.is_pointer and a is not None]


def _landing(addr: int, arguments, past):
    """(param, element) of the first argument other than `past` that holds addr (one does:
    addr lies in the mapping of the argument it runs past, which others cover)."""
    return next((param, (addr - start) // max(arr.itemsize, 1)) for param, arr, start in arguments
                if param is not past and start <= addr < start + arr.nbytes)


def _overrun_fault(info: LaunchInfo, param, arr, start: int, addr: int, access: str,
                   who: str, arguments, **fields) -> KernelFault:
    index = (addr - start) // max(arr.itemsize, 1)
    into, into_index = _landing(addr, arguments, param)
    verb = {"write": "change", "read": "read"}.get(access, "reach")
    return KernelFault(
        f"kernel {info.kernel!r}: out-of-bounds {access} of {param.name!r} (argument "
        f"{param.index}, {param.ctype}): element {index}, past its end (it has "
        f"{counted(arr.size, 'element')}), landing in {into.name!r} (argument {into.index}) at "
        f"its element {into_index}{who}. {param.name!r} and {into.name!r} share memory (views "
        f"of one buffer), so no guard page lies between them; on a GPU this {access} would "
        f"{verb} {into.name!r} unreported: check the index against the size of "
        f"{param.name!r}.",
        kernel=info.kernel, access=access, region="argument", slack=False, buffer=param.name,
        arg_index=param.index, index=index, size=arr.size, into=into.name,
        into_index=into_index, **fields)


def past_array_error(r, info: LaunchInfo) -> KernelFault:
    """The fault of an instrumented access stopped as it ran past the end of array argument
    r.region_thread (its index among the launch's ranges) into another argument at r.addr."""
    arguments = _array_arguments(info)
    param, arr, start = arguments[r.region_thread]
    thread = tuple(r.thread) if r.has_thread else None
    block = tuple(r.block) if r.has_thread else None
    access = {1: "write", 0: "read"}.get(r.is_write, "access")
    return _overrun_fault(info, param, arr, start, r.addr, access, info.where(r), arguments,
                          thread=thread, block=block, address=r.addr, signal="SIGSEGV")


def _overrun_within_reach(buf, hits):
    """(member, offset) of the first changed byte (hits: offsets from buf.data) that lies
    past a member's end within OVERRUN_REACH, or None."""
    best = None
    for member in buf.members:
        end = member[2] - buf.data + member[1].nbytes
        near = hits[(hits >= end) & (hits < end + OVERRUN_REACH)]
        if near.size and (best is None or near[0] < best[1]):
            best = member, int(near[0])
    return best


def unseen_change_error(info: LaunchInfo, buf, hits):
    """The error for bytes of `buf` (a launch._Buffer; hits: their offsets from its data)
    that a counted launch changed though no counted store wrote them (counters.py): an
    overrun of the argument they lie just past, else a store the counts cannot see."""
    overrun = _overrun_within_reach(buf, hits)
    if overrun is not None:
        (param, arr, start), offset = overrun
        return _overrun_fault(
            info, param, arr, start, buf.data + offset, "write",
            ", found after the launch, so the thread is not known; the results were discarded",
            _array_arguments(info), thread=None, block=None, address=None, signal=None)
    byte = int(hits[0])
    param, arr, start = next(m for m in buf.members
                             if 0 <= byte - (m[2] - buf.data) < m[1].nbytes)
    return uncounted_write_error(info, param, arr, (byte - (start - buf.data)) // arr.itemsize)
