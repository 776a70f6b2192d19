// The block scheduler of the CPU executor: CUDA threads as cooperative fibers.
//
// A worker runs the blocks it takes from a shared counter one after another (a checked
// launch: block 0, then the others from the last down). Inside a
// block, every CUDA thread is a fiber with its own stack (below it a PROT_NONE guard).
// The scheduler runs fiber 0 until it blocks (at __syncthreads, a warp intrinsic) or
// returns, then fiber 1, and so on round-robin. A barrier opens when all threads of the
// block have arrived; a warp intrinsic completes when every lane of its mask has arrived.
// When no fiber can run while some are still alive, the block is deadlocked: the state of
// every thread is written to the result and the launch fails (no timeout needed).
#define PAL_SETS_DIMS   // (shim_types.h: gridDim and blockDim are const elsewhere)
#include "scheduler.h"
#include "instrument.h"
#include "sandbox.h"

extern "C" {
PAL_HIDDEN uint3 __pal_thread_idx;
PAL_HIDDEN uint3 __pal_block_idx;
PAL_HIDDEN dim3 blockDim;
PAL_HIDDEN dim3 gridDim;
PAL_HIDDEN void *__pal_dyn_smem;
PAL_HIDDEN unsigned long long __pal_block_serial;
}

namespace pal {

StateArea state_area;

#ifdef __ELF__
// The last piece of the pal_shared section: this object is linked after the kernel's, so
// these bytes follow its static __shared__ variables and are poisoned with them. A read past
// the last array (warp_totals[lane] for every lane of a warp, with 8 totals) then gives NaN,
// as an unwritten slot does, not the zeros of whatever memory follows the section.
__attribute__((section("pal_shared"), used)) char pal_shared_guard[PAL_SHARED_GUARD];
#endif

void fill_block(pal_result *r, uint64_t block_linear)
{
    r->block[0] = blockIdx.x; r->block[1] = blockIdx.y; r->block[2] = blockIdx.z;
    r->block_linear = block_linear;
}

void fill_thread(pal_result *r, const Fiber *f)
{
    r->has_thread = 1;
    const uint32_t *grid = S.cfg->grid;   // (not gridDim, which the kernel can write)
    fill_block(r, (uint64_t)blockIdx.x +
               (uint64_t)grid[0] * (blockIdx.y + (uint64_t)grid[1] * blockIdx.z));
    r->thread[0] = f->tid.x; r->thread[1] = f->tid.y; r->thread[2] = f->tid.z;
}

}  // namespace pal

using namespace pal;

