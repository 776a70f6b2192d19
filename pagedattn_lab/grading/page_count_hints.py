"""The tiled prefill kernel's page count read off a fault (checks_kernels.py): a block that
reads the table entry just past the pages its keys fill, where its keys_needed is a whole
number of pages, counted one page too many. The extra page loads no key (n_keys is 0
there), so a read past the table's row is the only evidence it leaves."""
from __future__ import annotations


def page_count_fault_hint(exc, prob, threads: int) -> str | None:
    """The hint for a read of block_tables entry keys_needed / page_size of the faulting
    block's row (block (x, h, b) of `threads` queries), when keys_needed fills its pages."""
    block, index = getattr(exc, "block", None), getattr(exc, "index", None)
    if getattr(exc, "buffer", None) != "block_tables" or not block or index is None:
        return None
    x, _, b = (int(v) for v in block)
    page_size, max_pages = prob.shape["page_size"], prob.shape["max_pages"]
    seq_len, first_query = int(prob.seq_lens[b]), x * threads
    keys_needed = min(seq_len, first_query + threads) if first_query < seq_len else 0
    if not keys_needed or keys_needed % page_size or \
            int(index) != b * max_pages + keys_needed // page_size:
        return None
    pages = keys_needed // page_size
    return (f"block {tuple(int(v) for v in block)} needs keys 0..{keys_needed - 1}, exactly "
            f"{pages} page{'s' if pages > 1 else ''} of {page_size}, and read entry {pages} of "
            "its block-table row too: the page count rounds up wrongly where keys_needed is a "
            "multiple of page_size. pages = (keys_needed + page_size - 1) / page_size; "
            "keys_needed / page_size + 1, or a loop p <= pages, takes one page more.")
