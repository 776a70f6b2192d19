"""Run every kernel of the package once at a small size on the GPU, for compute-sanitizer.

    compute-sanitizer --tool memcheck  --error-exitcode 9 python3 benchmarks/sanitize.py
    compute-sanitizer --tool racecheck --error-exitcode 9 python3 benchmarks/sanitize.py
    compute-sanitizer --tool synccheck --error-exitcode 9 python3 benchmarks/sanitize.py

CuPy's memory pool is switched off so that every array is its own cudaMalloc: an access
one element past an array is then outside any allocation and memcheck sees it. Each result
is also checked against the float64 reference (exit status 1 on a mismatch).
Run from the repository root (it imports pagedattn_lab from there).
"""
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402

from pagedattn_lab import (gather_kv, gather_kv_reference, reference_decode,  # noqa: E402
                           reference_prefill)
from pagedattn_lab.attention import paged_attention_decode, paged_attention_prefill  # noqa: E402

cp.cuda.set_allocator(None)


def problem(rng, lens, page_size, heads, kv_heads, head_dim, dtype, prefill=False):
    pages = [-(-n // page_size) for n in lens]
    perm = rng.permutation(sum(pages)).astype(np.int32)
    tables = np.zeros((len(lens), max(pages)), np.int32)   # exact width: no padding column
    start = 0
    for b, n in enumerate(pages):
        tables[b, :n] = perm[start:start + n]
        start += n
    shape = (sum(pages), page_size, kv_heads, head_dim)
    k = rng.standard_normal(shape).astype(dtype)
    v = rng.standard_normal(shape).astype(dtype)
    qshape = (len(lens), max(lens), heads, head_dim) if prefill else (len(lens), heads, head_dim)
    q = rng.standard_normal(qshape).astype(dtype)
    return q, k, v, tables, np.array(lens, np.int32)


def check(name, host_args, fn, ref_fn, tol):
    ref = ref_fn(*host_args)
    out = cp.asnumpy(fn(*[cp.asarray(a) for a in host_args]))
    err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    ok = np.isfinite(out).all() and err < tol
    print(f"{name:44s} rel err {err:.2e} {'ok' if ok else 'WRONG'}")
    return ok


def main():
    rng = np.random.default_rng(7)
    ok = True
    f16, f32 = np.float16, np.float32
    decode_cases = [   # (name, lens, page, heads, kv heads, head_dim, dtype, keywords)
        ("simt f16 MHA d128 page 16 split", [700, 33, 1], 16, 4, 4, 128, f16, {}),
        ("simt f16 MHA d128 page 16 no split", [700, 33, 1], 16, 4, 4, 128, f16,
         {"num_splits": 1}),
        ("simt f32 GQA4 d64 page 8", [130, 9], 8, 8, 2, 64, f32, {}),
        ("simt f16 GQA2 d64 page 12", [50, 25], 12, 4, 2, 64, f16, {}),
        ("simt f16 MQA16 d64 page 256 split", [600, 5], 256, 16, 1, 64, f16, {"num_splits": 3}),
        ("simt f32 GQA4 d80 (padded lanes) split", [300, 5], 16, 8, 2, 80, f32, {"num_splits": 2}),
        ("simt f32 MHA d256 (2 chunks per lane)", [70, 5], 16, 2, 2, 256, f32, {}),
    ]
    tc = {"kernel": "tensor_core"}
    decode_cases += [
        ("tc f16 MHA d128 page 16 split", [700, 33, 1], 16, 4, 4, 128, f16, {**tc}),
        ("tc f16 GQA4 d128 page 16 no split", [700, 33, 1], 16, 8, 2, 128, f16,
         {**tc, "num_splits": 1}),
        ("tc f16 GQA4 d64 page 7 split 3", [130, 9, 1], 7, 8, 2, 64, f16, {**tc, "num_splits": 3}),
        ("tc f16 MQA16 d80 page 1", [90, 5], 1, 16, 1, 80, f16, {**tc, "num_splits": 2}),
        ("tc f16 group 20 d96 (2 row tiles) split", [200, 17], 16, 40, 2, 96, f16,
         {**tc, "num_splits": 4}),
        ("tc f16 group 64 d128 (4 row tiles) split", [300, 3], 32, 64, 1, 128, f16,
         {**tc, "num_splits": 2}),
        ("tc f16 GQA8 d256 page 256 split", [600, 5], 256, 16, 2, 256, f16,
         {**tc, "num_splits": 3}),
        ("tc f16 GQA2 d192 split", [100, 40], 16, 4, 2, 192, f16, {**tc, "num_splits": 2}),
        ("tc f16 GQA4 d112 auto split", [2000], 16, 8, 2, 112, f16, {**tc}),
    ]
    for name, lens, ps, h, kvh, hd, dt, kw in decode_cases:
        args = problem(rng, lens, ps, h, kvh, hd, dt)
        ok &= check("decode " + name, args, lambda *a, kw=kw: paged_attention_decode(*a, **kw),
                    reference_decode, 2e-3 if dt == f16 else 1e-5)
    # bfloat16 (uint16 bits on CuPy), both kernels
    q, k, v, tables, lens = problem(rng, [300, 17], 16, 8, 2, 128, f32)
    bf = [a.astype(ml_dtypes.bfloat16) for a in (q, k, v)]
    ref = reference_decode(*[a.astype(f32) for a in bf], tables, lens)
    for kernel in ("tensor_core", "simt"):
        out = paged_attention_decode(*[cp.asarray(a.view(np.uint16)) for a in bf],
                                     cp.asarray(tables), cp.asarray(lens), kernel=kernel,
                                     num_splits=2)
        got = cp.asnumpy(out).view(ml_dtypes.bfloat16).astype(np.float64)
        err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        good = bool(np.isfinite(got).all() and err < 1e-2)
        print(f"{'decode bf16 ' + kernel + ' GQA4 d128 split':44s} rel err {err:.2e} "
              f"{'ok' if good else 'WRONG'}")
        ok &= good
    prefill_cases = [
        ("prefill naive f32 d64", "naive", [130, 1, 64], 16, 4, 2, 64, f32),
        ("prefill tiled f32 d64", "tiled", [130, 1, 64], 16, 4, 2, 64, f32),
        ("prefill tiled f16 d128", "tiled", [100, 65], 32, 2, 1, 128, f16),
        ("prefill naive f16 d128", "naive", [100, 65], 32, 2, 1, 128, f16),
    ]
    for name, kernel, lens, ps, h, kvh, hd, dt in prefill_cases:
        args = problem(rng, lens, ps, h, kvh, hd, dt, prefill=True)
        ok &= check(name, args, lambda *a, k=kernel: paged_attention_prefill(*a, kernel=k),
                    reference_prefill, 2e-3 if dt == f16 else 1e-5)
    for dt in (f32, f16):  # the page-access kernel of step 2: an exact copy
        _, k, v, tables, lens = problem(rng, [37, 16], 16, 2, 2, 64, dt)
        for b in range(len(lens)):
            got = gather_kv(cp.asarray(k), cp.asarray(v), cp.asarray(tables[b]), int(lens[b]))
            want = gather_kv_reference(k, v, tables[b], int(lens[b]))
            same = all(np.array_equal(cp.asnumpy(g), w) for g, w in zip(got, want))
            print(f"{'gather_kv ' + np.dtype(dt).name + ' seq ' + str(b):44s} "
                  f"{'exact' if same else 'WRONG'}")
            ok &= same
    cp.cuda.Device().synchronize()
    print("all results match the reference" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
