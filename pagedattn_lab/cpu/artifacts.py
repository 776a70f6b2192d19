"""Compiled files the launching process may trust, when kernels are not the user's own.

A kernel's workers run as the launching process's user, so they can write the compile
cache: a runtime object the next build links (cache/cpu/runtime-*/host.o), a library that
is not loaded yet, even the file of one that is (its code pages follow the file). Under the
grader's kernel host (`PAGEDATTN_LAB_CPU_TRUST_CACHE=0`, set by grading/kernel_host.py) a
learner's kernel could so put its own code into the host's process, past the object check
(kernel_object.py). There:
- a cached file is used only if this process wrote it and its digest has not changed since
  (`unchanged`); otherwise it is built again;
- a library is loaded from a sealed in-memory copy (`loadable_path`), which no process can
  write, not from the cache file; the copy is made from the bytes this process built, before
  they reach the cache (`seal`), where another process may replace them at once with its own
  build of the same kernel (an instrumented build's bytes differ from build to build).
Nothing of this runs between a launch's end and the next build but this process's code
(the workers are gone), so a digest checked before the build or the load still holds then.
"""
from __future__ import annotations

import hashlib
import os

__all__ = ["trusted_cache", "remember", "unchanged", "loadable_path", "seal", "sealed"]

_DIGESTS: dict[str, str] = {}    # path -> sha256 of what this process wrote there
_SEALED: dict[str, int] = {}     # path -> the sealed copy's descriptor (kept open)


def trusted_cache() -> bool:
    return os.environ.get("PAGEDATTN_LAB_CPU_TRUST_CACHE", "1") != "0"


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def remember(paths) -> None:
    """This process just wrote `paths`."""
    for p in paths:
        _DIGESTS[str(p)] = _digest(str(p))


def unchanged(paths) -> bool:
    """Every one of `paths` is what this process wrote there."""
    return all(_DIGESTS.get(str(p)) is not None and _DIGESTS[str(p)] == _digest(str(p))
               for p in paths)


def loadable_path(path: str) -> str:
    """The path to dlopen: `path` itself where the cache is trusted (or there is no sealed
    memory file: not Linux); else a sealed copy of the bytes this process wrote there."""
    if trusted_cache() or not hasattr(os, "memfd_create"):
        return path
    if path not in _SEALED:
        with open(path, "rb") as fh:
            data = fh.read()
        if hashlib.sha256(data).hexdigest() != _DIGESTS.get(path):
            raise RuntimeError(f"{path} changed after it was built; refusing to load it")
        seal(path, data)
    return f"/proc/self/fd/{_SEALED[path]}"


def seal(path: str, data: bytes) -> None:
    """Where the cache is not trusted: this process built `data` for `path`; keep a sealed
    copy now, before `path` is written, so that another process that builds the same kernel
    into the same cache (an instrumented build's bytes differ from one build to the next)
    cannot make this one refuse its own library."""
    _DIGESTS[path] = hashlib.sha256(data).hexdigest()
    if trusted_cache() or not hasattr(os, "memfd_create") or path in _SEALED:
        return
    import fcntl  # noqa: PLC0415 - Linux only
    fd = os.memfd_create("pagedattn_lab-kernel", os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW |
                fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
    _SEALED[path] = fd


def sealed(path: str) -> bool:
    """This process holds a sealed copy of what it built for `path` (loaded from there)."""
    return path in _SEALED
