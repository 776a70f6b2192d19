"""Prefill benchmark on the GPU: `BatchPrefillWrapper` against FlashInfer's paged prefill and
torch SDPA (dense), in one process, on the same pages, with the same timer.

    python -m pagedattn_lab.bench.prefill --out DIR

Rows (fp16, page 16, pages scattered): 4 x 2048 prompts with 8 heads of 64; 4 x 4096 with
32 heads of 128; the same with GQA 32/8; chunked prefill (8 sequences, 4096 cached + 512 new
tokens); a mixed batch (2 prompts of 2048 + 62 decode tokens over 512-4096 cached tokens).
FLOPs count the visible (query, key) pairs exactly: 4 * heads * head_dim per pair.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .timing import Timer

PAGE = 16


@dataclass(frozen=True)
class PrefillWorkload:
    name: str
    lens: tuple          # all cached tokens per sequence, new ones included
    q_lens: tuple        # new tokens (the last q_len of each sequence)
    num_heads: int
    num_kv_heads: int
    head_dim: int

    def flops(self) -> float:
        pairs = sum(q * (n - q) + q * (q + 1) // 2 for n, q in zip(self.lens, self.q_lens))
        return 4.0 * self.num_heads * self.head_dim * pairs


def workloads() -> list[PrefillWorkload]:
    decode_lens = tuple(int(n) for n in np.random.default_rng(0).integers(512, 4097, 62))
    return [
        PrefillWorkload("4x2048 8/8 d64", (2048,) * 4, (2048,) * 4, 8, 8, 64),
        PrefillWorkload("4x4096 32/32 d128", (4096,) * 4, (4096,) * 4, 32, 32, 128),
        PrefillWorkload("4x4096 GQA 32/8 d128", (4096,) * 4, (4096,) * 4, 32, 8, 128),
        PrefillWorkload("chunked 8x(4096+512) 32/8 d128", (4608,) * 8, (512,) * 8, 32, 8, 128),
        PrefillWorkload("mixed 2x2048 + 62 decodes 32/8 d128", (2048, 2048) + decode_lens,
                        (2048, 2048) + (1,) * 62, 32, 8, 128),
    ]


def build(cp, w: PrefillWorkload, rng):
    pages = [-(-n // PAGE) for n in w.lens]
    num_pages = sum(pages)
    perm = rng.permutation(num_pages).astype(np.int32)
    tables = np.full((len(w.lens), max(pages)), -1, np.int32)
    start = 0
    for b, p in enumerate(pages):
        tables[b, :p] = perm[start:start + p]
        start += p
    shape = (num_pages, PAGE, w.num_kv_heads, w.head_dim)
    k = cp.random.standard_normal(shape, dtype=cp.float32).astype(cp.float16)
    v = cp.random.standard_normal(shape, dtype=cp.float32).astype(cp.float16)
    indptr = np.concatenate([[0], np.cumsum(w.q_lens)]).astype(np.int32)
    q = cp.random.standard_normal((int(indptr[-1]), w.num_heads, w.head_dim),
                                  dtype=cp.float32).astype(cp.float16)
    return dict(q=q, k=k, v=v, indptr=indptr, tables=tables, lens=np.array(w.lens, np.int32))


def ours(cp, w, d, variant=None, decode_variant=None):
    from ..prefill_wrapper import BatchPrefillWrapper  # noqa: PLC0415
    wrapper = BatchPrefillWrapper().plan(cp.asarray(d["indptr"]), cp.asarray(d["tables"]),
                                         cp.asarray(d["lens"]), w.num_heads, w.num_kv_heads,
                                         w.head_dim, PAGE, np.float16, variant=variant,
                                         decode_variant=decode_variant)
    out = cp.empty_like(d["q"])
    run = lambda: wrapper.run(d["q"], d["k"], d["v"], out=out)  # noqa: E731
    run.plan_variant = wrapper.variant
    return run


def flashinfer_prefill(cp, w, d):
    import flashinfer  # noqa: PLC0415 - optional baseline
    import torch  # noqa: PLC0415
    pages = -(-d["lens"] // PAGE)
    kv_indptr = np.concatenate([[0], np.cumsum(pages)]).astype(np.int32)
    kv_indices = np.concatenate([d["tables"][b, :p] for b, p in enumerate(pages)]).astype(np.int32)
    last = (d["lens"] - (pages - 1) * PAGE).astype(np.int32)
    dev = torch.device("cuda")
    t = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, kv_layout="NHD")
    wrapper.plan(t(d["indptr"]), t(kv_indptr), t(kv_indices), t(last), w.num_heads,
                 w.num_kv_heads, w.head_dim, PAGE, causal=True, q_data_type=torch.float16,
                 kv_data_type=torch.float16)
    q, k, v = (torch.from_dlpack(d[x]) for x in ("q", "k", "v"))
    return lambda: wrapper.run(q, (k, v))


def sdpa_dense(cp, w, d):
    """torch SDPA on dense, contiguous copies (no paging), causal, per uniform batch only."""
    import torch  # noqa: PLC0415
    if len(set(w.lens)) != 1 or len(set(w.q_lens)) != 1:
        raise ValueError("SDPA needs one length for the whole batch (mixed batch skipped)")
    F = torch.nn.functional
    n, m, B = w.lens[0], w.q_lens[0], len(w.lens)
    tables = torch.from_numpy(d["tables"]).cuda().long()
    kd = torch.from_dlpack(d["k"])[tables].reshape(B, -1, w.num_kv_heads, w.head_dim)[:, :n]
    vd = torch.from_dlpack(d["v"])[tables].reshape(B, -1, w.num_kv_heads, w.head_dim)[:, :n]
    kd, vd = kd.transpose(1, 2).contiguous(), vd.transpose(1, 2).contiguous()
    q = torch.from_dlpack(d["q"]).reshape(B, m, w.num_heads, w.head_dim).transpose(1, 2)
    q = q.contiguous()
    gqa = w.num_heads != w.num_kv_heads
    if m == n:
        return lambda: F.scaled_dot_product_attention(q, kd, vd, is_causal=True, enable_gqa=gqa)
    mask = (torch.arange(n, device="cuda")[None, :] <=
            torch.arange(m, device="cuda")[:, None] + (n - m))
    return lambda: F.scaled_dot_product_attention(q, kd, vd, attn_mask=mask, enable_gqa=gqa)


def max_rel_err(cp, a, b, total_q, w):
    a = cp.asnumpy(cp.asarray(a)).astype(np.float64).reshape(total_q, w.num_heads, w.head_dim)
    b = np.asarray(b).astype(np.float64).reshape(total_q, w.num_heads, w.head_dim)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def time_entry(cp, timer, w, fn, reps):
    result = fn()
    t = timer.time(fn, reps=reps)
    entry = {**t.as_dict(), "tflops": w.flops() / (t.median_ms * 1e-3) / 1e12}
    if hasattr(fn, "plan_variant"):
        entry["variant"] = fn.plan_variant
    return entry, result


def cells(row) -> str:
    return " | ".join(f"{k} {v['tflops']:.0f} TF" if "tflops" in v else f"{k} n/a"
                      for k, v in row["results"].items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_prefill_out"))
    parser.add_argument("--name", default="prefill.json", help="the JSON file's name")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--variants", nargs="*", default=[],
                        help="also time our kernels on these fixed variants (e.g. mw4r2k64 on "
                             "prefill_mma.cu, w4r2k32u2 on the WMMA kernel, or 128:mw4r2k64 for "
                             "head_dim 128 only)")
    parser.add_argument("--decode-variants", nargs="*", default=[],
                        help="for rows with decode tokens: also time these packed variants")
    parser.add_argument("--rows", nargs="*", type=int, default=None,
                        help="only these workloads (indexes)")
    args = parser.parse_args(argv)
    import cupy as cp  # noqa: PLC0415
    timer = Timer(cp)
    timer.warm_up()
    rng = np.random.default_rng(0)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"),
            "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
            "l2_flush": timer.l2_flush}
    chosen = [w for i, w in enumerate(workloads()) if args.rows is None or i in args.rows]
    rows, data, refs = [], [], []

    def save():
        (args.out / args.name).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))

    # Ours first (every variant, every row), then the baselines: FlashInfer's first call
    # compiles its kernels (about a minute on a fresh machine), so a run cut short still
    # has all of ours.
    for w in chosen:
        d = build(cp, w, rng)
        row = {"workload": asdict(w), "name": w.name, "tflop": w.flops() / 1e12, "results": {}}
        ref = None
        fixed = [v.split(":")[-1] for v in args.variants
                 if ":" not in v or v.split(":")[0] == str(w.head_dim)]
        group = w.num_heads // w.num_kv_heads
        decodes = [v for v in args.decode_variants if min(w.q_lens) * group <= 16]
        for label, variant, dec in ([("ours", None, None)] + [(f"ours-{v}", v, None) for v in fixed]
                                    + [(f"ours-decode-{v}", None, v) for v in decodes]):
            try:
                entry, result = time_entry(cp, timer, w, ours(cp, w, d, variant, dec), args.reps)
                if ref is None:
                    ref = cp.asnumpy(result).astype(np.float32)
                else:
                    entry["rel_err_vs_ours"] = max_rel_err(cp, result, ref, ref.shape[0], w)
                row["results"][label] = entry
            except Exception as exc:  # noqa: BLE001 - record and go on
                row["results"][label] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        rows.append(row)
        data.append(d)
        refs.append(ref)
        save()
        print(f"{w.name:40s} | {cells(row)}", flush=True)
    for w, row, d, ref in zip(chosen, rows, data, refs):
        for label, builder in [("flashinfer", flashinfer_prefill), ("sdpa-dense", sdpa_dense)]:
            try:
                entry, result = time_entry(cp, timer, w, builder(cp, w, d), args.reps)
                if ref is not None and label == "flashinfer":   # SDPA's layout is [B, H, m, D]
                    entry["rel_err_vs_ours"] = max_rel_err(cp, result, ref, ref.shape[0], w)
                row["results"][label] = entry
            except Exception as exc:  # noqa: BLE001 - record and go on
                row["results"][label] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        save()
        print(f"{w.name:40s} | {cells(row)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
