// What a kernel thread calls (through the macros of shim.h): barriers, warp intrinsics,
// printf, assert. A thread that must wait marks itself and switches to the scheduler
// (scheduler.h); the last thread to arrive releases the others and keeps running.
#include "scheduler.h"

using namespace pal;

static int barrier(int line, int pred, int kind)
{
    Fiber *f = cur;
    report_bad_read(f);
    const int g = S.gen & 1;
    if (S.arrived == 0) S.bar_acc[g] = kind == 1 ? 1 : 0;
    if (kind == 0) S.bar_acc[g] += pred;
    else if (kind == 1) S.bar_acc[g] &= pred;
    else if (kind == 2) S.bar_acc[g] |= pred;
    if (++S.arrived == S.n) {   // everyone is here: open the barrier, keep running
        S.arrived = 0;
        S.gen++;
        if (S.instr) instr_barrier();
        for (int i = 0; i < S.n; ++i)
            if (S.fib[i].state == PAL_T_BARRIER) S.fib[i].state = PAL_T_RUN;
        return S.bar_acc[g];
    }
    f->state = PAL_T_BARRIER; f->line = line; f->op = PAL_OP_SYNCTHREADS; f->mask = 0; f->gen = g;
    suspend(f);
    return S.bar_acc[f->gen];
}

extern "C" void __pal_syncthreads(int line) { barrier(line, 0, -1); }
extern "C" int __pal_syncthreads_reduce(int line, int pred, int kind) { return barrier(line, pred, kind); }

static void warp_release(Warp *w, int warp, unsigned mask)
{
    unsigned votes = 0;
    for (unsigned m = mask; m; m &= m - 1) {
        int l = __builtin_ctz(m);
        if (w->val[l]) votes |= 1u << l;
    }
    for (unsigned m = mask; m; m &= m - 1) {
        int l = __builtin_ctz(m);
        Fiber *f = &S.fib[warp * 32 + l];
        switch (f->op) {
        case PAL_OP_BALLOT: w->res[l] = votes & mask; break;
        case PAL_OP_ANY: w->res[l] = (votes & mask) != 0; break;
        case PAL_OP_ALL: w->res[l] = (votes & mask) == mask; break;
        case PAL_OP_SYNCWARP: w->res[l] = 0; break;
        default: {
            // A source lane outside the mask: CUDA leaves the result undefined (the lane may
            // not have run the shuffle at all). All one bits, the shared-memory poison's
            // (NaN for a float, double or half, -1 for an int), so that a kernel relying on it
            // gets a visibly wrong result instead of the caller's own value.
            int s = w->want[l];
            w->res[l] = (mask >> s) & 1u ? w->val[s] : ~0ull;
        }
        }
        f->state = PAL_T_RUN;
    }
    w->waiting &= ~mask;
    // Only __syncwarp orders memory among the lanes (as on the GPU): shuffles, votes and the
    // tensor-core calls wait for the warp but order no shared-memory access.
    if (S.instr && S.fib[warp * 32 + __builtin_ctz(mask)].op == PAL_OP_SYNCWARP)
        instr_syncwarp(warp, mask);
}

// A warp-wide call (WMMA, ldmatrix, mma) that some lanes reached while the others wait at
// another call (one of them skipped inside an if): the lanes would read fragments the others
// never published. Stops the launch with the lanes not at the last arriver's call as
// bad_lanes, whichever side the warp-wide call is on (report.py names their call from the
// threads' dump, so no message is written here).
static bool warp_wide(int op) { return op >= PAL_OP_WMMA_LOAD && op <= PAL_OP_MMA_S8; }

static void wide_call_apart(const Fiber *f, int op, unsigned mask, int line)
{
    unsigned apart = 0;
    bool wide = warp_wide(op);
    for (unsigned m = mask; m; m &= m - 1) {
        const Fiber *g = &S.fib[f->warp * 32 + __builtin_ctz(m)];
        if (g->op != op || g->line != line) {
            apart |= 1u << __builtin_ctz(m);
            wide |= warp_wide(g->op);
        }
    }
    if (!apart || !wide) return;
    pal_result *r = S.res;
    r->warp = (unsigned)f->warp; r->mask = mask; r->op = (unsigned)op; r->line = line;
    r->bad_lanes = apart;
    fail(PAL_WARP);
}

