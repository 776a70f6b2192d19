"""The message of a launch stopped for a call a kernel may not make: a function that would
leave the kernel (exit, fork, exec, threads, signals; wrap.cpp and the seccomp filter) or
printf with a %n conversion (device_api.cpp)."""
from __future__ import annotations

from .errors import KernelFault
from .report import LaunchInfo

_SYSCALL_HINTS = [
    (("exit", "_exit", "_Exit", "quick_exit"), "a kernel cannot end the program; return from "
     "the kernel instead (or call __trap() to fail the launch)"),
    (("abort",), "a kernel cannot abort the program; use assert() or __trap() to fail the "
     "launch"),
    (("fork", "vfork", "clone", "clone3", "daemon", "posix_spawn", "posix_spawnp", "system",
      "popen", "execv", "execve", "execvp", "execvpe", "fexecve", "execl", "execlp", "execle",
      "execveat"), "a kernel cannot start processes or run programs"),
    (("pthread_create",), "a kernel cannot start threads: CUDA threads are the launch's"),
    (("kill", "killpg", "raise", "sigqueue", "tkill", "tgkill", "rt_tgsigqueueinfo",
      "pidfd_send_signal"), "a kernel cannot send signals"),
]


def _refused_call_text(call: str, name: str, r, info: LaunchInfo) -> str:
    if name == "printf":   # (device_api.cpp stops printf only for a format with %n)
        return (f"kernel {info.kernel!r}: a printf format with a %n conversion{info.where(r)}: "
                f"%n, which stores the count of characters printed so far through its "
                f"argument, is refused (no check of the CPU executor sees that store); printf "
                f"without %n works: print values only (%d, %f, %s, ...). The CPU executor "
                f"stopped the launch.")
    hint = next((h for names, h in _SYSCALL_HINTS if name in names),
                "a kernel may only compute and touch its arguments")
    return (f"kernel {info.kernel!r} called {call}(){info.where(r)}: {hint}. The CPU executor "
            f"stopped the launch; nothing it started is left running.")


def syscall_error(r, info: LaunchInfo) -> KernelFault:
    call = r.msg.decode(errors="replace")
    name = call.split(" ")[0]
    return KernelFault(
        _refused_call_text(call, name, r, info), kernel=info.kernel,
        block=tuple(r.block) if r.has_thread else None,
        thread=tuple(r.thread) if r.has_thread else None,
        signal="SIGSYS" if r.signo else None, region="unknown", buffer=None, arg_index=None,
        index=None, size=None, access=None, address=None, syscall=name)
