"""Small launches of the quantizing cache write and of the prefill and decode kernels over
int8 / fp8 pages, for compute-sanitizer (GPU only):
`compute-sanitizer python benchmarks/sanitize_quant.py [prefill] [decode]` (default: both)."""
import sys

import cupy as cp
import numpy as np

from pagedattn_lab.cache_write import slot_mapping
from pagedattn_lab.cache_write_quant import scale_shape, write_kv_quant
from pagedattn_lab.prefill_wrapper import BatchPrefillWrapper
from pagedattn_lab.quant import kv_format
from pagedattn_lab.wrappers import BatchDecodeWrapper

parts = sys.argv[1:] or ["prefill", "decode"]

rng = np.random.default_rng(0)
for head_dim, page, heads, kv_heads in [(64, 16, 8, 2), (128, 7, 2, 1), (256, 1, 2, 2),
                                        (80, 32, 8, 8)]:
    for kv_dtype in ("int8", "fp8_e4m3"):
        for scheme in ("static", "per_token"):
            lens = np.array([70, 1, 33], np.int32)
            q_lens = np.array([70, 1, 5], np.int32)
            pages = -(-lens // page)
            num_pages = int(pages.sum()) + 2
            tables = np.full((3, int(pages.max())), -1, np.int32)
            perm = rng.permutation(num_pages)
            tables[np.arange(tables.shape[1])[None, :] < pages[:, None]] = perm[: pages.sum()]
            shape = (num_pages, page, kv_heads, head_dim)
            k = cp.zeros(shape, kv_format(kv_dtype).storage)
            v = k.copy()
            sshape = scale_shape(scheme, num_pages, page, kv_heads)
            ks, vs = cp.full(sshape, 0.05, cp.float32), cp.full(sshape, 0.03, cp.float32)
            rows = cp.asarray(rng.standard_normal((int(lens.sum()), kv_heads, head_dim))
                              .astype(np.float16))
            write_kv_quant(rows, rows, k, v, cp.asarray(slot_mapping(tables, lens, lens, page)),
                           kv_dtype, scheme, ks, vs)
            if "decode" in parts:   # both kernels; one partition, and split-K with its merge
                for kernel in ("simt", "tensor_core"):
                    for splits in (1, 2):
                        w = BatchDecodeWrapper().plan(
                            cp.asarray(tables), cp.asarray(lens), heads, kv_heads, head_dim,
                            page, "float16", kernel=kernel, kv_dtype=kv_dtype,
                            scale_scheme=scheme, num_splits=splits)
                        q = cp.asarray(rng.standard_normal((3, heads, head_dim))
                                       .astype(np.float16))
                        out = w.run(q, k, v, k_scale=ks, v_scale=vs)
                        assert bool(cp.isfinite(out).all()), (head_dim, kv_dtype, scheme, kernel)
            if "prefill" not in parts:
                continue
            indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
            w = BatchPrefillWrapper().plan(cp.asarray(indptr), cp.asarray(tables),
                                           cp.asarray(lens), heads, kv_heads, head_dim, page,
                                           np.float16, kv_dtype=kv_dtype, scale_scheme=scheme)
            q = cp.asarray(rng.standard_normal((int(indptr[-1]), heads, head_dim))
                           .astype(np.float16))
            out = w.run(q, k, v, k_scale=ks, v_scale=vs)
            assert bool(cp.isfinite(out).all()), (head_dim, kv_dtype, scheme)
cp.cuda.Device().synchronize()
print("sanitize_quant: launches done")
