// Two steps of decode_mma_rows.cu's loop, as functions of the warp's registers (included by
// it after its MT and OM; the fragment layout and the names are described there).

// 2. The online softmax of one tile per head (column): a lane's tokens g, g + 8 of each m tile,
// then the 8 lanes of its column pair (xor 4, 8, 16). s: S^T of the tile (scaled and turned into
// P^T here; tokens from `end` on, in a tail tile, get P 0); m_run, l_run: the heads' running
// max (base 2) and sum; o: O^T, rescaled. tok0: the token of row g, m tile 0. ksc, vsc: the
// tile's per-token K and V scales at row g (PER_TOKEN_SCALES; else unread): K's on the logit,
// V's on the P entry (not in l).
__device__ inline void rows_softmax(float (&s)[MT][HEAD_TILES][4], float (&m_run)[HEAD_TILES][2],
                                    float (&l_run)[HEAD_TILES][2], float (&o)[HEAD_TILES][OM][4],
                                    float scale_log2, int tok0, bool tail, int end,
                                    const float* ksc, const float* vsc)
{
#pragma unroll
    for (int h = 0; h < HEAD_TILES; ++h) {
        float mx[2] = {NEG_BIG, NEG_BIG};
#pragma unroll
        for (int j = 0; j < MT; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
#if HEAD_PAIRS
                if (e % 2) continue;   // (column 2t + 1: no head)
#endif
#if QK_MMA8
                float x = s[j][h][e];
#else
                float x = s[j][h][e] * scale_log2;
#endif
#if KV_QUANT && PER_TOKEN_SCALES
                x *= ksc[16 * j + 8 * (e / 2)];
#endif
                if (tail && tok0 + 16 * j + 8 * (e / 2) >= end) x = NEG_INF;
                s[j][h][e] = x;
                mx[e % 2] = fmaxf(mx[e % 2], x);
            }
        }
        float alpha[2];
#if HEAD_PAIRS
        alpha[1] = 1.0f;
#pragma unroll
        for (int c = 0; c < 1; ++c) {
#else
#pragma unroll
        for (int c = 0; c < 2; ++c) {
#endif
            mx[c] = fmaxf(mx[c], __shfl_xor_sync(0xffffffffu, mx[c], 4));
            mx[c] = fmaxf(mx[c], __shfl_xor_sync(0xffffffffu, mx[c], 8));
            mx[c] = fmaxf(mx[c], __shfl_xor_sync(0xffffffffu, mx[c], 16));
            const float m_new = fmaxf(m_run[h][c], mx[c]);
            alpha[c] = softmax_exp2(m_run[h][c] - m_new);
            m_run[h][c] = m_new;
            l_run[h][c] *= alpha[c];
        }
#pragma unroll
        for (int j = 0; j < MT; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
#if HEAD_PAIRS
                if (e % 2) {
                    s[j][h][e] = 0.0f;
                    continue;
                }
#endif
                s[j][h][e] = softmax_exp2(s[j][h][e] - m_run[h][e % 2]);   // 0: masked
                l_run[h][e % 2] += s[j][h][e];
#if KV_QUANT && PER_TOKEN_SCALES
                s[j][h][e] *= vsc[16 * j + 8 * (e / 2)];   // not in l
#endif
            }
        }
#pragma unroll
        for (int n = 0; n < OM; ++n) {
            o[h][n][0] *= alpha[0];
            o[h][n][1] *= alpha[1];
            o[h][n][2] *= alpha[0];
            o[h][n][3] *= alpha[1];
        }
    }
}

// 4. The first half of a segment's end: the warps' (m, l) per head to m_s, l_s and each warp's
// O (untransposed: [head][dim]) to ow, its [WARP_O_ROWS][LO] of the stage buffer of the tile
// just computed, once every warp (WARP_PIPE: every lane) is done with that buffer. The D_SPLIT
// warps of a slice have the same m and l (dpart 0 writes them).
__device__ inline void rows_states_to_stage(const float (&m_run)[HEAD_TILES][2],
                                            float (&l_run)[HEAD_TILES][2],
                                            const float (&o)[HEAD_TILES][OM][4], float* m_s,
                                            float* l_s, float* ow, int cw, int dpart, int g,
                                            int t)
{
#pragma unroll
    for (int h = 0; h < HEAD_TILES; ++h) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            l_run[h][c] += __shfl_xor_sync(0xffffffffu, l_run[h][c], 4);
            l_run[h][c] += __shfl_xor_sync(0xffffffffu, l_run[h][c], 8);
            l_run[h][c] += __shfl_xor_sync(0xffffffffu, l_run[h][c], 16);
        }
    }
#if WARP_PIPE
    __syncwarp();      // every lane is done with this tile's buffer (the warp's own)
#else
    __syncthreads();   // every warp is done with this tile's buffer
#endif
#pragma unroll
    for (int h = 0; h < HEAD_TILES; ++h) {
#if HEAD_PAIRS   // column 0 is head t
        if (g == 0 && dpart == 0) {
            m_s[cw * 16 + t] = m_run[h][0];
            l_s[cw * 16 + t] = l_run[h][0];
        }
#else
        if (g == 0 && dpart == 0) {
            m_s[cw * 16 + 8 * h + 2 * t] = m_run[h][0];
            m_s[cw * 16 + 8 * h + 2 * t + 1] = m_run[h][1];
            l_s[cw * 16 + 8 * h + 2 * t] = l_run[h][0];
            l_s[cw * 16 + 8 * h + 2 * t + 1] = l_run[h][1];
        }
#endif
    }
#pragma unroll
    for (int h = 0; h < HEAD_TILES; ++h) {
#pragma unroll
        for (int n = 0; n < OM; ++n) {
#if KV_QUANT   // m tile 8 p + mt, row g (g + 8): dim 128 p + 16 g + 2 mt (+ 1)
            const int d0 = dpart * (HEAD_DIM / D_SPLIT) + 128 * (n / 8) + 16 * g + 2 * (n % 8);
            const int d1 = d0 + 1;
#else
            const int d0 = (dpart * DP + n) * 16 + g, d1 = d0 + 8;
#endif
#if HEAD_PAIRS
            float* o0 = ow + t * LO;
            o0[d0] = o[h][n][0];
            o0[d1] = o[h][n][2];
#else
            float* o0 = ow + (8 * h + 2 * t) * LO;
            o0[d0] = o[h][n][0];
            o0[LO + d0] = o[h][n][1];
            o0[d1] = o[h][n][2];
            o0[LO + d1] = o[h][n][3];
#endif
        }
    }
}