extern "C" unsigned long long __pal_warp_op(int line, int op, unsigned mask, unsigned long long val,
                                            int arg, int width)
{
    Fiber *f = cur;
    report_bad_read(f);
    Warp *w = &S.warps[f->warp];
    const int lane = f->lane;
    f->line = line; f->op = op; f->mask = mask;
    const unsigned bad = mask & (~w->exists | w->exited);
    if (!((mask >> lane) & 1u) || bad || width <= 0 || width > 32 || (width & (width - 1))) {
        pal_result *r = S.res;
        r->warp = (unsigned)f->warp; r->mask = mask; r->op = (unsigned)op; r->line = line;
        r->bad_lanes = bad;
        if (!((mask >> lane) & 1u))
            snprintf(r->msg, sizeof r->msg, "the calling lane %d is not in the mask", lane);
        else if (!bad)
            snprintf(r->msg, sizeof r->msg, "width %d is not a power of two from 1 to 32", width);
        fail(PAL_WARP);
    }
    const int base = lane & ~(width - 1);
    int src = lane;
    switch (op) {
    case PAL_OP_SHFL: case PAL_OP_MATCH: case PAL_OP_REDUCE:
        src = base + (arg & (width - 1));
        break;
    // shfl.sync reads the lane or offset operand's low 5 bits only (PTX ISA: bval = b[4:0]):
    // an offset of 33 shifts by 1, one of -1 (0xffffffff) by 31
    case PAL_OP_SHFL_UP: src = lane - base >= (arg & 31) ? lane - (arg & 31) : lane; break;
    case PAL_OP_SHFL_DOWN: src = lane - base + (arg & 31) < width ? lane + (arg & 31) : lane; break;
    case PAL_OP_SHFL_XOR: src = lane ^ (arg & 31); if (src >= base + width) src = lane; break;
    default: break;
    }
    w->val[lane] = val;
    w->want[lane] = (signed char)src;
    w->waiting |= 1u << lane;
    if ((w->waiting & mask) == mask) {
        wide_call_apart(f, op, mask, line);
        warp_release(w, f->warp, mask);
        return w->res[lane];
    }
    f->state = PAL_T_WARP;
    suspend(f);
    return w->res[lane];
}

extern "C" unsigned __pal_activemask(void)
{
    const Warp *w = &S.warps[cur->warp];
    return w->exists & ~w->exited;
}

extern "C" void __pal_yield(void) { suspend(cur); }

// Whether fmt has a %n conversion, which stores the count of characters printed so far
// through its argument: a store that no check sees, wherever the pointer points (a kernel
// set its own access count back that way).
static bool has_n_conversion(const char *f)
{
    for (; *f; ++f) {
        if (*f != '%') continue;
        if (*++f == '%') continue;
        while (*f && strchr("#0- +'I123456789.*$hlLqjzZt", *f)) ++f;   // (glibc's I and Z too)
        if (*f == 'n') return true;
        if (!*f) return false;
    }
    return false;
}

extern "C" int __pal_printf(const char *fmt, ...)
{
    if (has_n_conversion(fmt)) {
        snprintf(S.res->msg, sizeof S.res->msg, "printf");   // (report_calls.py: %n refused)
        fail(PAL_SYSCALL);
    }
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n <= 0) return n;
    size_t len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
    pal_ctl *c = S.ctl;
    int64_t off = __atomic_fetch_add(&c->out_len, (int64_t)len, __ATOMIC_SEQ_CST);
    if (off >= PAL_OUT_CAP) {
        c->out_truncated = 1;
        return n;
    }
    size_t take = len < (size_t)(PAL_OUT_CAP - off) ? len : (size_t)(PAL_OUT_CAP - off);
    memcpy(c->out + off, buf, take);
    if (take < len) c->out_truncated = 1;
    return n;
}

// An assert or a trap after a read past an array (ubsan.cpp defers it) is likely its symptom:
// the read is reported first.
extern "C" void __pal_assert_fail(const char *expr, const char *file, int line, const char *func)
{
    if (cur) report_bad_read(cur);
    snprintf(S.res->msg, sizeof S.res->msg, "%s:%d: %s: Assertion `%s` failed.", file, line, func, expr);
    S.res->line = line;
    fail(PAL_ASSERT);
}

extern "C" void __pal_trap(int line)
{
    if (cur) report_bad_read(cur);
    S.res->line = line;
    fail(PAL_TRAP);
}

