// prefill_tc's (prefill_tc.cu) copies into shared memory: K/V tile staging over 16-byte
// copies and the dequantizing staging of codes. Included after common.cuh and from_float.
#ifndef PREFILL_TC_PIPELINE_CUH
#define PREFILL_TC_PIPELINE_CUH

// 16 bytes from global to shared memory, or 16 zero bytes when src is null: common.cuh's
// copy16_async (asynchronous on sm_80 and later, completed by copy_wait; an ordinary copy
// elsewhere, the CPU executor included).
__device__ inline void copy16(void* dst, const void* src)
{
    copy16_async(dst, src ? src : dst, src != nullptr);
}

// Copy `rows` rows of HEAD_DIM ELEMs to shared memory (row r at dst + r * LD_KV);
// src_row(r) gives a row's address, or null for a row of zeros.
template <typename RowFn>
__device__ inline void stage_rows(ELEM* dst, int rows, RowFn src_row)
{
    constexpr int VEC = 16 / (int)sizeof(ELEM);
    constexpr int CHUNKS = HEAD_DIM / VEC;
    for (int idx = threadIdx.x; idx < rows * CHUNKS; idx += THREADS) {
        int r = idx / CHUNKS, c = (idx % CHUNKS) * VEC;
        const ELEM* src = src_row(r);
        copy16(dst + r * LD_KV + c, src ? src + c : nullptr);
    }
}

// K and V of one tile into shared memory, 16 bytes at a time (K row r at dst + r * LD_KV,
// V row r at dst + (KV_TILE + r) * LD_KV); tile_slots[r] is key r's cache slot, or -1 for a
// row of zeros. The slots were looked up a tile ahead (see prefill_tiles.cuh), so a copy
// costs a shared load and an address, not a division and a dependent load of the block
// table. When the threads are a multiple of a row's chunks (head sizes 32, 64, 128, 256),
// each thread keeps one chunk column and steps over rows, so no division is left; a row of
// zeros is a copy of 0 bytes from a valid address (the head's first row), not a select
// between pointers.
__device__ inline void stage_kv_rows(ELEM* dst, const int* tile_slots, const ELEM* k_head,
                                     const ELEM* v_head, int row_stride)
{
    constexpr int VEC = 16 / (int)sizeof(ELEM);
    constexpr int CHUNKS = HEAD_DIM / VEC, TOTAL = KV_TILE * CHUNKS;
    constexpr bool COLUMNS = THREADS % CHUNKS == 0;     // a thread's chunk column is fixed
#pragma unroll 4
    for (int i = 0; i < (TOTAL + THREADS - 1) / THREADS; ++i) {
        const int idx = threadIdx.x + i * THREADS;
        if (TOTAL % THREADS != 0 && idx >= TOTAL) break;
        const int r = COLUMNS ? (int)threadIdx.x / CHUNKS + i * (THREADS / CHUNKS) : idx / CHUNKS;
        const int c = (COLUMNS ? (int)threadIdx.x % CHUNKS : idx % CHUNKS) * VEC;
        const int slot = tile_slots[r];
        const long long at = (long long)(unsigned)max(slot, 0) * (unsigned)row_stride + c;
        ELEM* const d = dst + r * LD_KV + c;
        copy16_async(d, k_head + at, slot >= 0);
        copy16_async(d + KV_TILE * LD_KV, v_head + at, slot >= 0);
    }
}

#if KV_QUANT
// Dequantize `rows` rows of HEAD_DIM one-byte codes into shared ELEMs (row r at
// dst + r * LD_KV): a thread loads 16 codes at once (one 16-byte load, coalesced like the
// unquantized copy) and writes code * scale; slot_of(r) is the row's cache slot, or -1 for
// a row of zeros. A synchronous load: the conversion needs the codes in registers.
template <typename SlotFn>
__device__ inline void stage_codes(ELEM* dst, int rows, const unsigned char* cache,
                                   const float* scales, SlotFn slot_of, int kv_head,
                                   int num_kv_heads)
{
    constexpr int CHUNKS = HEAD_DIM / 16;
    for (int idx = threadIdx.x; idx < rows * CHUNKS; idx += THREADS) {
        int r = idx / CHUNKS, c = (idx % CHUNKS) * 16;
        long long slot = slot_of(r);
        ELEM* d = dst + r * LD_KV + c;
        if (slot < 0) {
            reinterpret_cast<uint4*>(d)[0] = make_uint4(0, 0, 0, 0);
            reinterpret_cast<uint4*>(d)[1] = make_uint4(0, 0, 0, 0);
            continue;
        }
        const float scale = scales[PER_TOKEN_SCALES ? slot * num_kv_heads + kv_head : kv_head];
        uint4 word = *reinterpret_cast<const uint4*>(
            cache + (slot * num_kv_heads + kv_head) * HEAD_DIM + c);
        const unsigned char* code = reinterpret_cast<const unsigned char*>(&word);
#pragma unroll
        for (int j = 0; j < 16; ++j) from_float(dequantize_code(code[j]) * scale, d + j);
    }
}
#endif

#endif  // PREFILL_TC_PIPELINE_CUH
