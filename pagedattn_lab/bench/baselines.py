"""PyTorch baselines, run in the same process on the same data as the course's kernels.

Each builder does its set-up (dense copies, masks, compilation) outside the timed region
and returns a function that runs the attention once and returns its output, so the driver
can both time it and compare its result with ours. A builder that cannot run on this
device's PyTorch raises; the driver records the failure and goes on.

decode:
- "sdpa-dense":   torch SDPA on a dense cache padded to the longest sequence (what a
                  framework without paging does: it reads the padding too), boolean mask;
- "gather-sdpa":  gather the pages into a dense tensor on every call, then SDPA;
- "flex-paged":   FlexAttention (compiled) with PyTorch's experimental PagedAttention
                  page table, on the same physical pages (its own [1, kv_heads, slots, d]
                  layout).
prefill: "sdpa" (torch SDPA, causal, on dense fp32 tensors).
"""
from __future__ import annotations


def import_torch():
    import torch  # noqa: PLC0415 - optional: the benchmark runs without it, minus baselines
    return torch


def as_torch(torch, x):
    return torch.from_dlpack(x)


def _decode_common(torch, inp, w):
    q = as_torch(torch, inp["q"]).unsqueeze(2)                     # [B, H, 1, D]
    kc, vc = as_torch(torch, inp["k_cache"]), as_torch(torch, inp["v_cache"])
    tables = as_torch(torch, inp["block_tables"]).long().clamp(min=0)
    lens = as_torch(torch, inp["seq_lens"]).long()
    width = tables.shape[1] * w.page_size
    mask = (torch.arange(width, device=q.device)[None, :] < lens[:, None])[:, None, None, :]
    return q, kc, vc, tables, lens, mask


def _dense(kc, tables, w):
    """[B, kv_heads, max_pages * page_size, D]: each sequence's pages gathered in order."""
    B, width = tables.shape[0], tables.shape[1] * w.page_size
    return kc[tables].reshape(B, width, w.num_kv_heads, w.head_dim).transpose(1, 2)


def sdpa_dense(torch, inp, w, scale):
    F = torch.nn.functional
    q, kc, vc, tables, _, mask = _decode_common(torch, inp, w)
    kd, vd = _dense(kc, tables, w).contiguous(), _dense(vc, tables, w).contiguous()
    gqa = w.num_heads != w.num_kv_heads

    def run():
        return F.scaled_dot_product_attention(q, kd, vd, attn_mask=mask, scale=scale,
                                              enable_gqa=gqa).squeeze(2)
    return run


def gather_sdpa(torch, inp, w, scale):
    F = torch.nn.functional
    q, kc, vc, tables, _, mask = _decode_common(torch, inp, w)
    gqa = w.num_heads != w.num_kv_heads

    def run():
        kd, vd = _dense(kc, tables, w), _dense(vc, tables, w)
        return F.scaled_dot_product_attention(q, kd, vd, attn_mask=mask, scale=scale,
                                              enable_gqa=gqa).squeeze(2)
    return run


def flex_paged(torch, inp, w, scale):
    from torch.nn.attention.experimental._paged_attention import PagedAttention  # noqa: PLC0415
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: PLC0415
    q, kc, vc, tables, lens, _ = _decode_common(torch, inp, w)
    num_pages, ps = kc.shape[0], w.page_size
    # FlexAttention's paged layout: one [1, kv_heads, num_pages * page_size, D] tensor.
    flat = (1, w.num_kv_heads, num_pages * ps, w.head_dim)
    k_flex = kc.permute(2, 0, 1, 3).reshape(flat).contiguous()
    v_flex = vc.permute(2, 0, 1, 3).reshape(flat).contiguous()
    paged = PagedAttention(num_pages, ps, w.batch, device=q.device)
    pages_per_seq = ((lens + ps - 1) // ps).tolist()
    for b, n in enumerate(pages_per_seq):   # the same physical pages as our block table
        pages = tables[b, :n]
        paged.page_table[b, :n] = pages
        paged.physical_to_logical[b, pages] = torch.arange(n, device=q.device)
        paged.capacity[b] = n * ps

    def within_length(b, h, q_idx, kv_idx):
        return kv_idx < lens[b]

    logical = create_block_mask(within_length, w.batch, 1, 1, tables.shape[1] * ps,
                                device=q.device, BLOCK_SIZE=ps)
    block_mask = paged.convert_logical_block_mask(logical, kv_len=lens)
    # Static shapes, compiled afresh per workload: a second workload would otherwise make
    # dynamo recompile with dynamic shapes, and that path refuses 16-token blocks.
    torch._dynamo.reset()
    flex = torch.compile(flex_attention, dynamic=False)
    gqa = w.num_heads != w.num_kv_heads

    def run():
        return flex(q, k_flex, v_flex, block_mask=block_mask, scale=scale,
                    enable_gqa=gqa).squeeze(2)
    return run


DECODE_BASELINES = {"sdpa-dense": sdpa_dense, "gather-sdpa": gather_sdpa, "flex-paged": flex_paged}


def sdpa_prefill(torch, inp, w, scale):
    """Causal SDPA on dense [B, H, L, D] copies of the same q, K and V."""
    F = torch.nn.functional
    q = as_torch(torch, inp["q"]).transpose(1, 2).contiguous()   # [B, H, L, D]
    kc, vc = as_torch(torch, inp["k_cache"]), as_torch(torch, inp["v_cache"])
    tables = as_torch(torch, inp["block_tables"]).long()
    B, L = tables.shape[0], w.seq_len

    def dense(c):
        return c[tables].reshape(B, -1, w.num_heads, w.head_dim)[:, :L].transpose(1, 2).contiguous()
    kd, vd = dense(kc), dense(vc)

    def run():
        return F.scaled_dot_product_attention(q, kd, vd, is_causal=True,
                                              scale=scale).transpose(1, 2)
    return run
