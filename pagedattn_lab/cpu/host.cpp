// The host side of the CPU executor's runtime, called from Python through ctypes:
// guarded buffers for the kernel's array arguments, and launches.
//
// Checked launch: the parent forks worker processes (plain fork in C: no Python code runs
// in the child), all in one new process group. Each worker installs handlers for
// SIGSEGV/SIGBUS/SIGFPE/SIGSYS/... on an alternate stack (and, if asked, a seccomp filter:
// sandbox.cpp), runs blocks, and exits. A fault is written into the shared control block (pal_ctl) with
// the faulting address and the running thread/block; the parent (Python) turns it into an
// exception. Once the workers are done the parent kills their process group, so nothing a
// kernel started outlives the launch. The parent waits with poll() on a pipe whose
// write ends the workers hold, so that it can give the GIL back every few milliseconds.
//
// Unchecked launch: the blocks run on the calling thread; a crash kills the process.
#include "runtime.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif
#if defined(__APPLE__)
#include <sys/ucontext.h>
#else
#include <ucontext.h>
#endif

extern "C" PAL_HIDDEN int pal_run_blocks(const pal_config *cfg, pal_ctl *ctl, int worker);
extern "C" PAL_HIDDEN void pal_describe_fault(pal_result *r);
extern "C" PAL_HIDDEN int pal_record_deferred_read(pal_result *r);
#include "sandbox.h"

namespace {

struct Launch {
    pal_config cfg;
    pal_ctl *ctl;
    uint64_t ctl_base, ctl_len;   // its mapping, guards included
    int nworkers;
    int fd;          // read end of the pipe; EOF when every worker has exited
    int done;
    pid_t pgid;      // the launch's process group (the first worker leads it)
    pid_t pids[PAL_MAX_WORKERS];
    int wstatus[PAL_MAX_WORKERS];
};

pal_ctl *g_ctl;
int g_worker;

size_t page_size() { return (size_t)sysconf(_SC_PAGESIZE); }
size_t round_up(size_t n, size_t p) { return (n + p - 1) / p * p; }

// 1 write, 0 read, -1 unknown, from the CPU's fault information in the signal context.
int fault_is_write(int sig, void *ucv)
{
    if (sig != SIGSEGV && sig != SIGBUS) return -1;
#if defined(__linux__) && defined(__x86_64__)
    ucontext_t *uc = (ucontext_t *)ucv;
    return (uc->uc_mcontext.gregs[REG_ERR] & 2) ? 1 : 0;
#elif defined(__linux__) && defined(__aarch64__)
    ucontext_t *uc = (ucontext_t *)ucv;
    struct ctx { uint32_t magic, size; };
    unsigned char *p = (unsigned char *)uc->uc_mcontext.__reserved;
    unsigned char *end = p + sizeof uc->uc_mcontext.__reserved;
    while (p + sizeof(ctx) <= end) {
        ctx *h = (ctx *)p;
        if (h->magic == 0 || h->size == 0) break;
        if (h->magic == 0x45535201u) {   // ESR_MAGIC: the exception syndrome register
            uint64_t esr = *(uint64_t *)(p + 8);
            uint64_t ec = esr >> 26;
            if (ec == 0x24 || ec == 0x25) return (int)((esr >> 6) & 1);   // WnR
            return -1;
        }
        p += h->size;
    }
    return -1;
#elif defined(__APPLE__) && defined(__x86_64__)
    ucontext_t *uc = (ucontext_t *)ucv;
    return (uc->uc_mcontext->__es.__err & 2) ? 1 : 0;
#elif defined(__APPLE__) && defined(__aarch64__)
    ucontext_t *uc = (ucontext_t *)ucv;
    uint64_t esr = uc->uc_mcontext->__es.__esr;
    uint64_t ec = esr >> 26;
    if (ec == 0x24 || ec == 0x25) return (int)((esr >> 6) & 1);
    return -1;
#else
    (void)ucv;
    return -1;
#endif
}

void on_fault(int sig, siginfo_t *si, void *uc)
{
    pal_result *r = &g_ctl->res[g_worker];
    r->status = PAL_FAULT;
    r->signo = sig;
    r->sicode = si ? si->si_code : 0;
    r->addr = si ? (uint64_t)(uintptr_t)si->si_addr : 0;
    r->is_write = fault_is_write(sig, uc);
#if defined(__linux__) && defined(SIGSYS)
    if (sig == SIGSYS && si) {   // the sandbox refused a system call (sandbox.cpp)
        r->status = PAL_SYSCALL;
        r->sicode = si->si_syscall;
        size_t at = 0;
        pal_append(r->msg, sizeof r->msg, &at, pal_syscall_name(si->si_syscall));
    }
#endif
    pal_describe_fault(r);
    if (r->status == PAL_FAULT) pal_record_deferred_read(r);   // came first: maybe the cause
    __atomic_store_n(&g_ctl->abort, 1, __ATOMIC_SEQ_CST);
    pal_worker_exit(3);
}

// The parent's time limit ran out: say who was running, then die.
void on_stop(int, siginfo_t *, void *)
{
    pal_result *r = &g_ctl->res[g_worker];
    if (r->status == PAL_OK) {
        r->status = PAL_STOPPED;
        r->addr = 0;
        pal_describe_fault(r);
        pal_record_deferred_read(r);   // the thread read past an array before it hung
    }
    pal_worker_exit(4);
}

[[noreturn]] void worker_main(Launch *h, int w, pid_t parent, pid_t pgid, int keep)
{
    pal_close_inherited(keep);
    g_ctl = h->ctl;
    g_worker = w;
    PAL_REAL(setpgid)(0, pgid);   // the parent does the same (whichever runs first)
    signal(SIGINT, SIG_IGN);   // the parent decides; it kills us on Ctrl-C
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
#if defined(__linux__)
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) pal_worker_exit(1);
#else
    (void)parent;
#endif
    if (h->cfg.timeout_s > 0) alarm((unsigned)h->cfg.timeout_s);   // backstop only
    static char altstack[1 << 16];
    stack_t ss;
    ss.ss_sp = altstack;
    ss.ss_size = sizeof altstack;
    ss.ss_flags = 0;
    sigaltstack(&ss, nullptr);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS};
    sigset_t set;
    sigemptyset(&set);
    for (int s : sigs) {
        sigaction(s, &sa, nullptr);
        sigaddset(&set, s);
    }
    sa.sa_sigaction = on_stop;
    sigaction(SIGUSR2, &sa, nullptr);
    sigaddset(&set, SIGUSR2);
    sigaddset(&set, SIGALRM);
    sigprocmask(SIG_UNBLOCK, &set, nullptr);
    pal_sandbox_configure();
    if (pal_sandbox_level() == 2) pal_sandbox_install();   // best effort
    pal_run_blocks(&h->cfg, h->ctl, w);
    pal_worker_exit(0);
}

