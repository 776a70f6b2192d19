"""The tensor-core decode's measured launch shapes, per kernel source (H200; every figure from
benchmarks/NOTES.md): rows of (largest head_dim, smallest group, compressed pages or None for
either) -> `decode_plan.tc_config` keywords, the first row that covers a case taken
(`decode_plan.tc_shape`). Plain data: the planner reads it, the benchmarks cite it."""

# kernels/decode_tc.cu (lesson 09's WMMA kernel; rounds 1b and 2).
TC_SHAPES = [
    # D64 MQA 16/1: 8 warps in pairs 0.044 ms, 4 warps 0.047 (one wave); GQA 32/8 and 64/8
    # the other way round: 4 warps 0.189 / 0.194 ms, 8 in pairs 0.206 / 0.209
    (128, 9, False, dict(warps=8, tile_t=64, stages=2, d_split=2, min_blocks=2)),
    (128, 1, False, dict(warps=4, tile_t=64, stages=2, d_split=1)),
    # compressed pages, D64 GQA 32/8 (round 2): each warp copying and converting its own
    # tokens (WARP_PIPE) fp8 0.199 / int8 0.252 ms, the block converting tiles 0.213 / 0.265
    (128, 1, True, dict(warps=4, tile_t=64, stages=3, d_split=1, warp_pipe=True)),
    # head_dim 256: 4 warps in pairs over 32-token tiles (84 KB, 2 blocks per SM) 0.365 ms;
    # 4 warps over 64 tokens (150 KB, 1 block) 0.450, 8 warps in fours 0.442
    (256, 1, None, dict(warps=4, tile_t=32, stages=2, d_split=2)),
]


# The same for kernels/decode_mma.cu (H200, 2026-12-02, benchmarks/NOTES.md). Items (one
# partition per block; rounds r3, r4): D64 GQA 32/8 W4 warp pipelines S3 0.172 ms, S2 0.175,
# one barrier per tile S3 0.173, and 0.169 with partitions cut for 8 blocks per SM; MQA 16/1 8
# warps in pairs S3 0.0390, 4 warps 0.044; head_dim 256 pairs over 32 tokens 0.344; codes over
# 128-token tiles fp8 0.133, int8 0.136. Balanced ranges (decode_work; rounds r5, r6): the
# same shapes win again (D64 GQA 32/8 warp pipes S3 0.161-0.164, the block's pipeline 0.162,
# S2 0.163, 3 blocks per SM 0.217; head_dim 256 pairs over 32 tokens 0.310-0.314, 8 warps over
# 64 0.331; fp8 128-token tiles S2 0.127). "blocks_per_sm": the items split rule's target
# (decode_work.choose_tc_part_len) where the shape sets one.
MMA_SHAPES = [
    # MQA 16/1, session 4 (rounds s4a-s4c, NOTES.md "MQA 16/1 (session 4)"): the same shape,
    # the split sequences' last block merging after its tile loop with every load in flight
    # (D64 37.5-37.7 us against 39.3-39.5 merging in the loop; FlashInfer 39.2-40.1)
    (128, 9, False, dict(warps=8, tile_t=64, stages=3, d_split=2, min_blocks=2,
                         merge_after_loop=True)),
    (128, 1, False, dict(warps=4, tile_t=64, stages=3, d_split=1, warp_pipe=True,
                         blocks_per_sm=8)),
    (128, 1, True, dict(warps=4, tile_t=128, stages=2, d_split=1)),
    (256, 1, None, dict(warps=4, tile_t=32, stages=2, d_split=2)),
]

# kernels/decode_mma_rows.cu (groups up to 16; H200, D64 GQA 32/8). Items (round r5): fp16
# warp pipelines over 64-token tiles S3 with partitions for 8 blocks per SM 0.167 ms (S2
# 0.169, 128-token tiles 0.197: one block per SM); codes over 128-token tiles with 3 blocks
# 0.123 / 0.125 / per-token 0.141-0.145; head_dim 256 pairs over 32-token tiles 0.329.
# Balanced (round r7): fp16 0.161 (the block's pipeline 0.162), head_dim 256 0.305 (2 warps
# S3 0.596); codes per-token 0.140 / 0.142 (2 blocks per SM there). Session 4 (rounds s4a,
# s4b; NOTES.md "8 x 32k GQA and resident blocks"): fp16 two stages, the block's pipeline
# (73 KB, 158 registers: 3 blocks per SM; r7's 0.214 was 400 blocks for 396 slots) D64 GQA
# 32/8 0.157 (S3 warp pipes 0.159), 64/8 0.162 (0.164), page 64 0.161 (0.164), 8 x 32k
# 0.2547-0.2584 (0.2610-0.2652; FlashInfer 0.2586-0.2630), 8 x 16k / 64k 0.138 / 0.489
# (0.141 / 0.503); but 1 x 32k 0.0517 (0.0496): ROWS_SHORT_ITEMS.
ROWS_SHAPES = [
    (128, 1, False, dict(warps=4, tile_t=64, stages=2, d_split=1, blocks_per_sm=8)),
    (128, 1, True, dict(warps=4, tile_t=128, stages=2, d_split=1, min_blocks=3,
                        blocks_per_sm=8)),
    # fused KV heads (head_dim 96 two at a time: 192 dims, 8 heads; NOTES.md "Lines and fused
    # KV heads (session 7)", "Read ceilings (session 9)"): 8 warps in pairs over 64 tokens, 2
    # blocks per SM (128 registers, no spill since a warp's O holds its heads' rows only)
    # 0.131 ms three times against 4 warps over 64 tokens 0.133-0.134 in the same process;
    # one block per SM of 8 or 16 warps over 128 tokens 0.133, 3 stages 0.146-0.150
    (192, 5, False, dict(warps=8, tile_t=64, stages=2, d_split=2, min_blocks=2)),
    (256, 1, None, dict(warps=4, tile_t=32, stages=2, d_split=2)),
]


# ... one wave of items shorter than ROWS_SHORT_ITEMS tokens (1 x 32k: 8 KV heads x 47 items of
# 704 tokens at 3 blocks per SM, 0.0517 ms) keep the earlier shape: warp pipelines S3, 2 blocks
# per SM (32 items of 1024 tokens, 0.0496; FlashInfer 0.0530; H200, round s4b)
ROWS_SHORT_ITEMS = 2048
ROWS_SHORT_ITEMS_SHAPE = dict(warps=4, tile_t=64, stages=3, d_split=1, warp_pipe=True)
