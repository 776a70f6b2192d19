"""Importing the package does not import ml_dtypes (~2 s on a 2-core machine): every process
that imports it paid that, the grader's sandboxes, judges and kernel hosts and each rank of
lesson 13 included; it is imported where a bfloat16 array or dtype is first needed."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["pagedattn_lab", "pagedattn_lab.engine", "pagedattn_lab.check",
                                    "pagedattn_lab.grading.judge",
                                    "pagedattn_lab.grading.kernel_host",
                                    "pagedattn_lab.distributed.layer"])
def test_importing_does_not_import_ml_dtypes(module):
    code = f"import sys, {module}; print('ml_dtypes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False", f"import {module} imports ml_dtypes"


def test_a_bfloat16_cache_still_takes_bfloat16_rows():
    import ml_dtypes
    import numpy as np

    import pagedattn_lab as pl
    cache = pl.PagedKVCache(4, 4, 1, 8, dtype=np.float32, device="cpu")
    seq = cache.add_sequence()
    rows = np.arange(16, dtype=np.float32).reshape(2, 1, 8).astype(ml_dtypes.bfloat16)
    cache.append(seq, rows, rows)
    k, _ = cache.gather(seq)
    assert np.array_equal(np.asarray(k, np.float32), rows.astype(np.float32))
