// The binary interface of the CPU executor's runtime.
//
// Three parties share these declarations:
//   - shim.h (compiled into every kernel): the functions a CUDA thread calls
//     (__syncthreads, shuffles, printf, ...) and the built-in variables;
//   - runtime.cpp / host.cpp (the scheduler, fibers, worker processes);
//   - pagedattn_lab/cpu/abi.py, which mirrors pal_config / pal_result / pal_ctl with ctypes.
// Change a layout here and PAL_ABI_VERSION together with abi.py.
#ifndef PAGEDATTN_LAB_RUNTIME_H
#define PAGEDATTN_LAB_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#define PAL_ABI_VERSION 8
#define PAL_MAX_THREADS 1024  // threads per block, as on every CUDA GPU
#define PAL_MAX_WORKERS 32    // worker processes of one launch
#define PAL_OUT_CAP (1 << 20) // bytes of printf output kept per launch
#define PAL_MSG_CAP 1024
#define PAL_SHARED_GUARD 256   // bytes of each guard of poison around static __shared__ arrays
                               // (shim.h) and before dynamic shared memory (runtime.cpp)

// The largest page size the runtime's protected areas allow for (AArch64's 64 KiB): they
// start at a multiple of it, which is a page's start whatever the page size (sandbox.cpp,
// scheduler.h). A larger page leaves them unprotected.
#define PAL_MAX_PAGE (1 << 16)

#define PAL_HIDDEN __attribute__((visibility("hidden")))
#define PAL_EXPORT __attribute__((visibility("default")))

// Outcome of a launch (pal_result.status).
enum {
    PAL_OK = 0,
    PAL_FAULT = 1,      // a signal: bad memory access, stack overflow, division by zero...
    PAL_DEADLOCK = 2,   // every live thread of a block waits and none can go on
    PAL_WARP = 3,       // a warp intrinsic named a lane that exited or does not exist
    PAL_ASSERT = 4,     // a device-side assert() failed
    PAL_TRAP = 5,       // __trap()
    PAL_INTERNAL = 6,   // the executor itself failed (out of memory for stacks, ...)
    PAL_STOPPED = 7,    // stopped by the parent at the time limit (records who was running)
    PAL_RACE = 8,       // racecheck: two threads touched one shared-memory byte unordered
    PAL_SYSCALL = 9,    // the kernel made a forbidden system call (fork, exit, kill...); msg
    // ubsan.cpp: line and column (op) of the access, offset the index or shift amount (int64),
    // msg the array's or shifted value's type name, a tab, the file of the line
    PAL_BOUNDS = 10,    // an index past an array of known size (local, static __shared__)
    PAL_SHIFT = 11,     // a shift by a negative amount or by at least the value's width
    // and addr the pointer, offset it library-relative, is_write, region (static shared or
    // stack), msg the accessed type's name, a tab, the file:
    PAL_OBJSIZE = 12,   // an access through a pointer past a local or static __shared__ array
};

// Where a faulting address lies, when the worker can tell (pal_result.region). PAST_ARRAY:
// an instrumented access ran past the end of array argument region_thread (its index in
// pal_config.ranges) into another argument's bytes, addr being that end (instrument.cpp).
enum { PAL_REGION_UNKNOWN = 0, PAL_REGION_STACK = 1, PAL_REGION_DYN_SHARED = 2,
       PAL_REGION_STATIC_SHARED = 3, PAL_REGION_PAST_ARRAY = 4 };

// What a thread is doing (pal_result.tstate).
enum { PAL_T_RUN = 0, PAL_T_BARRIER = 1, PAL_T_WARP = 2, PAL_T_EXITED = 3 };

// Warp operations (pal_result.top, the op argument of __pal_warp_op).
enum {
    PAL_OP_SYNCTHREADS = 0, PAL_OP_SHFL = 1, PAL_OP_SHFL_UP = 2, PAL_OP_SHFL_DOWN = 3,
    PAL_OP_SHFL_XOR = 4, PAL_OP_BALLOT = 5, PAL_OP_ANY = 6, PAL_OP_ALL = 7,
    PAL_OP_SYNCWARP = 8, PAL_OP_WMMA_LOAD = 9, PAL_OP_WMMA_STORE = 10, PAL_OP_WMMA_MMA = 11,
    // kernels/mma_ptx.cuh (shim_mma_ptx.h): one op per function, so that reports name it
    PAL_OP_LDMATRIX_X1 = 12, PAL_OP_LDMATRIX_X2 = 13, PAL_OP_LDMATRIX_X4 = 14,
    PAL_OP_LDMATRIX_X1_TRANS = 15, PAL_OP_LDMATRIX_X2_TRANS = 16, PAL_OP_LDMATRIX_X4_TRANS = 17,
    PAL_OP_MMA_F16 = 18, PAL_OP_MMA_BF16 = 19, PAL_OP_MOVMATRIX_TRANS = 20,
    PAL_OP_MMA_E4M3 = 21, PAL_OP_MMA_S8 = 22,
    // shim_warp.h's match and reduce: shuffles from a lane (as PAL_OP_SHFL), named as such
    PAL_OP_MATCH = 23, PAL_OP_REDUCE = 24,
};

