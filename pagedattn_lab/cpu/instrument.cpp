// Access counting for instrumented launches (see instrument.h), GPU-Puzzles style:
// global and shared reads and writes per thread, and per warp memory request the distinct
// 32-byte sectors (global) or the shared-memory wavefronts (bank conflicts).
//
// A "warp request" is approximated as the accesses that the threads of one warp make from
// the same call site (one load or store instruction of the compiled kernel) for the same
// time since the last __syncthreads(): the k-th execution of a load by lane 0 and the k-th
// execution of the same load by lane 5 form one request. Fibers run one after another, so
// requests are assembled per warp and counted when a barrier opens or the block ends.
#include "instrument.h"

#include <dlfcn.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <unordered_map>
#include <vector>

using namespace pal;

namespace {

uintptr_t dyn_lo, dyn_len;   // dynamic shared memory of this launch
uintptr_t st_lo, st_len;     // static __shared__ variables (the pal_shared section)
uint64_t block_base;         // index of this block's first thread in cfg->counts
uintptr_t page_mask;         // page size - 1 in a checked launch (its arrays' slack), else 0
uintptr_t slack_lo, slack_len;   // from the lowest array's page to the highest array's start

struct Occ { uintptr_t site; uint32_t n; };
std::vector<Occ> occ[PAL_MAX_THREADS];   // per thread: executions of each site this epoch

struct Key {
    uintptr_t site;
    uint32_t n, warp;
    bool operator==(const Key &o) const { return site == o.site && n == o.n && warp == o.warp; }
};
struct KeyHash {
    size_t operator()(const Key &k) const
    { return (size_t)(k.site * 0x9e3779b97f4a7c15ull) ^ ((size_t)k.n << 20) ^ k.warp; }
};
struct Req {
    uint32_t buf;
    int kind;
    std::vector<uint64_t> units;   // sector numbers (global) or word numbers (shared)
};
std::unordered_map<Key, Req, KeyHash> reqs;
std::vector<uint64_t> local;       // per-buffer counters of this worker, added at the end
std::vector<uint64_t> written_at;  // per array argument: its first byte's offset in cfg->written

uint32_t next_occurrence(int t, uintptr_t site)
{
    std::vector<Occ> &v = occ[t];
    for (Occ &o : v)
        if (o.site == site) return o.n++;
    v.push_back(Occ{site, 1});
    return 0;
}

// Wavefronts of a shared-memory request: the most distinct 4-byte words in one of the 32
// banks (lanes reading the same word are served by one broadcast).
uint64_t wavefronts(const std::vector<uint64_t> &words)
{
    unsigned per_bank[32] = {0};
    unsigned most = 0;
    for (uint64_t w : words) {
        unsigned c = ++per_bank[w & 31];
        most = c > most ? c : most;
    }
    return most;
}

void flush()
{
    for (auto &kv : reqs) {
        Req &r = kv.second;
        std::sort(r.units.begin(), r.units.end());
        r.units.erase(std::unique(r.units.begin(), r.units.end()), r.units.end());
        const bool shared = r.buf == S.cfg->nranges;
        const uint64_t n = shared ? wavefronts(r.units) : r.units.size();
        uint64_t *b = &local[(size_t)r.buf * PAL_NBUFSTAT];
        const bool write = r.kind != ACC_READ;   // an atomic counts as a write request
        b[write ? PAL_B_WRITE_REQ : PAL_B_READ_REQ] += 1;
        b[write ? PAL_B_WRITE_UNITS : PAL_B_READ_UNITS] += n;
    }
    reqs.clear();
    for (int t = 0; t < S.n; ++t) occ[t].clear();
}

void count(uint32_t buf, uintptr_t unit_addr, unsigned size, int kind, uintptr_t pc, bool shared)
{
    const int t = (int)(cur - S.fib);
    uint32_t *c = S.cfg->counts + (block_base + (uint64_t)t) * PAL_NCOUNT;
    uint64_t *b = &local[(size_t)buf * PAL_NBUFSTAT];
    const int base = shared ? PAL_C_SREAD : PAL_C_GREAD;
    if (kind != ACC_WRITE) {   // a read, or the read half of an atomic
        c[base] += 1; c[base + 1] += size;
        b[PAL_B_READ] += 1; b[PAL_B_READ_B] += size;
    }
    if (kind != ACC_READ) {
        c[base + 2] += 1; c[base + 3] += size;
        b[PAL_B_WRITE] += 1; b[PAL_B_WRITE_B] += size;
    }
    Req &r = reqs[Key{pc, next_occurrence(t, pc), (uint32_t)cur->warp}];
    if (r.units.empty()) { r.buf = buf; r.kind = kind; }
    const unsigned shift = shared ? 2 : 5;   // 4-byte banks, 32-byte sectors
    for (uint64_t u = unit_addr >> shift; u <= (unit_addr + size - 1) >> shift; ++u)
        r.units.push_back(u);
}

// The shared-memory region holding address a (0: none) and a's offset in it.
int shared_region(uintptr_t a, uintptr_t *off)
{
    if (a - dyn_lo < dyn_len) { *off = a - dyn_lo; return PAL_REGION_DYN_SHARED; }
    if (a - st_lo < st_len) { *off = a - st_lo; return PAL_REGION_STATIC_SHARED; }
    return 0;
}

extern "C" PAL_HIDDEN void pal_describe_fault(pal_result *r);   // (runtime.cpp)

// The thread fails as a fault on a guard page would fail it (host.cpp's on_fault): the
// parent names the argument and the element from the address (report.py), or, for an
// address in dynamic shared memory's guard pages or a stack's guard, that region, as the
// fault itself would have been described; or, with PAL_REGION_PAST_ARRAY, as an access past
// the end of array argument `range` (a, that end, lies in another argument).
[[noreturn]] void fail_as_fault(uintptr_t a, int is_write, int region = PAL_REGION_UNKNOWN,
                                uint32_t range = 0)
{
    S.res->signo = SIGSEGV;
    S.res->sicode = SEGV_ACCERR;
    S.res->is_write = is_write;
    S.res->addr = a;
    S.res->region = region;
    S.res->region_thread = (int32_t)range;
    pal_describe_fault(S.res);
    fail(PAL_FAULT);
}

// An instrumented launch's store outside the kernel's arrays, shared memory, variables (the
// shim's state among them) and the running thread's own stack fails the thread as a wild
// write would: the runtime's state, the counters' mappings and this file's tallies are in
// the same process, and a kernel that wrote its own count there through a pointer computed
// from a runtime variable's address (one thread copying a whole row, its store count set
// back to 1) passed a check of who stores what; one that cleared S.instr in the
// race-checked launch ran with no race check. Stores are seen before they happen. Only where
// the kernel's variables and the shim's state are known (vars_known: read off the library's
// symbol table, device_data.py): else a store to a `__device__` variable, a cp.async queue or
// the mma lanes' state would be taken for a wild write.
void refuse_foreign_write(uintptr_t a, size_t size)
{
    if (!S.cfg->vars_known) return;
    const uintptr_t lo = (uintptr_t)S.stacks + (uintptr_t)(cur - S.fib) * S.stride + S.guard;
    const uintptr_t hi = lo + (S.stride - S.guard);
    if (a >= lo && a < hi && size <= hi - a) return;
    fail_as_fault(a, 1);
}

// Whether a, in no array or variable, lies before an array argument's first byte in that
// byte's page: a checked launch's slack (launch.py), where no guard page can sit, so that
// `x[i - 1]` at i = 0 would read the fill's NaN or -1 unstopped. Most accesses that get here
// are to the thread's stack, which one comparison with the arrays' span rules out.
bool in_slack(uintptr_t a)
{
    if (a - slack_lo >= slack_len) return false;
    const uint64_t *r = S.cfg->ranges;
    for (uint32_t i = 0; i < S.cfg->nranges; ++i, r += 2)
        if (r[0] - a - 1 < (r[0] & page_mask)) return true;
    return false;
}

// Where an address lies: in the kernel's variables (the shim's state too: table VAR, row
// index of cfg->vars), in an array argument (RANGE, index of cfg->ranges) or in neither
// (NONE), with that row's bounds [lo, hi).
enum OwnerTable { OWNER_NONE, OWNER_VAR, OWNER_RANGE };
struct Owner {
    OwnerTable table;
    uint32_t index;
    uintptr_t lo, hi;
};

Owner find_owner(uintptr_t a)
{
    const uint64_t *v = S.cfg->vars;
    for (uint32_t j = 0; j < S.cfg->nvars; ++j, v += 3)
        if (a >= v[0] && a < v[1]) return Owner{OWNER_VAR, j, v[0], v[1]};
    const uint64_t *r = S.cfg->ranges;
    for (uint32_t i = 0; i < S.cfg->nranges; ++i, r += 2)
        if (a >= r[0] && a < r[1]) return Owner{OWNER_RANGE, i, r[0], r[1]};
    return Owner{OWNER_NONE, 0, 0, 0};
}

// An access that starts in array argument o and runs past its end: counted in the first
// argument that holds it whole (arguments whose memory overlaps, such as a buffer and a view
// of part of it, share one mapping, launch.py: a store through the whole buffer may start in
// the view). Held by none, it is out of bounds whatever pointer it went through; where
// another argument's bytes follow o's end (that mapping: no guard page between them), it
// fails the thread as an access past o's end; elsewhere the guard page after o faults.
Owner past_array_end(const Owner &o, uintptr_t a, unsigned size, int kind)
{
    const uint64_t *r = S.cfg->ranges;
    for (uint32_t i = 0; i < S.cfg->nranges; ++i, r += 2)
        if (a - r[0] < r[1] - r[0] && size <= r[1] - a) return Owner{OWNER_RANGE, i, r[0], r[1]};
    if (find_owner(o.hi).table == OWNER_RANGE)
        fail_as_fault(o.hi, kind != ACC_READ, PAL_REGION_PAST_ARRAY, o.index);
    return o;
}

// Whether [a, a + size) lies whole in one array argument or one of the kernel's variables.
bool owned(uintptr_t a, size_t size)
{
    const Owner o = find_owner(a);
    return o.table != OWNER_NONE && size <= o.hi - a;
}

// The span in_slack looks in: none in an unchecked launch, whose arrays are NumPy's own
// memory (what precedes one there is other data, not a fill).
void slack_span()
{
    page_mask = S.cfg->checked ? (uintptr_t)sysconf(_SC_PAGESIZE) - 1 : 0;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    const uint64_t *r = S.cfg->ranges;
    for (uint32_t i = 0; i < S.cfg->nranges && page_mask; ++i, r += 2) {
        lo = std::min<uintptr_t>(lo, r[0] & ~page_mask);
        hi = std::max<uintptr_t>(hi, r[0]);
    }
    slack_lo = lo;
    slack_len = hi > lo ? hi - lo : 0;
}

// Whether a kernel's store of size bytes at a is refused as a wild write, and from which
// byte on (*from): it starts outside every array and variable (from a), or runs past the end
// of the variable it starts in (from that end: the next variable or the runtime's state may
// follow, where nothing faults). One that runs past an array's end is past_array_end's.
bool wild_store(const Owner &o, uintptr_t a, unsigned size, uintptr_t *from)
{
    *from = o.table == OWNER_VAR ? o.hi : a;
    return o.table == OWNER_NONE || (o.table == OWNER_VAR && size > o.hi - a);
}

// The variables with a bufstats row: the vars before the shim's state (PAL_VAR_SHIM entries
// come last, runtime.h), so that this worker's table is as long as cfg->bufstats, into which
// instr_worker_end adds it.
uint32_t counted_vars()
{
    uint32_t n = 0;
    while (n < S.cfg->nvars && S.cfg->vars[3 * n + 2] != PAL_VAR_SHIM) ++n;
    return n;
}

// The kernel's own __device__ and static variables: global memory on a GPU, so counted as
// global accesses (rows after shared memory's; sectors as from 256-byte alignment); a
// template's __shared__ array (outside the section under GCC) as shared memory, its region
// j + 2 (after dynamic shared memory's 0 and the static section's 1).
void count_variable(const Owner &o, uintptr_t a, unsigned size, int kind, uintptr_t pc)
{
    const uint32_t j = o.index;
    const uint64_t what = S.cfg->vars[3 * j + 2];
    if (what == PAL_VAR_SHIM) return;
    if (what == PAL_VAR_SHARED) {
        count(S.cfg->nranges, (a - o.lo) + ((uint64_t)(j + 2) << 32), size, kind, pc, true);
    } else {
        const uint32_t row = S.cfg->nranges + 1 + j;
        count(row, (a - o.lo) + ((uint64_t)row << 48), size, kind, pc, false);
    }
}

// An array argument's access; a store also marks its bytes in cfg->written (the part inside
// the array: the rest faults on the guard page).
void count_array(const Owner &o, uintptr_t a, unsigned size, int kind, uintptr_t pc)
{
    const uint32_t i = o.index;
    // Sectors as if the array started on a 256-byte boundary, as cudaMalloc's do (the
    // executor places arrays end-aligned against a guard page instead).
    count(i, (a - o.lo) + ((uint64_t)i << 48), size, kind, pc, false);
    if (kind != ACC_READ && S.cfg->written) {
        const uint64_t n = o.hi - a < size ? o.hi - a : size;
        memset(S.cfg->written + written_at[i] + (a - o.lo), 1, n);
    }
}

}  // namespace

