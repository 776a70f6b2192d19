"""The grader's judge: the checks of one submission, run in the grader's own process.

    python -m pagedattn_lab.grading.judge CHANNEL_FD KERNEL_FD
                                        (one JSON line of settings on stdin)

`pagedattn_lab.grade` starts one judge per submission and gives it one end of a socket
pair; the submission's sandbox holds the other end (runner.py). When the notebook calls
`check.<task>(...)`, the sandbox sends a "check" request naming the task and the learner's
objects (as handles). The judge runs that task's check from its own copy of the package,
with every case seed salted by a number only it knows (seeds.py); each use of the learner's
objects is a request to the sandbox, which runs the learner's code there and answers with
plain data (remote.py). CUDA C is compiled and launched in a second sandbox, the kernel
host's (kernel_host.py, on KERNEL_FD; kernel_runner.kernels_elsewhere), where no code of the
learner's runs: the runner's process could fake a launch's outputs or its access counts.
The verdict never leaves the judge.

The judge answers until the channel closes, or until its stdin closes (the grader saying
the sandbox is gone), then prints one JSON object on stdout:

    {"tasks": {task: {"status", "summary", "cases", "calls"}}, "running": task or null,
     "cell_errors": [{"cell", "ename", "evalue"}], "finished": bool, "broken": str or null}

`running` is the task whose check was cut short; `cell_errors` and `finished` are what the
sandbox reported (informative only: they never change a verdict).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import resource
import socket
import sys
from collections import Counter

from ..validate_kinds import is_one_of
from . import own_work, remote, remote_errors, seeds, wire
from .channel import Channel
from .kernel_runner import kernels_elsewhere
from .report import FAILED, JUDGE_HEAP, PASSED, text_of

MAX_EVENTS = 50
MAX_SUMMARY = 2000
MAX_CELLS = 1 << 20   # above any notebook's cell count: a cell index past it is no cell


class Judge:
    def __init__(self, peer: remote.Peer, *, salt: int | None, tasks,
                 kernels: remote.Peer | None = None):
        """peer: the learner's sandbox; kernels: the kernel host's (kernel_host.py; None: no
        kernel task can be checked). salt None: the notebook's own seeds (for tests comparing
        with the notebook)."""
        self.peer, self.kernels, self.salt, self.allowed = peer, kernels, salt, set(tasks)
        self.results: dict[str, dict] = {}
        self.calls: Counter = Counter()
        self.running: str | None = None
        self.interrupted: str | None = None
        self.cell_errors: list[dict] = []
        self.finished = False
        self.broken: str | None = None
        peer.services["check"] = self.check
        peer.refuse_verdicts()   # (the kernel host's runner raises them; the sandbox cannot)
        if kernels is not None:
            kernels.learner_side = False   # (its errors are the check's or the kernel's)
        peer.on_event = self.event

    def check(self, peer, header, blobs):
        """Service for the sandbox's "check" request: run the task's check here."""
        from .. import check as checks  # noqa: PLC0415 - imports every check module
        fields = wire.decode(header.get("fields"), blobs, peer._deref())
        task = fields.get("task") if isinstance(fields, dict) else None
        from .runner import graded_tasks  # noqa: PLC0415 - (as above)
        if task not in graded_tasks() or not callable(getattr(checks, str(task), None)):
            raise ValueError(f"there is no graded task named {task!r}")
        if task not in self.allowed:
            raise ValueError(f"{task!r} is not a task of this workbook: the grader checks a "
                             f"workbook's own tasks only ({', '.join(sorted(self.allowed))})")
        if self.running is not None:
            raise RuntimeError("a check cannot run inside another check")
        args, kwargs = fields.get("args", []), fields.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict) or \
                not all(isinstance(k, str) for k in kwargs):
            raise TypeError("bad arguments")
        args, kwargs = graders_device(getattr(checks, task), args, kwargs)
        self.running, self.calls[task] = task, self.calls[task] + 1
        try:
            salted = seeds.salted(seeds.call_salt(self.salt, task, self.calls[task])) \
                if self.salt is not None else contextlib.nullcontext()
            with salted, kernels_elsewhere(self.kernel), \
                    contextlib.redirect_stdout(io.StringIO()):
                try:
                    result = self._borrowed(task, fields.get("borrowed")) or \
                        getattr(checks, task)(*args, **kwargs)
                    if "borrowed" in fields:   # a sandbox that watches (runner.forwarder)
                        result = self._borrowed(task, self._called()) or result
                except Exception as exc:   # e.g. check.allocator() without the class
                    self.record(task, FAILED, f"the check could not run: "
                                f"{type(exc).__name__}: {exc}", 0)
                    raise
            cases = len(result.cases)
            status = result.status
            if status == PASSED and cases == 0:   # cannot happen with the package's checks
                status = FAILED
            self.record(task, status, result.summary if cases or status != PASSED
                        else "no case ran", cases)
        except wire.Unresponsive as exc:   # the channel is closed: no later task runs either
            self.record(task, FAILED, f"time limit: your code did not answer the grader "
                        f"({exc}); it never returned, or it kept the time limit from "
                        f"stopping it", 0)
            raise
        except wire.ChannelClosed:
            if not self._kernel_host_gone():
                self.interrupted = task   # the sandbox ended (time limit, crash) in the check
                # the last check counts, and this one never ended: an earlier check's pass
                # was the task's row (with no word of this one), whatever this answer was
                self.results.pop(task, None)
                raise
            self.record(task, FAILED, "the grader's kernel host ended during the check (a "
                        "kernel of this submission crashed the process that ran it): no "
                        "kernel of this submission can be checked any more", 0)
        except wire.ProtocolError as exc:
            self.record(task, FAILED, f"the submission broke the grader's protocol: {exc}", 0)
            raise
        finally:
            self.running = None
            peer.clear_handles()
            if self.kernels is not None:
                self.kernels.clear_handles()
        return {"task": task, "recorded": True}

    @staticmethod
    def _borrowed(task, found):
        """The failed result for the package's own answers the sandbox found in the learner's
        objects or calls (own_work.py; text only, shown to the learner), or None."""
        found = [str(f)[:300] for f in found or ()] if isinstance(found, list) else []
        return own_work.refused(task, found) if found else None

    def _called(self) -> list:
        """The calls of the task's answers the learner's code made during the check."""
        try:
            return self.peer.request("borrowed")
        except (TypeError, ValueError, RuntimeError, AttributeError, KeyError):
            return []   # the sandbox's answer is an error: its code, not the learner's

    def _kernel_host_gone(self) -> bool:
        """The kernel host's channel closed while the sandbox's is open: that task fails, and
        the checks that need no kernel go on. (Closed by the abort fd, it is the grader
        that stopped waiting, the sandbox being gone: the check was interrupted.)"""
        kernels = None if self.kernels is None else self.kernels.channel
        return kernels is not None and kernels.closed and not kernels.aborted and \
            not self.peer.channel.closed

    def kernel(self, source, name, device):
        """A handle to the learner's kernel, built by the kernel host (the source is text
        the learner's side sent: the same source, whatever that side does after)."""
        if self.kernels is None:
            raise RuntimeError("the grader started no kernel host: CUDA C cannot be checked")
        return self.kernels.request("kernel", source=source, name=name, device=device)

    def record(self, task: str, status: str, summary: str, cases: int) -> None:
        self.results[task] = {"status": str(status), "summary": str(summary)[:MAX_SUMMARY],
                              "cases": int(cases), "calls": self.calls[task]}

    def event(self, header, blobs=()) -> None:
        try:
            data = wire.decode(header.get("data"), blobs, remote_errors.no_deref)
        except wire.ProtocolError:
            return
        if not isinstance(data, dict):
            return
        if header.get("ev") == "finished":
            self.finished = True
        elif header.get("ev") == "cell_error" and len(self.cell_errors) < MAX_EVENTS:
            # (the grader prints cell + 1: an int of 4300 digits, which JSON carries, has a
            # successor of 4301 that str() refuses, and the grader's table raised for every
            # notebook of the run)
            cell = data.get("cell")
            self.cell_errors.append({"cell": cell if type(cell) is int and
                                     -1 <= cell < MAX_CELLS else -1,
                                     "ename": str(data.get("ename", ""))[:80],
                                     "evalue": str(data.get("evalue", ""))[:300]})

    def serve(self, idle_timeout: float | None = None) -> None:
        """Answer the sandbox until it or the grader ends the conversation (or, with
        `idle_timeout`, until it sends nothing for that long: tests have no grader)."""
        try:
            self.peer.listen(idle_timeout)
        except wire.ChannelClosed:
            pass
        except wire.ProtocolError as exc:
            self.broken = f"the submission broke the grader's protocol: {exc}"[:300]
        except MemoryError as exc:   # (limit_memory) what the sandbox sent, outside a check
            self.broken = (f"the submission's messages took more memory than the grader's "
                           f"judge may use: {text_of(exc)}")[:300]

    def report(self) -> dict:
        return {"tasks": self.results, "running": self.interrupted,
                "cell_errors": self.cell_errors, "finished": self.finished,
                "broken": self.broken}


