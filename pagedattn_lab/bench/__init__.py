"""GPU benchmark of the course's kernels against FlashInfer and PyTorch: `python -m pagedattn_lab.bench`.

Modules: `workloads` (what is measured), `timing` (events, L2 flush, copy bandwidth),
`baselines` (PyTorch SDPA, gather + SDPA, FlexAttention paged), `report` (table, JSON, PNG),
`run` (the driver behind `__main__`).
"""
