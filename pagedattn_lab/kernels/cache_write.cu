// Cache write ("reshape and cache" in vLLM): scatter the K and V rows of new tokens into
// their slots of the paged cache, so that a serving step is "write K/V, then attend".
//
// slot_mapping[i] = physical_page * page_size + offset is where token i goes; -1 means
// "skip this row" (padding in a batch), as in vLLM. The rows move as raw words: the
// wrapper picks WORD_T (uint4 = 16 bytes when the row allows it, else uint2, unsigned int
// or unsigned short) so the same source copies fp32, fp16 and bf16 caches with the widest
// loads the row's size allows.
//
// Thread-to-data mapping: one block per new token; its threads stride over the token's row
// of num_kv_heads * head_dim elements (row_words words), K and V alike. Neighbouring
// threads move neighbouring words, so loads and stores are coalesced.

#ifndef WORD_T
#define WORD_T unsigned int
#endif

extern "C" __global__ void write_kv(const WORD_T* __restrict__ k,      // [n_tokens, row_words]
                                    const WORD_T* __restrict__ v,
                                    const long long* __restrict__ slot_mapping,  // [n_tokens]
                                    int n_tokens, int row_words,
                                    WORD_T* __restrict__ k_cache,      // [slots, row_words]
                                    WORD_T* __restrict__ v_cache)
{
    int token = blockIdx.x;
    if (token >= n_tokens) return;  // safe: no barrier below
    long long slot = slot_mapping[token];
    if (slot < 0) return;
    const WORD_T* k_row = k + (long long)token * row_words;
    const WORD_T* v_row = v + (long long)token * row_words;
    WORD_T* k_dst = k_cache + slot * row_words;
    WORD_T* v_dst = v_cache + slot * row_words;
    for (int i = threadIdx.x; i < row_words; i += blockDim.x) {
        k_dst[i] = k_row[i];
        v_dst[i] = v_row[i];
    }
}
