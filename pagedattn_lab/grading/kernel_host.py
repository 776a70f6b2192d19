"""Build and launch a submission's CUDA C for the grader's judge, away from the learner's code.

    python -m pagedattn_lab.grading.kernel_host --channel-fd N [--audit DIR] [--limits JSON]

`pagedattn_lab.grade` starts this beside each submission's runner, in a sandbox of its own
(the same isolation, its own private folder and compiled-kernel cache), and gives the judge
the other end of its channel. The judge's "kernel" requests come here: the learner's CUDA C
is compiled and launched, and the outputs and access counts go back, with no Python of the
learner's in this process. In the runner's process a notebook could patch the kernel runner
to return the reference's outputs, or its counts, and pass a kernel task without CUDA C.
"""
from __future__ import annotations

import ctypes
import os
import socket
import sys

from ..cpu import compiler
from . import remote, wire
from .channel import Channel
from .time_limits import CASE_TIME_LIMIT, time_limit
from .runner import enter_guard, sandbox_arguments


def _kernel(peer, header, blobs):
    """The judge's "kernel" request: build the learner's CUDA C here, return a handle."""
    from .kernel_runner import Kernel  # noqa: PLC0415 - CuPy / executor on demand
    fields = wire.decode(header.get("fields"), blobs, peer._deref())
    return Kernel(str(fields["source"]), str(fields["name"]), str(fields.get("device", "auto")))


def kernel_peer(channel: Channel) -> remote.Peer:
    """This end of the judge's kernel channel: answers "kernel" and the handles' calls."""
    # No idle limit: the judge may ask nothing for as long as the notebook runs; the grader
    # ends this sandbox when it has the judge's report (and the sandbox's deadline ends it).
    peer = remote.Peer(channel, strict=False, services={"kernel": _kernel})
    # one launch stops when the judge's case time limit does, as the learner's code does
    peer.guard = lambda limit: time_limit(min(limit or CASE_TIME_LIMIT, CASE_TIME_LIMIT))
    return peer


def serve(peer: remote.Peer) -> None:
    """Answer the judge until it closes the channel."""
    try:
        peer.listen()
    except wire.ChannelClosed:
        pass


PR_SET_DUMPABLE = 4


def harden() -> None:
    """Keep the learner's kernels, which run in worker processes forked from this one, from
    reaching past their launch (Linux):
    - this process is not dumpable, so a worker (same uid) cannot write its memory through
      /proc/<parent>/mem or ptrace (a launch changed a variable of this process that way);
    - every launch runs under the executor's seccomp filter (cpu/sandbox.cpp): a kernel
      that found fork and setsid through dlsym, or made the system calls itself, started
      a process that outlived its launch, past the linker's --wrap (cpu/wrap.cpp);
    - the compile cache, which the workers can write, is not trusted (cpu/artifacts.py): a
      kernel overwrote the runtime object the next build linked.
    (The executor also closes this process's descriptors in the workers, cpu/host.cpp: one is
    the channel to the judge, into which a kernel wrote an answer of its own.)"""
    os.environ["PAGEDATTN_LAB_CPU_SANDBOX"] = "seccomp"
    os.environ["PAGEDATTN_LAB_CPU_TRUST_CACHE"] = "0"
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def main(argv=None) -> int:
    args = sandbox_arguments(None).parse_args(argv)
    enter_guard(args)
    harden()
    # before the first kernel: what the cache holds now is the grader's seed (grade.py)
    compiler.adopt_cached_runtime()
    serve(kernel_peer(Channel(socket.socket(fileno=args.channel_fd))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
