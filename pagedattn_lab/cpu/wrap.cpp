// Functions a kernel may not call, caught at link time (Linux: -Wl,--wrap=<name>, see
// sandbox.h): whatever creates processes or threads, runs programs, ends the process or
// sends signals. Called from kernel code, each one stops the launch with PAL_SYSCALL naming
// itself and the calling thread and block, checked or not, so that a kernel can neither
// kill the Python process (exit(), abort(), kill(getppid(), ...)) nor leave processes
// behind. A call made through a library (not from the kernel's own code) or as a raw system
// call is not seen here: the optional seccomp filter (sandbox.cpp) and the parent's
// process-group kill are the backstops.
#include "sandbox.h"
#include "scheduler.h"

#ifdef PAL_WRAP

namespace {

[[noreturn]] void forbidden(const char *name)
{
    snprintf(pal::S.res->msg, sizeof pal::S.res->msg, "%s", name);
    pal::fail(PAL_SYSCALL);
}

}  // namespace

// Calls that pass through at level 0; void pointers stand for the libc types (same ABI).
#define PAL_WRAP_FN(R, name, PARAMS, ARGS)                                                   \
    extern "C" R __real_##name PARAMS;                                                       \
    extern "C" PAL_HIDDEN R __wrap_##name PARAMS                                             \
    {                                                                                        \
        if (pal_sandbox_level() == 0) return __real_##name ARGS;                             \
        forbidden(#name);                                                                    \
    }
PAL_WRAP_FN(int, fork, (void), ())
PAL_WRAP_FN(int, vfork, (void), ())
PAL_WRAP_FN(int, execv, (const char *p, char *const *a), (p, a))
PAL_WRAP_FN(int, execve, (const char *p, char *const *a, char *const *e), (p, a, e))
PAL_WRAP_FN(int, execvp, (const char *p, char *const *a), (p, a))
PAL_WRAP_FN(int, execvpe, (const char *p, char *const *a, char *const *e), (p, a, e))
PAL_WRAP_FN(int, fexecve, (int fd, char *const *a, char *const *e), (fd, a, e))
PAL_WRAP_FN(int, system, (const char *c), (c))
PAL_WRAP_FN(void *, popen, (const char *c, const char *m), (c, m))
PAL_WRAP_FN(int, posix_spawn, (int *p, const char *f, const void *fa, const void *at,
                               char *const *a, char *const *e), (p, f, fa, at, a, e))
PAL_WRAP_FN(int, posix_spawnp, (int *p, const char *f, const void *fa, const void *at,
                                char *const *a, char *const *e), (p, f, fa, at, a, e))
PAL_WRAP_FN(int, daemon, (int a, int b), (a, b))
PAL_WRAP_FN(int, pthread_create, (void *t, const void *at, void *(*f)(void *), void *a),
            (t, at, f, a))
PAL_WRAP_FN(void, exit, (int c), (c))
PAL_WRAP_FN(void, _exit, (int c), (c))
PAL_WRAP_FN(void, _Exit, (int c), (c))
PAL_WRAP_FN(void, quick_exit, (int c), (c))
PAL_WRAP_FN(void, abort, (void), ())
PAL_WRAP_FN(int, kill, (int p, int s), (p, s))
PAL_WRAP_FN(int, killpg, (int p, int s), (p, s))
PAL_WRAP_FN(int, raise, (int s), (s))
PAL_WRAP_FN(int, sigqueue, (int p, int s, void *v), (p, s, v))
PAL_WRAP_FN(int, setsid, (void), ())
PAL_WRAP_FN(int, setpgid, (int a, int b), (a, b))
#undef PAL_WRAP_FN

// Variadic: never passed through.
#define PAL_WRAP_VA(R, name, FIRST)                                                          \
    extern "C" PAL_HIDDEN R __wrap_##name(FIRST, ...) { forbidden(#name); }
PAL_WRAP_VA(int, execl, const char *)
PAL_WRAP_VA(int, execlp, const char *)
PAL_WRAP_VA(int, execle, const char *)
PAL_WRAP_VA(int, clone, void *)
PAL_WRAP_VA(long, ptrace, int)
PAL_WRAP_VA(long, syscall, long)
#undef PAL_WRAP_VA

#endif