namespace {

void start_fiber(Fiber *f, int i)
{
    char *lo = S.stacks + (size_t)i * S.stride + S.guard;
    // Stagger the stack tops so that the fibers' hot frames do not share L1 cache sets.
    char *top = lo + (S.stride - S.guard) - (size_t)(i & 63) * 64;
    top = (char *)((uintptr_t)top & ~(uintptr_t)15);
#ifdef PAL_UC
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = lo;
    f->uc.uc_stack.ss_size = (size_t)(top - lo);
    f->uc.uc_link = &S.sched_uc;
    makecontext(&f->uc, pal_fiber_main, 0);
#elif defined(__x86_64__)
    void **sp = (void **)(top - 72);   // r15 r14 r13 r12 rbx rbp, return address
    memset(sp, 0, 7 * sizeof(void *));
    sp[3] = (void *)pal_fiber_main;    // r12: called by pal_tramp
    sp[6] = (void *)pal_tramp;
    f->sp = sp;
#else
    void **sp = (void **)(top - 160);  // x19..x30, d8..d15
    memset(sp, 0, 160);
    sp[0] = (void *)pal_fiber_main;    // x19: called by pal_tramp
    sp[11] = (void *)pal_tramp;        // x30: where pal_switch returns to
    f->sp = sp;
#endif
}

// Record every thread's state (for deadlock and warp reports).
void dump_threads(pal_result *r)
{
    r->nthreads = S.n;
    for (int i = 0; i < S.n; ++i) {
        r->tstate[i] = (uint8_t)S.fib[i].state;
        r->top[i] = (uint8_t)S.fib[i].op;
        r->tline[i] = S.fib[i].line;
        r->tmask[i] = S.fib[i].mask;
    }
}

int analyze_deadlock()
{
    pal_result *r = S.res;
    dump_threads(r);
    // A warp intrinsic waiting for a lane that has exited can never complete.
    for (int i = 0; i < S.n; ++i) {
        Fiber *f = &S.fib[i];
        if (f->state != PAL_T_WARP) continue;
        unsigned dead = f->mask & S.warps[f->warp].exited;
        if (dead) {
            r->status = PAL_WARP;
            r->warp = (unsigned)f->warp; r->mask = f->mask; r->bad_lanes = dead;
            r->op = (unsigned)f->op; r->line = f->line;
            fill_thread(r, f);
            return PAL_WARP;
        }
    }
    for (int i = 0; i < S.n; ++i)
        if (S.fib[i].state != PAL_T_EXITED) { fill_thread(r, &S.fib[i]); break; }
    r->status = PAL_DEADLOCK;
    return PAL_DEADLOCK;
}

void poison_shared()
{
    // (with the guard before it: a read there gives NaN too, not the mapping's zeros)
    char *lo = (char *)S.dyn_smem - PAL_SHARED_GUARD;
    memset(lo, 0xff, (size_t)(S.smem_end - lo));
#ifdef __ELF__
    if (__start_pal_shared && __stop_pal_shared > __start_pal_shared)
        memset(__start_pal_shared, 0xff, (size_t)(__stop_pal_shared - __start_pal_shared));
#endif
}

int run_block(uint64_t b)
{
    const unsigned gx = S.cfg->grid[0], gy = S.cfg->grid[1];   // (the kernel can write gridDim)
    __pal_block_idx.x = (unsigned)(b % gx);
    __pal_block_idx.y = (unsigned)((b / gx) % gy);
    __pal_block_idx.z = (unsigned)(b / ((uint64_t)gx * gy));
    S.res->run_block = b;
    ++__pal_block_serial;
    if (S.cfg->poison) poison_shared();
    if (S.instr) instr_block_begin(b);
    const unsigned bx = S.cfg->block[0], by = S.cfg->block[1];
    for (int i = 0; i < S.n; ++i) {
        Fiber *f = &S.fib[i];
        f->tid.x = (unsigned)i % bx;
        f->tid.y = ((unsigned)i / bx) % by;
        f->tid.z = (unsigned)i / (bx * by);
        f->lane = i & 31; f->warp = i >> 5;
        f->state = PAL_T_RUN; f->line = 0; f->op = 0; f->mask = 0; f->gen = 0;
        f->bad_read = nullptr;
        start_fiber(f, i);
    }
    for (int w = 0; w < S.nwarps; ++w) { S.warps[w].exited = 0; S.warps[w].waiting = 0; }
    S.live = S.n; S.arrived = 0; S.gen = 0; S.error = 0;
    int i = 0;
    for (;;) {
        int k = 0, j = i;
        for (; k < S.n; ++k, ++j) {
            if (j == S.n) j = 0;
            if (S.fib[j].state == PAL_T_RUN) break;
        }
        if (k == S.n) return S.live == 0 ? PAL_OK : analyze_deadlock();
        resume(&S.fib[j]);
        if (S.error) return S.error;
        i = j + 1 == S.n ? 0 : j + 1;
    }
}

void *map_rw(size_t len)
{
    void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    return p == MAP_FAILED ? nullptr : p;
}

int internal_error(const char *what)
{
    S.res->status = PAL_INTERNAL;
    snprintf(S.res->msg, sizeof S.res->msg, "%s", what);
    return PAL_INTERNAL;
}

}  // namespace

// A fiber reports an error: record it and never run this block again.
[[noreturn]] void pal::fail(int status)
{
    S.res->status = status;
    fill_thread(S.res, cur);
    dump_threads(S.res);
    S.error = status;
    suspend(cur);
    __builtin_trap();
}

extern "C" PAL_HIDDEN void pal_fiber_main(void)
{
    S.cfg->entry(S.cfg->args);
    Fiber *f = cur;
    report_bad_read(f);
    f->state = PAL_T_EXITED;
    S.live--;
    S.warps[f->warp].exited |= 1u << f->lane;
    suspend(f);
    __builtin_trap();
}

// CuPy compiles every kernel with -ftz=true (cupy/cuda/compiler.py appends it to the NVRTC
// options): the GPU reads a float subnormal as 0 and flushes a subnormal result to 0, so
// `1.0f / (1e-20f * 1e-20f)` is infinity there. The CPU's flush-to-zero and denormals-are-zero
// modes do the same while blocks run (for doubles too, which the GPU keeps: a difference
// below 2^-1022). Returns the mode to restore: checked=False runs in the caller's thread.
static unsigned long long flush_subnormals()
{
#if defined(__x86_64__) || defined(__i386__)
    const unsigned old = __builtin_ia32_stmxcsr();
    __builtin_ia32_ldmxcsr(old | 0x8040u);   // FTZ (bit 15) | DAZ (bit 6)
    return old;
#elif defined(__aarch64__)
    unsigned long long old;
    __asm__ volatile("mrs %0, fpcr" : "=r"(old));
    __asm__ volatile("msr fpcr, %0" : : "r"(old | (1ull << 24)));   // FZ
    return old;
#else
    return 0;
#endif
}

static void restore_float_mode(unsigned long long old)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_ldmxcsr((unsigned)old);
#elif defined(__aarch64__)
    __asm__ volatile("msr fpcr, %0" : : "r"(old));
#else
    (void)old;
#endif
}

