// What keeps a kernel inside its launch (internal to the runtime): wrap.cpp (always, Linux)
// and sandbox.cpp (the optional seccomp filter). See wrap.cpp for the policy.
#ifndef PAGEDATTN_LAB_SANDBOX_H
#define PAGEDATTN_LAB_SANDBOX_H

#include "runtime.h"

// On Linux the kernel library is linked with -Wl,--wrap=<name> for the functions a kernel
// may not call (compiler.py, WRAPPED): references to <name> go to __wrap_<name>, and the
// runtime reaches the real function as __real_<name>.
#ifdef PAL_WRAP
#define PAL_REAL(name) __real_##name
extern "C" {
int __real_fork(void);
int __real_kill(int, int);
int __real_setpgid(int, int);
void __real__exit(int) __attribute__((noreturn));
long __real_syscall(long, ...);
}
#else
#define PAL_REAL(name) name
#endif

extern "C" {
// 0: calls pass through (for testing the process-group clean-up); 1: forbidden calls are
// reported (the default); 2: also the seccomp filter. From $PAGEDATTN_LAB_CPU_SANDBOX, read
// by pal_sandbox_configure (before each launch's kernel code runs: the settings are kept in
// a page that is read-only in between, where a stray write of the kernel's faults).
PAL_HIDDEN int pal_sandbox_level(void);
PAL_HIDDEN void pal_sandbox_configure(void);
PAL_HIDDEN int pal_sandbox_install(void);   // the seccomp filter; 0 when in place
PAL_HIDDEN const char *pal_syscall_name(long nr);
// Closes every descriptor the worker inherited but the standard streams and `keep`.
PAL_HIDDEN void pal_close_inherited(int keep);
[[noreturn]] PAL_HIDDEN void pal_worker_exit(int code);
}

#endif
