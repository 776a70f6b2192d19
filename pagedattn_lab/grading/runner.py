"""Run one submitted notebook inside the grader's sandbox; used by `pagedattn_lab.grade`.

    python -m pagedattn_lab.grading.runner NOTEBOOK --channel-fd N [--audit DIR]

The notebook's code cells run in order in one IPython shell in this process (no Jupyter
kernel: nothing listens on a port, and the sandbox has no network). Before the first cell,
every graded `check.<task>` is replaced by a forwarder: it hands the learner's objects to
the grader's judge (as handles) and answers the judge's requests (remote.py) until the
judge has run the check; the notebook gets a placeholder, never the verdict. A cell that
raises is reported to the judge (for the table's notes) and the next cell runs; `exit()`
ends the notebook there, as it ends Jupyter's kernel (`exit(keep_kernel=True)` keeps it, as
Jupyter's does). After the last cell, or once the judge is gone, the process ends, whatever
threads the notebook left running.

Nothing here is trusted: the submission can patch any of it. What the judge believes is
only what it computes itself from the learner's answers to its own requests. The learner's
CUDA C is built and launched elsewhere, by kernel_host.py in a sandbox of its own.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import socket
import sys
import traceback
from typing import NoReturn

from . import own_work, remote
from .channel import Channel
from .report import CheckResult, text_of
from .time_limits import CASE_TIME_LIMIT, time_limit

SUBMITTED = "submitted"
EXITED = ("exit() or quit() ends the notebook's kernel, in Jupyter as here: the cells after "
          "it did not run")
# The longest the submission waits without a word from the judge: the judge computes at most
# a case's time limit between two messages, so this only ends a wait on a judge that is gone.
GRADER_SILENCE = 10 * CASE_TIME_LIMIT


def graded_tasks() -> list[str]:
    """Every task of every lesson (pagedattn_lab/lessons.py): the checks sent to the judge."""
    from ..lessons import LESSONS  # noqa: PLC0415
    return sorted({task for lesson in LESSONS for task in lesson.tasks})


def learner_peer(fd: int) -> remote.Peer:
    """The submission's end of the channel to the judge, on file descriptor `fd`."""
    peer = remote.Peer(Channel(socket.socket(fileno=fd)), strict=False,
                       idle_timeout=GRADER_SILENCE)
    # the learner's code on one request stops when the judge's case time limit does
    peer.guard = lambda limit: time_limit(min(limit or CASE_TIME_LIMIT, CASE_TIME_LIMIT))
    return peer


def forwarder(peer: remote.Peer, task: str):
    def check(*args, **kwargs):
        # what only this side can see (the learner's objects, their calls): the judge
        # fails the task on it (own_work.py), before its cases and after them
        borrowed = own_work.python_findings(task, args, kwargs)
        try:
            # every call: no code here answers the judge with the package's answer
            with own_work.Watch(task, every_call=True) as watch:
                peer.services["borrowed"] = lambda *_: list(watch.found)
                peer.request("check", task=task, args=list(args), kwargs=kwargs,
                             borrowed=borrowed)
        finally:
            peer.services.pop("borrowed", None)
            peer.clear_handles()
        return CheckResult(task, SUBMITTED, [], [f"{task}: sent to the instructor's grader"])
    check.__name__ = check.__qualname__ = task
    check.__doc__ = f"check.{task}, graded by the instructor's grader."
    return check


def install_forwarders(peer: remote.Peer) -> None:
    from .. import check  # noqa: PLC0415
    for task in graded_tasks():
        setattr(check, task, forwarder(peer, task))


def set_limits(limits: dict) -> None:
    """Resource limits on this process, before the notebook's first cell (level none)."""
    import resource  # noqa: PLC0415 - POSIX

    for key, value in limits.items():
        try:
            resource.setrlimit(getattr(resource, f"RLIMIT_{key}"), (int(value), int(value)))
        except (AttributeError, ValueError, OSError) as exc:   # e.g. RLIMIT_AS on macOS
            print(f"grader: could not limit {key}: {exc}", file=sys.stderr)


def code_cells(path: str) -> list[tuple[int, str]]:
    """(index among all cells, source) of every code cell; ValueError for JSON that is no
    notebook's (a list, a cell that is no object, a source that is no text: they raised
    AttributeError or TypeError here, and the table said only that the process died)."""
    with open(path, encoding="utf-8") as fh:
        try:
            nb = json.load(fh)
        except RecursionError:
            raise ValueError("its JSON is nested too deeply") from None
    found, source_key = _all_cells(nb)
    if not isinstance(found, list) or not all(isinstance(cell, dict) for cell in found):
        raise ValueError('its JSON holds no list of cells ({"cells": [{...}, ...]})')
    cells = []
    for index, cell in enumerate(found):
        if cell.get("cell_type") == "code":
            source = cell.get(source_key, "")
            if isinstance(source, list) and all(isinstance(line, str) for line in source):
                source = "".join(source)
            if not isinstance(source, str):
                raise ValueError(f"the source of cell {index + 1} is not text")
            cells.append((index, source))
    return cells


