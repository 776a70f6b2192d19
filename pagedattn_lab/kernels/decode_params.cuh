// decode.cu's compile-time parameters: what the wrapper sets with NVRTC -D options, the
// tuning knobs and their measured defaults, and the derived switches (included by decode.cu
// only, after kv_quant.cuh).
#ifndef PAGEDATTN_LAB_DECODE_PARAMS_CUH
#define PAGEDATTN_LAB_DECODE_PARAMS_CUH

// One source, compiled per case with NVRTC -D options (the wrapper picks them):
//   -DKV_T=float|__half|__nv_bfloat16   element type of q, out (and of an uncompressed cache)
//   -DHEAD_DIM=32..256                  head size
//   -DKV_QUANT=0|1|2                    cache of KV_T values, int8 codes or fp8 e4m3 codes
//   -DCACHE_T=KV_T|unsigned char        the cache's element (codes are bytes; int8 viewed as uint8)
//   -DPER_TOKEN_SCALES=0|1              static (per KV head) or per-(token, KV head) scales
//   -DGMAX=1|2|4|8                      query heads per block (the smallest that holds the group;
//                                       8 when the group is larger, then ceil(group / 8) blocks
//                                       share a KV head)
// A head that is not a power-of-two number of 16-byte chunks (head_dim 80, 96, 112, 192 in
// fp16; 80 .. 256 in fp32) is padded to one: the thread group of a token is the next power of
// two, and its lanes past the end load nothing. A head of more than 32 chunks gives each
// thread CPT = 2 chunks (fp32, head_dim 192 and 256).

//   -DWORK_LIST=0|1                     partitions from a work list (see decode.cu's top)
#ifndef WORK_LIST
#define WORK_LIST 0
#endif

// Tuning knobs (NVRTC -D options; the defaults won on an H100, see benchmarks/NOTES.md).
#ifndef DECODE_UNROLL
#define DECODE_UNROLL 4        // tokens per thread group per step, blocks of 1-2 query heads
#endif
#ifndef DECODE_UNROLL_GQA
#define DECODE_UNROLL_GQA 2    // the same for blocks of 4-8 query heads (more registers each)
#endif
#ifndef DECODE_UNROLL_CODES
#define DECODE_UNROLL_CODES 4  // 4-head blocks over codes whose sums live in shared memory
#endif
#ifndef DECODE_PREFETCH_GROUP
#define DECODE_PREFETCH_GROUP 4    // blocks of at least this many heads prefetch the next step
#endif
#ifndef HEAD_DIM
#define HEAD_DIM 128
#endif
#ifndef GMAX
#define GMAX 1
#endif
#ifndef CACHE_T
#define CACHE_T KV_T
#endif
// Bytes per load of codes: 16 (16 codes), or 8 for blocks of many query heads, whose
// per-thread q slices and sums (VEC floats per head) would not fit in registers.
#ifndef CHUNK_BYTES
#define CHUNK_BYTES 16
#endif
#define DECODE_THREADS 128
// Packed fp16 arithmetic over compressed pages (decode_half2.cuh says how and what it costs
// in accuracy): HALF2_MATH for q.k, the reduce-scatter of the scores and the owners' softmax;
// PV_HALF2 for p*v (static scales only); RESCALE_SLACK: how far (log2) the running maximum may
// lag behind the scores before the sums are rescaled.
// By default for q of 16-bit floats only: an fp32 model keeps fp32 arithmetic (its attention
// is checked to ~1e-6 against a float64 forward over the same codes, tests/test_engine_quant.py).
// (KV_T's name pasted onto Q_IS_FLOAT_: 1 for float, an undefined name, i.e. 0, otherwise.)
#define Q_IS_FLOAT_float 1
#define DECODE_PASTE(a, b) a##b
#define DECODE_XPASTE(a, b) DECODE_PASTE(a, b)
#if DECODE_XPASTE(Q_IS_FLOAT_, KV_T)
#define Q_IS_FLOAT 1
#else
#define Q_IS_FLOAT 0
#endif
#ifndef HALF2_MATH
#define HALF2_MATH (KV_QUANT != 0 && !Q_IS_FLOAT)
#endif
#ifndef PV_HALF2
#define PV_HALF2 (HALF2_MATH && !PER_TOKEN_SCALES)
#endif
#ifndef PV_FLUSH
#define PV_FLUSH 4            // steps summed in fp16 before they join the fp32 sums
#endif
#ifndef RESCALE_SLACK
#define RESCALE_SLACK 8       // log2: the running maximum lags the scores by at most this much
#endif
#define DECODE_STEP_TOKENS \
    (GMAX >= 4 ? (ACC_SMEM ? DECODE_UNROLL_CODES : DECODE_UNROLL_GQA) : DECODE_UNROLL)
static_assert(!HALF2_MATH || KV_QUANT, "packed fp16 arithmetic: compressed pages only");
// The 4-head blocks are capped at 128 registers so that 4 blocks fit on an SM (measured:
// 0.315 ms instead of 0.347 ms on the GQA workload; over codes with ACC_SMEM, which frees the
// 64 registers of the sums); for 8 heads the cap spills and loses.
// One head over codes: 6 blocks per SM (80 registers, no spill), 5 with per-token scales (96),
// instead of the 4 that 128 registers allow (H200, D64 MHA: 0.347 against 0.370 ms with fp8
// codes, 0.357 against 0.439 with int8 and per-token scales; benchmarks/NOTES.md).
// ACC_SMEM: the fp32 sums of V in shared memory (decode_half2.cuh), 32 KB per 4-head block,
// which with the merge's dynamic shared memory must stay within the 48 KB a launch gets
// without asking (head_dim <= 192).
#ifndef ACC_SMEM
#define ACC_SMEM (PV_HALF2 && GMAX == 4 && HEAD_DIM <= 192)
#endif
// DOT_PACK (decode_half2.cuh): the lanes' q.k sums exchanged and added as fp16 pairs of two
// tokens (half the shuffles and adds; 1 + log2(TG) more fp16 roundings of a score), where no
// sum can leave fp16's range: |q| <= 1, so |dot| <= HEAD_DIM * KV_QMAX < 65504.
#if KV_QUANT == 1
#define DECODE_QMAX_INT 127   // KV_QMAX as an integer, for #if
#else
#define DECODE_QMAX_INT 448
#endif
#ifndef DOT_PACK
#define DOT_PACK (HALF2_MATH && GMAX >= 4 && HEAD_DIM * DECODE_QMAX_INT < 65504)
#endif
// 4 heads over codes (H200, D64 GQA 32/8, round r3): the sums in shared memory and 4 tokens per
// step at 3 blocks per SM 0.132 ms (2 tokens, 4 blocks: 0.136; the sums in registers, 2 blocks:
// 0.178); per-token scales (fp32 sums of V in registers) 3 blocks 0.153, 2 blocks 0.182.
#ifndef DECODE_MIN_BLOCKS
#if GMAX == 4 && KV_QUANT && HALF2_MATH \
    && (ACC_SMEM ? DECODE_UNROLL_CODES >= 4 : HEAD_DIM <= 128)
#define DECODE_MIN_BLOCKS 3
#elif GMAX == 4 && (KV_QUANT == 0 || ACC_SMEM)
#define DECODE_MIN_BLOCKS 4
#elif GMAX == 1 && KV_QUANT
#define DECODE_MIN_BLOCKS (PER_TOKEN_SCALES ? 5 : 6)
#else
#define DECODE_MIN_BLOCKS 1
#endif
#endif

#endif  // PAGEDATTN_LAB_DECODE_PARAMS_CUH
