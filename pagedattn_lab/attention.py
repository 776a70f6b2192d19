"""Paged attention on the course's kernels: `paged_attention_decode` and `paged_attention_prefill`.

Both follow the conventions of vLLM / FlashInfer (README.md, "API conventions"): caches are
[num_pages, page_size, num_kv_heads, head_dim] (NHD), `block_tables` int32 [batch, max_pages],
`seq_lens` int32 [batch], GQA/MQA by `num_heads % num_kv_heads == 0`. NumPy inputs run the
CUDA C kernels on the CPU executor and return NumPy; CuPy inputs run them on the GPU and
return CuPy. Every input is validated before anything is launched, and every error message
names the argument at fault.

    decode:  kernels/decode.cu         (one query token per sequence; split-K + merge)
             kernels/decode_mma.cu, decode_mma_rows.cu (tensor cores, PTX mma.sync;
                                       decode_tc.cu: the WMMA version, lesson 09)
    prefill: kernels/prefill_naive.cu  (one thread per query token: guide step 3, fixed)
             kernels/prefill_tiled.cu  (query tiles reusing K/V tiles in shared memory)

The two wrappers live in `attention_decode.py` and `attention_prefill.py` (what they share
is in `attention_common.py`) and are re-exported here.
"""
from .attention_decode import choose_partitions, paged_attention_decode
from .attention_prefill import paged_attention_prefill
from .wrappers import BatchDecodeWrapper, from_csr, to_csr

__all__ = ["BatchDecodeWrapper", "choose_partitions", "from_csr", "paged_attention_decode",
           "paged_attention_prefill", "to_csr"]
