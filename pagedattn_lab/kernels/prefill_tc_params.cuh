// prefill_tc's (prefill_tc.cu) compile-time parameters, their defaults, the sizes derived
// from them and the unroll macros. Include after kv_quant.cuh.
#ifndef PREFILL_TC_PARAMS_CUH
#define PREFILL_TC_PARAMS_CUH

#ifndef HEAD_DIM
#define HEAD_DIM 128
#endif
#ifndef ELEM
#define ELEM __half
#endif
#ifndef WARPS
#define WARPS 4
#endif
#ifndef ROW_FRAGS
#define ROW_FRAGS 1
#endif
#ifndef KV_TILE
#define KV_TILE 64
#endif
#ifndef STAGES
#define STAGES 2
#endif
#ifndef Q_IN_REGS
#define Q_IN_REGS 0
#endif
#ifndef QK_UNROLL
#define QK_UNROLL 1
#endif
#ifndef PV_UNROLL
#define PV_UNROLL 1
#endif
#ifndef CACHE_T
#define CACHE_T ELEM
#endif

#define WARP_ROWS (16 * ROW_FRAGS)
#define Q_ROWS (WARP_ROWS * WARPS)
#define THREADS (32 * WARPS)
#define D_FRAGS (HEAD_DIM / 16)
#define K_FRAGS (KV_TILE / 16)
#define LD_KV (HEAD_DIM + 8)       // ELEMs per shared K/V/Q row: +16 bytes against conflicts
#define LD_P (KV_TILE + 8)         // ELEMs per row of a warp's P
#define STAGE_ELEMS (2 * KV_TILE * LD_KV)
#define SLOTS_PER_THREAD ((KV_TILE + THREADS - 1) / THREADS)
#define NEG_INF __int_as_float(0xff800000)

// Unrolling of the d loop of S = Q K^T and the key loop of O += P V: full unrolling lets
// the compiler hoist every fragment load, which costs registers the O fragments need. Q
// fragments kept in registers are indexed by d: that loop must unroll fully.
#if Q_IN_REGS
#undef QK_UNROLL
#define QK_UNROLL D_FRAGS
#endif
#define PRAGMA_(x) _Pragma(#x)
#define UNROLL(n) PRAGMA_(unroll n)

#endif  // PREFILL_TC_PARAMS_CUH
