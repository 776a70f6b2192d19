"""Serving throughput: the course's engine against transformers' `generate`, same weights.

    python3 benchmarks/serve_bench.py --out DIR                 # the GPU run: ~1.1B Llama, fp16
    python3 benchmarks/serve_bench.py --model tiny --requests 24 --length-scale 0.1 --no-hf
    python3 benchmarks/serve_bench.py --model tiny ... --sweep  # page sizes x allocation policies

The workload is `pagedattn_lab.sim.Workload`: ShareGPT-like prompt and output lengths
(log-normal, means ~160 and ~340 tokens, within 2048), random prompt tokens, all requests
queued at once. Each request stops after its sampled output length (ignore_eos); the engine
learns that length only when it is reached.

The engine pages --kv-gib of KV memory (--page-size). transformers' `generate` is the
baseline (hf_generate.py: static batches of the largest size that fits the GPU, sorted by
length, left-padded, `max_new_tokens` = the batch's longest requested output, only requested
tokens counted). To fit the device time, generate serves a fixed subset: the first
--hf-requests requests with their outputs capped at --hf-max-output tokens (the cap shortens
generate's padding, so it favours generate), batches starting while less than --time-budget
seconds have been timed; the engine then serves exactly the requests generate served, in the
same process, for the ratio; then all requests. Greedy decoding throughout; times are wall
clock around whole runs, after a warm-up; the JSON is rewritten after each part.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))   # hf_generate.py

from pagedattn_lab.backend import gpu_available  # noqa: E402
from pagedattn_lab.engine import (EngineConfig, LLMEngine, LlamaModel,  # noqa: E402
                                  SamplingParams, llama_1b_config, random_weights, tiny_config)
from pagedattn_lab.engine.adaptive import choose_page_size, dry_run  # noqa: E402
from pagedattn_lab.sim import Workload  # noqa: E402

GIB = 2**30


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["1b", "tiny"], default="1b")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--length-scale", type=float, default=1.0,
                   help="multiply the workload's lengths (0.1 for a CPU smoke run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--kv-gib", type=float, default=1.0, help="KV memory of both systems")
    p.add_argument("--budget", type=int, default=2048, help="max_num_batched_tokens")
    p.add_argument("--max-seqs", type=int, default=256)
    p.add_argument("--chunk", type=int, default=None, help="max_prefill_chunk")
    p.add_argument("--preemption", choices=["recompute", "swap"], default="recompute")
    p.add_argument("--host-gib", type=float, default=0.0, help="swap space")
    p.add_argument("--allocation", choices=["on_demand", "predictive"], default="on_demand")
    p.add_argument("--unfused", action="store_true",
                   help="the model's array-op forward (default on the GPU: the fused kernels)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers' generate")
    p.add_argument("--hf-batch", type=int, default=None,
                   help="generate's batch (default: the largest that fits the GPU)")
    p.add_argument("--hf-requests", type=int, default=64,
                   help="the comparison's subset: the first N requests")
    p.add_argument("--hf-max-output", type=int, default=512,
                   help="output lengths of the subset capped here (both systems)")
    p.add_argument("--time-budget", type=float, default=45.0,
                   help="seconds of timed generate after which no new batch starts")
    p.add_argument("--sweep", action="store_true",
                   help="also serve with page sizes 8..64 x on_demand/predictive")
    p.add_argument("--dry-run", action="store_true",
                   help="no model: the scheduler alone, page sizes x allocation (CPU, seconds)")
    p.add_argument("--out", default=None, help="folder for serve_bench.json")
    return p.parse_args(argv)


def workload(args):
    s = args.length_scale
    w = Workload(num_requests=args.requests, seed=args.seed,
                 prompt_median=110.0 * s, output_median=230.0 * s,
                 prompt_max=max(8, int(1024 * s)), max_len=max(16, int(2048 * s)))
    prompts, outputs = w.sample()
    rng = np.random.default_rng(args.seed)
    return w, prompts, outputs, rng


def build_model(args):
    config = llama_1b_config() if args.model == "1b" else tiny_config()
    on_gpu = args.device == "gpu" or (args.device == "auto" and gpu_available())
    dtype = np.float16 if on_gpu else np.float32
    xp = np
    if on_gpu:
        import cupy as xp  # noqa: PLC0415
    weights = random_weights(config, seed=args.seed, dtype=dtype, xp=xp)
    model = LlamaModel(config, weights, dtype=dtype, device="gpu" if on_gpu else "cpu",
                       fused=False if args.unfused else None)
    return config, weights, model


def sync(model):
    if model.xp is not np:
        model.xp.cuda.Device().synchronize()


def engine_config(args, model, page_size=None, allocation=None, preemption=None,
                  host_gib=None) -> EngineConfig:
    page_size = page_size or args.page_size
    per_page = model.config.kv_bytes_per_token(model.dtype.itemsize) * page_size
    host_gib = args.host_gib if host_gib is None else host_gib
    return EngineConfig(page_size=page_size, num_pages=int(args.kv_gib * GIB // per_page),
                        max_num_batched_tokens=args.budget, max_num_seqs=args.max_seqs,
                        max_prefill_chunk=args.chunk,
                        preemption_mode=preemption or args.preemption,
                        num_host_pages=int(host_gib * GIB // per_page),
                        allocation=allocation or args.allocation, seed=args.seed)


def serve(model, config: EngineConfig, prompts, outputs, progress=True) -> dict:
    engine = LLMEngine(model, config)
    params = [SamplingParams(max_tokens=int(o), ignore_eos=True) for o in outputs]
    sync(model)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params, progress=progress)
    sync(model)
    wall = time.perf_counter() - t0
    assert [len(o.output_ids) for o in outs] == [int(o) for o in outputs]
    s = engine.summary()
    total = int(np.sum(outputs)) + sum(len(p) for p in prompts)
    s.update(wall_s=round(wall, 3), tokens_per_s=round(int(np.sum(outputs)) / wall, 1),
             total_tokens_per_s=round(total / wall, 1),
             num_pages=config.num_pages, page_size=config.page_size,
             allocation=config.allocation, preemption_mode=config.preemption_mode,
             kv_pool_bytes=config.num_pages * engine.store.bytes_per_page)
    return s


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    w, prompt_lens, outputs, rng = workload(args)
    if args.dry_run:
        return dry_run_table(args, prompt_lens, outputs)
    started = time.perf_counter()
    config, weights, model = build_model(args)
    prompts = [rng.integers(0, config.vocab_size, int(n)).tolist() for n in prompt_lens]
    print(f"model: {config.num_parameters() / 1e9:.2f}B parameters, {model.dtype.name}, "
          f"{model.device}, {'fused' if model.fused else 'array-op'} forward; {args.requests} requests, {int(prompt_lens.sum())} prompt + "
          f"{int(outputs.sum())} output tokens", flush=True)
    # Warm-up: compiles the kernels, starts cuBLAS.
    serve(model, EngineConfig(page_size=16, num_pages=64), [p[:40] for p in prompts[:4]], [4] * 4,
          False)
    result = {"meta": {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "device": device_name(model), "command": " ".join(sys.argv),
                       "args": vars(args)},
              "workload": {"requests": args.requests, "prompt_tokens": int(prompt_lens.sum()),
                           "output_tokens": int(outputs.sum()),
                           "longest": int((prompt_lens + outputs).max())},
              "page_size_choice": choose_page_size(prompt_lens, outputs)[0], "seconds": {}}

    def save(part: str) -> None:
        result["seconds"][part] = round(time.perf_counter() - started, 1)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "serve_bench.json").write_text(json.dumps(result, indent=2))

    save("built")
    if not args.no_hf:
        compare(args, result, config, weights, model, prompts, outputs)
        save("compared")
    result["engine"] = serve(model, engine_config(args, model), prompts, outputs)
    save("engine")
    if args.sweep:
        result["sweep"] = sweep(args, model, prompts, prompt_lens, outputs)
        save("sweep")
    report(result)
    return 0


def compare(args, result, config, weights, model, prompts, outputs) -> None:
    """generate on the subset (hf_generate.py), then the engine on the requests it served."""
    import hf_generate  # noqa: PLC0415 - needs torch and transformers
    on_gpu = model.xp is not np
    subset = list(range(min(args.hf_requests, len(prompts))))
    capped = np.minimum(outputs, args.hf_max_output)
    hf = hf_generate.build(config, weights, on_gpu)
    result["hf"] = hf_generate.run(hf, config, prompts, capped, subset, on_gpu=on_gpu,
                                   batch=args.hf_batch, budget_s=args.time_budget)
    del hf
    if on_gpu:
        import torch  # noqa: PLC0415
        torch.cuda.empty_cache()
    done = result["hf"]["done"]
    result["engine_subset"] = serve(model, engine_config(args, model), [prompts[i] for i in done],
                                    capped[done])
    result["speedup"] = round(result["engine_subset"]["tokens_per_s"]
                              / result["hf"]["tokens_per_s"], 2)
    result["speedup_total"] = round(result["engine_subset"]["total_tokens_per_s"]
                                    / result["hf"]["total_tokens_per_s"], 2)


def sweep(args, model, prompts, prompt_lens, outputs) -> list[dict]:
    """Page sizes x allocation policies (recompute), then preemption by swap (host memory as
    large as the KV pool) against recompute at --page-size."""
    configs = [engine_config(args, model, page, alloc, "recompute", 0.0)
               for page in (8, 16, 32, 64) for alloc in ("on_demand", "predictive")]
    configs.append(engine_config(args, model, None, "on_demand", "swap", args.kv_gib))
    rows = []
    for cfg in configs:
        row = serve(model, cfg, prompts, outputs, progress=False)
        row["dry_run"] = dry_run(cfg, prompt_lens, outputs).summary()
        rows.append(row)
        print(f"page {cfg.page_size:3d} {cfg.allocation:>10} {cfg.preemption_mode:>9}: "
              f"{row['tokens_per_s']:9.1f} tok/s, {row['steps']} steps, waste "
              f"{row['kv_waste_fraction']:.3f}, preemptions {row['preempted_recompute']}+"
              f"{row['preempted_swap']}, recomputed {row['recomputed_tokens']} tokens, "
              f"swapped {row['swap_bytes'] / 2**20:.1f} MiB", flush=True)
    return rows


def dry_run_table(args, prompt_lens, outputs) -> int:
    """The adaptive-page-management table without a model: the engine's scheduler replays
    the workload on a KV pool of --kv-gib of the chosen model's fp16 K/V."""
    config = llama_1b_config() if args.model == "1b" else tiny_config()
    kv_tokens = int(args.kv_gib * GIB // config.kv_bytes_per_token(2))
    chosen, waste = choose_page_size(prompt_lens, outputs)
    rows = []
    for page in (8, 16, 32, 64, 128):
        for alloc in ("on_demand", "predictive"):
            cfg = EngineConfig(page_size=page, num_pages=kv_tokens // page,
                               max_num_batched_tokens=args.budget, max_num_seqs=args.max_seqs,
                               max_prefill_chunk=args.chunk, allocation=alloc,
                               enable_prefix_caching=False)
            row = dry_run(cfg, prompt_lens, outputs).summary()
            row["tail_waste_estimate"] = round(waste[page], 4)
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    print(f"page size chosen from the lengths (tail waste <= 5%): {chosen}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "adaptive_dry_run.json").write_text(json.dumps(
            {"meta": {"command": " ".join(sys.argv), "kv_tokens": kv_tokens,
                      "args": vars(args)},
             "page_size_choice": chosen, "tail_waste": waste, "rows": rows}, indent=2))
    return 0


