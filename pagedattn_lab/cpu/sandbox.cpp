// The strict sandbox, $PAGEDATTN_LAB_CPU_SANDBOX=seccomp (Linux): on top of the wrapped
// functions (wrap.cpp), a seccomp filter in each worker makes the system calls that would
// let kernel code escape or end the launch its own way trap with SIGSYS, which the worker
// reports like a crash, naming the running thread and block; it also catches calls made
// through libraries and raw system calls:
//   - creating processes or threads, or running programs: fork, vfork, clone, clone3,
//     execve, execveat;
//   - ending the process: exit_group (exit(), _exit()...); the worker itself then ends with
//     the single-thread exit system call (pal_worker_exit);
//   - signalling any process but itself: kill, tkill, tgkill, rt_(tg)sigqueueinfo,
//     pidfd_send_signal;
//   - leaving the launch's process group, or tracing: setsid, setpgid, ptrace.
// It is not the default because attaching a filter costs ~0.2 ms per worker (the kernel
// compiles it), more than a small launch takes.
#include "sandbox.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__linux__) && __has_include(<linux/seccomp.h>) && \
    (defined(__x86_64__) || defined(__aarch64__))
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#define PAL_SECCOMP 1
#endif

namespace {
bool filtered;   // this worker runs under the filter
}

extern "C" PAL_HIDDEN void pal_sandbox_configure(void)
{
    const char *v = getenv("PAGEDATTN_LAB_CPU_SANDBOX");
    pal_sandbox_level = !v ? 1 : strcmp(v, "0") == 0 ? 0 : strcmp(v, "seccomp") == 0 ? 2 : 1;
}

extern "C" [[noreturn]] PAL_HIDDEN void pal_worker_exit(int code)
{
#ifdef PAL_SECCOMP
    if (filtered)
        for (;;) PAL_REAL(syscall)(SYS_exit, code);   // one thread: the process ends with it
#endif
    PAL_REAL(_exit)(code);
}

#ifdef PAL_SECCOMP

namespace {

#if defined(__x86_64__)
#define PAL_AUDIT_ARCH AUDIT_ARCH_X86_64
#else
#define PAL_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

const long always_denied[] = {
#ifdef SYS_fork
    SYS_fork,
#endif
#ifdef SYS_vfork
    SYS_vfork,
#endif
    SYS_clone, SYS_clone3, SYS_execve, SYS_execveat, SYS_exit_group, SYS_setsid, SYS_setpgid,
    SYS_ptrace, SYS_pidfd_send_signal,
};
// Signals: allowed when the first argument (pid or thread-group id) is the worker itself.
const long signal_calls[] = {SYS_kill, SYS_tgkill, SYS_rt_sigqueueinfo, SYS_rt_tgsigqueueinfo};

// A jump's offset from instruction `from` to `to`: BPF_JUMP puts it in a byte unconverted,
// which Clang refuses as a narrowing in a braced initializer (the filter is under 64 long).
unsigned char skip(unsigned to, unsigned from) { return (unsigned char)(to - from - 1); }

}  // namespace

// 0 when the filter is in place.
extern "C" PAL_HIDDEN int pal_sandbox_install(void)
{
    const unsigned self = (unsigned)getpid();
    struct sock_filter f[64];
    unsigned n = 0;
    const unsigned nd = sizeof always_denied / sizeof *always_denied;
    const unsigned ns = sizeof signal_calls / sizeof *signal_calls;
    // Layout: arch and number (5); denied list; signal list; allow; trap; arg check.
    f[n++] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    f[n++] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PAL_AUDIT_ARCH, 1, 0);
    f[n++] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP);   // another ABI (x32, ia32)
    f[n++] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    const unsigned allow = n + 1 + nd + ns + 1, trap = allow + 1, check = trap + 1;
    f[n] = BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, skip(trap, n), 0);   // x32 calls
    ++n;
    for (unsigned i = 0; i < nd; ++i, ++n)
        f[n] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)always_denied[i], skip(trap, n), 0);
    // SYS_tkill takes a thread id: ours equals our pid (one thread).
    for (unsigned i = 0; i < ns; ++i, ++n)
        f[n] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)signal_calls[i], skip(check, n), 0);
    f[n] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)SYS_tkill, skip(check, n), 0);
    ++n;
    f[n++] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);   // == allow
    f[n++] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP);    // == trap
    f[n++] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]));
    f[n++] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, self, 0, 1);
    f[n++] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    f[n++] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP);
    struct sock_fprog prog;
    prog.len = (unsigned short)n;
    prog.filter = f;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
#ifdef SECCOMP_FILTER_FLAG_SPEC_ALLOW
    // Without SPEC_ALLOW the kernel turns on its speculative-store-bypass mitigation for a
    // filtered process, which slows the kernel's code.
    if (PAL_REAL(syscall)(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW,
                          &prog) == 0)
        return (filtered = true), 0;
#endif
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) return -1;
    filtered = true;
    return 0;
}

// The name of a trapped system call, for the report.
extern "C" PAL_HIDDEN const char *pal_syscall_name(long nr)
{
    switch (nr) {
#ifdef SYS_fork
    case SYS_fork: return "fork";
#endif
#ifdef SYS_vfork
    case SYS_vfork: return "vfork";
#endif
    case SYS_clone: return "clone";
    case SYS_clone3: return "clone3";
    case SYS_execve: return "execve";
    case SYS_execveat: return "execveat";
    case SYS_exit_group: return "exit";
    case SYS_setsid: return "setsid";
    case SYS_setpgid: return "setpgid";
    case SYS_ptrace: return "ptrace";
    case SYS_kill: return "kill";
    case SYS_tkill: return "tkill";
    case SYS_tgkill: return "tgkill";
    case SYS_rt_sigqueueinfo: return "sigqueue";
    case SYS_rt_tgsigqueueinfo: return "rt_tgsigqueueinfo";
    case SYS_pidfd_send_signal: return "pidfd_send_signal";
    default: return "a forbidden system call";
    }
}

#else

extern "C" PAL_HIDDEN int pal_sandbox_install(void) { return -1; }
extern "C" PAL_HIDDEN const char *pal_syscall_name(long) { return "a forbidden system call"; }

#endif
