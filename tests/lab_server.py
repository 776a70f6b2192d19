"""`make lab` on a port of its own, for the tests that need a running JupyterLab
(tests/test_setup.py, tests/test_browser.py).

A free port is only one that nobody held a moment ago: another process (a second pytest
worker, a notebook kernel, the grader's sandboxes) may take it before the server binds it.
Jupyter Server would then move to a port of its own choosing (`ServerApp.port_retries`) and
the test would poll a port that nobody, or somebody else, serves. Here the server may not
move: it serves the port it is given or exits saying that the port is taken, and then the lab
starts again on a new port. Each start has a random token, so no other server on that port
answers as this one.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

from pagedattn_lab.distributed.launch import free_port

ROOT = Path(__file__).resolve().parents[1]
PORT_TRIES = 3


class Lab(NamedTuple):
    process: subprocess.Popen
    base: str    # http://127.0.0.1:PORT
    token: str


def start_lab(lab_args: str, env: dict, log: Path, startup_s: float = 90) -> Lab:
    """`make lab` with `lab_args` (the port, the address and a token are added) and `env`
    added to this environment, its output in `log`; returns once the server answers."""
    for _ in range(PORT_TRIES):
        port, token = free_port(), secrets.token_hex(16)
        args = (f"{lab_args} --port={port} --ServerApp.port_retries=0 "
                f"--ServerApp.ip=127.0.0.1 --IdentityProvider.token={token}")
        lab = Lab(_make_lab(args, env, log), f"http://127.0.0.1:{port}", token)
        try:
            if _serves(lab, port, log, startup_s):
                return lab
        except BaseException:
            stop_lab(lab.process)
            raise
    raise AssertionError(f"JupyterLab found each of {PORT_TRIES} ports taken; its output:\n"
                         f"{_tail(log)}")


def stop_lab(process: subprocess.Popen) -> None:
    """Stop `make lab`, the server and its kernels (one process group)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _make_lab(args: str, env: dict, log: Path) -> subprocess.Popen:
    env = dict(os.environ, **env, VENV=str(Path(sys.prefix)), LAB_ARGS=args)
    # A file, not a pipe nobody reads: a full pipe would stall the server. -o: the
    # environment running the tests is set up already; make must only run the lab command.
    with log.open("wb") as sink:
        return subprocess.Popen(["make", "--no-print-directory", "-o",
                                 f"{sys.prefix}/.installed", "lab"], cwd=ROOT, env=env,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)


def _serves(lab: Lab, port: int, log: Path, startup_s: float) -> bool:
    """True once the server answers; False when it exited because `port` was taken."""
    deadline = time.time() + startup_s
    while True:
        if lab.process.poll() is not None:
            if f"The port {port} is already in use" in _tail(log):
                return False
            raise AssertionError(f"JupyterLab exited (code {lab.process.returncode}); its "
                                 f"output:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{lab.base}/api/status?token={lab.token}", timeout=5):
                return True
        except OSError:
            assert time.time() < deadline, f"JupyterLab did not answer within {startup_s} s"
            time.sleep(0.5)


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:]