// Whether every worker has exited (without reaping them: the group id stays reserved).
bool all_exited(Launch *h)
{
    for (int w = 0; w < h->nworkers; ++w) {
        if (h->pids[w] <= 0) continue;
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)h->pids[w], &si, WEXITED | WNOHANG | WNOWAIT) != 0 ||
            si.si_pid == 0)
            return false;
    }
    return true;
}

void reap(Launch *h)
{
    // Whatever the kernel started (where the sandbox could not stop it) goes with the
    // group; the leader is not reaped yet, so the group id cannot have been reused.
    if (h->pgid > 0) PAL_REAL(kill)(-h->pgid, SIGKILL);
    for (int w = 0; w < h->nworkers; ++w) {
        if (h->pids[w] <= 0) continue;
        int st = 0;
        while (waitpid(h->pids[w], &st, 0) < 0 && errno == EINTR) {}
        h->wstatus[w] = st;
        h->pids[w] = 0;
    }
    if (h->fd >= 0) close(h->fd);
    h->fd = -1;
    h->done = 1;
}

}  // namespace

extern "C" {

PAL_EXPORT int pal_abi_version(void) { return PAL_ABI_VERSION; }
PAL_EXPORT uint64_t pal_sizeof_config(void) { return sizeof(pal_config); }
PAL_EXPORT uint64_t pal_sizeof_result(void) { return sizeof(pal_result); }
PAL_EXPORT uint64_t pal_sizeof_ctl(void) { return sizeof(pal_ctl); }
PAL_EXPORT const char *pal_fiber_kind(void)
{
#if defined(PAL_FIBER_UCONTEXT) || !(defined(__x86_64__) || defined(__aarch64__))
    return "ucontext";
#else
    return "asm";
#endif
}

// A shared (fork-inherited) buffer of nbytes whose END touches a PROT_NONE guard region of
// guard_after bytes, with guard_before bytes of guard in front of its first page. Returns
// the data pointer, or NULL; *base and *len describe the whole reservation.
PAL_EXPORT void *pal_buffer_alloc(uint64_t nbytes, uint64_t guard_before, uint64_t guard_after,
                                  uint64_t *base, uint64_t *len)
{
    const size_t p = page_size();
    const size_t gb = round_up(guard_before ? guard_before : p, p);
    const size_t ga = round_up(guard_after ? guard_after : p, p);
    const size_t data = round_up(nbytes, p);
    const size_t total = gb + data + ga;
    char *r = (char *)mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                           -1, 0);
    if (r == MAP_FAILED) return nullptr;
    if (data) {
        void *d = mmap(r + gb, data, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED,
                       -1, 0);
        if (d == MAP_FAILED) {
            munmap(r, total);
            return nullptr;
        }
    }
    *base = (uint64_t)(uintptr_t)r;
    *len = total;
    return r + gb + data - nbytes;
}

