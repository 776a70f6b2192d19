"""Compressed-KV benchmark on the GPU: decode-shaped batches (q_len 1) on `BatchPrefillWrapper`
over fp16, int8 and fp8 (e4m3) pages, static and per-token scales, with FlashInfer's fp8 KV
decode as a baseline when its JIT builds it; plus the quantizing cache write.

    python -m pagedattn_lab.bench.quant --out DIR

Issue 12's targets (H200, same run): D64 MHA and GQA 32/8 decode on fp8 or int8 pages at
most 0.55x the fp16 time, and at least 90% of the copy rate counted on the compressed bytes
(codes + per-token scales + the block tables). Each row reports both ratios.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..cache import page_bytes
from .timing import Timer, copy_bandwidth

PAGE = 16
KINDS = [("float16", None), ("int8", "static"), ("int8", "per_token"),
         ("fp8_e4m3", "static"), ("fp8_e4m3", "per_token")]


@dataclass(frozen=True)
class QuantWorkload:
    name: str
    batch: int
    seq_len: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


def workloads() -> list[QuantWorkload]:
    return [QuantWorkload("decode 64x4096 D64 MHA 32/32", 64, 4096, 32, 32, 64),
            QuantWorkload("decode 64x4096 GQA 32/8 D128", 64, 4096, 32, 8, 128)]


def build(cp, w: QuantWorkload, kv_dtype, scheme, rng):
    from ..cache_write import slot_mapping  # noqa: PLC0415
    from ..cache_write_quant import scale_shape, write_kv_quant  # noqa: PLC0415
    from ..quant import kv_format  # noqa: PLC0415
    pages = -(-w.seq_len // PAGE)
    num_pages = w.batch * pages
    tables = rng.permutation(num_pages).astype(np.int32).reshape(w.batch, pages)
    lens = np.full(w.batch, w.seq_len, np.int32)
    shape = (num_pages, PAGE, w.num_kv_heads, w.head_dim)
    rows = cp.random.standard_normal((w.batch * w.seq_len,) + shape[2:], dtype=cp.float32)
    rows = rows.astype(cp.float16)
    slots = cp.asarray(slot_mapping(tables, lens, lens, PAGE))
    d = dict(tables=tables, lens=lens, q=cp.random.standard_normal(
        (w.batch, w.num_heads, w.head_dim), dtype=cp.float32).astype(cp.float16))
    if kv_dtype == "float16":
        from ..cache_write import write_kv  # noqa: PLC0415
        d["k"], d["v"] = cp.empty(shape, cp.float16), cp.empty(shape, cp.float16)
        d["write"] = lambda: write_kv(rows, rows, d["k"], d["v"], slots)
        d["scales"] = {}
    else:
        storage = kv_format(kv_dtype).storage
        d["k"], d["v"] = cp.empty(shape, storage), cp.empty(shape, storage)
        sshape = scale_shape(scheme, num_pages, PAGE, w.num_kv_heads)
        ks = cp.full(sshape, 4.0 / kv_format(kv_dtype).qmax, cp.float32)
        vs = ks.copy()
        d["write"] = lambda: write_kv_quant(rows, rows, d["k"], d["v"], slots, kv_dtype, scheme,
                                            ks, vs)
        d["scales"] = dict(k_scale=ks, v_scale=vs)
    d["write"]()
    d["rows_bytes"] = 2 * rows.nbytes
    return d


def ours(cp, w, d, kv_dtype, scheme):
    from ..prefill_wrapper import BatchPrefillWrapper  # noqa: PLC0415
    indptr = np.arange(w.batch + 1, dtype=np.int32)
    wrapper = BatchPrefillWrapper().plan(
        cp.asarray(indptr), cp.asarray(d["tables"]), cp.asarray(d["lens"]), w.num_heads,
        w.num_kv_heads, w.head_dim, PAGE, np.float16,
        kv_dtype=None if kv_dtype == "float16" else kv_dtype, scale_scheme=scheme or "static")
    out = cp.empty_like(d["q"])
    return lambda: wrapper.run(d["q"], d["k"], d["v"], out=out, **d["scales"])


def flashinfer_decode(cp, w, d, kv_dtype):
    import flashinfer  # noqa: PLC0415 - optional baseline
    import torch  # noqa: PLC0415
    if kv_dtype not in ("float16", "fp8_e4m3"):
        raise ValueError("FlashInfer decodes fp16 and fp8 KV caches only")
    dev = torch.device("cuda")
    pages = d["tables"].shape[1]
    kv_indptr = torch.arange(0, (w.batch + 1) * pages, pages, dtype=torch.int32, device=dev)
    kv_indices = torch.from_numpy(d["tables"].reshape(-1)).to(dev)
    last = torch.full((w.batch,), w.seq_len - (pages - 1) * PAGE, dtype=torch.int32, device=dev)
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, kv_layout="NHD")
    kv_type = torch.float16 if kv_dtype == "float16" else torch.float8_e4m3fn
    wrapper.plan(kv_indptr, kv_indices, last, w.num_heads, w.num_kv_heads, w.head_dim, PAGE,
                 q_data_type=torch.float16, kv_data_type=kv_type)
    k, v = (torch.from_dlpack(d[x]) for x in ("k", "v"))
    if kv_type != torch.float16:
        k, v = k.view(kv_type), v.view(kv_type)
    q = torch.from_dlpack(d["q"])
    return lambda: wrapper.run(q, (k, v))


def kv_bytes(w, kv_dtype, scheme) -> int:
    """Bytes a decode must read: the pages' K/V (and per-token scales), the tables, q and out."""
    per_token = page_bytes(1, w.num_kv_heads, w.head_dim, np.float16,
                           None if kv_dtype == "float16" else kv_dtype, scheme or "static")
    pages = -(-w.seq_len // PAGE)
    return (w.batch * w.seq_len * per_token + 4 * w.batch * (pages + 1)
            + 2 * 2 * w.batch * w.num_heads * w.head_dim)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_quant_out"))
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args(argv)
    import cupy as cp  # noqa: PLC0415
    timer = Timer(cp)
    timer.warm_up()
    copy_rate = copy_bandwidth(cp, timer)
    rng = np.random.default_rng(0)
    rows = []
    for w in workloads():
        fp16_ms = None
        for kv_dtype, scheme in KINDS:
            d = build(cp, w, kv_dtype, scheme, rng)
            row = {"workload": asdict(w), "name": w.name, "kv_dtype": kv_dtype,
                   "scheme": scheme, "bytes": kv_bytes(w, kv_dtype, scheme), "results": {}}
            for label, make in [("ours", lambda: ours(cp, w, d, kv_dtype, scheme)),
                                ("flashinfer", lambda: flashinfer_decode(cp, w, d, kv_dtype)),
                                ("cache_write", lambda: d["write"])]:
                if label == "flashinfer" and scheme == "per_token":
                    continue
                try:
                    fn = make()
                    t = timer.time(fn, reps=args.reps)
                    entry = t.as_dict()
                    if label == "ours":
                        entry["copy_rate_fraction"] = row["bytes"] / (t.median_ms * 1e-3) / copy_rate
                        fp16_ms = t.median_ms if kv_dtype == "float16" else fp16_ms
                        entry["vs_fp16"] = t.median_ms / fp16_ms if fp16_ms else None
                    row["results"][label] = entry
                except Exception as exc:  # noqa: BLE001 - record and go on
                    row["results"][label] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            rows.append(row)
            o = row["results"]["ours"]
            print(f"{w.name:32s} {kv_dtype:>9s} {str(scheme):>9s} | ours "
                  + (f"{o['median_ms']:.3f} ms x{o['vs_fp16']:.2f} of fp16, "
                     f"{o['copy_rate_fraction']:.0%} of copy" if "median_ms" in o else o["error"])
                  + " | " + " | ".join(f"{k} {v['median_ms']:.3f} ms" if "median_ms" in v
                                       else f"{k} n/a" for k, v in row["results"].items()
                                       if k != "ours"), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "copy_bytes_per_s": copy_rate,
            "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode()}
    (args.out / "quant.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
