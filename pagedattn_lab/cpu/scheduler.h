// Internal state of the CPU executor's block scheduler, shared by runtime.cpp (the
// scheduler) and device_api.cpp (what kernel threads call). Not part of any interface.
#ifndef PAGEDATTN_LAB_SCHEDULER_H
#define PAGEDATTN_LAB_SCHEDULER_H

#include "runtime.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "shim_types.h"

#if defined(PAL_FIBER_UCONTEXT) || !(defined(__x86_64__) || defined(__aarch64__))
#define PAL_UC 1
#if defined(__APPLE__)
#define _XOPEN_SOURCE 600
#endif
#include <ucontext.h>
#endif

extern "C" {
PAL_HIDDEN void pal_switch(void **save_sp, void *new_sp);
PAL_HIDDEN void pal_tramp(void);
PAL_HIDDEN void pal_fiber_main(void);
}
#ifdef __ELF__
// Static __shared__ variables live in this section (ELF only, see shim.h); the linker
// defines these two symbols around it.
extern "C" char __start_pal_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_pal_shared[] __attribute__((weak, visibility("hidden")));
// PAL_SHARED_GUARD (runtime.h): runtime.cpp ends the section with that many bytes of its own,
// and shim.h puts a guard of that size before each of the kernel's declarations (see there).
extern "C" char *__start_pal_sguards[] __attribute__((weak, visibility("hidden")));
extern "C" char *__stop_pal_sguards[] __attribute__((weak, visibility("hidden")));
#endif
// Whether address a is in the static __shared__ section (never without ELF sections).
inline bool in_pal_shared(uintptr_t a)
{
#ifdef __ELF__
    return a - (uintptr_t)__start_pal_shared < (uintptr_t)(__stop_pal_shared - __start_pal_shared);
#else
    return (void)a, false;
#endif
}

namespace pal {

struct Fiber {
    void *sp;
    uint3 tid;
    int lane, warp;
    int state, line, op;
    unsigned mask;
    int gen;
    // a read past a local or static __shared__ array (ubsan.cpp), reported where the thread
    // next meets the scheduler unless an index check of the same access comes first
    const void *bad_read;
    uintptr_t bad_read_at;
    uintptr_t bad_read_base;   // its library's base (dladdr, not allowed in the handlers)
#ifdef PAL_UC
    ucontext_t uc;
#endif
};

struct Warp {
    unsigned exists, exited, waiting;
    unsigned long long val[32], res[32];
    signed char want[32];
};

struct State {
    const pal_config *cfg;
    unsigned instr;          // PAL_INSTR_* of this launch (instrumented builds only)
    pal_ctl *ctl;
    pal_result *res;
    int n, nwarps;
    int live, arrived, gen, error;
    int bar_acc[2];
    char *stacks;
    size_t stride, guard, stacks_len;
    char *smem_map, *smem_end;
    size_t smem_len;
    void *dyn_smem;          // __pal_dyn_smem as set (the kernel can write that one)
    void *sched_sp;
#ifdef PAL_UC
    ucontext_t sched_uc;
#endif
    Fiber fib[PAL_MAX_THREADS];
    Warp warps[PAL_MAX_THREADS / 32];
};

// The state and the running fiber, away from the kernel's data: the library's variables lie
// next to the static __shared__ section, and a write through a pointer past its guards of
// poison changed a fiber's saved stack pointer or the pointer to the launch's results (the
// next switch jumped through it). Here a guard of PAL_STATE_GUARD bytes on each side, address
// space only, is made inaccessible before blocks run (pal_run_blocks): such a write has to
// jump it, and one that lands in it faults where it happens, with the thread. The area's
// start is a page's whatever the page size up to PAL_MAX_PAGE (the linker aligns it so, and
// the loader keeps an address's offset in its page); S and cur name its members, so a use
// costs no more than a plain variable's (no pointer to follow, nor to overwrite).
enum { PAL_STATE_GUARD = 1 << 20 };
struct alignas(PAL_MAX_PAGE) StateArea {
    char before[PAL_STATE_GUARD];
    State state;
    Fiber *cur;
    alignas(PAL_MAX_PAGE) char after[PAL_STATE_GUARD];
};
extern StateArea state_area;
inline constexpr State &S = state_area.state;
inline constexpr Fiber *&cur = state_area.cur;

inline void resume(Fiber *f)
{
    cur = f;
    __pal_thread_idx = f->tid;
    S.res->run_thread = (int32_t)(f - S.fib);   // for a report if the worker dies
#ifdef PAL_UC
    swapcontext(&S.sched_uc, &f->uc);
#else
    pal_switch(&S.sched_sp, f->sp);
#endif
}

inline void suspend(Fiber *f)
{
#ifdef PAL_UC
    swapcontext(&f->uc, &S.sched_uc);
#else
    pal_switch(&f->sp, S.sched_sp);
#endif
}

// Record an error of the running fiber and never run this block again.
[[noreturn]] void fail(int status);

// Fail with the fiber's deferred read past an array, if it has one (ubsan.cpp).
void report_bad_read(Fiber *f);

// Name the running block in r: its index, and `block_linear`, its number with x fastest
// (runtime.cpp). Async-signal-safe.
void fill_block(pal_result *r, uint64_t block_linear);

// Name f's thread and its block in r (runtime.cpp). Async-signal-safe.
void fill_thread(pal_result *r, const Fiber *f);

// After each block (shared_guards.cpp): PAL_OK, or the write found, in S.res.
int check_runtime_variables(uint64_t b);   // gridDim, blockDim, the guards' table...
int check_shared_guard(uint64_t b);        // the guards around static __shared__ arrays
int check_dyn_guard(uint64_t b);           // the guard before dynamic shared memory

// Instrumented launches (instrument.cpp): called by the scheduler when S.instr is set.
void instr_worker_begin();
void instr_block_begin(uint64_t block_linear);
void instr_barrier();                            // a __syncthreads() opened
void instr_syncwarp(int warp, unsigned mask);  // the lanes in mask passed a __syncwarp
void instr_block_end();
void instr_worker_end();
// A runtime function that stores where kernel code says (__pal_spoison) asks first: in a
// instrumented launch, a store outside the kernel's own memory fails the thread.
void check_runtime_store(const void *p, size_t size);

}  // namespace pal

#endif