def _all_cells(nb) -> tuple[object, str]:
    """(the notebook's cells, the key of a cell's source). A notebook of format 3 (Jupyter
    opens it: its cells are in "worksheets", a code cell's source is its "input") was read as
    a notebook of no cells, and so was JSON with no cells at all: every task "not run", as if
    the learner had deleted their checks, and no row said the file was not read."""
    if not isinstance(nb, dict):
        return None, "source"
    if "cells" not in nb and isinstance(nb.get("worksheets"), list):
        sheets = nb["worksheets"]
        if all(isinstance(sheet, dict) and isinstance(sheet.get("cells"), list)
               for sheet in sheets):
            return [cell for sheet in sheets for cell in sheet["cells"]], "input"
        return None, "input"
    return nb.get("cells"), "source"


def sandbox_arguments(notebook: str | None) -> argparse.ArgumentParser:
    """The command line of a program isolation.start runs: this runner (`notebook`: what
    its positional argument is), or the kernel host (None: it takes none)."""
    parser = argparse.ArgumentParser()
    if notebook is not None:
        parser.add_argument("notebook", help=notebook)
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--audit", default=None,
                        help="install the audit-hook guard for this folder (no isolation)")
    parser.add_argument("--compiler", default=None, help="the only compiler --audit allows")
    parser.add_argument("--limits", default=None, help="JSON {AS, NOFILE, ...}: set_limits()")
    return parser


def enter_guard(args) -> None:
    """At level none (isolation.py), what the namespaces would do: resource limits, then
    the audit hook (once added, it cannot be removed)."""
    if args.limits:
        set_limits(json.loads(args.limits))
    if args.audit:
        from .sandbox import install  # noqa: PLC0415
        install(args.audit, compiler=json.loads(args.compiler) if args.compiler else None)


def _shell_class():
    """IPython's shell, with the `exit()` and `quit()` of Jupyter's kernel (ipykernel's
    shell and its ZMQExitAutocall): they end the notebook after their cell, unless called
    with keep_kernel=True, which in Jupyter leaves the kernel running, so the cells after it
    run. (IPython's plain shell has no `ask_exit`, which both call: the learner's cell
    "raised AttributeError: 'InteractiveShell' object has no attribute 'ask_exit'", naming the
    grader's shell; and its exit() takes no keep_kernel: "TypeError: ExitAutocall.__call__()
    got an unexpected keyword argument 'keep_kernel'".)"""
    from IPython.core.autocall import ZMQExitAutocall  # noqa: PLC0415
    from IPython.core.interactiveshell import InteractiveShell  # noqa: PLC0415
    from traitlets import Instance, default  # noqa: PLC0415

    class Shell(InteractiveShell):
        exiter = Instance(ZMQExitAutocall)
        keepkernel_on_exit = None   # (what ZMQExitAutocall sets from keep_kernel)

        @default("exiter")
        def _default_exiter(self):
            return ZMQExitAutocall(self)

        def ask_exit(self) -> None:
            self.exit_now = not self.keepkernel_on_exit

    return Shell


def main(argv=None) -> NoReturn:
    """Run the notebook of the command line `argv` and end the process (never returns):
    status 0 once the judge has been told the notebook finished (or could not be read), 1
    where an error ended the run, the judge gone included (printed on stderr first); a bad
    command line exits with argparse's status 2."""
    args = sandbox_arguments("the notebook to run").parse_args(argv)
    try:
        _run(args)
    except BaseException:   # noqa: BLE001 - any end, a learner's threads still left behind
        # (the judge gone: a cell's check, or the event after a cell, raised ChannelClosed;
        # Python's own exit would wait for those threads, past the judge's time limit)
        try:
            traceback.print_exc(file=sys.__stderr__)
        except (AttributeError, OSError, ValueError):   # closed or replaced by the learner
            pass
        _end_now(1)
    _end_now(0)


def _run(args) -> None:
    """The notebook's cells, run in order, each one's error and the end told to the judge."""
    enter_guard(args)
    peer = learner_peer(args.channel_fd)
    try:
        cells = code_cells(args.notebook)
    except (OSError, ValueError) as exc:
        peer.event("cell_error", cell=-1, ename=type(exc).__name__,
                   evalue=f"could not read the notebook: {exc}")
        return
    install_forwarders(peer)

    from traitlets.config import Config  # noqa: PLC0415
    config = Config()
    config.HistoryManager.enabled = False   # no history thread, no sqlite file
    shell = _shell_class().instance(config=config)
    for index, source in cells:
        result = shell.run_cell(source, store_history=True)
        error = result.error_before_exec or result.error_in_exec
        if error is not None:
            peer.event("cell_error", cell=index, ename=type(error).__name__,
                       evalue=text_of(error)[:300])
        if shell.exit_now:
            peer.event("cell_error", cell=index, ename="SystemExit", evalue=EXITED)
            break
    peer.event("finished")


def _end_now(status: int) -> NoReturn:
    """End this process with `status` once the notebook has run, whatever threads of the
    learner's are still running. A thread the notebook started and never ended (not a daemon:
    a loop, a server, a sleep) kept Python's exit waiting for it: a notebook that had run to
    the end was stopped at the time limit, its (notebook) row said it ran past it, and the
    grader waited out that limit. Exit handlers still run (multiprocessing ends its workers)."""
    atexit._run_exitfuncs()   # noqa: SLF001 - what Python's exit runs, after its thread wait
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):   # closed or replaced by the learner
            pass
    os._exit(status)


if __name__ == "__main__":
    main()
