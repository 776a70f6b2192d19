"""GPU benchmark of the course's kernels against FlashInfer and PyTorch:
`python -m pagedattn_lab.bench`.

Modules: `workloads` (what is measured), `timing` (events, L2 flush, copy bandwidth, host
time), `flashinfer_baseline` (FlashInfer's decode, CUDA and tensor cores), `baselines`
(PyTorch SDPA, gather + SDPA, FlexAttention paged), `report` (table, JSON, PNG, the decode
issue's targets), `run` (the driver behind `__main__`).
"""
