"""Small launches of the quantizing cache write and of the prefill and decode kernels over
int8 / fp8 pages, for compute-sanitizer (GPU only):
`compute-sanitizer python benchmarks/sanitize_quant.py [prefill] [decode] [simt_gqa] [-DX=N ...]`
(default: prefill and decode). simt_gqa: the SIMT decode's 4-head blocks over codes (their
work list, the groups' merge in shared memory, kernels/decode_half2_step.cuh; -D options: a
variant), each launch checked against the float64 reference on the dequantized pages
(" ok"/"WRONG")."""
import sys

import cupy as cp
import numpy as np

from pagedattn_lab.cache_write import slot_mapping
from pagedattn_lab.cache_write_quant import scale_shape, write_kv_quant
from pagedattn_lab.prefill_wrapper import BatchPrefillWrapper
from pagedattn_lab.quant import kv_format
from pagedattn_lab.wrappers import BatchDecodeWrapper

parts = [a for a in sys.argv[1:] if not a.startswith("-D")] or ["prefill", "decode"]
# extra -D options of kernels/decode.cu for simt_gqa (a variant of the defaults)
SIMT_EXTRA = tuple(a for a in sys.argv[1:] if a.startswith("-D"))

rng = np.random.default_rng(0)


def simt_gqa_cases():
    """Group 4 (GMAX 4) over codes: head_dim 128 and 96 (a padded group), page 16 and 7, one
    partition and split with the merge; lengths 1, short, not page multiples, long enough for
    rescales; poisoned output; checked against the reference on the dequantized pages."""
    from pagedattn_lab.quant import dequantize, quantize_rows, static_scales
    from pagedattn_lab.reference import reference_decode
    for head_dim, page in [(128, 16), (96, 7)]:
        for kv_dtype in ("int8", "fp8_e4m3"):
            for scheme in ("static", "per_token"):
                lens = np.array([1, 70, 33, 600], np.int32)
                pages = -(-lens // page)
                num_pages = int(pages.sum()) + 1
                tables = np.full((4, int(pages.max())), -1, np.int32)
                tables[np.arange(tables.shape[1])[None, :] < pages[:, None]] = \
                    rng.permutation(num_pages)[: pages.sum()]
                caches = []
                for _ in range(2):   # K, V: codes of random rows, their scales, dequantized
                    x = rng.standard_normal((num_pages * page, 2, head_dim)).astype(np.float32)
                    codes, scales = quantize_rows(
                        x, kv_dtype, scheme,
                        static_scales(x, kv_dtype) if scheme == "static" else None)
                    deq = dequantize(codes, kv_dtype, scales)
                    shape = (num_pages, page, 2, head_dim)
                    scales = scales.reshape((num_pages, page, 2) if scheme == "per_token"
                                            else (2,))
                    caches.append((codes.reshape(shape), scales, deq.reshape(shape)))
                q = rng.standard_normal((4, 8, head_dim)).astype(np.float16)
                ref = reference_decode(q.astype(np.float32), caches[0][2], caches[1][2],
                                       tables, lens)
                for splits in (1, 3):
                    w = BatchDecodeWrapper().plan(
                        cp.asarray(tables), cp.asarray(lens), 8, 2, head_dim, page, "float16",
                        kernel="simt", kv_dtype=kv_dtype, scale_scheme=scheme,
                        num_splits=splits)
                    out = cp.full(q.shape, np.nan, cp.float16)
                    w.run(cp.asarray(q), cp.asarray(caches[0][0]), cp.asarray(caches[1][0]),
                          out=out, k_scale=cp.asarray(caches[0][1]),
                          v_scale=cp.asarray(caches[1][1]))
                    got = out.get() if hasattr(out, "get") else out
                    err = float(np.abs(got.astype(np.float64) - ref).max())
                    print(f"simt_gqa d{head_dim} p{page} {kv_dtype} {scheme} splits {splits}: "
                          f"max |out - ref| {err:.1e} {'ok' if err < 2e-2 else 'WRONG'}",
                          flush=True)


if "simt_gqa" in parts:
    from pagedattn_lab import decode_plan
    base_options = decode_plan.simt_options
    decode_plan.simt_options = lambda *a: base_options(*a) + SIMT_EXTRA
    simt_gqa_cases()
    decode_plan.simt_options = base_options
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
