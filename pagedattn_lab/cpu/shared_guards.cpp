// The checks after each block of what a write through a pointer can reach unseen: the
// guards of poison around static and dynamic shared memory, and the runtime's variables
// next to the static section (gridDim, blockDim, the guards' table, __pal_dyn_smem).
// Found after the block: the block is known, the thread not.
#define PAL_SETS_DIMS   // (declared as runtime.cpp defines them, not const: shim_types.h)
#include <string.h>

#include "scheduler.h"
#include "instrument.h"

namespace pal {

// The first changed byte of one guard's poison, or null (memcmp first: it runs after every
// block, for every guard).
static const char *changed_byte(const char *guard)
{
    static char poison[PAL_SHARED_GUARD];
    if (poison[0] != (char)0xff) memset(poison, 0xff, sizeof poison);
    if (memcmp(guard, poison, sizeof poison) == 0) return nullptr;
    for (int i = 0; i < PAL_SHARED_GUARD; ++i)
        if ((unsigned char)guard[i] != 0xff) return guard + i;
    return nullptr;
}

// The result of a write found in a guard after block b (`hit`, in `region`): the block is
// known, the thread not.
static int guard_write(const char *hit, int32_t region, uint64_t b)
{
    pal_result *r = S.res;
    r->is_write = 1;
    r->region = region;
    r->addr = (uint64_t)(uintptr_t)hit;
    fill_block(r, b);
    r->has_thread = 0;
    return PAL_FAULT;
}

// A write before dynamic shared memory's start (`smem[i - 1]` at i = 0; past its end is a
// fault in the guard pages there) lands in the poisoned guard before it: found after the
// block, like a static array's. The region_thread field holds the (negative) byte offset.
int check_dyn_guard(uint64_t b)
{
    const char *hit = S.cfg->poison ? changed_byte((char *)S.dyn_smem - PAL_SHARED_GUARD)
                                    : nullptr;
    if (!hit) return PAL_OK;
    S.res->region_thread = (int32_t)(hit - (char *)S.dyn_smem);
    return guard_write(hit, PAL_REGION_DYN_SHARED, b);
}

#ifdef __ELF__
extern char pal_shared_guard[PAL_SHARED_GUARD];   // (runtime.cpp: the section's last piece)


static bool same(const dim3 &d, const uint32_t *v)
{
    return d.x == v[0] && d.y == v[1] && d.z == v[2];
}

// The first of the runtime's variables that the kernel reads but may not write, and that
// it changed, or null: they lie next to the static __shared__ section (gridDim, blockDim and
// the table of its guards before it, __pal_dyn_smem after it), where a write through a
// pointer past the guards lands. The scheduler keeps its own copies (a changed gridDim set
// the next block's index; a guard's pointer, followed by check_shared_guard, crashed there).
static const void *changed_runtime_variable()
{
    if (!same(gridDim, S.cfg->grid)) return &gridDim;
    if (!same(blockDim, S.cfg->block)) return &blockDim;
    if (__pal_dyn_smem != S.dyn_smem) return &__pal_dyn_smem;
    for (char **g = __start_pal_sguards; g && g < __stop_pal_sguards; ++g)
        if (!in_pal_shared((uintptr_t)*g) || !in_pal_shared((uintptr_t)*g + PAL_SHARED_GUARD - 1))
            return g;
    return nullptr;
}

// A write at `hit`, reported as one before or past a static __shared__ array, found after
// block b; its offset in the library names the variable or guard (the symbol table).
static int static_shared_write(const char *hit, uint64_t b)
{
    S.res->offset = pal::lib_offset((uintptr_t)hit);
    return guard_write(hit, PAL_REGION_STATIC_SHARED, b);
}

// Such a write came through a pointer past a static __shared__ array: nothing else of the
// kernel's lies in the library.
int check_runtime_variables(uint64_t b)
{
    const char *hit = (const char *)changed_runtime_variable();
    return hit ? static_shared_write(hit, b) : PAL_OK;
}

// A write through a pointer past a static __shared__ array (`float *p = tile; p[32] = x`,
// which the index check does not see: kernel_checks.py) lands in the guard that follows it
// (shim.h's, or pal_shared_guard after the last); the GPU's compute-sanitizer reports it.
// Found after the block (its poison changed): the block is known, the thread not. A write of
// 0xff bytes goes unnoticed.
int check_shared_guard(uint64_t b)
{
    if (!S.cfg->poison) return PAL_OK;
    const char *hit = changed_byte(pal_shared_guard);
    for (char **g = __start_pal_sguards; !hit && g && g < __stop_pal_sguards; ++g)
        hit = changed_byte(*g);
    return hit ? static_shared_write(hit, b) : PAL_OK;
}
#else
int check_runtime_variables(uint64_t) { return PAL_OK; }
int check_shared_guard(uint64_t) { return PAL_OK; }
#endif

}  // namespace pal