PAL_EXPORT void pal_buffer_free(uint64_t base, uint64_t len)
{
    if (base) munmap((void *)(uintptr_t)base, (size_t)len);
}

// Start a launch. Checked: fork the workers and return at once. Unchecked: run it here.
// Returns NULL with errno set when nothing could be started.
PAL_EXPORT void *pal_launch_begin(const pal_config *cfg)
{
    Launch *h = (Launch *)calloc(1, sizeof(Launch));
    if (!h) return nullptr;
    h->cfg = *cfg;
    h->fd = -1;
    // 256 MiB of guard each side (address space only): an index that jumps an array's own
    // guard faults in this one, where it read or changed the results the parent trusts. 1 MiB
    // where that much cannot be reserved (the grader's RLIMIT_AS). README.md: what remains.
    static const uint64_t guards[] = {(uint64_t)1 << 28, (uint64_t)1 << 20};
    for (uint64_t guard : guards)
        if (!h->ctl)
            h->ctl = (pal_ctl *)pal_buffer_alloc(sizeof(pal_ctl), guard, guard, &h->ctl_base,
                                                 &h->ctl_len);
    if (!h->ctl) {
        free(h);
        return nullptr;
    }
    int nw = cfg->nworkers < 1 ? 1 : (cfg->nworkers > PAL_MAX_WORKERS ? PAL_MAX_WORKERS : cfg->nworkers);
    if (!cfg->checked) {
        h->nworkers = 1;
        h->ctl->nworkers = 1;
        pal_run_blocks(&h->cfg, h->ctl, 0);
        h->done = 1;
        return h;
    }
    int fds[2];
    if (pipe(fds) != 0) {
        pal_buffer_free(h->ctl_base, h->ctl_len);
        free(h);
        return nullptr;
    }
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    const pid_t parent = getpid();
    for (int w = 0; w < nw; ++w) {
        pid_t pid = PAL_REAL(fork)();
        if (pid == 0) {
            close(fds[0]);
            worker_main(h, w, parent, h->pgid, fds[1]);   // pgid 0: the first leads the group
        }
        if (pid < 0) break;   // run with the workers we have
        if (!h->pgid) h->pgid = pid;
        PAL_REAL(setpgid)(pid, h->pgid);
        h->pids[w] = pid;
        h->nworkers = w + 1;
    }
    close(fds[1]);
    h->fd = fds[0];
    h->ctl->nworkers = h->nworkers;
    if (h->nworkers == 0) {
        int e = errno;
        close(fds[0]);
        pal_buffer_free(h->ctl_base, h->ctl_len);
        free(h);
        errno = e;
        return nullptr;
    }
    return h;
}

// 1 when every worker has exited (and was reaped), 0 when still running after timeout_ms.
PAL_EXPORT int pal_launch_wait(void *hv, int timeout_ms)
{
    Launch *h = (Launch *)hv;
    if (h->done) return 1;
    struct pollfd pfd;
    pfd.fd = h->fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    int r = poll(&pfd, 1, timeout_ms);
    if (r == 0 && all_exited(h)) {   // something the kernel started holds the pipe open
        reap(h);
        return 1;
    }
    if (r <= 0) return 0;   // timeout, or EINTR (Ctrl-C): the caller decides
    char buf[16];
    if (read(h->fd, buf, sizeof buf) > 0) return 0;   // nobody writes; be safe
    reap(h);
    return 1;
}

PAL_EXPORT void pal_launch_kill(void *hv)
{
    Launch *h = (Launch *)hv;
    if (h->done) return;
    reap(h);   // kills the launch's process group first
}

// Ask the workers to record which thread is running and exit (before a kill).
PAL_EXPORT void pal_launch_interrupt(void *hv)
{
    Launch *h = (Launch *)hv;
    if (h->done) return;
    for (int w = 0; w < h->nworkers; ++w)
        if (h->pids[w] > 0) PAL_REAL(kill)(h->pids[w], SIGUSR2);
}

PAL_EXPORT pal_ctl *pal_launch_ctl(void *hv) { return ((Launch *)hv)->ctl; }
PAL_EXPORT int pal_launch_nworkers(void *hv) { return ((Launch *)hv)->nworkers; }
PAL_EXPORT int pal_launch_worker_status(void *hv, int w) { return ((Launch *)hv)->wstatus[w]; }

// Decode a wait status: 0 exited normally (code in *value), 1 killed by signal *value.
PAL_EXPORT int pal_decode_status(int st, int *value)
{
    if (WIFSIGNALED(st)) {
        *value = WTERMSIG(st);
        return 1;
    }
    *value = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return 0;
}

PAL_EXPORT void pal_launch_end(void *hv)
{
    Launch *h = (Launch *)hv;
    if (!h) return;
    if (!h->done) pal_launch_kill(h);
    pal_buffer_free(h->ctl_base, h->ctl_len);
    free(h);
}

}  // extern "C"
