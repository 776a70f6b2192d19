"""The refusal of work whose arrays would outgrow the device's memory (`check_memory`), and
how much memory the machine or the GPU has."""
from __future__ import annotations

import os

from .words import counted


def check_memory(nbytes: int, device: str, name: str, what: str, advice: str = "") -> None:
    """Refuse, naming `name`, work whose arrays (`what`, nbytes in all) exceed the device's
    memory. Arrays each smaller than the memory are allocated lazily and together get the
    process killed (Linux's out-of-memory killer) when they are written, with no error at all."""
    total = device_memory_bytes(device)
    if total is not None and nbytes > total:
        where = "GPU" if device == "gpu" else "machine"
        raise ValueError(f"{name}: {what} would take {_bytes_text(nbytes)}, more than the "
                         f"{_bytes_text(total)} of memory this {where} has{advice}")


def device_memory_bytes(device: str) -> int | None:
    """Total memory of the CPU (physical RAM) or of the current GPU; None when unknown."""
    if device == "gpu":
        from .backend import cupy_module  # noqa: PLC0415 - CuPy only when a GPU is asked for
        return int(cupy_module().cuda.runtime.memGetInfo()[1])
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):   # not every OS has these names
        return None


def _bytes_text(nbytes: int) -> str:
    """nbytes in the largest unit that shows it as at least 1.0 (GiB, MiB, KiB, bytes), to one
    decimal: a small memory is "1.0 MiB", not "0.0 GiB", and 2^30 - 1 bytes "1.0 GiB", not
    "1,024.0 MiB"."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        shown = f"{nbytes / (1 << shift):,.1f}"
        if not shown.startswith("0."):
            return f"{shown} {unit}"
    return counted(nbytes, "byte")
