"""Start R processes, one per rank, with `torch.distributed` set up in each, and collect
what each returns, from a script, a test or a notebook cell:

    from pagedattn_lab.distributed import launch
    results = launch(my_module.rank_fn, 2, arg1, backend="gloo")   # [rank 0's, rank 1's]

Each rank is a fresh Python (`python -m pagedattn_lab.distributed.worker`) that finds the
others through MASTER_ADDR/MASTER_PORT (a free port on this host; a new one, and a new start
of every rank, when another process takes it before rank 0 listens on it), calls
`rank_fn(rank, world_size, *args, **kwargs)` and sends its result back pickled. The function
must live in a module (or in the script run as __main__), not in a notebook cell: the rank
processes import it by name. A rank that fails stops the others; its traceback is raised
here. gloo runs on CPUs, nccl on GPUs (rank r on GPU r); NVLink multicast stays off
(NCCL_NVLS_ENABLE=0, as the machines this course is tested on need).
"""
from __future__ import annotations

import importlib.util
import os
import pickle
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..validate import check_int
from ..validate_kinds import is_finite_number, is_number

INSTALL_HINT = ("pip install 'pagedattn-lab[dist]'  (from a clone: pip install -e '.[dist]'; "
                "on a GPU machine any torch with NCCL will do)")
BACKENDS = ("gloo", "nccl")
# Ports launch tries when rank 0 finds MASTER_PORT taken (torch's own launcher tries 3).
PORT_TRIES = 3
# What rank 0's traceback says when torch's TCPStore cannot listen on MASTER_PORT: the errno's
# name in torch 2.x, the OS's words (lower-cased) in every version; with the port's number,
# so that a rank function's own socket failing the same way is not taken for it.
_PORT_TAKEN_MARKS = ("eaddrinuse", "address already in use")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def torch_missing() -> str | None:
    """Why torch.distributed cannot be used here, or None when it can (imports nothing)."""
    if importlib.util.find_spec("torch") is None:
        return f"PyTorch is not installed: {INSTALL_HINT}"
    return None


def require_torch():
    """(torch, torch.distributed), or an ImportError that says what to install."""
    reason = torch_missing()
    if reason:
        raise ImportError(f"pagedattn_lab.distributed needs torch.distributed. {reason}")
    import torch  # noqa: PLC0415 - torch is optional: imported only where it is used
    import torch.distributed as dist  # noqa: PLC0415
    if not dist.is_available():
        raise ImportError(f"this torch ({torch.__version__}) was built without "
                          f"torch.distributed. {INSTALL_HINT}")
    return torch, dist


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def target_name(fn) -> str:
    """'module:function' (or '/path/script.py:function') the rank processes import."""
    if not callable(fn):
        raise TypeError(f"fn: expected a function, got {type(fn).__name__}")
    qualname, module = getattr(fn, "__qualname__", ""), getattr(fn, "__module__", None)
    if not qualname or "<" in qualname:
        raise TypeError(f"fn: {qualname or fn!r} is defined inside another function; the rank "
                        "processes import it by name: define it at a module's top level")
    if module == "__main__":
        module = getattr(sys.modules["__main__"], "__file__", None)
        if module is None:
            raise TypeError(f"fn: {qualname} is defined in a notebook or an interactive "
                            "session; the rank processes import it by name: put it in a "
                            "module (a .py file) and import it from there")
        module = str(Path(module).resolve())
    return f"{module}:{qualname}"


def launch(fn, world_size: int, *args, backend: str = "gloo", timeout: float = 300.0,
           **kwargs) -> list:
    """Run `fn(rank, world_size, *args, **kwargs)` in `world_size` new processes; return the
    results in rank order. Raises before any process starts on a bad argument or when torch
    is missing; RuntimeError with the failing rank's traceback; TimeoutError after
    `timeout` seconds (every rank stopped). When another process takes MASTER_PORT before
    rank 0 listens on it, every rank starts again on a new port (PORT_TRIES ports in all)."""
    world_size = check_int(world_size, "world_size", minimum=1)
    if not (is_finite_number(timeout) and timeout > 0):
        # (NaN would never time out, 0 stop the ranks as they start, True be one second)
        raise (ValueError if is_number(timeout) else TypeError)(
            f"timeout: expected seconds, a finite number > 0, got {timeout!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    name = target_name(fn)
    missing = torch_missing()    # checked here, but torch is imported by the ranks only
    if missing:
        raise ImportError(f"pagedattn_lab.distributed needs torch.distributed. {missing}")
    with tempfile.TemporaryDirectory(prefix="pagedattn_tp_") as tmp:
        job = Path(tmp, "job.pkl")
        job.write_bytes(pickle.dumps((name, args, kwargs, backend)))
        deadline = time.monotonic() + timeout
        for tried in range(1, PORT_TRIES + 1):
            try:
                _run_ranks(free_port(), world_size, job, Path(tmp), deadline, timeout)
                break
            except _PortTaken as taken:
                if tried == PORT_TRIES:
                    raise RuntimeError(f"{PORT_TRIES} ports tried for MASTER_PORT, each taken "
                                       "by another process before rank 0 listened on it; on "
                                       f"the last, {taken}") from None
        return [pickle.loads(Path(tmp, f"result{r}.pkl").read_bytes()) for r in range(world_size)]


class _PortTaken(RuntimeError):
    """Rank 0 could not listen on MASTER_PORT: free_port found it free, then another process
    bound it before rank 0 did."""


def _run_ranks(port: int, world_size: int, job: Path, tmp: Path, deadline: float,
               timeout: float) -> None:
    env = _rank_env(port, world_size)
    procs = [_start(r, env, job, tmp) for r in range(world_size)]
    try:
        _wait(procs, deadline, timeout, tmp, port)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _rank_env(port: int, world_size: int) -> dict:
    env = dict(os.environ)
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
               NCCL_NVLS_ENABLE="0")
    # Each rank is one of several processes on this machine: one math thread each.
    env.setdefault("OMP_NUM_THREADS", "1")
    # The ranks import the package from where this process found it.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


def _start(rank: int, env: dict, job: Path, tmp: Path) -> subprocess.Popen:
    env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank))
    log = open(tmp / f"log{rank}.txt", "wb")   # a file, not a pipe: a chatty rank never blocks
    with log:
        return subprocess.Popen([sys.executable, "-m", "pagedattn_lab.distributed.worker",
                                 str(job), str(tmp / f"result{rank}.pkl")],
                                env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(procs, deadline: float, timeout: float, tmp: Path, port: int) -> None:
    while True:
        codes = [p.poll() for p in procs]
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            r = failed[0]
            log = _tail(tmp / f"log{r}.txt")
            error = _PortTaken if r == 0 and _names_port_taken(log, port) else RuntimeError
            raise error(f"rank {r} of {len(procs)} failed (exit code {codes[r]}); its "
                        f"output:\n{log}")
        if all(c == 0 for c in codes):
            return
        if time.monotonic() > deadline:
            late = [r for r, c in enumerate(codes) if c is None]
            raise TimeoutError(f"ranks {late} still running after {timeout:.0f} s (stopped); "
                               f"rank {late[0]}'s output:\n{_tail(tmp / f'log{late[0]}.txt')}")
        time.sleep(0.02)


def _names_port_taken(log: str, port: int) -> bool:
    """Whether rank 0's output says that MASTER_PORT (`port`) was taken (only rank 0 listens
    on it)."""
    text = log.lower()
    return any(mark in text for mark in _PORT_TAKEN_MARKS) and re.search(
        rf"(?<!\d){port}(?!\d)", text) is not None


def _tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:] or "(nothing)"