def device_name(model) -> str:
    if model.xp is np:
        return "cpu (CPU executor)"
    props = model.xp.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def report(result: dict) -> None:
    print(f"\n{result['meta']['device']}: {result['workload']['requests']} requests, "
          f"{result['workload']['output_tokens']} output tokens; seconds {result['seconds']}")
    rows = [("engine:", result["engine"])]
    if "hf" in result:
        h = result["hf"]
        rows.append(("engine, subset:", result["engine_subset"]))
        print(f"subset: {h['requests']} requests, {h['prompt_tokens']} prompt + "
              f"{h['output_tokens']} output tokens")
    for name, e in rows:
        print(f"{name:15s} {e['tokens_per_s']:9.1f} out tok/s {e['total_tokens_per_s']:9.1f} "
              f"tok/s  wall {e['wall_s']:.1f} s  steps {e['steps']}  KV pool "
              f"{e['kv_pool_bytes'] / GIB:.2f} GiB (peak used {e['peak_kv_bytes'] / GIB:.2f})  "
              f"running mean {e['mean_running']} max {e['max_running']}  preemptions "
              f"{e['preempted_recompute']}+{e['preempted_swap']} (recompute+swap)  waste "
              f"{e['kv_waste_fraction']:.3f}")
    if "hf" in result:
        print(f"{'generate:':15s} {h['tokens_per_s']:9.1f} out tok/s {h['total_tokens_per_s']:9.1f} "
              f"tok/s  wall {h['wall_s']:.1f} s  batch {h['batch']} x {h['batches']}  KV "
              f"{h['kv_bytes'] / GIB:.2f} GiB  {h['generated_tokens']} generated for "
              f"{h['output_tokens']} requested")
        print(f"speed-up on the subset: {result['speedup']}x output tokens/s, "
              f"{result['speedup_total']}x prompt + output (target: at least 5x)")


if __name__ == "__main__":
    sys.exit(main())