// Run blocks until the shared counter runs out or another worker failed.
extern "C" PAL_HIDDEN int pal_run_blocks(const pal_config *cfg, pal_ctl *ctl, int worker)
{
    S.cfg = cfg; S.ctl = ctl; S.res = &ctl->res[worker];
    S.res->run_thread = -1;
    pal_sandbox_configure();
    blockDim = dim3(cfg->block[0], cfg->block[1], cfg->block[2]);
    gridDim = dim3(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
    S.n = (int)(cfg->block[0] * cfg->block[1] * cfg->block[2]);
    S.nwarps = (S.n + 31) / 32;
    for (int w = 0; w < S.nwarps; ++w) {
        int lanes = S.n - 32 * w < 32 ? S.n - 32 * w : 32;
        S.warps[w].exists = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    }
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (page <= PAL_MAX_PAGE) {   // (scheduler.h)
        mprotect(state_area.before, sizeof state_area.before, PROT_NONE);
        mprotect(state_area.after, sizeof state_area.after, PROT_NONE);
    }
    // 64 KiB of guard below each stack: GCC's stack-clash probes step 4 KiB (x86-64) or
    // 64 KiB (AArch64) at a time, so a huge local array faults in the guard, not in the
    // stack of the neighbouring fiber.
    S.guard = page > 65536 ? page : 65536;
    S.stride = S.guard + ((cfg->stack_bytes + page - 1) / page) * page;
    S.stacks_len = S.stride * (size_t)S.n;
    S.stacks = (char *)map_rw(S.stacks_len);
    if (!S.stacks) return internal_error("cannot map the fiber stacks (out of memory?)");
    for (int i = 0; i < S.n; ++i) mprotect(S.stacks + (size_t)i * S.stride, S.guard, PROT_NONE);
    // Dynamic shared memory: end-aligned (to 16 bytes) against 64 guard pages, with a guard
    // of poison before it (check_dyn_guard).
    size_t data = ((cfg->shared_mem + 16 + PAL_SHARED_GUARD + page - 1) / page) * page;
    S.smem_len = data + 64 * page;
    S.smem_map = (char *)map_rw(S.smem_len);
    if (!S.smem_map) return internal_error("cannot map dynamic shared memory");
    S.smem_end = S.smem_map + data;
    mprotect(S.smem_end, 64 * page, PROT_NONE);
    S.dyn_smem = __pal_dyn_smem =
        (void *)((uintptr_t)(S.smem_end - cfg->shared_mem) & ~(uintptr_t)15);
    S.instr = cfg->instrument;
    if (S.instr) instr_worker_begin();
    const uint64_t nblocks = (uint64_t)cfg->grid[0] * cfg->grid[1] * cfg->grid[2];
    int status = PAL_OK;
    const unsigned long long float_mode = flush_subnormals();
    while (!__atomic_load_n(&ctl->abort, __ATOMIC_SEQ_CST)) {
        uint64_t b = (uint64_t)__atomic_fetch_add(&ctl->next_block, 1, __ATOMIC_SEQ_CST);
        if (b >= nblocks) break;
        // A GPU runs blocks in no set order, so a checked launch runs them from the last down
        // (a kernel whose block b reads what block b - 1 wrote then reads what is not there
        // yet), but block 0 first: a fault in every block is named in block 0.
        if (cfg->last_first && b) b = nblocks - b;
        status = run_block(b);
        S.res->run_thread = -1;
        if (status == PAL_OK) status = check_runtime_variables(b);   // (first: the guards' table)
        if (status == PAL_OK) status = check_shared_guard(b);
        if (status == PAL_OK) status = check_dyn_guard(b);
        if (status == PAL_OK && S.instr) instr_block_end();
        if (status == PAL_OK) __atomic_fetch_add(&ctl->blocks_done, 1, __ATOMIC_SEQ_CST);
        if (status != PAL_OK) {
            S.res->status = status;
            __atomic_store_n(&ctl->abort, 1, __ATOMIC_SEQ_CST);
            break;
        }
    }
    restore_float_mode(float_mode);
    if (S.instr) instr_worker_end();
    S.instr = 0;
    munmap(S.stacks, S.stacks_len);
    munmap(S.smem_map, S.smem_len);
    S.stacks = nullptr; S.smem_map = nullptr; S.dyn_smem = __pal_dyn_smem = nullptr;
    return status;
}

// For the signal handler: who was running, and is the address a stack or shared guard?
extern "C" PAL_HIDDEN void pal_describe_fault(pal_result *r)
{
    if (cur) fill_thread(r, cur);
    uintptr_t a = (uintptr_t)r->addr;
    uintptr_t s0 = (uintptr_t)S.stacks;
    if (S.stacks && a >= s0 && a < s0 + S.stacks_len) {
        size_t i = (a - s0) / S.stride;
        if ((a - s0) % S.stride < S.guard) {
            r->region = PAL_REGION_STACK;
            r->region_thread = (int32_t)i;
        }
    } else if (S.smem_map && a >= (uintptr_t)S.smem_map && a < (uintptr_t)S.smem_map + S.smem_len) {
        r->region = PAL_REGION_DYN_SHARED;
        r->region_thread = (int32_t)(a - (uintptr_t)S.dyn_smem);  // byte offset
    }
}