extern "C" void __pal_spoison(void *v, unsigned long long bytes, unsigned long long *serial)
{
    check_runtime_store(serial, sizeof *serial);
    *serial = __pal_block_serial;
    if (!S.cfg->poison) return;
    if (in_pal_shared((uintptr_t)v)) return;   // poisoned with the section before the block
    check_runtime_store(v, (size_t)bytes);
    memset(v, 0xff, (size_t)bytes);
}

extern "C" long long __pal_clock64(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#ifdef __ELF__
// Takes one guard of poison out of a row's offset and of the section's length, which then
// count the kernel's own bytes only; true when the row's 16 bytes overlap it.
static bool skip_guard(uintptr_t lo, uintptr_t a, uintptr_t *off, uintptr_t *len)
{
    *len -= PAL_SHARED_GUARD;
    if (lo + PAL_SHARED_GUARD <= a) *off -= PAL_SHARED_GUARD;
    return lo + PAL_SHARED_GUARD > a && lo < a + 16;
}

// The guards between static __shared__ arrays (shim.h's PAL_SGUARD), before the first and
// after the last
// (runtime.cpp's, the section's last bytes: its object is linked after the kernel's): true
// when the row overlaps one, running past (or before) an array, where the GPU's
// compute-sanitizer reports the access, though the poison is inside the section.
static bool skip_static_guards(uintptr_t a, uintptr_t *off, uintptr_t *len)
{
    bool in_guard = skip_guard((uintptr_t)__stop_pal_shared - PAL_SHARED_GUARD, a, off, len);
    for (char **g = __start_pal_sguards; g && g < __stop_pal_sguards; ++g)
        in_guard |= skip_guard((uintptr_t)*g, a, off, len);
    return in_guard;
}
#endif

// ldmatrix reads 16 bytes of shared memory at each row address; on the GPU a misaligned or
// non-shared address faults (misaligned address / illegal address). Here the lane that gave
// it is named, with where the address points.
extern "C" void __pal_check_ldmatrix_row(int line, const char *func, const void *row)
{
    const uintptr_t a = (uintptr_t)row, dyn = (uintptr_t)S.dyn_smem;
    const uintptr_t dyn_len = (uintptr_t)S.cfg->shared_mem;
#ifdef __ELF__
    const uintptr_t st = (uintptr_t)__start_pal_shared;
    const uintptr_t st_len = st ? (uintptr_t)(__stop_pal_shared - __start_pal_shared) : 0u;
#endif
    int region = 0;   // 1 dynamic (or just past its end), 2 static shared memory
    uintptr_t off = 0, len = 0;
    bool in_guard = false;
    if (a - dyn < dyn_len + 4096) { region = 1; off = a - dyn; len = dyn_len; }
#ifdef __ELF__
    else if (a - st < st_len) {
        region = 2; off = a - st; len = st_len;
        in_guard = skip_static_guards(a, &off, &len);
    }
#else
    else if (a % 16 == 0) return;   // static __shared__ has no section here: cannot tell
#endif
    const char *problem = a % 16 ? "is not 16-byte aligned"
                          : !region ? "is not in this block's shared memory"
                          : in_guard ? "runs past the end (or before the start) of a static "
                                       "__shared__ array, into the guard between arrays"
                          : off + 16 > len ? "runs past the end of shared memory" : nullptr;
    if (!problem) return;
    char where[160];
    if (region)
        snprintf(where, sizeof where, "byte %lu of the %lu bytes of %s", (unsigned long)off,
                 (unsigned long)len, region == 1 ? "dynamic shared memory"
                                                 : "static __shared__ variables");
    else
        snprintf(where, sizeof where, "a global, local or stack address?");
    const Fiber *f = cur;
    snprintf(S.res->msg, sizeof S.res->msg,
             "%s at line %d: lane %d (thread (%u,%u,%u)) gave the row address %p, which %s "
             "(%s). Each lane whose address is used (lanes 0-7 for x1, 0-15 for x2, all 32 "
             "for x4) must give the 16-byte-aligned address of a 16-byte row in __shared__ "
             "memory; the GPU faults on this.",
             func, line, f->lane, f->tid.x, f->tid.y, f->tid.z, row, problem, where);
    S.res->line = line;
    fail(PAL_ASSERT);
}