void pal::check_runtime_store(const void *p, size_t size)
{
    uintptr_t a = (uintptr_t)p, off = 0;
    // (all of it in one region: __pal_spoison's size is the caller's, and its memset from a
    // variable's last byte on wrote past the variable, unchecked)
    if (!S.instr || !size || owned(a, size)) return;
    const int region = shared_region(a, &off);
    if (region && region == shared_region(a + size - 1, &off)) return;
    refuse_foreign_write(a, size);
}

uint64_t pal::lib_offset(uintptr_t addr)
{
    Dl_info info;
    if (dladdr((void *)addr, &info) && info.dli_fbase) return addr - (uintptr_t)info.dli_fbase;
    return addr;
}

void pal::on_access(uintptr_t a, unsigned size, int kind, uintptr_t pc)
{
    const unsigned f = S.instr;
    if (!f || !size) return;
    uintptr_t off = 0;
    const int region = shared_region(a, &off);
    if (region) {
        if (f & PAL_INSTR_RACE) race_access(region, off, a, size, kind, pc);
        // Banks from the offset in shared memory, static variables after the dynamic buffer.
        if (f & PAL_INSTR_COUNT)
            count(S.cfg->nranges, region == PAL_REGION_DYN_SHARED ? off : off + (1ull << 32),
                  size, kind, pc, true);
        return;
    }
    // (in a race-checked launch too: a kernel that cleared S.instr ran with no race check)
    Owner o = find_owner(a);
    if (o.table == OWNER_RANGE && size > o.hi - a) o = past_array_end(o, a, size, kind);
    // An access that starts in the slack (a 16-byte load at a[-2] of floats ends inside a):
    // stopped where it happens, with its thread, as one past the array's end is.
    if (o.table == OWNER_NONE && in_slack(a)) fail_as_fault(a, kind != ACC_READ);
    uintptr_t from = a;
    if (kind != ACC_READ && wild_store(o, a, size, &from))
        refuse_foreign_write(from, a + size - from);
    if (!(f & PAL_INSTR_COUNT) || o.table == OWNER_NONE) return;
    if (o.table == OWNER_VAR)
        count_variable(o, a, size, kind, pc);
    else
        count_array(o, a, size, kind, pc);
}