def graders_device(check, args: list, kwargs: dict) -> tuple[list, dict]:
    """The arguments of a kernel task's check with `device="cpu"` made "auto", however the
    learner gave it: under the grader, the grader's machine decides whether a kernel also runs
    on a GPU, not the submission: else `check.naive_kernel(src, device="cpu")` would skip
    the GPU's run on a GPU grader, and with it NVRTC's compile and every comparison of the
    GPU's values with the CPU executor's. "gpu" and "auto" are kept (without a GPU, "gpu" is
    the CPU executor with a note), and so are arguments that do not fit the check's
    signature or a device it refuses: the call raises as it did."""
    try:
        signature = inspect.signature(check)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return args, kwargs
    if "device" not in signature.parameters or \
            not is_one_of(bound.arguments.get("device"), ("cpu",)):   # (an array: no ==)
        return args, kwargs
    bound.arguments["device"] = "auto"
    return list(bound.args), dict(bound.kwargs)


def limit_memory(mb: int) -> None:
    """Bound this process's heap at `mb` MiB (0: no bound). The learner's answers are data,
    but data a check turns into something larger (a list of empty strings and one long one,
    made an array: every item as long as the longest) filled the grader's machine in one
    NumPy call: now it is a MemoryError, a failed case of that submission. RLIMIT_DATA, not
    the sandbox's RLIMIT_AS: it counts what is written (malloc, NumPy), not address space
    reserved and never used (CUDA's)."""
    if mb > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        soft = mb << 20 if hard == resource.RLIM_INFINITY else min(mb << 20, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
        JUDGE_HEAP["mb"] = soft >> 20   # a MemoryError's message names it (escaped_errors.py)


def _read_line(fd: int) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings = json.loads(_read_line(0) or b"{}")
    call_timeout = float(settings.get("call_timeout", 60))
    limit_memory(int(settings.get("memory_mb", 0)))
    channel = Channel(socket.socket(fileno=int(argv[0])), abort_fd=0)   # stdin closed: the
    kernels = Channel(socket.socket(fileno=int(argv[1])), abort_fd=0)   # sandbox is gone
    judge = Judge(remote.Peer(channel, strict=True, call_timeout=call_timeout),
                  kernels=remote.Peer(kernels, strict=True, call_timeout=call_timeout),
                  salt=int(settings["salt"]), tasks=settings.get("tasks", []))
    judge.serve()
    channel.close()
    kernels.close()   # the kernel host ends
    sys.stdout.write(json.dumps(judge.report()) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
