// Page access (guide step 2): copy one sequence's keys and values out of the paged cache
// into contiguous buffers, following its block table.
//
// Thread-to-data mapping: one block per token of the sequence; the block's threads stride
// over that token's row of num_kv_heads * head_dim elements (one K row and one V row in the
// NHD layout [num_pages, page_size, num_kv_heads, head_dim]). Neighbouring threads copy
// neighbouring elements, so every load and store is coalesced.
//
// The copy does not care what the elements mean: it moves 32-bit WORDs, or 16-bit ones when
// the wrapper compiles it with -DWORD=short. An fp16 cache is passed viewed as 32-bit words
// (row_elems counted in words), or as 16-bit words when a token's row is an odd number of
// halves and so does not start on a 32-bit boundary.
#ifndef WORD
#define WORD float
#endif

extern "C" __global__ void gather_kv(const WORD* __restrict__ k_cache,
                                     const WORD* __restrict__ v_cache,
                                     const int* __restrict__ block_table,  // this sequence's row
                                     int seq_len, int page_size, int row_elems,
                                     WORD* __restrict__ k_out,   // [seq_len, row_elems]
                                     WORD* __restrict__ v_out)
{
    int token = blockIdx.x;
    if (token >= seq_len) return;  // safe: no barrier below

    int virtual_page = token / page_size;
    int offset = token % page_size;
    int physical_page = block_table[virtual_page];
    // Widen before multiplying: a cache of more than 2^31 elements overflows an int offset.
    long long slot = (long long)physical_page * page_size + offset;

    const WORD* k_row = k_cache + slot * row_elems;
    const WORD* v_row = v_cache + slot * row_elems;
    long long out_row = (long long)token * row_elems;
    for (int i = threadIdx.x; i < row_elems; i += blockDim.x) {
        k_out[out_row + i] = k_row[i];
        v_out[out_row + i] = v_row[i];
    }
}