extern "C" void __pal_race_note_write(const void *dst, unsigned bytes)
{
    if (!(S.instr & PAL_INSTR_RACE) || !bytes) return;
    const uintptr_t a = (uintptr_t)dst;
    uintptr_t off = 0;
    if (const int region = shared_region(a, &off))
        race_access(region, off, a, bytes, ACC_WRITE, (uintptr_t)__builtin_return_address(0));
}

void pal::instr_worker_begin()
{
    slack_span();
    dyn_lo = (uintptr_t)S.dyn_smem;
    dyn_len = S.cfg->shared_mem;
#ifdef __ELF__
    if (__start_pal_shared && __stop_pal_shared > __start_pal_shared) {
        st_lo = (uintptr_t)__start_pal_shared;
        st_len = (uintptr_t)(__stop_pal_shared - __start_pal_shared);
    }
#endif
    if (S.instr & PAL_INSTR_COUNT) {
        local.assign((size_t)(S.cfg->nranges + 1 + counted_vars()) * PAL_NBUFSTAT, 0);
        const uint64_t *r = S.cfg->ranges;
        written_at.assign(S.cfg->nranges, 0);
        for (uint32_t i = 1; i < S.cfg->nranges; ++i)
            written_at[i] = written_at[i - 1] + (r[2 * i - 1] - r[2 * i - 2]);
    }
    if (S.instr & PAL_INSTR_RACE) race_worker_begin();
}

void pal::instr_block_begin(uint64_t b)
{
    block_base = b * (uint64_t)S.n;
    if (S.instr & PAL_INSTR_COUNT) flush();
    if (S.instr & PAL_INSTR_RACE) race_block_begin();
}

void pal::instr_barrier()
{
    if (S.instr & PAL_INSTR_COUNT) flush();
    if (S.instr & PAL_INSTR_RACE) race_barrier();
}

void pal::instr_syncwarp(int warp, unsigned mask)
{
    if (S.instr & PAL_INSTR_RACE) race_syncwarp(warp, mask);
}

void pal::instr_block_end()
{
    if (S.instr & PAL_INSTR_COUNT) flush();
}

void pal::instr_worker_end()
{
    if ((S.instr & PAL_INSTR_COUNT) && S.cfg->bufstats) {
        for (size_t i = 0; i < local.size(); ++i)
            if (local[i]) __atomic_fetch_add(&S.cfg->bufstats[i], local[i], __ATOMIC_SEQ_CST);
        reqs.clear();
    }
    if (S.instr & PAL_INSTR_RACE) race_worker_end();
    dyn_lo = dyn_len = st_lo = st_len = 0;
}
