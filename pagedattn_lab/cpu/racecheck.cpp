// The shared-memory race check of instrumented launches (see instrument.h).
//
// Between two barriers of a block, two threads must not touch the same byte of shared
// memory unless both accesses are reads or both are atomics:
//   - write after write (WAW) by another thread,
//   - read after write (RAW): a thread reads what another wrote without a barrier between,
//   - write after read (WAR): a thread overwrites what another read without a barrier.
// A __syncthreads() orders everything before it against everything after. Within a warp, a
// __syncwarp() that both threads passed together (both in its mask) after the first access
// orders the two as well. Nothing else does: CUDA promises memory ordering for __syncwarp() only,
// and compute-sanitizer's racecheck reports a shuffle, a vote or a WMMA call between a write
// and another lane's read as a hazard. So a wmma::load_matrix_sync of what other lanes wrote
// needs a __syncwarp() first, and so does reading what another lane's store_matrix_sync
// stored.
//
// Shadow state per shared byte: the last writer and up to two readers of the current epoch
// (an epoch ends at each barrier), each with its warp's __syncwarp() count at the access;
// per pair of lanes, the count of the last __syncwarp() that both passed.
#include "instrument.h"

using namespace pal;

namespace {

struct Shadow {
    uint32_t epoch;
    int16_t w, r1, r2;   // thread ids, -1: none
    uint8_t w_atomic, pad;
    uint32_t wg, r1g, r2g;
    uintptr_t wpc, r1pc, r2pc;
};

Shadow *dyn_sh, *st_sh;
size_t dyn_sh_len, st_sh_len;
uint32_t epoch;
uint32_t wgen[PAL_MAX_THREADS / 32];        // __syncwarp()s completed, per warp
uint32_t together[PAL_MAX_THREADS][32];     // [thread][lane]: wgen of the last __syncwarp()
                                            // the thread passed with that lane of its warp

Shadow *map_shadow(size_t bytes, size_t *len)
{
    *len = bytes * sizeof(Shadow);
    if (!*len) return nullptr;
    void *p = mmap(nullptr, *len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? nullptr : (Shadow *)p;
}

// Thread a's access, made when its warp had completed a_gen __syncwarp()s, is ordered before
// thread b's now when a later __syncwarp() had both in its mask (a passed it after its
// access: a thread waiting at a __syncwarp() makes no access).
bool ordered(int a, uint32_t a_gen, int b)
{
    if (a == b) return true;
    if ((a >> 5) != (b >> 5)) return false;
    return together[a][b & 31] > a_gen;
}

[[noreturn]] void report(int kind, int other, uintptr_t other_pc, bool other_atomic, int region,
                         uintptr_t off, uintptr_t addr, unsigned size, int acc, uintptr_t pc)
{
    pal_result *r = S.res;
    r->race_kind = kind;
    r->other_thread = other;
    r->other_atomic = other_atomic;
    r->region = region;
    r->offset = region == PAL_REGION_DYN_SHARED ? off : lib_offset(addr);
    r->addr = addr;
    r->access_size = (int32_t)size;
    r->is_write = acc == ACC_READ ? 0 : (acc == ACC_ATOMIC ? 2 : 1);   // 2: atomic
    r->pc = lib_offset(pc);
    r->other_pc = other_pc ? lib_offset(other_pc) : 0;
    fail(PAL_RACE);
}

}  // namespace

void pal::race_worker_begin()
{
    dyn_sh = map_shadow(S.cfg->shared_mem, &dyn_sh_len);
#ifdef __ELF__
    if (__start_pal_shared && __stop_pal_shared > __start_pal_shared)
        st_sh = map_shadow((size_t)(__stop_pal_shared - __start_pal_shared), &st_sh_len);
#endif
    epoch = 0;
}

void pal::race_worker_end()
{
    if (dyn_sh) munmap(dyn_sh, dyn_sh_len);
    if (st_sh) munmap(st_sh, st_sh_len);
    dyn_sh = st_sh = nullptr;
}

void pal::race_block_begin()
{
    ++epoch;
    memset(wgen, 0, sizeof wgen);
    memset(together, 0, sizeof together[0] * (size_t)S.n);   // this block's threads
}

void pal::race_barrier() { ++epoch; }

void pal::race_syncwarp(int warp, unsigned mask)
{
    const uint32_t g = ++wgen[warp];
    for (unsigned m = mask; m; m &= m - 1) {
        uint32_t *mine = together[warp * 32 + __builtin_ctz(m)];
        for (unsigned n = mask; n; n &= n - 1) mine[__builtin_ctz(n)] = g;
    }
}

void pal::race_access(int region, uintptr_t off, uintptr_t addr, unsigned size, int acc,
                      uintptr_t pc)
{
    Shadow *sh = region == PAL_REGION_DYN_SHARED ? dyn_sh : st_sh;
    if (!sh) return;
    const int t = (int)(cur - S.fib);
    const uint32_t g = wgen[t >> 5];
    for (unsigned i = 0; i < size; ++i) {
        Shadow &e = sh[off + i];
        if (e.epoch != epoch) {
            e.epoch = epoch;
            e.w = e.r1 = e.r2 = -1;
            e.w_atomic = 0;
        }
        const bool w_other = e.w >= 0 && !ordered(e.w, e.wg, t);
        if (acc == ACC_READ) {
            if (w_other)
                report(PAL_RACE_RAW, e.w, e.wpc, e.w_atomic, region, off + i, addr, size, acc, pc);
            if (e.r1 < 0 || e.r1 == t) { e.r1 = (int16_t)t; e.r1g = g; e.r1pc = pc; }
            else if (e.r2 < 0 || e.r2 == t) { e.r2 = (int16_t)t; e.r2g = g; e.r2pc = pc; }
            continue;
        }
        // A write or an atomic: atomics may follow atomics, nothing else may be unordered.
        if (w_other && !(acc == ACC_ATOMIC && e.w_atomic))
            report(PAL_RACE_WAW, e.w, e.wpc, e.w_atomic, region, off + i, addr, size, acc, pc);
        if (e.r1 >= 0 && !ordered(e.r1, e.r1g, t))
            report(PAL_RACE_WAR, e.r1, e.r1pc, false, region, off + i, addr, size, acc, pc);
        if (e.r2 >= 0 && !ordered(e.r2, e.r2g, t))
            report(PAL_RACE_WAR, e.r2, e.r2pc, false, region, off + i, addr, size, acc, pc);
        e.w = (int16_t)t; e.wg = g; e.wpc = pc;
        e.w_atomic = acc == ACC_ATOMIC;
    }
}