// Instrumented launches (pal_config.instrument; the kernel is compiled with
// -fsanitize=thread, whose hooks are in instrument.cpp).
enum { PAL_INSTR_COUNT = 1, PAL_INSTR_RACE = 2 };
// Per-thread counters (pal_config.counts), PAL_NCOUNT uint32 per thread.
enum { PAL_C_GREAD, PAL_C_GREAD_B, PAL_C_GWRITE, PAL_C_GWRITE_B,
       PAL_C_SREAD, PAL_C_SREAD_B, PAL_C_SWRITE, PAL_C_SWRITE_B, PAL_NCOUNT };
// Per-buffer counters (pal_config.bufstats), PAL_NBUFSTAT uint64 per array argument, one
// more for shared memory, then one per variable of the kernel's (pal_config.vars).
// Units: 32-byte sectors (global), wavefronts (shared).
enum { PAL_B_READ, PAL_B_READ_B, PAL_B_WRITE, PAL_B_WRITE_B,
       PAL_B_READ_REQ, PAL_B_READ_UNITS, PAL_B_WRITE_REQ, PAL_B_WRITE_UNITS, PAL_NBUFSTAT };
// The third word of a pal_config.vars triple: a variable counted as global memory (0), a
// template's __shared__ array counted as shared memory (1), or the shim's own state (cp.async
// queues...), which kernel code may write, counted nowhere (2; after the counted ones).
enum { PAL_VAR_GLOBAL = 0, PAL_VAR_SHARED = 1, PAL_VAR_SHIM = 2 };
// Kinds of shared-memory hazard (pal_result.race_kind).
enum { PAL_RACE_WAW = 1, PAL_RACE_RAW = 2, PAL_RACE_WAR = 3 };

typedef struct pal_config {
    void (*entry)(void **);  // the kernel's argument-unpacking wrapper
    void **args;             // one pointer per kernel parameter, to its value
    uint32_t grid[3];
    uint32_t block[3];
    uint64_t shared_mem;     // dynamic shared memory bytes per block
    uint64_t stack_bytes;    // per CUDA thread
    int32_t nworkers;        // worker processes (checked) ; unchecked runs on the caller
    int32_t checked;         // 1: run in child processes with fault capture
    int32_t poison;          // 1: fill shared memory with 0xff bytes before each block
    int32_t timeout_s;       // backstop alarm for the workers (the parent enforces it first)
    uint32_t instrument;     // PAL_INSTR_* bits; 0 for a plain launch
    uint32_t nranges;        // array arguments, for counting
    const uint64_t *ranges;  // nranges [lo, hi) address pairs
    uint32_t *counts;        // shared mapping: PAL_NCOUNT per thread of the grid, or NULL
    uint64_t *bufstats;      // shared mapping: PAL_NBUFSTAT x (nranges + 1 + the counted
                             // vars: those not PAL_VAR_SHIM), or NULL
    uint8_t *written;        // shared mapping: 1 per byte of the ranges, one after another,
                             // that a counted store wrote; or NULL
    uint32_t nvars;          // the kernel's own writable variables (__device__, static),
    const uint64_t *vars;    // counted as global memory: nvars (lo, hi, shared) triples,
                             // their bufstats rows after shared memory's; shared: a
                             // template's __shared__ array, counted as such (device_data.py)
    int32_t last_first;      // 1: run block 0, then the others from the last down (runtime.cpp)
    int32_t vars_known;      // 1: vars holds all of the build's writable variables (read off
                             // its symbol table), so an instrumented launch may refuse a
                             // store outside them, the arrays, shared memory and the stack
} pal_config;

