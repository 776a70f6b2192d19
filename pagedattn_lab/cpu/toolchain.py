"""Where the CPU executor's builds are cached and which C++ compiler makes them (compiler.py).

The cache folder is $PAGEDATTN_LAB_CACHE_DIR/cpu, else $XDG_CACHE_HOME/pagedattn_lab/cpu, else
~/.cache/pagedattn_lab/cpu; where it is not writable, a folder of this user's under the
temporary directory, with a warning. The compiler is $CXX, else c++, g++, clang++; under the
instructor's grader, the one the grader names in $PAGEDATTN_LAB_GRADING_CXX.
"""
from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from .errors import CompilerNotFoundError

GRADING_CXX = "PAGEDATTN_LAB_GRADING_CXX"


def cache_dir() -> Path:
    """Where compiled kernels are cached (see the module docstring)."""
    root = os.environ.get("PAGEDATTN_LAB_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "cpu"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pagedattn_lab" / "cpu"


@functools.lru_cache(maxsize=None)
def writable_cache_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True)
        probe.close()
        return path
    except OSError as exc:
        fallback = Path(tempfile.gettempdir()) / f"pagedattn_lab-{os.getuid()}" / "cpu"
        fallback.mkdir(parents=True, exist_ok=True)
        warnings.warn(f"kernel cache {path} is not writable ({exc}); using {fallback}. Set "
                      f"PAGEDATTN_LAB_CACHE_DIR to choose another place.", stacklevel=3)
        return fallback


def _not_found_message(tried: list[str]) -> str:
    if sys.platform == "darwin":
        how = "install the Xcode command line tools: xcode-select --install"
    elif sys.platform.startswith("linux"):
        how = ("install one: apt install g++ (Debian/Ubuntu), dnf install gcc-c++ (Fedora), "
               "or in a conda environment: conda install -c conda-forge cxx-compiler")
    else:
        how = "install g++ or clang++ (conda: conda install -c conda-forge cxx-compiler)"
    return (f"no C++ compiler found (tried {', '.join(tried)}); the CPU executor compiles "
            f"CUDA kernels with the system C++ compiler. To run kernels without a GPU, {how}. "
            f"Set $CXX to use a specific compiler.")


@functools.lru_cache(maxsize=None)
def find_compiler(cxx_env: str | None = None) -> tuple[tuple[str, ...], str, bool]:
    """(command, identity, is_clang) of the C++ compiler: $CXX, else c++, g++, clang++."""
    candidates = [shlex.split(cxx_env)] if cxx_env else [["c++"], ["g++"], ["clang++"]]
    tried = []
    for cmd in candidates:
        tried.append(" ".join(cmd))
        exe = shutil.which(cmd[0]) if cmd else None
        if not exe:
            continue
        try:
            out = subprocess.run([exe, *cmd[1:], "--version"], capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0:
            ident = f"{exe} :: {out.stdout.strip().splitlines()[0] if out.stdout else ''}"
            return (exe, *cmd[1:]), ident, "clang" in out.stdout.lower()
    raise CompilerNotFoundError(_not_found_message(tried))


def compiler() -> tuple[tuple[str, ...], str, bool]:
    # under the instructor's grader the compiler is the grader's choice, never $CXX
    return find_compiler(os.environ.get(GRADING_CXX) or os.environ.get("CXX") or None)
