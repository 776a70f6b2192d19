"""Running the compiler: one way for every call the executor makes."""
from __future__ import annotations

import os
import subprocess

__all__ = ["run_tool"]


def run_tool(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run a compiler command, its output captured as text, in the C locale: its messages then
    quote with plain ASCII, which compile_errors.py and includes.py read."""
    return subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C", "LANG": "C"})
