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
// compiles it), more than a small launch takes. Here too, for every worker: the sandbox's
// settings, kept read-only, and the closing of the descriptors it inherited.
#include "sandbox.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

#if defined(__linux__) && __has_include(<linux/seccomp.h>) && \
    (defined(__x86_64__) || defined(__aarch64__))
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#define PAL_SECCOMP 1
#endif

// The sandbox's settings, alone in a page that is read-only but while they are set: the
// runtime's variables lie next to the kernel's static __shared__ section, and a write through
// a shared array's pointer before its start used to set the level to 0 (then system() ran a
// shell). Such a write now faults, reported with the thread like any wild write. All zero
// is the default (forbidden calls refused), so the page needs no set-up before the first
// launch; a fork keeps its protection. The page is the first whole one inside an area of two
// of the largest page size (AArch64's 64 KiB); a larger page is left unprotected. It starts
// at the area's first multiple of that largest size, which is a page's start whatever the
// page size: finding it needs no sysconf (pal_worker_exit runs in signal handlers, where
// sysconf is not async-signal-safe) and no pointer kept in writable memory.
extern "C" {
PAL_HIDDEN char pal_sandbox_settings[2 * PAL_MAX_PAGE];   // named for the tests
}

namespace {

struct Settings {
    int pass_through;   // level 0
    int seccomp;        // level 2
    int filtered;       // this worker runs under the filter
};

// The page size, or 0 where it is too large to protect.
size_t settings_page()
{
    const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p <= PAL_MAX_PAGE ? p : 0;
}

// Async-signal-safe.
Settings *settings()
{
    const uintptr_t a = (uintptr_t)pal_sandbox_settings;
    return (Settings *)((a + PAL_MAX_PAGE - 1) & ~(uintptr_t)(PAL_MAX_PAGE - 1));
}

// Writes the settings and makes their page read-only again.
void store(const Settings &v)
{
    Settings *s = settings();
    const size_t p = settings_page();
    if (p) mprotect(s, p, PROT_READ | PROT_WRITE);
    *s = v;
    if (p) mprotect(s, p, PROT_READ);
}

}  // namespace

extern "C" PAL_HIDDEN int pal_sandbox_level(void)
{
    const Settings *s = settings();
    return s->pass_through ? 0 : s->seccomp ? 2 : 1;
}

extern "C" PAL_HIDDEN void pal_sandbox_configure(void)
{
    const char *v = getenv("PAGEDATTN_LAB_CPU_SANDBOX");
    Settings s = *settings();
    s.pass_through = v && strcmp(v, "0") == 0;
    s.seccomp = v && strcmp(v, "seccomp") == 0;
    store(s);
}

// Close every descriptor inherited from the launching process but the standard streams and
// `keep` (the pipe's write end): under the grader's kernel host one of them is its channel
// to the judge, into which a kernel wrote an answer of its own to the judge's request.
extern "C" PAL_HIDDEN void pal_close_inherited(int keep)
{
#if defined(__linux__)
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
    if ((keep <= 3 || PAL_REAL(syscall)(SYS_close_range, 3u, (unsigned)keep - 1, 0u) == 0) &&
        PAL_REAL(syscall)(SYS_close_range, (unsigned)(keep < 3 ? 3 : keep + 1), ~0u, 0u) == 0)
        return;
#endif
    struct rlimit rl;   // no close_range (Linux before 5.9, macOS): each possible descriptor
    long most = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                    ? (long)rl.rlim_cur : 65536;
    for (long fd = 3; fd < (most < 65536 ? most : 65536); ++fd)
        if (fd != keep) close((int)fd);
}

extern "C" [[noreturn]] PAL_HIDDEN void pal_worker_exit(int code)
{
#ifdef PAL_SECCOMP
    if (settings()->filtered)
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

void set_filtered()
{
    Settings s = *settings();
    s.filtered = 1;
    store(s);
}

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
        return set_filtered(), 0;
#endif
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) return -1;
    set_filtered();
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
