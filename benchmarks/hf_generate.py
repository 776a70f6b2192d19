"""transformers' `generate` as serve_bench.py's baseline, on the engine's own weights.

Static batching the way vLLM's `benchmark_throughput --backend hf` runs it: the requests
are sorted by length (prompt + requested output, longest first, so an out-of-memory shows
on the first batch) and cut into batches of the largest size that fits the GPU; each batch
is left-padded to its longest prompt and generates `max_new_tokens` = its longest requested
output (min_new_tokens the same: no early stop); only the requested tokens count as output.
The batch size comes from the free memory and the dense cache's bytes per sequence, halved
whenever a batch still runs out of memory (that attempt's time is not counted).
"""
from __future__ import annotations

import time

import numpy as np

# Prefill activations per prompt token besides the KV cache: the MLP's gate, up and
# activated rows plus a few hidden-size rows, in the model's dtype (a generous round-up).
ACTIVATION_ROWS = 3   # x intermediate_size
HIDDEN_ROWS = 8       # x hidden_size
MEMORY_FRACTION = 0.6  # of the free memory given to the batch (the allocator fragments)


def build(config, weights, on_gpu: bool):
    """LlamaForCausalLM on the engine's weights (CuPy arrays through DLPack, no copy to the
    host and no checkpoint on disk), in their dtype, on the same device."""
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415
    dtype = {np.dtype(np.float16): torch.float16,
             np.dtype(np.float32): torch.float32}[np.dtype(next(iter(weights.values())).dtype)]
    device = "cuda" if on_gpu else "cpu"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):   # the random init runs where the model lives
            hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config.to_hf()))
    finally:
        torch.set_default_dtype(previous)
    convert = torch.from_dlpack if on_gpu else torch.from_numpy
    hf.load_state_dict({k: convert(v) for k, v in weights.items()}, strict=True)
    return hf.eval()


def fitting_batch(config, itemsize: int, prompt_len: int, new_tokens: int, limit: int,
                  on_gpu: bool) -> int:
    """The most sequences of this shape whose dense cache and prefill activations fit in
    MEMORY_FRACTION of the free GPU memory, at most `limit`."""
    if not on_gpu:
        return limit
    import torch  # noqa: PLC0415
    free = torch.cuda.mem_get_info()[0]
    per_seq = (prompt_len + new_tokens) * config.kv_bytes_per_token(itemsize) + prompt_len * (
        ACTIVATION_ROWS * config.intermediate_size + HIDDEN_ROWS * config.hidden_size) * itemsize
    return int(max(1, min(limit, MEMORY_FRACTION * free // per_seq)))


def _generate(hf, prompts, outputs, group, device) -> None:
    import torch  # noqa: PLC0415
    longest = max(len(prompts[i]) for i in group)
    ids = torch.zeros((len(group), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, i in enumerate(group):   # left padding, as decoder-only generation needs
        ids[row, longest - len(prompts[i]):] = torch.tensor(prompts[i])
        mask[row, longest - len(prompts[i]):] = 1
    new = int(max(outputs[i] for i in group))
    with torch.no_grad():
        hf.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=new,
                    min_new_tokens=new, do_sample=False, pad_token_id=0)


def run(hf, config, prompts, outputs, subset, *, on_gpu: bool, batch: int | None = None,
        budget_s: float = 60.0, progress: bool = True) -> dict:
    """Time generate on `subset` (request indices) batch by batch; batches start while less
    than `budget_s` of timed generation has passed. Returns the figures and `done`, the
    requests that were served (the engine's like-for-like subset)."""
    import torch  # noqa: PLC0415
    device = "cuda" if on_gpu else "cpu"
    itemsize = next(hf.parameters()).element_size()
    order = sorted(subset, key=lambda i: (len(prompts[i]) + int(outputs[i]), i), reverse=True)
    # sized for the longest prompt and output of all (conservative), at most the subset
    fits = fitting_batch(config, itemsize, max(len(prompts[i]) for i in order),
                         int(max(outputs[i] for i in order)), 10**9, on_gpu)
    batch = batch or min(fits, len(order))
    _generate(hf, [p[:8] for p in prompts], [4] * len(prompts), order[:2], device)  # warm-up
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    bar = None
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415
        bar = tqdm(total=len(order), desc="generate", unit="req", mininterval=1.0)
    done, wall, kv_bytes, generated, ooms, pos, batches = [], 0.0, 0, 0, 0, 0, 0
    while pos < len(order) and wall < budget_s:
        group = order[pos:pos + batch]
        t0 = time.perf_counter()
        try:
            _generate(hf, prompts, outputs, group, device)
            if on_gpu:
                torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            ooms += 1
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            if on_gpu:
                torch.cuda.empty_cache()
            continue
        wall += time.perf_counter() - t0
        new = int(max(outputs[i] for i in group))
        padded = max(len(prompts[i]) for i in group) + new
        kv_bytes = max(kv_bytes, len(group) * padded * config.kv_bytes_per_token(itemsize))
        generated += new * len(group)
        done += group
        pos, batches = pos + len(group), batches + 1
        if bar is not None:
            bar.update(len(group))
    if bar is not None:
        bar.close()
    prompt_tokens = sum(len(prompts[i]) for i in done)
    useful = int(sum(int(outputs[i]) for i in done))
    import transformers  # noqa: PLC0415
    return {"batch": batch, "batch_that_fits": fits, "batches": batches,
            "requests": len(done), "done": sorted(done), "oom_retries": ooms,
            "wall_s": round(wall, 3), "prompt_tokens": prompt_tokens, "output_tokens": useful,
            "generated_tokens": generated,
            "tokens_per_s": round(useful / wall, 1) if wall else 0.0,
            "total_tokens_per_s": round((prompt_tokens + useful) / wall, 1) if wall else 0.0,
            "kv_bytes": kv_bytes,
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated()) if on_gpu else None,
            "transformers": transformers.__version__, "torch": torch.__version__}