typedef struct pal_result {
    int32_t status;
    int32_t signo, sicode;
    int32_t is_write;        // 1 write, 0 read, -1 unknown
    uint64_t addr;           // faulting address
    int32_t region;          // PAL_REGION_*
    int32_t region_thread;   // whose stack (linear thread id) for PAL_REGION_STACK;
                             // the array argument for PAL_REGION_PAST_ARRAY
    int32_t has_thread;      // 1 when block/thread below are known
    int32_t line;            // kernel source line (asserts, warp errors)
    uint32_t block[3];
    uint32_t thread[3];
    uint64_t block_linear;
    uint32_t warp, mask, bad_lanes, op;   // warp errors
    int32_t nthreads;        // threads per block, for tstate/tline
    int32_t pad0;
    uint8_t tstate[PAL_MAX_THREADS];
    uint8_t top[PAL_MAX_THREADS];
    int32_t tline[PAL_MAX_THREADS];
    uint32_t tmask[PAL_MAX_THREADS];
    int32_t race_kind;       // PAL_RACE_*; region/offset say where
    int32_t other_thread;    // linear thread id of the earlier access
    uint64_t offset;         // byte offset in dynamic shared memory, or in the library
    uint64_t pc, other_pc;   // code addresses (library-relative) of the two accesses
    int32_t access_size, other_atomic;
    int32_t run_thread;      // linear id of the thread running now (-1: none), for a worker
    int32_t pad1;            //   that dies without a report
    uint64_t run_block;
    char msg[PAL_MSG_CAP];
} pal_result;

typedef struct pal_ctl {
    int64_t next_block;      // blocks are handed out by an atomic counter
    int32_t abort;           // a worker failed: the others stop taking blocks
    int32_t nworkers;
    int64_t out_len;         // bytes reserved in out (may exceed PAL_OUT_CAP)
    int64_t blocks_done;     // blocks run to completion, by all workers
    int32_t out_truncated;
    int32_t pad0;
    pal_result res[PAL_MAX_WORKERS];
    char out[PAL_OUT_CAP];
} pal_ctl;

#ifdef __cplusplus
extern "C" {
#endif
// ---- called by kernel code (through the macros of shim.h) ----
PAL_HIDDEN void __pal_syncthreads(int line);
PAL_HIDDEN int __pal_syncthreads_reduce(int line, int pred, int kind);  // 0 count, 1 and, 2 or
PAL_HIDDEN unsigned long long __pal_warp_op(int line, int op, unsigned mask,
                                            unsigned long long val, int arg, int width);
PAL_HIDDEN unsigned __pal_activemask(void);
PAL_HIDDEN void __pal_yield(void);
PAL_HIDDEN int __pal_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
PAL_HIDDEN void __pal_assert_fail(const char *expr, const char *file, int line,
                                  const char *func) __attribute__((noreturn));
PAL_HIDDEN void __pal_trap(int line) __attribute__((noreturn));
PAL_HIDDEN long long __pal_clock64(void);
PAL_HIDDEN void __pal_note_atomic(const volatile void *addr, unsigned size);
// ldmatrix's row addresses (shim_mma_ptx.h): fails the launch, naming the calling lane, when
// [row, row + 16) is not 16-byte aligned or not inside this block's shared memory.
PAL_HIDDEN void __pal_check_ldmatrix_row(int line, const char *func, const void *row);
// cp.async's issue (shim_async.h): for the race check, a write of `bytes` at `dst` by the
// calling thread (nothing is written; the data lands at the wait). No-op unless race-checked.
PAL_HIDDEN void __pal_race_note_write(const void *dst, unsigned bytes);
// A static __shared__ variable outside the pal_shared section (a template function's, shim.h's
// PAL_SPOISON): poisons its bytes unless *serial says this block did already. No-op unless
// the launch poisons shared memory, and for a variable in the section (poisoned with it).
PAL_HIDDEN void __pal_spoison(void *v, unsigned long long bytes, unsigned long long *serial);
// (ubsan.cpp) src appended to dst[*at..cap), async-signal-safe
PAL_HIDDEN void pal_append(char *dst, size_t cap, size_t *at, const char *src);
PAL_HIDDEN extern void *__pal_dyn_smem;
// Counts the blocks a worker has run (so that per-thread state a kernel header keeps, like
// shim_async.h's queues of copies, can tell an earlier block's from this one's).
PAL_HIDDEN extern unsigned long long __pal_block_serial;
#ifdef __cplusplus
}
#endif

#endif
