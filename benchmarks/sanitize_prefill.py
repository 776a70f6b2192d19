"""Small launches of the prefill and cache-write kernels for compute-sanitizer (GPU only)."""
import cupy as cp
import numpy as np

from pagedattn_lab.cache_write import slot_mapping, write_kv
from pagedattn_lab.prefill_wrapper import BatchPrefillWrapper

rng = np.random.default_rng(0)
for head_dim, page, heads, kv_heads, dtype in [(64, 16, 4, 2, np.float16), (128, 7, 2, 1, np.float16),
                                               (256, 1, 2, 2, "bfloat16"), (80, 32, 8, 8, np.float16)]:
    lens = np.array([70, 1, 33], np.int32)
    q_lens = np.array([70, 1, 5], np.int32)
    pages = -(-lens // page)
    num_pages = int(pages.sum()) + 2
    tables = np.full((3, int(pages.max())), -1, np.int32)
    perm = rng.permutation(num_pages)
    tables[np.arange(tables.shape[1])[None, :] < pages[:, None]] = perm[: pages.sum()]
    store = np.float16 if dtype == np.float16 else np.uint16
    k = cp.asarray(rng.standard_normal((num_pages, page, kv_heads, head_dim)).astype(np.float16)).view(store)
    v = k.copy()
    slots = slot_mapping(tables, lens, lens, page)
    rows = cp.asarray(rng.standard_normal((int(lens.sum()), kv_heads, head_dim)).astype(np.float16)).view(store)
    if store == np.float16:
        write_kv(rows, rows, k, v, cp.asarray(slots))
    indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q = cp.asarray(rng.standard_normal((int(indptr[-1]), heads, head_dim)).astype(np.float16)).view(store)
    # the plan's own choice (a long launch on the mma kernel and a GQA-packed one), then
    # three-stage variants of both kernels and the mma kernel's Q in registers
    for variants in ({}, dict(variant="w4r2k32p3u1"), dict(decode_variant="w1r1k32p3u2"),
                     dict(variant="mw4r2k32p3"), dict(variant="mw2r1k64q"),
                     dict(decode_variant="mw1r1k32")):
        w = BatchPrefillWrapper().plan(cp.asarray(indptr), cp.asarray(tables), cp.asarray(lens),
                                       heads, kv_heads, head_dim, page, dtype, **variants)
        w.run(q, k, v)
cp.cuda.Device().synchronize()
print("sanitize_prefill: launches done")
