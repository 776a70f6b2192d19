"""One rank: `python -m pagedattn_lab.distributed.worker JOB RESULT` (started by `launch`).

Reads (function name, args, kwargs, backend) from JOB, joins the process group through the
MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE environment, runs the function and pickles what it
returns to RESULT.
"""
from __future__ import annotations

import datetime
import importlib
import importlib.util
import os
import pickle
import sys

from .launch import require_torch


def resolve(name: str):
    """The function that `launch.target_name` named."""
    module, _, qualname = name.rpartition(":")
    if module.endswith(".py"):
        spec = importlib.util.spec_from_file_location("_pagedattn_tp_target", module)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)    # under another name: its __main__ block stays idle
    else:
        mod = importlib.import_module(module)
    fn = mod
    for part in qualname.split("."):
        fn = getattr(fn, part)
    return fn


def main(job_path: str, result_path: str) -> None:
    with open(job_path, "rb") as f:
        name, args, kwargs, backend = pickle.load(f)
    torch, dist = require_torch()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if backend == "nccl":   # rank r drives GPU r, for torch's collectives and CuPy's kernels
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        from ..backend import cupy_module  # noqa: PLC0415
        cupy_module().cuda.Device(local).use()
    fn = resolve(name)
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        result = fn(rank, world, *args, **kwargs)
    finally:
        dist.destroy_process_group()
    with open(result_path, "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
